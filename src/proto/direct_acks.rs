//! When a receiver acknowledges an origin's events straight to the
//! origin's repair endpoint, between heartbeats.
//!
//! Owns: per origin stream, the watermark last acknowledged directly and
//! when; the payload bytes received since direct acks last went out by
//! bytes; and when the next ack is due by time. Sans-IO: the receive driver
//! passes its watermarks and the time in, and sends what this decides.
//!
//! Why: heartbeats carry every watermark, but only every heartbeat
//! interval, and a busy origin's retransmit buffer fills long before that.
//! A direct ack is a request and an answer across both peers' threads,
//! several wake-ups on each side, so it is sent when it is worth one:
//! - at once after [`EVERY`] events of one origin (a quarter of the default
//!   retransmit buffer) or [`BYTES`] of payload (a quarter of its byte
//!   bound), so an origin publishing at full speed gets one every few
//!   milliseconds, well before its buffer fills (measured side by side,
//!   benches/peers: acking every 1024 events, 600–3000 acks a second,
//!   cost 3–12 % of the throughput at 64 B, 1 KiB and 16 KiB);
//! - otherwise [`AFTER`] the last one, once at least [`MIN`] events
//!   arrived: an origin whose smaller buffer filled (it waits for acks and
//!   sends nothing more) waits that long, not a heartbeat interval;
//! - a trickle of fewer events waits for the heartbeat.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wire::id::PeerId;

/// Events of one origin after which it is acknowledged at once.
pub(crate) const EVERY: u64 = 4096;
/// Payload bytes received (all origins) after which every origin with
/// anything new is acknowledged at once: large events fill an origin's
/// byte bound (16 MiB by default) long before [`EVERY`] of them arrive.
pub(crate) const BYTES: u64 = 4 << 20;
/// How long after its last direct ack an origin with [`MIN`] new events is
/// acknowledged anyway.
pub(crate) const AFTER: Duration = Duration::from_millis(5);
/// Fewer new events than this wait for the next heartbeat.
pub(crate) const MIN: u64 = 64;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct DirectAcks {
    /// Per `(origin, stream epoch)`: the watermark last sent, and when.
    sent: HashMap<(PeerId, u64), (u64, Instant)>,
    /// Payload bytes received since acks last went out by bytes.
    bytes: u64,
    /// When the next ack is due by time.
    due: Option<Instant>,
}

impl DirectAcks {
    /// Counts payload bytes received.
    pub(crate) fn handle_received(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// One pass over this receiver's watermarks `(origin, stream epoch,
    /// through)`: calls `send` for each one due an ack (which returns
    /// whether the ack could be sent), and works out when the next is due.
    pub(crate) fn handle_watermarks(
        &mut self,
        watermarks: impl IntoIterator<Item = (PeerId, u64, u64)>,
        now: Instant,
        mut send: impl FnMut(PeerId, u64, u64) -> bool,
    ) {
        let by_bytes = self.bytes >= BYTES;
        if by_bytes {
            self.bytes = 0;
        }
        let mut due: Option<Instant> = None;
        let mut wake_at = |at: Instant| due = Some(due.map_or(at, |d| d.min(at)));
        for (origin, epoch, through) in watermarks {
            let (last, at) = self.sent.entry((origin, epoch)).or_insert((0, now));
            let every = if by_bytes {
                1
            } else if now >= *at + AFTER {
                MIN
            } else {
                EVERY
            };
            if through >= *last + every {
                if send(origin, epoch, through) {
                    (*last, *at) = (through, now);
                } else {
                    wake_at(now + AFTER); // the requests queue is full: later
                }
            } else if through >= *last + MIN {
                wake_at(*at + AFTER);
            }
        }
        self.due = due;
    }

    /// When [`handle_watermarks`](Self::handle_watermarks) is next due
    /// (with the watermarks as they are), if anything is waiting.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Forgets an origin (it left or failed).
    pub(crate) fn forget(&mut self, origin: PeerId) {
        self.sent.retain(|(o, _), _| *o != origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);

    /// One pass; returns what was sent.
    fn pass(d: &mut DirectAcks, marks: &[(PeerId, u64)], now: Instant) -> Vec<(PeerId, u64)> {
        let mut sent = Vec::new();
        d.handle_watermarks(marks.iter().map(|&(o, s)| (o, 7, s)), now, |o, _, s| {
            sent.push((o, s));
            true
        });
        sent
    }

    #[test]
    fn a_fast_stream_is_acked_every_quarter_buffer() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert!(pass(&mut d, &[(A, EVERY - 1)], t).is_empty());
        assert_eq!(pass(&mut d, &[(A, EVERY)], t), vec![(A, EVERY)]);
        assert!(pass(&mut d, &[(A, 2 * EVERY - 1)], t).is_empty());
        assert_eq!(pass(&mut d, &[(A, 2 * EVERY)], t), vec![(A, 2 * EVERY)]);
    }

    #[test]
    fn fewer_events_are_acked_after_a_while_and_a_trickle_never() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert!(pass(&mut d, &[(A, MIN), (B, MIN - 1)], t).is_empty());
        // Only A has enough to be worth an ack by time.
        assert_eq!(d.poll_timeout(), Some(t + AFTER));
        let later = t + AFTER;
        assert_eq!(
            pass(&mut d, &[(A, MIN), (B, MIN - 1)], later),
            vec![(A, MIN)]
        );
        assert_eq!(d.poll_timeout(), None, "nothing left waiting");
        // The next ack by time is counted from this one.
        assert!(pass(&mut d, &[(A, 2 * MIN)], later + AFTER / 2).is_empty());
        assert_eq!(d.poll_timeout(), Some(later + AFTER));
    }

    #[test]
    fn bytes_ack_every_origin_with_anything_new() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        d.handle_received(BYTES as usize);
        assert_eq!(pass(&mut d, &[(A, 1), (B, 0)], t), vec![(A, 1)]);
        // The count starts again.
        assert!(pass(&mut d, &[(A, 2)], t).is_empty());
    }

    #[test]
    fn an_ack_that_could_not_go_is_retried_later_not_in_a_loop() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        d.handle_watermarks([(A, 7, EVERY)], t, |_, _, _| false);
        assert_eq!(d.poll_timeout(), Some(t + AFTER));
        let later = t + AFTER;
        assert_eq!(pass(&mut d, &[(A, EVERY)], later), vec![(A, EVERY)]);
    }

    #[test]
    fn streams_are_separate_and_forgotten_with_their_origin() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert_eq!(pass(&mut d, &[(A, EVERY), (B, EVERY)], t).len(), 2);
        d.forget(A);
        // A starts over (from 0); B does not.
        assert_eq!(
            pass(&mut d, &[(A, EVERY), (B, EVERY + 1)], t),
            vec![(A, EVERY)]
        );
    }
}
