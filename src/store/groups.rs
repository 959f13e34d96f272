//! The durable consumer groups of this peer's stream, as the origin
//! remembers them: kept across the origin's restarts, so that what a group
//! had not handled when the origin stopped is handed to its members again,
//! and the log keeps it for the group meanwhile (within retention).
//!
//! Owns: the `groups` partition: group name → (every event through this
//! sequence number done for the group, the patterns its members last had).
//! What it says comes from the origin's assigner; the origin decides when
//! to write and when to forget one.

use fjall::{PartitionCreateOptions, PartitionHandle};

use super::data_dir::{corrupt, DataDir};
use super::StoreError;

/// One durable group of this peer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's name.
    pub name: String,
    /// Everything of this stream through this sequence number is done for
    /// the group.
    pub through: u64,
    /// The patterns of its members, as last seen.
    pub patterns: Vec<String>,
}

/// See the module documentation.
pub struct Groups {
    partition: PartitionHandle,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Groups")
    }
}

impl Groups {
    /// Opens the groups of `dir` and reads them all.
    pub fn open(dir: &DataDir) -> Result<(Groups, Vec<GroupRecord>), StoreError> {
        let partition = dir
            .keyspace()
            .open_partition("groups", PartitionCreateOptions::default())
            .map_err(|e| corrupt(dir.path(), format!("cannot open the groups: {e}")))?;
        let mut out = Vec::new();
        for entry in partition.iter() {
            let (k, v) =
                entry.map_err(|e| corrupt(dir.path(), format!("cannot read a group: {e}")))?;
            let name = std::str::from_utf8(&k).ok().filter(|n| !n.is_empty());
            let value = rmp_serde::from_slice::<(u64, Vec<String>)>(&v);
            match (name, value) {
                (Some(name), Ok((through, patterns))) => out.push(GroupRecord {
                    name: name.to_owned(),
                    through,
                    patterns,
                }),
                _ => return Err(corrupt(dir.path(), "a group record is malformed".into())),
            }
        }
        Ok((Groups { partition }, out))
    }

    /// Records `changed` and forgets `removed`, in one write.
    pub fn write(
        &self,
        dir: &DataDir,
        changed: &[GroupRecord],
        removed: &[String],
    ) -> Result<(), StoreError> {
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut batch = dir.keyspace().batch();
        for g in changed {
            let value = rmp_serde::to_vec(&(g.through, &g.patterns)).expect("a record encodes");
            batch.insert(&self.partition, g.name.as_bytes(), value);
        }
        for name in removed {
            batch.remove(&self.partition, name.as_bytes());
        }
        batch.commit().map_err(|e| dir.error("record groups", e))?;
        dir.persist("record groups")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::{Fsync, Identity};

    #[test]
    fn groups_survive_a_reopen() {
        let path = tempfile::tempdir().unwrap();
        let ident = || Identity { id: 1, stream: 2 };
        let a = GroupRecord {
            name: "invoicing".into(),
            through: 7,
            patterns: vec!["bids.>".into()],
        };
        let b = GroupRecord {
            name: "audit".into(),
            ..a.clone()
        };
        {
            let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
            let (g, none) = Groups::open(&dir).unwrap();
            assert!(none.is_empty());
            g.write(&dir, &[a.clone(), b], &[]).unwrap();
            let a2 = GroupRecord {
                through: 9,
                ..a.clone()
            };
            g.write(&dir, &[a2], &["audit".into()]).unwrap();
        }
        let dir = DataDir::open(path.path(), Fsync::OsBuffered, ident).unwrap();
        let (_, got) = Groups::open(&dir).unwrap();
        assert_eq!(got, vec![GroupRecord { through: 9, ..a }]);
    }
}
