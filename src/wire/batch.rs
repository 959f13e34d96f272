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
/// bytes without re-encoding: `[1, 5, [envelope, …]]`.
#[derive(Debug, Default)]
pub(crate) struct BatchWriter {
    bodies: Vec<u8>,
    count: u32,
    single: Option<bytes::Bytes>,
}

impl BatchWriter {
    /// Envelopes staged.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Bytes staged.
    pub fn bytes(&self) -> usize {
        match &self.single {
            Some(f) if self.count == 1 => f.len() - EVENT_HEADER,
            _ => self.bodies.len(),
        }
    }

    /// Stages one complete event frame (as produced by [`Envelope::encode_into`]).
    /// A lone frame is kept as it is; bodies are gathered from the second on.
    pub fn push(&mut self, frame: &bytes::Bytes) {
        debug_assert!(
            frame.len() > EVENT_HEADER && frame[..EVENT_HEADER] == [0x93, WIRE_VERSION, KIND_EVENT]
        );
        match self.count {
            0 => self.single = Some(frame.clone()),
            1 => {
                let first = self.single.take().expect("one staged");
                self.bodies.extend_from_slice(&first[EVENT_HEADER..]);
                self.bodies.extend_from_slice(&frame[EVENT_HEADER..]);
            }
            _ => self.bodies.extend_from_slice(&frame[EVENT_HEADER..]),
        }
        self.count += 1;
    }

    /// Hands the staged envelopes to `write` as the parts of one message (a
    /// plain event frame when there is only one, else a batch header and the
    /// bodies), so the caller copies them once, straight into its message;
    /// leaves the writer empty for reuse.
    pub fn finish<R>(&mut self, write: impl FnOnce(&[&[u8]]) -> R) -> Option<R> {
        let out = match self.count {
            0 => None,
            1 => self.single.take().map(|f| write(&[&f[..]])),
            n => {
                let mut head = [0x93, WIRE_VERSION, KIND_BATCH, 0, 0, 0, 0, 0];
                let unused = {
                    let mut rest = &mut head[3..];
                    rmp::encode::write_array_len(&mut rest, n).expect("5 bytes hold any length");
                    rest.len()
                };
                Some(write(&[&head[..head.len() - unused], &self.bodies]))
            }
        };
        self.bodies.clear();
        self.count = 0;
        self.single = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::Envelope;
    use bytes::Bytes;

    fn sample() -> Envelope {
        Envelope {
            origin: crate::PeerId(7),
            incarnation: 2,
            seq: 1,
            id: Some("order-1".into()),
            topic: "orders.created".into(),
            timestamp_us: 1_700_000_000_000_000,
            correlation_id: None,
            headers: Default::default(),
            payload: Bytes::from_static(b"payload"),
        }
    }

    #[test]
    fn batches_reuse_frames_and_decode_in_order() {
        let envs: Vec<Envelope> = (1..=3).map(|seq| Envelope { seq, ..sample() }).collect();
        let mut w = BatchWriter::default();
        assert!(w.finish(|p| p.concat()).is_none());
        for e in &envs {
            w.push(&Bytes::from(e.encode()));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.bytes(),
            envs.iter().map(|e| e.encode().len() - 3).sum::<usize>()
        );
        let batch = w.finish(|p| p.concat()).unwrap();
        assert_eq!(batch[2], KIND_BATCH);
        let mut out = Vec::new();
        Envelope::decode_events(&batch, 1 << 20, &mut out).unwrap();
        assert_eq!(out, envs);
        // One staged envelope goes out as a plain event frame.
        w.push(&Bytes::from(envs[0].encode()));
        assert_eq!(w.bytes(), envs[0].encode().len() - 3);
        assert_eq!(w.finish(|p| p.concat()).unwrap(), envs[0].encode());
        // A truncated or padded batch yields nothing.
        let mut out = Vec::new();
        for cut in 0..batch.len() {
            assert!(Envelope::decode_events(&batch[..cut], 1 << 20, &mut out).is_err());
        }
        assert!(out.is_empty());
        let empty = [0x93, 1, KIND_BATCH, 0x90];
        assert!(Envelope::decode_events(&empty, 1 << 20, &mut out).is_err());
    }
}
