//! The cursor of a durable consumer: which events of which streams it is
//! handed, so that it handles each event once across its lives.
//!
//! Owns: per stream (origin, epoch) the last event handed (at start, the
//! committed position its earlier life left), the uncommitted tail a crash
//! may have left handled (flagged redelivered), and where a stream it has
//! no position in starts ([`StartAt`]). Plain data, sans-IO: the registry
//! asks it about each envelope, in the stream's order.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::wire::envelope::Envelope;
use crate::wire::id::PeerId;

/// Most events of one stream a durable handler runs ahead of its committed
/// position: after a crash, at most this many are handled again (each
/// flagged [`Delivery::redelivered`](crate::Delivery::redelivered)).
pub const TAIL: u64 = 256;

/// A stream: its origin and epoch.
pub type StreamKey = (PeerId, u64);

/// Where a new durable consumer starts in a stream it has no position in
/// ([`HandlerOptions::start_at`](crate::HandlerOptions::start_at)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Everything each origin still keeps in its log (or its retransmit
    /// buffer, for an origin without a data dir).
    Beginning,
    /// The events published at or after this time (by the publisher's
    /// clock). Found by replaying what the origin keeps and skipping the
    /// older events.
    Time(SystemTime),
    /// What is published after the consumer first subscribed (default): on
    /// its first run, the live streams from now; later, streams it has no
    /// position in from the time it was created.
    #[default]
    New,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Per stream, the last event handed (or committed by an earlier
    /// life): nothing up to there is handed again. Streams arrive in order,
    /// so this is all it takes to hand each event once.
    handed_through: HashMap<StreamKey, u64>,
    /// May have been handled by the earlier life (its uncommitted tail).
    tail_through: HashMap<StreamKey, u64>,
    /// For a stream without a position: only events published at or after
    /// this time (µs since the epoch); `None`: only what is live.
    not_before_us: Option<u64>,
}

impl Cursor {
    /// A cursor at `positions` (processed through, per stream). After a
    /// `crashed` life, the [`TAIL`] after each position is flagged
    /// redelivered. `not_before_us`: see the field.
    pub fn new(
        positions: impl IntoIterator<Item = (StreamKey, u64)>,
        crashed: bool,
        not_before_us: Option<u64>,
    ) -> Self {
        let handed_through: HashMap<StreamKey, u64> = positions.into_iter().collect();
        let tail_through = if crashed {
            handed_through
                .iter()
                .map(|(k, s)| (*k, s.saturating_add(TAIL)))
                .collect()
        } else {
            HashMap::new()
        };
        Cursor {
            handed_through,
            tail_through,
            not_before_us,
        }
    }

    /// Whether `env` (a `replay` meant for durable consumers only, or
    /// not) is handed to this consumer; if so, it counts as handed.
    pub fn admit(&mut self, env: &Envelope, replay: bool) -> bool {
        let key = (env.origin, env.incarnation);
        let take = match self.handed_through.get(&key) {
            Some(&through) => env.seq > through,
            // A stream it has no position in: from its start time, or, for
            // a consumer that takes the live streams, only what is live.
            None => match self.not_before_us {
                Some(t) => env.timestamp_us >= t,
                None => !replay,
            },
        };
        if take {
            self.handed_through.insert(key, env.seq);
        }
        take
    }

    /// Whether an earlier life may have handled `env`.
    pub fn redelivered(&self, env: &Envelope) -> bool {
        self.tail_through
            .get(&(env.origin, env.incarnation))
            .is_some_and(|&t| env.seq <= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn env(origin: u64, epoch: u64, seq: u64, time: u64) -> Envelope {
        Envelope {
            origin: PeerId(origin),
            incarnation: epoch,
            seq,
            topic: "t".into(),
            timestamp_us: time,
            payload: Bytes::new(),
            meta: None,
        }
    }

    #[test]
    fn a_position_is_never_handed_again_and_the_tail_after_a_crash_is_flagged() {
        let mut c = Cursor::new([((PeerId(1), 5), 10)], true, None);
        assert!(!c.admit(&env(1, 5, 10, 0), true));
        assert!(c.admit(&env(1, 5, 11, 0), true));
        assert!(!c.admit(&env(1, 5, 11, 0), false), "handed once");
        assert!(c.redelivered(&env(1, 5, 11, 0)));
        assert!(c.redelivered(&env(1, 5, 10 + TAIL, 0)));
        assert!(!c.redelivered(&env(1, 5, 11 + TAIL, 0)));
        // A clean stop flags nothing.
        let c = Cursor::new([((PeerId(1), 5), 10)], false, None);
        assert!(!c.redelivered(&env(1, 5, 11, 0)));
    }

    #[test]
    fn a_stream_without_a_position_starts_live_or_at_a_time() {
        let mut live = Cursor::new([], false, None);
        assert!(!live.admit(&env(2, 1, 1, 0), true), "a replay is not live");
        assert!(live.admit(&env(2, 1, 7, 0), false));
        let mut timed = Cursor::new([], false, Some(100));
        assert!(!timed.admit(&env(2, 1, 1, 99), true));
        assert!(timed.admit(&env(2, 1, 2, 100), true));
        // Another epoch of the same origin is another stream.
        assert!(timed.admit(&env(2, 2, 1, 150), false));
    }

    proptest! {
        /// Presentations of one stream as the inbox makes them: contiguous
        /// runs, each starting at most one past what came before (a rewind
        /// for another consumer replays from earlier). Whatever the runs,
        /// every number after the position up to the highest presented is
        /// handed exactly once, in order.
        #[test]
        fn every_event_after_the_position_is_handed_exactly_once(
            position in 0u64..50,
            runs in prop::collection::vec((0u64..60, 1u64..40, any::<bool>()), 1..12),
        ) {
            let mut c = Cursor::new([((PeerId(1), 1), position)], false, None);
            let (mut handed, mut highest) = (Vec::new(), 0u64);
            for (back, len, replay) in runs {
                let start = (highest + 1).saturating_sub(back).max(1);
                for seq in start..start + len {
                    if c.admit(&env(1, 1, seq, 0), replay) {
                        handed.push(seq);
                    }
                }
                highest = highest.max(start + len - 1);
            }
            let expected: Vec<u64> = (position + 1..=highest).collect();
            prop_assert_eq!(handed, expected);
        }
    }
}
