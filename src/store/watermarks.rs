//! What each member acknowledged of this peer's stream, kept across the
//! peer's restarts, so that a restarted durable publisher still knows what
//! every member it had is owed.
//!
//! Owns: the `watermarks` partition: member id → (the member's incarnation
//! when it acknowledged, the sequence number it acknowledged through).
//! Written as durably as the log (the data dir's fsync policy), when the
//! members change and about once a second: a member missing here after a
//! crash would be taken for a new one, and skip what it missed as
//! "published before it joined". A watermark older than the member's last
//! ack only makes the publisher send some events again, which the
//! receivers deduplicate.

use fjall::{PartitionCreateOptions, PartitionHandle};

use super::data_dir::{corrupt, DataDir};
use super::StoreError;

/// One member's acknowledgement of this peer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The member's id.
    pub member: u64,
    /// Its incarnation when it acknowledged.
    pub incarnation: u64,
    /// Through which sequence number.
    pub seq: u64,
}

/// See the module documentation.
pub struct Watermarks {
    partition: PartitionHandle,
}

impl std::fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watermarks")
    }
}

impl Watermarks {
    /// Opens the watermarks of `dir` and reads them all.
    pub fn open(dir: &DataDir) -> Result<(Watermarks, Vec<Watermark>), StoreError> {
        let partition = dir
            .keyspace()
            .open_partition("watermarks", PartitionCreateOptions::default())
            .map_err(|e| corrupt(dir.path(), format!("cannot open the watermarks: {e}")))?;
        let mut out = Vec::new();
        for entry in partition.iter() {
            let (k, v) =
                entry.map_err(|e| corrupt(dir.path(), format!("cannot read a watermark: {e}")))?;
            match (<[u8; 8]>::try_from(&*k), v.len()) {
                (Ok(member), 16) => out.push(Watermark {
                    member: u64::from_be_bytes(member),
                    incarnation: u64::from_be_bytes(v[..8].try_into().expect("8")),
                    seq: u64::from_be_bytes(v[8..].try_into().expect("8")),
                }),
                _ => return Err(corrupt(dir.path(), "a watermark is malformed".into())),
            }
        }
        Ok((Watermarks { partition }, out))
    }

    /// Records `changed` and forgets `removed`, in one write.
    pub fn write(
        &self,
        dir: &DataDir,
        changed: &[Watermark],
        removed: &[u64],
    ) -> Result<(), StoreError> {
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut batch = dir.keyspace().batch();
        for w in changed {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&w.incarnation.to_be_bytes());
            v[8..].copy_from_slice(&w.seq.to_be_bytes());
            batch.insert(&self.partition, w.member.to_be_bytes(), v);
        }
        for member in removed {
            batch.remove(&self.partition, member.to_be_bytes());
        }
        batch
            .commit()
            .map_err(|e| dir.error("record watermarks", e))?;
        dir.persist("record watermarks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::{Fsync, Identity};

    #[test]
    fn watermarks_survive_a_reopen() {
        let path = std::env::temp_dir().join(format!("chorus-wm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let ident = || Identity { id: 1, stream: 2 };
        {
            let dir = DataDir::open(&path, Fsync::OsBuffered, ident).unwrap();
            let (w, none) = Watermarks::open(&dir).unwrap();
            assert!(none.is_empty());
            let a = Watermark {
                member: 5,
                incarnation: 6,
                seq: 7,
            };
            let b = Watermark {
                member: 8,
                incarnation: 9,
                seq: 10,
            };
            w.write(&dir, &[a, b], &[]).unwrap();
            w.write(&dir, &[Watermark { seq: 11, ..a }], &[8]).unwrap();
        }
        let dir = DataDir::open(&path, Fsync::OsBuffered, ident).unwrap();
        let (_, got) = Watermarks::open(&dir).unwrap();
        assert_eq!(
            got,
            vec![Watermark {
                member: 5,
                incarnation: 6,
                seq: 11
            }]
        );
        drop(dir);
        std::fs::remove_dir_all(&path).unwrap();
    }
}
