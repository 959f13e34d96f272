//! The one error type returned to callers of chorus.
//!
//! Owns: [`Error`] and the crate-wide [`Result`] alias. Errors caused by
//! *network* input are never returned here: they are counted in
//! [`Stats`](crate::Stats) and logged, because the caller cannot act on them.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::store::StoreError;

/// Shorthand for `std::result::Result<T, chorus::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a chorus call can fail with. Each message says what to change.
///
/// `Debug` prints the same sentence as `Display`, so a `main` that returns
/// `chorus::Result<()>` shows a readable error.
#[derive(Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic given to `publish` is not a valid concrete topic.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A pattern given to `subscribe` is not a valid topic pattern.
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A URL is malformed or uses a transport chorus does not support.
    #[error(
        "invalid URL {url:?}: {reason} (expected tcp://host:port, ipc:///path or inproc://name)"
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The value passed to `publish` could not be serialized to MessagePack.
    #[error("payload could not be serialized: {0}")]
    Serialize(String),
    /// The encoded message would exceed the configured maximum message size.
    #[error("message of up to {size} bytes exceeds the maximum message size of {max} bytes (see PeerBuilder::max_message_size)")]
    TooLarge {
        /// Worst-case encoded size of the message in bytes.
        size: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// A builder setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The transport refused an operation on a socket (listen, dial, option).
    #[error("transport error while trying to {action}: {cause}")]
    Transport {
        /// What chorus was doing.
        action: String,
        /// What the transport said.
        cause: TransportError,
    },
    /// The retransmit buffer is full of messages a live member has not
    /// acknowledged yet, and the peer was built with `Backpressure::FailFast`.
    #[error("publish buffer full: a live member has not acknowledged earlier messages yet; retry later or use Backpressure::Wait")]
    BufferFull,
    /// The data dir cannot be used (in use by another process, not a
    /// chorus data dir, damaged) or refused a write (e.g. the disk is full:
    /// [`StoreError::is_disk_full`]). While the log cannot be written,
    /// `publish` and `flush` fail with this error; nothing already in the
    /// log is lost, and publishing resumes once a write succeeds again.
    #[error("{0}")]
    Store(Arc<StoreError>),
    /// The peer was shut down; create a new one.
    #[error("the peer has been shut down")]
    Shutdown,
    /// A wait (e.g. [`Peer::wait_for_members`](crate::Peer::wait_for_members))
    /// ran out of time; says what was reached.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A request found no responder: no consumer group this peer knows of
    /// has a member serving its topic (servers are learned from their
    /// heartbeats, within a heartbeat round of their joining).
    #[error("no responder for a request on {topic:?}: no member of any group serves it (yet)")]
    NoResponder {
        /// The request's topic.
        topic: String,
    },

    /// The responder's handler failed; its error, as it said it.
    #[error("the responder to a request on {topic:?} failed: {message}")]
    Remote {
        /// The request's topic.
        topic: String,
        /// The responder's error.
        message: String,
    },

    /// The reply to a request did not decode (into the expected type).
    #[error("the reply to a request on {topic:?} did not decode: {reason}")]
    BadReply {
        /// The request's topic.
        topic: String,
        /// Why it did not decode.
        reason: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn transport(action: impl Into<String>, cause: nng::Error) -> Self {
        Error::Transport {
            action: action.into(),
            cause: TransportError(cause),
        }
    }
}

/// Why the transport (NNG) refused an operation. Opaque, so that the
/// transport's own error type is not part of chorus's API.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportError(nng::Error);

impl TransportError {
    /// The address to listen on is taken by another socket or process.
    pub fn is_address_in_use(&self) -> bool {
        self.0 == nng::Error::AddressInUse
    }

    /// The address cannot be used (unknown host, bad path, no permission).
    pub fn is_address_invalid(&self) -> bool {
        matches!(
            self.0,
            nng::Error::AddressInvalid | nng::Error::PermissionDenied
        )
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportError({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_reads_like_display() {
        let e = Error::InvalidUrl {
            url: "tcp://x".into(),
            reason: "missing :port".into(),
        };
        assert_eq!(format!("{e:?}"), e.to_string());
        let e = Error::transport("listen on tcp://127.0.0.1:1", nng::Error::AddressInUse);
        assert_eq!(
            format!("{e:?}"),
            "transport error while trying to listen on tcp://127.0.0.1:1: Address in use"
        );
        assert!(matches!(e, Error::Transport { cause, .. } if cause.is_address_in_use()));
    }
}
