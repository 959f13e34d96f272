//! When a receiver acknowledges an origin's events straight to the
//! origin's repair endpoint, between heartbeats.
//!
//! Owns: per origin stream, the watermark last acknowledged directly and
//! the one seen at the last check; the payload bytes received since direct
//! acks last went out by bytes; and when the next check is due. Sans-IO: the receive driver
//! passes its watermarks and the time in, and sends what this decides.
//!
//! Why: heartbeats carry every watermark, but only every heartbeat
//! interval, and a busy origin's retransmit buffer fills long before that.
//! A direct ack is a request and an answer across both peers' threads,
//! several wake-ups on each side, so it is sent when it is worth one:
//! - at once after [`EVERY`] events of one origin (a quarter of the default
//!   retransmit buffer) or [`BYTES`] of payload (a quarter of its byte
//!   bound), so an origin publishing at full speed gets one every few
//!   milliseconds, well before its buffer fills (measured, benches/peers:
//!   acking every 1024 events, 630 acks a second at 1 KiB, cost 3–12 % of
//!   the throughput at 64 B, 1 KiB and 16 KiB);
//! - when an origin's stream stopped for a whole check period ([`AFTER`])
//!   with at least [`MIN`] events not acknowledged directly: an origin
//!   whose smaller buffer filled waits for acks and sends nothing, and it
//!   waits [`AFTER`] to twice that, not a heartbeat interval. A stream that
//!   keeps flowing is not acked by time (acks every few milliseconds cost a
//!   ping-pong between two peers ~5 µs of its median round trip);
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
/// How often streams with events not acknowledged are checked for having
/// stopped.
pub(crate) const AFTER: Duration = Duration::from_millis(5);
/// Fewer events not acknowledged directly than this wait for the next
/// heartbeat.
pub(crate) const MIN: u64 = 64;

/// One origin stream's direct acks.
#[derive(Debug)]
struct Stream {
    /// Its epoch (the origin's incarnation).
    epoch: u64,
    /// The watermark last sent.
    sent: u64,
    /// The watermark at the last check.
    checked: u64,
}

impl Stream {
    fn new(epoch: u64) -> Self {
        Stream {
            epoch,
            sent: 0,
            checked: 0,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct DirectAcks {
    /// Per origin, its current stream (as the inbox keeps one per origin):
    /// a new epoch starts afresh, so restarts leave nothing behind.
    streams: HashMap<PeerId, Stream>,
    /// Payload bytes received since acks last went out by bytes.
    bytes: u64,
    /// When streams are next checked for having stopped.
    due: Option<Instant>,
}

impl DirectAcks {
    /// Counts payload bytes received.
    pub(crate) fn handle_received(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// One pass over this receiver's watermarks `(origin, stream epoch,
    /// through)` after it received: calls `send` for each one due an ack by
    /// count or bytes (`send` returns whether the ack could be sent).
    pub(crate) fn handle_watermarks(
        &mut self,
        watermarks: impl IntoIterator<Item = (PeerId, u64, u64)>,
        now: Instant,
        send: impl FnMut(PeerId, u64, u64) -> bool,
    ) {
        let by_bytes = self.bytes >= BYTES;
        if by_bytes {
            self.bytes = 0;
        }
        let every = if by_bytes { 1 } else { EVERY };
        self.pass(watermarks, now, send, |_, _| every);
    }

    /// The check at [`poll_timeout`](Self::poll_timeout): streams that did
    /// not move since the last check are acknowledged if [`MIN`] events
    /// are waiting.
    pub(crate) fn handle_timeout(
        &mut self,
        watermarks: impl IntoIterator<Item = (PeerId, u64, u64)>,
        now: Instant,
        send: impl FnMut(PeerId, u64, u64) -> bool,
    ) {
        self.due = None;
        self.pass(watermarks, now, send, |s, through| {
            let needed = match through == s.checked {
                true => MIN,
                false => u64::MAX, // it moved: not stopped
            };
            s.checked = through;
            needed
        });
    }

    /// Sends the streams whose progress since the last ack reached
    /// `needed(stream, through)`; the check is armed while anything is left
    /// waiting. Progress is a difference, so no sequence number (an origin
    /// may send any) overflows it.
    fn pass(
        &mut self,
        watermarks: impl IntoIterator<Item = (PeerId, u64, u64)>,
        now: Instant,
        mut send: impl FnMut(PeerId, u64, u64) -> bool,
        mut needed: impl FnMut(&mut Stream, u64) -> u64,
    ) {
        let mut waiting = false;
        for (origin, epoch, through) in watermarks {
            let s = self
                .streams
                .entry(origin)
                .or_insert_with(|| Stream::new(epoch));
            if s.epoch != epoch {
                *s = Stream::new(epoch);
            }
            let progress = through.saturating_sub(s.sent);
            if progress > 0 && progress >= needed(s, through) && send(origin, epoch, through) {
                s.sent = through;
            }
            waiting |= through.saturating_sub(s.sent) >= MIN;
        }
        if !waiting {
            self.due = None;
        } else if self.due.is_none() {
            self.due = Some(now + AFTER);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due, if events are
    /// waiting for an ack.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Forgets an origin (it left or failed).
    pub(crate) fn forget(&mut self, origin: PeerId) {
        self.streams.remove(&origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);

    type Marks<'a> = &'a [(PeerId, u64)];

    /// A pass after receiving (`check`: the timer's instead); returns what
    /// was sent.
    fn pass(d: &mut DirectAcks, marks: Marks<'_>, now: Instant, check: bool) -> Vec<(PeerId, u64)> {
        let mut sent = Vec::new();
        let marks = marks.iter().map(|&(o, s)| (o, 7, s));
        let send = |o, _, s| {
            sent.push((o, s));
            true
        };
        match check {
            false => d.handle_watermarks(marks, now, send),
            true => d.handle_timeout(marks, now, send),
        }
        sent
    }

    #[test]
    fn a_fast_stream_is_acked_every_quarter_buffer() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert!(pass(&mut d, &[(A, EVERY - 1)], t, false).is_empty());
        assert_eq!(pass(&mut d, &[(A, EVERY)], t, false), vec![(A, EVERY)]);
        assert!(pass(&mut d, &[(A, 2 * EVERY - 1)], t, false).is_empty());
        assert_eq!(
            pass(&mut d, &[(A, 2 * EVERY)], t, false),
            vec![(A, 2 * EVERY)]
        );
    }

    #[test]
    fn a_stopped_stream_is_acked_at_the_check_after_it_stopped() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert!(pass(&mut d, &[(A, MIN), (B, MIN - 1)], t, false).is_empty());
        // Only A has enough waiting to be worth an ack by time.
        assert_eq!(d.poll_timeout(), Some(t + AFTER));
        // A moved since the last check (from 0): not yet.
        let t1 = t + AFTER;
        assert!(pass(&mut d, &[(A, MIN), (B, MIN - 1)], t1, true).is_empty());
        assert_eq!(d.poll_timeout(), Some(t1 + AFTER));
        // A did not move for a whole period: acked. B's trickle never is.
        let t2 = t1 + AFTER;
        assert_eq!(
            pass(&mut d, &[(A, MIN), (B, MIN - 1)], t2, true),
            vec![(A, MIN)]
        );
        assert_eq!(d.poll_timeout(), None, "nothing left waiting");
    }

    #[test]
    fn a_flowing_stream_is_not_acked_by_time() {
        let mut d = DirectAcks::default();
        let mut t = Instant::now();
        // It moves between every two checks, and never reaches EVERY.
        for through in (1..20).map(|i| i * 2 * MIN) {
            assert!(pass(&mut d, &[(A, through)], t, false).is_empty());
            t += AFTER;
            assert!(pass(&mut d, &[(A, through + MIN)], t, true).is_empty());
        }
    }

    #[test]
    fn bytes_ack_every_origin_with_anything_new() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        d.handle_received(BYTES as usize);
        assert_eq!(pass(&mut d, &[(A, 1), (B, 0)], t, false), vec![(A, 1)]);
        // The count starts again.
        assert!(pass(&mut d, &[(A, 2)], t, false).is_empty());
    }

    #[test]
    fn an_ack_that_could_not_go_is_tried_again_at_the_next_check() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        d.handle_watermarks([(A, 7, EVERY)], t, |_, _, _| false);
        assert_eq!(d.poll_timeout(), Some(t + AFTER));
        assert!(pass(&mut d, &[(A, EVERY)], t + AFTER, true).is_empty());
        let t2 = t + 2 * AFTER;
        assert_eq!(pass(&mut d, &[(A, EVERY)], t2, true), vec![(A, EVERY)]);
    }

    #[test]
    fn sequence_numbers_at_the_end_of_u64_do_not_overflow() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        let (top, below) = (u64::MAX, u64::MAX - 1);
        assert_eq!(pass(&mut d, &[(A, below)], t, false), vec![(A, below)]);
        assert!(pass(&mut d, &[(A, top)], t, false).is_empty());
        d.handle_received(BYTES as usize);
        assert_eq!(pass(&mut d, &[(A, top)], t, false), vec![(A, top)]);
        // Nothing left waiting: no check, no ack again.
        assert_eq!(d.poll_timeout(), None);
        assert!(pass(&mut d, &[(A, top)], t + AFTER, true).is_empty());
    }

    #[test]
    fn streams_are_separate_and_forgotten_with_their_origin() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        assert_eq!(pass(&mut d, &[(A, EVERY), (B, EVERY)], t, false).len(), 2);
        d.forget(A);
        // A starts over (from 0); B does not.
        assert_eq!(
            pass(&mut d, &[(A, EVERY), (B, EVERY + 1)], t, false),
            vec![(A, EVERY)]
        );
    }

    #[test]
    fn a_new_epoch_of_an_origin_replaces_its_stream() {
        let mut d = DirectAcks::default();
        let t = Instant::now();
        let mut sent = Vec::new();
        for epoch in 1..=100 {
            d.handle_watermarks([(A, epoch, EVERY)], t, |o, e, s| {
                sent.push((o, e, s));
                true
            });
        }
        // Each restart starts from 0 (acked at once), and leaves nothing behind.
        assert_eq!(sent.len(), 100);
        assert_eq!(sent[99], (A, 100, EVERY));
        assert_eq!(d.streams.len(), 1);
    }
}
