//! Durable consumers' positions: for each durable name, where it started
//! and, per origin stream, the sequence number through which its handler
//! has processed everything.
//!
//! Owns: the `consumers` partition (name → when the consumer was first
//! created and the earliest publish time it wants from streams it has no
//! position in) and the `positions` partition ((name, origin, stream
//! epoch) → processed through). Committed as durably as the log (the data
//! dir's fsync policy).

use std::collections::BTreeMap;

use fjall::{PartitionCreateOptions, PartitionHandle};
use parking_lot::Mutex;

use super::data_dir::{corrupt, DataDir};
use super::StoreError;

pub use crate::wire::heartbeat::MAX_DURABLE_NAME;

/// What is kept about one durable consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// When it was first created, µs since the Unix epoch.
    pub created_us: u64,
    /// From a stream it has no position in, it wants the events published
    /// at or after this time (µs since the epoch; 0: all that is kept).
    pub not_before_us: u64,
    /// `(origin, stream epoch, processed through)`.
    pub positions: Vec<(u64, u64, u64)>,
    /// Its last life ended with a final commit ([`Positions::close`]):
    /// nothing it handled is uncommitted.
    pub clean: bool,
}

/// Every consumer's positions as committed: name → (origin, stream
/// epoch) → processed through.
type Committed = BTreeMap<String, BTreeMap<(u64, u64), u64>>;

/// See the module documentation.
pub struct Positions {
    consumers: PartitionHandle,
    positions: PartitionHandle,
    /// What is committed, kept in memory too: the peer's heartbeats
    /// announce it to the origins ([`Positions::announced`]).
    committed: Mutex<Committed>,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Positions")
    }
}

fn name_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(name.len() as u8);
    k.extend_from_slice(name.as_bytes());
    k
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

impl Positions {
    /// Opens the positions of `dir`.
    pub fn open(dir: &DataDir) -> Result<Positions, StoreError> {
        let open = |name: &str| {
            dir.keyspace()
                .open_partition(name, PartitionCreateOptions::default())
                .map_err(|e| corrupt(dir.path(), format!("cannot open the {name}: {e}")))
        };
        let positions = open("positions")?;
        let mut committed = Committed::new();
        for entry in positions.iter() {
            let (k, v) =
                entry.map_err(|e| corrupt(dir.path(), format!("cannot read a position: {e}")))?;
            let len = usize::from(k.first().copied().unwrap_or(0));
            let name = k.get(1..1 + len).map(std::str::from_utf8);
            match (
                name,
                u64_at(&k, 1 + len),
                u64_at(&k, 9 + len),
                u64_at(&v, 0),
            ) {
                (Some(Ok(name)), Some(origin), Some(epoch), Some(seq))
                    if len > 0 && k.len() == 17 + len =>
                {
                    committed
                        .entry(name.to_owned())
                        .or_default()
                        .insert((origin, epoch), seq);
                }
                _ => return Err(corrupt(dir.path(), "a position is malformed".into())),
            }
        }
        Ok(Positions {
            consumers: open("consumers")?,
            positions,
            committed: Mutex::new(committed),
        })
    }

    /// Up to `max` committed positions `(name, origin, stream epoch,
    /// processed through)` of the streams `wanted` picks, of every
    /// durable consumer in the data dir (subscribed now or not).
    pub fn announced(
        &self,
        wanted: impl Fn(u64, u64) -> bool,
        max: usize,
    ) -> Vec<(String, u64, u64, u64)> {
        let committed = self.committed.lock();
        committed
            .iter()
            .flat_map(|(name, streams)| {
                streams
                    .iter()
                    .filter(|((o, e), _)| wanted(*o, *e))
                    .map(move |(&(o, e), &seq)| (name.clone(), o, e, seq))
            })
            .take(max)
            .collect()
    }

    /// The durable consumer `name`, created (with `created_us` and
    /// `not_before_us`) if it does not exist yet. The flag says whether it
    /// was created now. It is marked as running (not clean) from now on.
    pub fn load_or_create(
        &self,
        dir: &DataDir,
        name: &str,
        created_us: u64,
        not_before_us: u64,
    ) -> Result<(Consumer, bool), StoreError> {
        assert!(name.len() <= MAX_DURABLE_NAME, "checked by the caller");
        let damaged =
            |what: &str| corrupt(dir.path(), format!("durable consumer {name:?}: {what}"));
        let key = name_key(name);
        let record = self
            .consumers
            .get(&key)
            .map_err(|e| damaged(&format!("cannot read it: {e}")))?;
        let (created_us, not_before_us, clean, fresh) = match record {
            Some(v) => match (u64_at(&v, 0), u64_at(&v, 8), v.get(16)) {
                (Some(c), Some(n), Some(&clean)) if v.len() == 17 => (c, n, clean == 1, false),
                _ => return Err(damaged("its record is malformed")),
            },
            None => (created_us, not_before_us, true, true),
        };
        self.write_record(dir, name, created_us, not_before_us, false)?;
        let mut positions = Vec::new();
        for entry in self.positions.prefix(&key) {
            let (k, v) = entry.map_err(|e| damaged(&format!("cannot read a position: {e}")))?;
            match (
                u64_at(&k, key.len()),
                u64_at(&k, key.len() + 8),
                u64_at(&v, 0),
            ) {
                (Some(origin), Some(epoch), Some(seq)) if k.len() == key.len() + 16 => {
                    positions.push((origin, epoch, seq))
                }
                _ => return Err(damaged("a position is malformed")),
            }
        }
        Ok((
            Consumer {
                created_us,
                not_before_us,
                positions,
                clean,
            },
            fresh,
        ))
    }

    fn write_record(
        &self,
        dir: &DataDir,
        name: &str,
        created_us: u64,
        not_before_us: u64,
        clean: bool,
    ) -> Result<(), StoreError> {
        let mut v = [0u8; 17];
        v[..8].copy_from_slice(&created_us.to_be_bytes());
        v[8..16].copy_from_slice(&not_before_us.to_be_bytes());
        v[16] = u8::from(clean);
        self.consumers
            .insert(name_key(name), v)
            .map_err(|e| dir.error("record a durable consumer", e))?;
        dir.persist("record a durable consumer")
    }

    /// Marks `name` as stopped cleanly: its last commit covers all it handled.
    pub fn close(&self, dir: &DataDir, name: &str) -> Result<(), StoreError> {
        let key = name_key(name);
        let record = self
            .consumers
            .get(&key)
            .map_err(|e| dir.error("read a durable consumer", e))?;
        match record.as_deref().map(|v| (u64_at(v, 0), u64_at(v, 8))) {
            Some((Some(c), Some(n))) => self.write_record(dir, name, c, n, true),
            _ => Ok(()),
        }
    }

    /// Records `(origin, stream epoch, processed through)` for `name`, in
    /// one write.
    pub fn commit(
        &self,
        dir: &DataDir,
        name: &str,
        positions: &[(u64, u64, u64)],
    ) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let prefix = name_key(name);
        let mut batch = dir.keyspace().batch();
        for (origin, epoch, seq) in positions {
            let mut k = prefix.clone();
            k.extend_from_slice(&origin.to_be_bytes());
            k.extend_from_slice(&epoch.to_be_bytes());
            batch.insert(&self.positions, k, seq.to_be_bytes());
        }
        batch
            .commit()
            .map_err(|e| dir.error("commit a consumer position", e))?;
        dir.persist("commit a consumer position")?;
        let mut committed = self.committed.lock();
        let streams = committed.entry(name.to_owned()).or_default();
        for &(origin, epoch, seq) in positions {
            streams.insert((origin, epoch), seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::{Fsync, Identity};

    #[test]
    fn positions_survive_a_reopen_per_name() {
        let path = tempfile::tempdir().unwrap();
        let ident = || Identity { id: 1, stream: 2 };
        {
            let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
            let p = Positions::open(&dir).unwrap();
            let (c, fresh) = p.load_or_create(&dir, "invoicing", 100, 0).unwrap();
            assert!(fresh && c.positions.is_empty());
            p.commit(&dir, "invoicing", &[(5, 6, 7), (8, 9, 10)])
                .unwrap();
            p.commit(&dir, "invoicing", &[(5, 6, 12)]).unwrap();
            p.load_or_create(&dir, "invoicing-eu", 200, 150).unwrap();
            p.commit(&dir, "invoicing-eu", &[(5, 6, 1)]).unwrap();
        }
        let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
        let p = Positions::open(&dir).unwrap();
        let (c, fresh) = p.load_or_create(&dir, "invoicing", 999, 999).unwrap();
        assert!(!fresh && !c.clean, "it never closed");
        p.close(&dir, "invoicing").unwrap();
        let (c, _) = p.load_or_create(&dir, "invoicing", 999, 999).unwrap();
        assert!(c.clean);
        let (c, _) = p.load_or_create(&dir, "invoicing", 999, 999).unwrap();
        assert!(!c.clean, "running again");
        assert_eq!((c.created_us, c.not_before_us), (100, 0));
        assert_eq!(c.positions, vec![(5, 6, 12), (8, 9, 10)]);
        let (eu, _) = p.load_or_create(&dir, "invoicing-eu", 0, 0).unwrap();
        assert_eq!((eu.not_before_us, eu.positions), (150, vec![(5, 6, 1)]));
        // What the heartbeats announce, loaded at open and kept up to date.
        let all = p.announced(|_, _| true, 10);
        assert_eq!(
            all,
            vec![
                ("invoicing".to_owned(), 5, 6, 12),
                ("invoicing".to_owned(), 8, 9, 10),
                ("invoicing-eu".to_owned(), 5, 6, 1)
            ]
        );
        p.commit(&dir, "invoicing-eu", &[(5, 6, 3)]).unwrap();
        assert_eq!(
            p.announced(|o, _| o == 5, 1),
            vec![("invoicing".to_owned(), 5, 6, 12)]
        );
        assert_eq!(p.announced(|o, _| o == 5, 10)[1].3, 3);
    }
}
