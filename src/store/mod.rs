//! Durable state in a peer's data dir: the log of its own stream, what its
//! members acknowledged, the durable consumers and consumer groups of its
//! stream it remembers, and its own durable consumers' positions.
//!
//! Owns: the files under [`PeerBuilder::data_dir`](crate::PeerBuilder::data_dir):
//! the log's segment files ([`segment`], written once per batch) and the
//! crash-safe storage engine ([fjall], an LSM tree with a journal) that
//! keeps the rest. Every write here is synchronous and returns once the
//! files have it (and, as the [`Fsync`] policy says, once the disk has it);
//! the drivers decide when to write. Must not touch sockets, tokio or the
//! protocol cores: it stores bytes and numbers, never interprets a frame.
//!
//! fjall was chosen over redb by measuring this workload; the log then
//! left it for its own files (figures in `docs/ARCHITECTURE.md`).

pub mod data_dir;
pub mod groups;
pub mod log;
pub mod positions;
pub mod readers;
pub mod segment;
pub mod watermarks;

use std::path::PathBuf;

use thiserror::Error;

pub use data_dir::{DataDir, Fsync};
pub use log::StreamLog;

/// Why the data dir cannot be used or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another peer in this one) has the data dir open.
    #[error("data dir {path} is in use by another process (lock file {path}/LOCK is held); each peer needs its own data dir")]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// The directory holds something that is not a chorus data dir.
    #[error("{path} is not a chorus data dir: {reason}; give an empty or new directory")]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The data dir is a chorus data dir, but its contents do not add up.
    #[error("data dir {path} is damaged: {reason}; nothing was changed in it")]
    Corrupt {
        /// The data dir.
        path: PathBuf,
        /// What does not add up.
        reason: String,
    },
    /// The disk refused a write: full, read-only, or failing.
    #[error("data dir {path}: cannot {action}: {cause}")]
    Io {
        /// The data dir.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What the system or engine said.
        cause: String,
    },
}

impl StoreError {
    /// Whether the disk is full (a write failed with "no space left").
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { cause, .. } if cause.contains("No space left")
            || cause.contains("StorageFull") || cause.contains("os error 28"))
    }
}
