//! The dedup cache: what makes at-least-once delivery exactly-once processing.
//!
//! Owns two bounded structures, both sans-IO (time is passed in):
//! - [`SeqWindow`]: per origin incarnation, the highest contiguous sequence
//!   number seen plus a fixed bitmap of the [`WINDOW`] numbers above it —
//!   O(1) memory per origin (8 bytes + 512 bytes of bitmap);
//! - [`KeyCache`]: application idempotency keys (like JetStream's
//!   `Nats-Msg-Id`), bounded by entry count and by age (the *duplicate window*).
//!   A key is scoped to its topic: `order-7` on `orders.created` and
//!   `order-7` on `orders.shipped` are two different events. Across origins
//!   it is one key, so a retry from another replica is dropped too.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Sequence numbers tracked above the contiguous watermark.
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

/// What [`SeqWindow::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: process it.
    Fresh,
    /// Already seen (at or below the watermark, or marked in the bitmap).
    Duplicate,
    /// More than [`WINDOW`] above the watermark: cannot be tracked yet.
    TooFarAhead,
}

/// Highest contiguous sequence number plus a bitmap of the next [`WINDOW`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqWindow {
    contiguous: u64,
    /// Bit `i` set: `contiguous + 1 + i` was seen. Bit 0 is always clear.
    bits: [u64; WORDS],
    /// Bits set in `bits`: while none are, an in-order insert is O(1).
    marked: u32,
}

impl SeqWindow {
    /// A window in which everything up to and including `base` counts as seen.
    pub fn new(base: u64) -> Self {
        SeqWindow {
            contiguous: base,
            bits: [0; WORDS],
            marked: 0,
        }
    }

    /// Every sequence number up to this one has been seen.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        if seq <= self.contiguous {
            return true;
        }
        let i = seq - self.contiguous - 1;
        i < WINDOW && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Records `seq`, advancing the watermark over any run it completes.
    pub fn insert(&mut self, seq: u64) -> Seen {
        if self.contains(seq) {
            return Seen::Duplicate;
        }
        let i = seq - self.contiguous - 1;
        if i >= WINDOW {
            return Seen::TooFarAhead;
        }
        if i == 0 && self.marked == 0 {
            self.contiguous += 1; // in order, nothing held above: the common case
            return Seen::Fresh;
        }
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
        let run = self.leading_run();
        self.shift(run);
        self.recount();
        Seen::Fresh
    }

    /// Counts `seq` as seen without processing it (a declared loss), so the
    /// watermark can move past it.
    pub fn skip_through(&mut self, last: u64) {
        if last <= self.contiguous {
            return;
        }
        // `shift` clears the bitmap outright when the jump is a window or more.
        self.shift(last - self.contiguous);
        let run = self.leading_run();
        self.shift(run);
        self.recount();
    }

    fn recount(&mut self) {
        self.marked = self.bits.iter().map(|w| w.count_ones()).sum();
    }

    /// Number of set bits at the start of the bitmap.
    fn leading_run(&self) -> u64 {
        let mut run = 0;
        for w in self.bits {
            let ones = w.trailing_ones() as u64;
            run += ones;
            if ones < 64 {
                break;
            }
        }
        run
    }

    /// Moves the watermark up by `n`, shifting the bitmap down.
    fn shift(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.contiguous += n;
        if n >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        for k in 0..WORDS {
            let lo = self.bits.get(k + words).copied().unwrap_or(0);
            let hi = self.bits.get(k + words + 1).copied().unwrap_or(0);
            self.bits[k] = if bits == 0 {
                lo
            } else {
                (lo >> bits) | (hi << (64 - bits))
            };
        }
    }

    /// Sequence numbers above the watermark and up to `highest` not seen
    /// yet, as inclusive ranges, at most `max_ranges` of them.
    pub fn missing(&self, highest: u64, max_ranges: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let end = highest.min(self.contiguous + WINDOW);
        let mut seq = self.contiguous + 1;
        while seq <= end && out.len() < max_ranges {
            if self.contains(seq) {
                seq += 1;
                continue;
            }
            let start = seq;
            while seq <= end && !self.contains(seq) {
                seq += 1;
            }
            out.push((start, seq - 1));
        }
        out
    }
}

/// Application idempotency keys seen recently, per topic, bounded by count
/// and age.
///
/// Memory: each entry holds its topic and key twice (map and queue) plus
/// about 80 bytes of bookkeeping, so at most `max_entries × (2 × (topic +
/// key length) + 80)` bytes.
#[derive(Debug)]
pub struct KeyCache {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
    max_entries: usize,
    max_age: Duration,
}

impl KeyCache {
    /// A cache of at most `max_entries` keys, each remembered for `max_age`.
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        KeyCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
            max_age,
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `key` on `topic` was recorded within the duplicate window.
    pub fn contains(&mut self, topic: &str, key: &str, now: Instant) -> bool {
        self.expire(now);
        self.seen.contains_key(&scoped(topic, key))
    }

    /// Records `key` on `topic` as processed at `now`; the oldest key goes
    /// if full.
    pub fn record(&mut self, topic: &str, key: &str, now: Instant) {
        self.expire(now);
        let key = scoped(topic, key);
        if self.seen.contains_key(&key) {
            return;
        }
        while self.seen.len() >= self.max_entries {
            match self.order.pop_front() {
                Some((k, _)) => {
                    self.seen.remove(&k);
                }
                None => break,
            }
        }
        self.seen.insert(key.clone(), now);
        self.order.push_back((key, now));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((k, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.max_age {
                break;
            }
            self.seen.remove(k);
            self.order.pop_front();
        }
    }
}

/// One string per (topic, key): topics hold no control character, so the
/// NUL between them keeps every pair distinct.
fn scoped(topic: &str, key: &str) -> String {
    let mut s = String::with_capacity(topic.len() + 1 + key.len());
    s.push_str(topic);
    s.push('\0');
    s.push_str(key);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_tracks_out_of_order_and_duplicates() {
        let mut w = SeqWindow::new(10);
        assert_eq!(w.insert(10), Seen::Duplicate);
        assert_eq!(w.insert(12), Seen::Fresh);
        assert_eq!(w.contiguous(), 10);
        assert_eq!(w.missing(14, 8), vec![(11, 11), (13, 14)]);
        assert_eq!(w.insert(12), Seen::Duplicate);
        assert_eq!(w.insert(11), Seen::Fresh);
        assert_eq!(w.contiguous(), 12);
        assert_eq!(w.insert(12 + WINDOW + 1), Seen::TooFarAhead);
        assert_eq!(w.insert(12 + WINDOW), Seen::Fresh);
        w.skip_through(12 + WINDOW - 1);
        assert_eq!(w.contiguous(), 12 + WINDOW);
    }

    #[test]
    fn skip_through_absorbs_runs_behind_it() {
        let mut w = SeqWindow::new(0);
        for s in [3, 4, 5, 9] {
            w.insert(s);
        }
        w.skip_through(2);
        assert_eq!(w.contiguous(), 5);
        w.skip_through(1_000_000_000);
        assert_eq!(w.contiguous(), 1_000_000_000);
        assert!(w.missing(u64::MAX, 4).len() <= 4);
    }

    #[test]
    fn key_cache_is_bounded_by_count_and_age() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(3, Duration::from_secs(10));
        for k in ["a", "b", "c", "d"] {
            c.record("t", k, t0);
        }
        assert_eq!(c.len(), 3);
        assert!(!c.contains("t", "a", t0), "oldest evicted by count");
        assert!(c.contains("t", "d", t0));
        assert!(
            !c.contains("t", "d", t0 + Duration::from_secs(10)),
            "expired by age"
        );
        assert!(c.is_empty());
    }

    #[test]
    fn keys_are_scoped_per_topic() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(10, Duration::from_secs(10));
        c.record("orders.created", "order-7", t0);
        assert!(c.contains("orders.created", "order-7", t0));
        assert!(!c.contains("orders.shipped", "order-7", t0));
        // A key may hold the separator: the first NUL ends the topic.
        c.record("a", "b\0c", t0);
        assert!(c.contains("a", "b\0c", t0));
        assert!(!c.contains("a", "b", t0));
    }

    proptest! {
        /// Against a plain set: same answers, watermark = longest prefix.
        #[test]
        fn window_matches_a_set(seqs in prop::collection::vec(1u64..300, 0..400)) {
            let mut w = SeqWindow::new(0);
            let mut set = std::collections::BTreeSet::new();
            for s in seqs {
                let fresh = set.insert(s);
                prop_assert_eq!(w.insert(s), if fresh { Seen::Fresh } else { Seen::Duplicate });
                let mut c = 0;
                while set.contains(&(c + 1)) { c += 1; }
                prop_assert_eq!(w.contiguous(), c);
                let missing: u64 = w.missing(300, usize::MAX).iter().map(|(a, b)| b - a + 1).sum();
                prop_assert_eq!(missing, (c + 1..=300).filter(|s| !set.contains(s)).count() as u64);
            }
        }
    }
}
