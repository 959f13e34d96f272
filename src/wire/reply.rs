//! Request/reply on the wire: a request is an event with two headers, its
//! reply an event on the requester's own reserved topic.
//!
//! Owns: the headers ([`REPLY_TO_HEADER`], [`REQUEST_HEADER`],
//! [`REPLY_FOR_HEADER`]), the reply topic of a peer ([`reply_topic`]) and
//! the reply payload ([`ReplyBody`]). See `docs/WIRE.md`, "Request/reply".

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::frame::DecodeError;
use crate::wire::group::RESERVED_PREFIX;
use crate::wire::id::PeerId;

/// Header of a request: the topic its reply goes to.
pub const REPLY_TO_HEADER: &str = "chorus-reply-to";
/// Header of a request: its id, unique per requester.
pub const REQUEST_HEADER: &str = "chorus-request";
/// Header of a reply: the id of the request it answers.
pub const REPLY_FOR_HEADER: &str = "chorus-reply-for";

/// The topic replies to `peer`'s requests are published on.
pub fn reply_topic(peer: PeerId) -> String {
    format!("{RESERVED_PREFIX}reply.{peer}")
}

/// A reply's payload: the responder's answer, or its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The handler's answer (MessagePack for typed requests).
    Ok(Bytes),
    /// The handler failed: its error, as text.
    Err(String),
}

impl ReplyBody {
    /// Encodes it as a reply's payload.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a reply encodes")
    }

    /// Decodes a reply's payload. Never panics.
    pub fn decode(payload: &[u8]) -> Result<ReplyBody, DecodeError> {
        rmp_serde::from_slice(payload).map_err(DecodeError::malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replies_round_trip() {
        for r in [
            ReplyBody::Ok(Bytes::from_static(b"\x01")),
            ReplyBody::Err("no stock".into()),
        ] {
            assert_eq!(ReplyBody::decode(&r.encode()).unwrap(), r);
        }
        assert!(reply_topic(PeerId(1)).starts_with("$chorus.reply."));
        assert!(crate::wire::topic::validate_topic(&reply_topic(PeerId(u64::MAX))).is_ok());
    }

    proptest! {
        #[test]
        fn the_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = ReplyBody::decode(&bytes);
        }
    }
}
