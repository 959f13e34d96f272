//! Repair messages: a receiver's NAK and the origin's answer (req0 → rep0).
//!
//! Owns: the [`Nak`] and [`Repair`] bodies, their frame kinds and bounds.
//! No sockets, no clock. See `docs/WIRE.md`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::frame::{self, DecodeError};
use crate::wire::id::PeerId;

/// Frame kind of a NAK (receiver → origin's repair endpoint).
pub const KIND_NAK: u8 = 3;
/// Frame kind of a repair answer (origin → receiver).
pub const KIND_REPAIR: u8 = 4;
/// Frame kind of an ack sent straight to an origin's repair endpoint.
pub const KIND_ACK: u8 = 6;
/// Most ranges in one NAK or one answer's `gone` list.
pub const MAX_RANGES: usize = 64;

/// "Send me these sequence numbers again."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nak {
    /// The origin asked (must be the peer receiving the NAK).
    pub origin: PeerId,
    /// The origin incarnation the ranges belong to.
    pub incarnation: u64,
    /// Inclusive `(first, last)` ranges, ascending.
    pub ranges: Vec<(u64, u64)>,
    /// The member asking.
    pub member: PeerId,
    /// A durable consumer coming back: by its own record (its committed
    /// position) it is owed this origin's events from this sequence number
    /// on, so the origin sends what is asked for from here even if it was
    /// published before the origin counted the asker as a member. 0 (the
    /// default, not written): no such record. Optional on the wire.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resume_from: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The origin's answer to a [`Nak`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// The answering origin.
    pub origin: PeerId,
    /// Its current incarnation; differs from the NAK's if it restarted.
    pub incarnation: u64,
    /// The last sequence number it has published.
    pub last_seq: u64,
    /// Retained event frames, each a complete kind-0 frame, ascending.
    pub frames: Vec<Bytes>,
    /// Ranges asked for that are no longer retained: lost for good.
    pub gone: Vec<(u64, u64)>,
    /// The first sequence number the asking member is owed: the origin
    /// became aware of it as a member after publishing `owed_from - 1`.
    /// Numbers below were published before it joined: not owed, not lost.
    pub owed_from: u64,
    /// For a member that restarted (or came back after failing): what it is
    /// sent up to this sequence number may already have reached its earlier
    /// life, so its receiver marks those deliveries redelivered (0: none).
    /// Optional on the wire.
    #[serde(default)]
    pub redelivered_through: u64,
}

/// "I, `member`, have received everything `origin` published in
/// `incarnation` through `seq`": the heartbeat ack, sent at once to the
/// origin's repair endpoint when a receiver has moved far enough ahead, so a
/// busy origin can free its buffer without waiting for the next heartbeat.
/// The origin answers with an empty [`Repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectAck {
    /// The acknowledging member.
    pub member: PeerId,
    /// The origin acknowledged.
    pub origin: PeerId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Received through this sequence number.
    pub seq: u64,
}

impl DirectAck {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(40);
        frame::encode_into(&mut buf, KIND_ACK, self);
        buf
    }

    /// Decodes an ack frame. Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        frame::decode(bytes, max_size, KIND_ACK)
    }
}

/// What arrives on a repair endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairRequest {
    /// Send these again.
    Nak(Nak),
    /// Free what I have.
    Ack(DirectAck),
}

impl RepairRequest {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RepairRequest::Nak(n) => n.encode(),
            RepairRequest::Ack(a) => a.encode(),
        }
    }

    /// Decodes a NAK or an ack frame. Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        match frame::read_header(bytes, max_size)?.0 {
            KIND_ACK => DirectAck::decode(bytes, max_size).map(RepairRequest::Ack),
            _ => Nak::decode(bytes, max_size).map(RepairRequest::Nak),
        }
    }
}

fn check_ranges(ranges: &[(u64, u64)]) -> Result<(), DecodeError> {
    if ranges.len() > MAX_RANGES {
        return Err(DecodeError::Malformed(format!(
            "{} ranges, at most {MAX_RANGES}",
            ranges.len()
        )));
    }
    if ranges.iter().any(|(a, b)| a > b || *a == 0) {
        return Err(DecodeError::Malformed(
            "range with first > last or seq 0".into(),
        ));
    }
    Ok(())
}

impl Nak {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32 + 20 * self.ranges.len());
        frame::encode_into(&mut buf, KIND_NAK, self);
        buf
    }

    /// Decodes and checks a NAK frame. Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        let n: Nak = frame::decode(bytes, max_size, KIND_NAK)?;
        check_ranges(&n.ranges)?;
        Ok(n)
    }
}

impl Repair {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.frames.iter().map(|f| f.len() + 5).sum();
        let mut buf = Vec::with_capacity(64 + size);
        frame::encode_into(&mut buf, KIND_REPAIR, self);
        buf
    }

    /// Decodes and checks a repair frame (the inner frames are decoded by
    /// the receiver, each on its own). Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        let r: Repair = frame::decode(bytes, max_size, KIND_REPAIR)?;
        check_ranges(&r.gone)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_bounds() {
        let n = Nak {
            origin: PeerId(7),
            incarnation: 3,
            ranges: vec![(1, 4), (9, 9)],
            member: PeerId(2),
            resume_from: 0,
        };
        assert_eq!(Nak::decode(&n.encode(), 1 << 20).unwrap(), n);
        let r = Repair {
            origin: PeerId(7),
            incarnation: 3,
            last_seq: 12,
            frames: vec![Bytes::from_static(b"\x93\x01\x00")],
            gone: vec![(1, 2)],
            owed_from: 1,
            redelivered_through: 0,
        };
        assert_eq!(Repair::decode(&r.encode(), 1 << 20).unwrap(), r);
        let bad = Nak {
            ranges: vec![(5, 4)],
            ..n.clone()
        };
        assert!(Nak::decode(&bad.encode(), 1 << 20).is_err());
        let many = Nak {
            ranges: (1..=MAX_RANGES as u64 + 1).map(|i| (i, i)).collect(),
            ..n
        };
        assert!(Nak::decode(&many.encode(), 1 << 20).is_err());
        let a = DirectAck {
            member: PeerId(2),
            origin: PeerId(7),
            incarnation: 3,
            seq: 9,
        };
        assert_eq!(
            RepairRequest::decode(&a.encode(), 1 << 20).unwrap(),
            RepairRequest::Ack(a)
        );
        let n = Nak {
            origin: PeerId(7),
            incarnation: 3,
            ranges: vec![(1, 2)],
            member: PeerId(2),
            resume_from: 0,
        };
        assert_eq!(
            RepairRequest::decode(&n.encode(), 1 << 20).unwrap(),
            RepairRequest::Nak(n)
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Nak::decode(&bytes, usize::MAX);
            let _ = Repair::decode(&bytes, usize::MAX);
            let _ = RepairRequest::decode(&bytes, usize::MAX);
        }
    }
}
