//! The sans-IO core of the [`Observer`](crate::Observer): expectations
//! "every cause with key K is followed by an effect with key K within D".
//!
//! Owns: [`Expectation`], [`Observation`], [`Correlator`] and its
//! [`CorrelatorStats`]. Time is an argument; no sockets, no tasks.
//!
//! Per expectation the correlator keeps four bounded tables, each at most
//! `max_pending` keys, oldest dropped first:
//! - **pending**: causes waiting for their effect. When the bound is hit the
//!   oldest is reported as [`Observation::Evicted`] and forgotten.
//! - **missed**: causes reported [`Observation::Missing`], so an effect
//!   that still shows up is reported [`Observation::Late`].
//! - **matched**: keys already settled, so a repeated cause or effect (an
//!   application retry) is counted as a duplicate instead of opening a
//!   new wait.
//! - **early**: effects seen before their cause (events of different
//!   origins are not ordered with respect to each other); a cause arriving
//!   within `within` of its effect is matched at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::wire::topic::Pattern;

/// One expectation: every event on `cause` is followed, within `within`, by
/// an event on `effect` with the same key.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// A name for reports ("work order for every accepted bid").
    pub name: Arc<str>,
    /// Topic pattern of the causes.
    pub cause: Pattern,
    /// Topic pattern of the effects.
    pub effect: Pattern,
    /// How long an effect may take.
    pub within: Duration,
}

impl Expectation {
    /// Validates the patterns; cause and effect must differ and `within`
    /// must be positive.
    pub fn new(name: &str, cause: &str, effect: &str, within: Duration) -> Result<Self> {
        let (cause, effect) = (Pattern::parse(cause)?, Pattern::parse(effect)?);
        if cause == effect {
            return Err(Error::Config(format!(
                "expectation {name:?}: cause and effect are the same pattern {:?}",
                cause.as_str()
            )));
        }
        if within.is_zero() {
            return Err(Error::Config(format!(
                "expectation {name:?}: `within` must be more than zero"
            )));
        }
        Ok(Expectation {
            name: name.into(),
            cause,
            effect,
            within,
        })
    }
}

/// What an observer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// No effect arrived within the deadline.
    Missing {
        /// The expectation's name.
        expectation: Arc<str>,
        /// The key of the cause.
        key: String,
        /// The effect's topic pattern: what was waited for.
        waited_for: Arc<str>,
        /// When the cause was published (publisher's clock).
        since: SystemTime,
        /// How long it was waited for (the expectation's `within`).
        waited: Duration,
    },
    /// An effect arrived after it had been reported [`Missing`](Self::Missing).
    Late {
        /// The expectation's name.
        expectation: Arc<str>,
        /// The key.
        key: String,
        /// The effect's topic pattern.
        waited_for: Arc<str>,
        /// When the cause was published (publisher's clock).
        since: SystemTime,
        /// Time from seeing the cause to seeing the effect.
        after: Duration,
    },
    /// A pending cause was dropped unsettled because `max_pending` causes
    /// were already waiting: it will be reported neither missing nor late.
    Evicted {
        /// The expectation's name.
        expectation: Arc<str>,
        /// The key of the dropped cause.
        key: String,
        /// When the cause was published (publisher's clock).
        since: SystemTime,
    },
}

impl Observation {
    /// The key the observation is about.
    pub fn key(&self) -> &str {
        match self {
            Observation::Missing { key, .. }
            | Observation::Late { key, .. }
            | Observation::Evicted { key, .. } => key,
        }
    }
}

/// Counters of a [`Correlator`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// Causes whose effect arrived in time (or had arrived just before).
    pub matched: u64,
    /// Causes reported missing.
    pub missing: u64,
    /// Effects that arrived after being reported missing.
    pub late: u64,
    /// Pending causes dropped at the bound.
    pub evicted: u64,
    /// Causes or effects repeated for a key already pending or settled.
    pub duplicates: u64,
    /// Gauge: causes waiting now, all expectations together.
    pub pending: u64,
}

/// A table of keys in arrival order, bounded; entries removed from the map
/// leave stale queue slots that are skipped (told apart by a stamp).
#[derive(Debug)]
struct Fifo<V> {
    map: HashMap<String, (u64, V)>,
    order: VecDeque<(u64, String)>,
    next: u64,
}

impl<V> Default for Fifo<V> {
    fn default() -> Self {
        Fifo {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }
}

impl<V> Fifo<V> {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let v = self.map.remove(key).map(|(_, v)| v);
        self.tidy();
        v
    }

    /// Inserts at the back; returns the oldest entry if `bound` was exceeded.
    fn push(&mut self, key: String, value: V, bound: usize) -> Option<(String, V)> {
        self.next += 1;
        self.order.push_back((self.next, key.clone()));
        self.map.insert(key, (self.next, value));
        self.tidy(); // a replaced key may have left its old slot in front
        if self.map.len() > bound {
            self.pop_oldest()
        } else {
            None
        }
    }

    /// The oldest live entry: the front slot, which [`tidy`](Self::tidy)
    /// keeps live, so this is O(1).
    fn oldest(&self) -> Option<(&str, &V)> {
        let (stamp, key) = self.order.front()?;
        let (s, v) = self.map.get(key)?;
        debug_assert_eq!(s, stamp, "front slot kept live");
        Some((key.as_str(), v))
    }

    fn pop_oldest(&mut self) -> Option<(String, V)> {
        let (_, key) = self.order.pop_front()?;
        let (_, v) = self.map.remove(&key).expect("front slot kept live");
        self.tidy();
        Some((key, v))
    }

    fn is_live(&self, (stamp, key): &(u64, String)) -> bool {
        self.map.get(key).is_some_and(|(s, _)| s == stamp)
    }

    /// Keeps the front slot live (stale ones before it are dropped), and
    /// drops all stale slots once they outnumber live entries, so the queue
    /// stays within about twice the bound.
    fn tidy(&mut self) {
        while self.order.front().is_some_and(|slot| !self.is_live(slot)) {
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(stamp, key)| map.get(key).is_some_and(|(s, _)| s == stamp));
        }
    }
}

#[derive(Debug)]
struct Pending {
    seen: Instant,
    since: SystemTime,
}

#[derive(Debug)]
struct Rule {
    spec: Expectation,
    waited_for: Arc<str>,
    cause_pattern: usize,
    effect_pattern: usize,
    pending: Fifo<Pending>,
    missed: Fifo<Pending>,
    matched: Fifo<()>,
    early: Fifo<Instant>,
}

/// Correlates causes and effects of a set of [`Expectation`]s.
///
/// ```
/// use std::time::{Duration, Instant, SystemTime};
/// use chorus::{Correlator, Expectation, Observation};
///
/// let rule = Expectation::new("work order", "bids.accepted", "work.created", Duration::from_secs(1))?;
/// let mut c = Correlator::new(vec![rule], 1000);
/// let t0 = Instant::now();
/// c.handle_event("bids.accepted", "bid-1", SystemTime::now(), t0);
/// c.handle_event("bids.accepted", "bid-2", SystemTime::now(), t0);
/// c.handle_event("work.created", "bid-1", SystemTime::now(), t0 + Duration::from_millis(10));
/// assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
/// c.handle_timeout(t0 + Duration::from_secs(2));
/// assert!(matches!(c.poll(), Some(Observation::Missing { key, .. }) if key == "bid-2"));
/// assert!(c.poll().is_none());
/// # Ok::<(), chorus::Error>(())
/// ```
#[derive(Debug)]
pub struct Correlator {
    patterns: Vec<Pattern>,
    rules: Vec<Rule>,
    max_pending: usize,
    stats: CorrelatorStats,
    /// Observations not polled yet.
    out: VecDeque<Observation>,
}

impl Correlator {
    /// A correlator for `expectations`, keeping at most `max_pending` keys
    /// (≥ 1) per table of each expectation.
    pub fn new(expectations: Vec<Expectation>, max_pending: usize) -> Self {
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut index = |p: &Pattern| match patterns.iter().position(|q| q == p) {
            Some(i) => i,
            None => {
                patterns.push(p.clone());
                patterns.len() - 1
            }
        };
        let rules = expectations
            .into_iter()
            .map(|spec| Rule {
                cause_pattern: index(&spec.cause),
                effect_pattern: index(&spec.effect),
                waited_for: spec.effect.as_str().into(),
                spec,
                pending: Fifo::default(),
                missed: Fifo::default(),
                matched: Fifo::default(),
                early: Fifo::default(),
            })
            .collect();
        Correlator {
            patterns,
            rules,
            max_pending: max_pending.max(1),
            stats: CorrelatorStats::default(),
            out: VecDeque::new(),
        }
    }

    /// The distinct topic patterns of all expectations: what a driver
    /// subscribes to (then calls [`handle_match`](Self::handle_match)
    /// with the index of the subscription a delivery came from).
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// One event on `topic` with `key`, published at `at`, seen at `now`.
    /// Observations it causes (evictions, late effects) are then yielded
    /// by [`poll`](Self::poll).
    pub fn handle_event(&mut self, topic: &str, key: &str, at: SystemTime, now: Instant) {
        for i in 0..self.patterns.len() {
            if self.patterns[i].matches(topic) {
                self.handle_match(i, key, at, now);
            }
        }
    }

    /// The next observation, oldest first, if any. Observations queue up
    /// until polled: a driver polls after each `handle_*` call.
    pub fn poll(&mut self) -> Option<Observation> {
        self.out.pop_front()
    }

    /// One event that matched pattern number `pattern` of
    /// [`patterns`](Self::patterns).
    pub fn handle_match(&mut self, pattern: usize, key: &str, at: SystemTime, now: Instant) {
        let (bound, out) = (self.max_pending, &mut self.out);
        for rule in &mut self.rules {
            if rule.effect_pattern == pattern {
                rule.effect(key, now, bound, &mut self.stats, out);
            }
            if rule.cause_pattern == pattern {
                rule.cause(key, at, now, bound, &mut self.stats, out);
            }
        }
        self.update_gauge();
    }

    /// Reports every pending cause whose deadline passed by `now` as
    /// [`Observation::Missing`] (yielded by [`poll`](Self::poll)).
    pub fn handle_timeout(&mut self, now: Instant) {
        let (bound, out) = (self.max_pending, &mut self.out);
        for rule in &mut self.rules {
            let within = rule.spec.within;
            while let Some((_, p)) = rule.pending.oldest() {
                if now < p.seen + within {
                    break;
                }
                let (key, p) = rule.pending.pop_oldest().expect("present");
                self.stats.missing += 1;
                out.push_back(Observation::Missing {
                    expectation: rule.spec.name.clone(),
                    key: key.clone(),
                    waited_for: rule.waited_for.clone(),
                    since: p.since,
                    waited: within,
                });
                rule.missed.push(key, p, bound);
            }
            while rule
                .early
                .oldest()
                .is_some_and(|(_, seen)| now >= *seen + within)
            {
                rule.early.pop_oldest();
            }
        }
        self.update_gauge();
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to report.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rules
            .iter()
            .filter_map(|r| r.pending.oldest().map(|(_, p)| p.seen + r.spec.within))
            .min()
    }

    /// The counters.
    pub fn stats(&self) -> CorrelatorStats {
        self.stats
    }

    fn update_gauge(&mut self) {
        self.stats.pending = self.rules.iter().map(|r| r.pending.len() as u64).sum();
    }
}

impl Rule {
    fn cause(
        &mut self,
        key: &str,
        at: SystemTime,
        now: Instant,
        bound: usize,
        stats: &mut CorrelatorStats,
        out: &mut VecDeque<Observation>,
    ) {
        if self.pending.contains(key) || self.missed.contains(key) || self.matched.contains(key) {
            stats.duplicates += 1;
            return;
        }
        if self.early.remove(key).is_some() {
            stats.matched += 1;
            self.matched.push(key.to_owned(), (), bound);
            return;
        }
        let pending = Pending {
            seen: now,
            since: at,
        };
        if let Some((key, p)) = self.pending.push(key.to_owned(), pending, bound) {
            stats.evicted += 1;
            out.push_back(Observation::Evicted {
                expectation: self.spec.name.clone(),
                key,
                since: p.since,
            });
        }
    }

    fn effect(
        &mut self,
        key: &str,
        now: Instant,
        bound: usize,
        stats: &mut CorrelatorStats,
        out: &mut VecDeque<Observation>,
    ) {
        if self.pending.remove(key).is_some() {
            stats.matched += 1;
            self.matched.push(key.to_owned(), (), bound);
        } else if let Some(p) = self.missed.remove(key) {
            stats.late += 1;
            out.push_back(Observation::Late {
                expectation: self.spec.name.clone(),
                key: key.to_owned(),
                waited_for: self.waited_for.clone(),
                since: p.since,
                after: now.saturating_duration_since(p.seen),
            });
            self.matched.push(key.to_owned(), (), bound);
        } else if self.matched.contains(key) || self.early.contains(key) {
            stats.duplicates += 1;
        } else {
            self.early.push(key.to_owned(), now, bound);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(1);

    fn correlator(max: usize) -> (Correlator, Instant) {
        let rule = Expectation::new("wo", "bids.accepted", "work.created", D).unwrap();
        (Correlator::new(vec![rule], max), Instant::now())
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn cause(c: &mut Correlator, key: &str, now: Instant) -> Vec<Observation> {
        c.handle_event("bids.accepted", key, SystemTime::UNIX_EPOCH, now);
        std::iter::from_fn(|| c.poll()).collect()
    }

    fn effect(c: &mut Correlator, key: &str, now: Instant) -> Vec<Observation> {
        c.handle_event("work.created", key, SystemTime::UNIX_EPOCH, now);
        std::iter::from_fn(|| c.poll()).collect()
    }

    fn expire(c: &mut Correlator, now: Instant) -> Vec<Observation> {
        c.handle_timeout(now);
        std::iter::from_fn(|| c.poll()).collect()
    }

    #[test]
    fn an_effect_in_time_is_matched_and_nothing_is_reported() {
        let (mut c, t0) = correlator(10);
        assert!(cause(&mut c, "k", t0).is_empty());
        assert_eq!(c.poll_timeout(), Some(t0 + D));
        assert!(effect(&mut c, "k", ms(t0, 999)).is_empty());
        assert!(expire(&mut c, ms(t0, 5000)).is_empty());
        assert_eq!(c.stats().matched, 1);
        assert_eq!(c.stats().pending, 0);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_missing_effect_is_reported_once_at_its_deadline() {
        let (mut c, t0) = correlator(10);
        cause(&mut c, "k", t0);
        assert!(expire(&mut c, ms(t0, 999)).is_empty());
        let out = expire(&mut c, ms(t0, 1000));
        assert_eq!(out.len(), 1);
        assert!(
            matches!(&out[0], Observation::Missing { key, waited_for, waited, .. }
            if key == "k" && &**waited_for == "work.created" && *waited == D)
        );
        assert!(expire(&mut c, ms(t0, 9000)).is_empty());
        assert_eq!(c.stats().missing, 1);
    }

    #[test]
    fn an_effect_after_the_deadline_is_reported_late() {
        let (mut c, t0) = correlator(10);
        cause(&mut c, "k", t0);
        expire(&mut c, ms(t0, 1000));
        let out = effect(&mut c, "k", ms(t0, 1500));
        assert!(matches!(&out[..], [Observation::Late { key, after, .. }]
            if key == "k" && *after == Duration::from_millis(1500)));
        // A second late copy is a duplicate, not a second report.
        assert!(effect(&mut c, "k", ms(t0, 1600)).is_empty());
        assert_eq!(c.stats().late, 1);
        assert_eq!(c.stats().duplicates, 1);
    }

    #[test]
    fn duplicate_causes_and_effects_settle_once() {
        let (mut c, t0) = correlator(10);
        cause(&mut c, "k", t0);
        cause(&mut c, "k", ms(t0, 500)); // does not restart the wait
        effect(&mut c, "k", ms(t0, 600));
        effect(&mut c, "k", ms(t0, 700));
        cause(&mut c, "k", ms(t0, 800)); // a retried cause after the match
        assert!(expire(&mut c, ms(t0, 10_000)).is_empty());
        let s = c.stats();
        assert_eq!((s.matched, s.missing, s.duplicates), (1, 0, 3));
    }

    #[test]
    fn an_effect_seen_just_before_its_cause_matches_it() {
        let (mut c, t0) = correlator(10);
        effect(&mut c, "k", t0);
        cause(&mut c, "k", ms(t0, 5));
        assert!(expire(&mut c, ms(t0, 5000)).is_empty());
        assert_eq!(c.stats().matched, 1);
        // An effect older than `within` no longer counts.
        effect(&mut c, "j", ms(t0, 5000));
        expire(&mut c, ms(t0, 6000));
        cause(&mut c, "j", ms(t0, 6001));
        assert_eq!(expire(&mut c, ms(t0, 7001)).len(), 1);
    }

    #[test]
    fn pending_keys_are_bounded_oldest_reported_then_dropped() {
        let (mut c, t0) = correlator(3);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            assert!(cause(&mut c, k, ms(t0, i as u64)).is_empty());
        }
        let out = cause(&mut c, "d", ms(t0, 3));
        assert!(matches!(&out[..], [Observation::Evicted { key, .. }] if key == "a"));
        assert_eq!(c.stats().pending, 3);
        // "a" is gone: its effect is an early effect, not a match or late.
        assert!(effect(&mut c, "a", ms(t0, 4)).is_empty());
        let missing: Vec<_> = expire(&mut c, ms(t0, 2000))
            .iter()
            .map(|o| o.key().to_owned())
            .collect();
        assert_eq!(missing, ["b", "c", "d"]);
        assert_eq!(c.stats().evicted, 1);
    }

    #[test]
    fn every_table_stays_within_its_bound_under_a_flood_of_keys() {
        let (mut c, t0) = correlator(100);
        for i in 0..10_000u64 {
            let k = format!("k{i}");
            cause(&mut c, &k, ms(t0, i));
            effect(&mut c, &format!("e{i}"), ms(t0, i));
            if i % 3 == 0 {
                effect(&mut c, &k, ms(t0, i));
            }
            expire(&mut c, ms(t0, i));
        }
        let r = &c.rules[0];
        for len in [
            r.pending.len(),
            r.missed.len(),
            r.matched.len(),
            r.early.len(),
        ] {
            assert!(len <= 100, "{len}");
        }
        for q in [
            r.pending.order.len(),
            r.missed.order.len(),
            r.matched.order.len(),
            r.early.order.len(),
        ] {
            assert!(q <= 2 * 100 + 64 + 1, "{q}");
        }
    }

    #[test]
    fn one_event_can_be_the_effect_of_one_rule_and_the_cause_of_another() {
        let rules = vec![
            Expectation::new("wo", "bids.accepted", "work.created", D).unwrap(),
            Expectation::new("done", "work.created", "work.completed", D).unwrap(),
        ];
        let mut c = Correlator::new(rules, 10);
        assert_eq!(c.patterns().len(), 3);
        let t0 = Instant::now();
        c.handle_event("bids.accepted", "k", SystemTime::UNIX_EPOCH, t0);
        c.handle_event("work.created", "k", SystemTime::UNIX_EPOCH, t0);
        c.handle_timeout(ms(t0, 1000));
        let out: Vec<_> = std::iter::from_fn(|| c.poll()).collect();
        assert!(
            matches!(&out[..], [Observation::Missing { expectation, .. }] if &**expectation == "done")
        );
    }

    #[test]
    fn invalid_expectations_are_refused() {
        assert!(Expectation::new("x", "a.b", "a.b", D).is_err());
        assert!(Expectation::new("x", "a.b", "a..c", D).is_err());
        assert!(Expectation::new("x", "a.b", "a.c", Duration::ZERO).is_err());
    }
}
