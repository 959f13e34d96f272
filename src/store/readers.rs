//! The durable consumers of this peer's stream, as the origin remembers
//! them: kept across the origin's restarts, so that its log keeps what an
//! offline consumer has not processed yet (within retention).
//!
//! Owns: the `readers` partition: (member id, durable name) → processed
//! through. What it says comes from the consumers' own heartbeats; the
//! origin decides what to keep with it
//! ([`StreamLog::enforce`](super::log::StreamLog::enforce)) and when to
//! forget one.

use fjall::{PartitionCreateOptions, PartitionHandle};

use super::data_dir::{corrupt, DataDir};
use super::StoreError;

/// One durable consumer of this peer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// The id of the peer it runs on.
    pub member: u64,
    /// Its durable name.
    pub name: String,
    /// Processed everything of this stream through this sequence number.
    pub seq: u64,
}

/// See the module documentation.
pub struct Readers {
    partition: PartitionHandle,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readers")
    }
}

fn key(member: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

impl Readers {
    /// Opens the readers of `dir` and reads them all.
    pub fn open(dir: &DataDir) -> Result<(Readers, Vec<Reader>), StoreError> {
        let partition = dir
            .keyspace()
            .open_partition("readers", PartitionCreateOptions::default())
            .map_err(|e| corrupt(dir.path(), format!("cannot open the readers: {e}")))?;
        let mut out = Vec::new();
        for entry in partition.iter() {
            let (k, v) =
                entry.map_err(|e| corrupt(dir.path(), format!("cannot read a reader: {e}")))?;
            let name = k.get(8..).map(|n| std::str::from_utf8(n));
            match (name, <[u8; 8]>::try_from(&*v)) {
                (Some(Ok(name)), Ok(seq)) if !name.is_empty() => out.push(Reader {
                    member: u64::from_be_bytes(k[..8].try_into().expect("8")),
                    name: name.to_owned(),
                    seq: u64::from_be_bytes(seq),
                }),
                _ => return Err(corrupt(dir.path(), "a reader is malformed".into())),
            }
        }
        Ok((Readers { partition }, out))
    }

    /// Records `changed` and forgets `removed` (member, name), in one write.
    pub fn write(
        &self,
        dir: &DataDir,
        changed: &[Reader],
        removed: &[(u64, String)],
    ) -> Result<(), StoreError> {
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut batch = dir.keyspace().batch();
        for r in changed {
            batch.insert(&self.partition, key(r.member, &r.name), r.seq.to_be_bytes());
        }
        for (member, name) in removed {
            batch.remove(&self.partition, key(*member, name));
        }
        batch.commit().map_err(|e| dir.error("record readers", e))?;
        dir.persist("record readers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::{Fsync, Identity};

    #[test]
    fn readers_survive_a_reopen() {
        let path = tempfile::tempdir().unwrap();
        let ident = || Identity { id: 1, stream: 2 };
        let a = Reader {
            member: 5,
            name: "invoicing".into(),
            seq: 7,
        };
        let b = Reader {
            name: "audit".into(),
            ..a.clone()
        };
        {
            let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
            let (r, none) = Readers::open(&dir).unwrap();
            assert!(none.is_empty());
            r.write(&dir, &[a.clone(), b], &[]).unwrap();
            let a2 = Reader {
                seq: 9,
                ..a.clone()
            };
            r.write(&dir, &[a2], &[(5, "audit".into())]).unwrap();
        }
        let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
        let (_, got) = Readers::open(&dir).unwrap();
        assert_eq!(got, vec![Reader { seq: 9, ..a }]);
    }
}
