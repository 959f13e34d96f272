//! A peer's data dir: the lock that keeps it to one process, the marker
//! that tells it from any other directory, the storage engine, and the
//! peer's durable identity (id and stream epoch).
//!
//! Layout: `<dir>/LOCK` (held with an OS file lock while a peer uses the
//! dir; the OS releases it when the process dies, even by `kill -9`),
//! `<dir>/CHORUS` (the marker: one line naming the format), `<dir>/db/`
//! (the engine's files). A directory with other files and no marker is
//! refused, never emptied.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::StoreError;

/// The marker file's content: format 2 of the data dir (format 1 kept
/// the log in the storage engine).
const MARKER: &str = "chorus data dir, format 2\n";
const MARKER_FILE: &str = "CHORUS";
const TMP_MARKER_FILE: &str = "CHORUS.tmp";
const LOCK_FILE: &str = "LOCK";

/// Free space a data dir's file system must keep: a write is refused
/// below it (the storage engine needs room to flush and compact).
pub const RESERVE_BYTES: u64 = 64 << 20;

/// Free space above which the file system is asked again only every
/// [`STAT_EVERY`] (below it, before every write): another process would
/// have to write this much less the reserve within that time to get the
/// engine past the reserve.
const STAT_ABOVE: u64 = 4 * RESERVE_BYTES;
/// How long a reading of the free space is trusted while it is high, µs.
const STAT_EVERY_US: u64 = 50_000;

/// When a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every batch of events is fsynced (`fdatasync`) before it is sent:
    /// what was sent survives a process crash and a power loss or kernel
    /// crash.
    #[default]
    EveryBatch,
    /// Every batch is handed to the OS (written, not fsynced) before it is
    /// sent: what was sent survives a process crash (`kill -9`), but a power
    /// loss or kernel crash can lose the last seconds the OS had not
    /// written out yet.
    OsBuffered,
}

/// The durable identity of a peer: its id and its stream's epoch (the
/// stream's incarnation, fixed when the data dir was created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The peer's id.
    pub id: u64,
    /// The epoch of its stream.
    pub stream: u64,
}

/// An open, locked data dir. See the module documentation.
pub struct DataDir {
    path: PathBuf,
    keyspace: Keyspace,
    meta: PartitionHandle,
    fsync: Fsync,
    identity: Identity,
    /// The last reading of the free space: when (µs since the Unix epoch),
    /// and the bytes free then less what was written since.
    free: parking_lot::Mutex<Option<(u64, u64)>>,
    /// Held for the life of the value: the OS lock on `LOCK`.
    _lock: File,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .finish()
    }
}

impl DataDir {
    /// Opens (or creates) the data dir at `path`. A new one gets the
    /// identity `new_identity` returns; an existing one keeps its own.
    pub fn open(
        path: &Path,
        fsync: Fsync,
        new_identity: impl FnOnce() -> Identity,
    ) -> Result<DataDir, StoreError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |e: std::io::Error| StoreError::Io {
                path,
                action,
                cause: e.to_string(),
            }
        };
        fs::create_dir_all(path).map_err(io("create the directory"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io("open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("lock the lock file")(e)),
        }
        // A new dir gets its marker last, once its identity is written; until
        // then the marker waits as `CHORUS.tmp`, so an interrupted creation
        // is taken up again and never mistaken for a foreign directory.
        let fresh = check_marker(path)?;
        if fresh {
            write_tmp_marker(path).map_err(io("write the marker file"))?;
        }
        let keyspace = fjall::Config::new(path.join("db"))
            .cache_size(4 << 20)
            .open()
            .map_err(|e| corrupt(path, format!("the storage engine cannot open it: {e}")))?;
        let meta = keyspace
            .open_partition("meta", PartitionCreateOptions::default())
            .map_err(|e| corrupt(path, format!("no meta partition: {e}")))?;
        let mut dir = DataDir {
            path: path.to_path_buf(),
            keyspace,
            meta,
            fsync,
            identity: Identity { id: 0, stream: 0 },
            free: parking_lot::Mutex::new(None),
            _lock: lock,
        };
        dir.identity = match (dir.get_u64("id")?, dir.get_u64("stream")?) {
            (Some(id), Some(stream)) if id != 0 && stream != 0 => Identity { id, stream },
            (None, None) if fresh => {
                let identity = new_identity();
                let mut batch = dir.keyspace.batch();
                batch.insert(&dir.meta, "id", identity.id.to_be_bytes());
                batch.insert(&dir.meta, "stream", identity.stream.to_be_bytes());
                batch
                    .commit()
                    .map_err(|e| dir.error("write the identity", e))?;
                dir.keyspace
                    .persist(PersistMode::SyncAll)
                    .map_err(|e| dir.error("write the identity", e))?;
                identity
            }
            (None, None) => return Err(corrupt(path, "its identity is missing".into())),
            _ => return Err(corrupt(path, "its identity is incomplete".into())),
        };
        if fresh {
            commit_marker(path).map_err(io("write the marker file"))?;
        }
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The peer's durable identity.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The fsync policy.
    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    pub(super) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    pub(super) fn meta(&self) -> &PartitionHandle {
        &self.meta
    }

    /// Fails with a "No space left on device" error while the file system
    /// of the data dir has less than [`RESERVE_BYTES`] free: the engine is
    /// never made to run out of space mid-write (it would refuse every
    /// write after that until reopened), so a full disk only holds writes
    /// back until there is room again. `bytes` is what the caller is about
    /// to write, at `now_us` (µs since the Unix epoch). The file system is
    /// asked before every write once it has less than 4 × the reserve
    /// free, and every 50 ms above that (a `statvfs` per batch is a good
    /// share of a small batch's cost).
    pub fn check_space(&self, bytes: u64, now_us: u64) -> Result<(), StoreError> {
        let mut last = self.free.lock();
        let fresh = |at: u64| now_us >= at && now_us - at < STAT_EVERY_US;
        let free = match *last {
            Some((at, free)) if fresh(at) && free >= STAT_ABOVE => free,
            _ => {
                let Ok(st) = rustix::fs::statvfs(&self.path) else {
                    *last = None;
                    return Ok(()); // cannot tell: let the write say
                };
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                *last = Some((now_us, free));
                free
            }
        };
        if free < RESERVE_BYTES {
            *last = None;
            return Err(StoreError::Io {
                path: self.path.clone(),
                action: "append to the log",
                cause: format!(
                    "No space left on device: {free} bytes free, chorus keeps {RESERVE_BYTES} in reserve for the storage engine"
                ),
            });
        }
        if let Some((_, f)) = last.as_mut() {
            *f = f.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Makes what was committed as durable as the policy says.
    pub(super) fn persist(&self, action: &'static str) -> Result<(), StoreError> {
        let mode = match self.fsync {
            Fsync::EveryBatch => PersistMode::SyncData,
            Fsync::OsBuffered => PersistMode::Buffer,
        };
        self.keyspace
            .persist(mode)
            .map_err(|e| self.error(action, e))
    }

    /// An engine error as a [`StoreError`].
    pub(super) fn error(&self, action: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            action,
            cause: e.to_string(),
        }
    }

    fn get_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.meta.get(key) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => match <[u8; 8]>::try_from(&*v) {
                Ok(b) => Ok(Some(u64::from_be_bytes(b))),
                Err(_) => Err(corrupt(&self.path, format!("meta key {key} is malformed"))),
            },
            Err(e) => Err(corrupt(
                &self.path,
                format!("cannot read meta key {key}: {e}"),
            )),
        }
    }
}

pub(super) fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// True if the directory is new (nothing but the lock file); an error if it
/// holds anything but a chorus data dir of this format.
fn check_marker(path: &Path) -> Result<bool, StoreError> {
    let foreign = |reason: String| StoreError::Foreign {
        path: path.to_path_buf(),
        reason,
    };
    match fs::read_to_string(path.join(MARKER_FILE)) {
        Ok(text) if text == MARKER => Ok(false),
        Ok(text) => Err(foreign(format!(
            "its {MARKER_FILE} file says {:?}, expected {:?}",
            text.trim_end(),
            MARKER.trim_end()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // An interrupted creation left its engine files beside `CHORUS.tmp`.
            let resumed = path.join(TMP_MARKER_FILE).exists();
            let others: Vec<String> = fs::read_dir(path)
                .map_err(|e| foreign(format!("cannot list it: {e}")))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != LOCK_FILE && name != TMP_MARKER_FILE)
                .filter(|name| !(resumed && name == "db"))
                .collect();
            if others.is_empty() {
                Ok(true)
            } else {
                Err(foreign(format!(
                    "it holds {} and no {MARKER_FILE} marker",
                    others.join(", ")
                )))
            }
        }
        Err(e) => Err(foreign(format!("cannot read its {MARKER_FILE} file: {e}"))),
    }
}

/// Writes the marker of a dir being created under its temporary name.
fn write_tmp_marker(path: &Path) -> std::io::Result<()> {
    let mut f = File::create(path.join(TMP_MARKER_FILE))?;
    f.write_all(MARKER.as_bytes())?;
    f.sync_all()
}

/// Gives the marker its name (atomically), once the dir is complete.
fn commit_marker(path: &Path) -> std::io::Result<()> {
    fs::rename(path.join(TMP_MARKER_FILE), path.join(MARKER_FILE))?;
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        Identity { id: 7, stream: 9 }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chorus-dd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn identity_is_kept_across_opens() {
        let dir = tmp("ident");
        let first = DataDir::open(&dir, Fsync::OsBuffered, ident).unwrap();
        assert_eq!(first.identity(), ident());
        drop(first);
        let again =
            DataDir::open(&dir, Fsync::OsBuffered, || Identity { id: 1, stream: 1 }).unwrap();
        assert_eq!(again.identity(), ident());
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_it() {
        let dir = tmp("lock");
        let first = DataDir::open(&dir, Fsync::OsBuffered, ident).unwrap();
        let second = DataDir::open(&dir, Fsync::OsBuffered, ident).unwrap_err();
        assert!(matches!(second, StoreError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("in use by another process"));
        drop(first);
        DataDir::open(&dir, Fsync::OsBuffered, ident).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let dir = tmp("foreign");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("thesis.tex"), "precious").unwrap();
        let e = DataDir::open(&dir, Fsync::OsBuffered, ident).unwrap_err();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("thesis.tex"), "{e}");
        assert_eq!(
            fs::read_to_string(dir.join("thesis.tex")).unwrap(),
            "precious"
        );

        let other = tmp("foreign-version");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(MARKER_FILE), "chorus data dir, format 99\n").unwrap();
        let e = DataDir::open(&other, Fsync::OsBuffered, ident).unwrap_err();
        assert!(e.to_string().contains("format 99"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&other).unwrap();
    }

    #[test]
    fn a_damaged_engine_is_an_error_not_an_empty_dir() {
        let dir = tmp("damaged");
        drop(DataDir::open(&dir, Fsync::EveryBatch, ident).unwrap());
        // Replace the engine's directory with garbage.
        fs::remove_dir_all(dir.join("db")).unwrap();
        fs::write(dir.join("db"), "not a directory").unwrap();
        let e = DataDir::open(&dir, Fsync::EveryBatch, ident).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(
            fs::read_to_string(dir.join("db")).unwrap(),
            "not a directory"
        );
        // An engine emptied behind its back: its identity is missing.
        fs::remove_file(dir.join("db")).unwrap();
        let e = DataDir::open(&dir, Fsync::EveryBatch, ident).unwrap_err();
        assert!(e.to_string().contains("identity is missing"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_creation_is_taken_up_again() {
        let dir = tmp("interrupted");
        drop(DataDir::open(&dir, Fsync::EveryBatch, ident).unwrap());
        // As if the process died before the marker got its name.
        fs::rename(dir.join(MARKER_FILE), dir.join(TMP_MARKER_FILE)).unwrap();
        let again =
            DataDir::open(&dir, Fsync::EveryBatch, || Identity { id: 1, stream: 1 }).unwrap();
        assert_eq!(again.identity(), ident());
        assert!(dir.join(MARKER_FILE).exists());
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }
}
