//! Batches: several event frames sent as one NNG message.
//!
//! Owns: [`BatchWriter`], which coalesces already encoded event frames
//! into one batch frame without re-encoding them. The batch layout and its
//! decoder belong to the envelope ([`Envelope::decode_events`](crate::Envelope::decode_events)).

use crate::wire::envelope::{EVENT_HEADER, KIND_BATCH, KIND_EVENT};
use crate::wire::frame::WIRE_VERSION;

/// Coalesces encoded event frames into one batch message.
///
/// Each envelope is encoded once, as a complete event frame (what the
/// retransmit buffer keeps and repair answers carry); a batch reuses those
/// bytes without re-encoding or gathering them: `[1, 5, [envelope, …]]` is
/// written straight into the outgoing message, one copy per frame.
#[derive(Debug, Default)]
pub(crate) struct BatchWriter {
    frames: Vec<bytes::Bytes>,
    /// Envelope bytes staged (the frames without their headers).
    bodies: usize,
}

/// What one message of staged frames holds, for [`Staged::write_to`].
pub(crate) struct Staged<'a> {
    head: [u8; 8],
    head_len: usize,
    frames: &'a [bytes::Bytes],
    len: usize,
}

impl Staged<'_> {
    /// Bytes of the message.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes the message into `out`, which is [`len`](Self::len) bytes long.
    pub fn write_to(&self, out: &mut [u8]) {
        let mut put = |at: &mut usize, part: &[u8]| {
            out[*at..*at + part.len()].copy_from_slice(part);
            *at += part.len();
        };
        let mut at = 0;
        match self.frames {
            [one] => put(&mut at, one),
            many => {
                put(&mut at, &self.head[..self.head_len]);
                for f in many {
                    put(&mut at, &f[EVENT_HEADER..]);
                }
            }
        }
        debug_assert_eq!(at, out.len(), "the message is exactly len() bytes");
    }
}

impl BatchWriter {
    /// Envelopes staged.
    pub fn len(&self) -> u32 {
        self.frames.len() as u32
    }

    /// Bytes staged.
    pub fn bytes(&self) -> usize {
        self.bodies
    }

    /// Stages one complete event frame (as produced by [`Envelope::encode_into`]).
    pub fn push(&mut self, frame: &bytes::Bytes) {
        debug_assert!(
            frame.len() > EVENT_HEADER && frame[..EVENT_HEADER] == [0x93, WIRE_VERSION, KIND_EVENT]
        );
        self.bodies += frame.len() - EVENT_HEADER;
        self.frames.push(frame.clone());
    }

    /// Hands the staged envelopes to `write` as one message's content (a
    /// plain event frame when there is only one, else a batch header and
    /// the envelopes), so the caller copies them once, straight into its
    /// message; leaves the writer empty for reuse.
    pub fn finish<R>(&mut self, write: impl FnOnce(&Staged<'_>) -> R) -> Option<R> {
        if self.frames.is_empty() {
            return None;
        }
        let mut head = [0x93, WIRE_VERSION, KIND_BATCH, 0, 0, 0, 0, 0];
        let unused = {
            let mut rest = &mut head[3..];
            rmp::encode::write_array_len(&mut rest, self.len()).expect("5 bytes hold any length");
            rest.len()
        };
        let head_len = head.len() - unused;
        let len = match &self.frames[..] {
            [one] => one.len(),
            _ => head_len + self.bodies,
        };
        let out = write(&Staged {
            head,
            head_len,
            frames: &self.frames,
            len,
        });
        self.frames.clear();
        self.bodies = 0;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::{Envelope, Meta};
    use bytes::Bytes;

    fn concat(s: &Staged<'_>) -> Vec<u8> {
        let mut out = vec![0; s.len()];
        s.write_to(&mut out);
        out
    }

    fn sample() -> Envelope {
        Envelope {
            origin: crate::PeerId(7),
            incarnation: 2,
            seq: 1,
            topic: "orders.created".into(),
            timestamp_us: 1_700_000_000_000_000,
            payload: Bytes::from_static(b"payload"),
            meta: Meta::boxed(Some("order-1".into()), None, Default::default()),
        }
    }

    #[test]
    fn batches_reuse_frames_and_decode_in_order() {
        let envs: Vec<Envelope> = (1..=3).map(|seq| Envelope { seq, ..sample() }).collect();
        let mut w = BatchWriter::default();
        assert!(w.finish(concat).is_none());
        for e in &envs {
            w.push(&Bytes::from(e.encode()));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.bytes(),
            envs.iter().map(|e| e.encode().len() - 3).sum::<usize>()
        );
        let batch = w.finish(concat).unwrap();
        assert_eq!(batch[2], KIND_BATCH);
        let mut out = Vec::new();
        Envelope::decode_events(&batch, 1 << 20, &mut out).unwrap();
        assert_eq!(out, envs);
        // One staged envelope goes out as a plain event frame.
        w.push(&Bytes::from(envs[0].encode()));
        assert_eq!(w.bytes(), envs[0].encode().len() - 3);
        assert_eq!(w.finish(concat).unwrap(), envs[0].encode());
        // A truncated or padded batch yields nothing.
        let mut out = Vec::new();
        for cut in 0..batch.len() {
            assert!(Envelope::decode_events(&batch[..cut], 1 << 20, &mut out).is_err());
        }
        assert!(out.is_empty());
        let empty = [0x93, 1, KIND_BATCH, 0x90];
        assert!(Envelope::decode_events(&empty, 1 << 20, &mut out).is_err());
    }

    #[test]
    fn a_batch_may_be_larger_than_an_event_but_no_event_in_it_may() {
        use crate::wire::envelope::BATCH_FRAME_FACTOR;
        use crate::DecodeError::Oversized;
        let sized = |seq, len| Envelope {
            seq,
            payload: Bytes::from(vec![1; len]),
            ..sample()
        };
        let batch_of = |envs: &[Envelope]| {
            let mut w = BatchWriter::default();
            envs.iter().for_each(|e| w.push(&Bytes::from(e.encode())));
            w.finish(concat).unwrap()
        };
        let max = 1000;
        let one = sized(1, 900);
        let event = one.encode();
        assert!(event.len() <= max);
        let mut out = Vec::new();
        // Four events of nearly the limit: a batch over the limit, accepted.
        let four: Vec<Envelope> = (1..=4).map(|s| sized(s, 900)).collect();
        let batch = batch_of(&four);
        assert!(batch.len() > max && batch.len() <= BATCH_FRAME_FACTOR * max);
        Envelope::decode_events(&batch, max, &mut out).unwrap();
        assert_eq!(out, four);
        // Past the batch bound: oversized, nothing decoded.
        let five: Vec<Envelope> = (1..=5).map(|s| sized(s, 900)).collect();
        let mut out = Vec::new();
        let err = Envelope::decode_events(&batch_of(&five), max, &mut out).unwrap_err();
        assert!(matches!(err, Oversized { .. }), "{err}");
        assert!(out.is_empty());
        // An event over the limit, alone or in a small batch: oversized.
        let big = sized(2, max);
        assert!(matches!(
            Envelope::decode_events(&big.encode(), max, &mut out),
            Err(Oversized { .. })
        ));
        let err = Envelope::decode_events(&batch_of(&[one, big]), max, &mut out).unwrap_err();
        assert!(matches!(err, Oversized { .. }), "{err}");
        assert!(out.is_empty());
    }
}
