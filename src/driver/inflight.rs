//! Envelopes handed to handler subscriptions and not processed yet.
//!
//! Owns: which `(origin, incarnation, seq)` each handler subscription still
//! has to finish. The receive driver lowers the ack watermark it advertises
//! below the oldest of them, so an origin keeps a message in its retransmit
//! buffer until every handler here has succeeded with it (or dead-lettered
//! it): a handler that falls behind slows its publishers down instead of
//! losing messages. Bounded by the subscriptions' buffers.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;

use crate::wire::id::PeerId;

type Key = (PeerId, u64, u64);

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    subs: Mutex<HashMap<u64, BTreeSet<Key>>>,
}

impl InFlight {
    pub(crate) fn add(&self, sub: u64, origin: PeerId, incarnation: u64, seq: u64) {
        self.subs
            .lock()
            .entry(sub)
            .or_default()
            .insert((origin, incarnation, seq));
    }

    pub(crate) fn done(&self, sub: u64, origin: PeerId, incarnation: u64, seq: u64) {
        if let Some(set) = self.subs.lock().get_mut(&sub) {
            set.remove(&(origin, incarnation, seq));
        }
    }

    /// The subscription is gone: what it had queued no longer holds anything.
    pub(crate) fn drop_sub(&self, sub: u64) {
        self.subs.lock().remove(&sub);
    }

    /// The watermark to acknowledge for an origin incarnation received
    /// through `received`: lowered below the oldest delivery a handler has
    /// not finished.
    pub(crate) fn ack_floor(&self, origin: PeerId, incarnation: u64, received: u64) -> u64 {
        self.oldest(origin, incarnation)
            .map_or(received, |oldest| received.min(oldest - 1))
    }

    /// The oldest sequence number of this origin incarnation that
    /// subscription `sub` has not finished.
    pub(crate) fn oldest_of(&self, sub: u64, origin: PeerId, incarnation: u64) -> Option<u64> {
        self.subs.lock().get(&sub).and_then(|set| {
            set.range((origin, incarnation, 0)..=(origin, incarnation, u64::MAX))
                .next()
                .map(|k| k.2)
        })
    }

    /// The oldest unfinished sequence number of this origin incarnation.
    fn oldest(&self, origin: PeerId, incarnation: u64) -> Option<u64> {
        let subs = self.subs.lock();
        subs.values()
            .filter_map(|set| {
                set.range((origin, incarnation, 0)..=(origin, incarnation, u64::MAX))
                    .next()
                    .map(|k| k.2)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_over_subscriptions() {
        let f = InFlight::default();
        let o = PeerId(1);
        f.add(1, o, 1, 5);
        f.add(2, o, 1, 3);
        f.add(2, o, 2, 1);
        assert_eq!(f.oldest(o, 1), Some(3));
        f.done(2, o, 1, 3);
        assert_eq!(f.oldest(o, 1), Some(5));
        f.drop_sub(1);
        assert_eq!(f.oldest(o, 1), None);
        assert_eq!(f.oldest(o, 2), Some(1));
        assert_eq!(f.ack_floor(o, 2, 9), 0);
        assert_eq!(f.ack_floor(o, 1, 9), 9);
    }
}
