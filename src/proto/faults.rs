//! Link-fault injection on a peer's receive path, for tests and demos.
//!
//! Owns: [`LinkFaults`] (what to inject, off by default) and the sans-IO
//! [`FaultInjector`] that decides, from a seed, what happens to each frame:
//! dropped, duplicated, held back and released after the next frame
//! (reordered), or delayed. The receive driver feeds it the frames NNG
//! hands over and processes what it releases; time is passed in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Probabilities of faults applied independently to each received frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability a frame is dropped.
    pub drop: f64,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Probability a frame is held back and delivered after the next one.
    pub reorder: f64,
    /// Probability a frame is delayed by up to `max_delay`.
    pub delay: f64,
    /// Longest injected delay (also the longest a reordered frame waits).
    pub max_delay: Duration,
    /// Seed of the fault schedule: the same seed and input give the same faults.
    pub seed: u64,
}

impl Default for LinkFaults {
    /// No faults.
    fn default() -> Self {
        LinkFaults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: 0.0,
            max_delay: Duration::from_millis(20),
            seed: 0,
        }
    }
}

impl LinkFaults {
    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.drop > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0 || self.delay > 0.0
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("delay", self.delay),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "link fault probability {name} = {p} is not in 0..=1"
                ));
            }
        }
        Ok(())
    }
}

/// What the injector did, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames dropped.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Frames delivered after a later one.
    pub reordered: u64,
    /// Frames delayed.
    pub delayed: u64,
}

/// Applies [`LinkFaults`] to a stream of frames. See the module documentation.
#[derive(Debug)]
pub struct FaultInjector<T> {
    cfg: LinkFaults,
    rng: StdRng,
    /// A frame waiting for the next one to overtake it, and its deadline.
    held: Option<(T, Instant)>,
    /// Delayed frames by release time (ties in arrival order).
    delayed: BinaryHeap<Reverse<(Instant, u64, Slot<T>)>>,
    arrivals: u64,
    counts: FaultCounts,
    /// Frames to process now, in order (drained by `poll`).
    ready: VecDeque<T>,
}

/// Heap payload that never takes part in ordering.
#[derive(Debug)]
struct Slot<T>(T);

impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T: Clone> FaultInjector<T> {
    /// An injector following `cfg`.
    pub fn new(cfg: LinkFaults) -> Self {
        FaultInjector {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            held: None,
            delayed: BinaryHeap::new(),
            arrivals: 0,
            counts: FaultCounts::default(),
            ready: VecDeque::new(),
        }
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// A frame arrived at `now`; what may be processed now is then
    /// yielded by [`poll`](Self::poll).
    pub fn handle_frame(&mut self, frame: T, now: Instant) {
        let out = &mut self.ready;
        let cfg = self.cfg;
        if self.rng.gen_bool(cfg.drop) {
            self.counts.dropped += 1;
            return;
        }
        let copies = if self.rng.gen_bool(cfg.duplicate) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let frame = frame.clone();
            if self.rng.gen_bool(cfg.delay) {
                self.counts.delayed += 1;
                let d = cfg.max_delay.mul_f64(self.rng.gen::<f64>());
                self.arrivals += 1;
                self.delayed
                    .push(Reverse((now + d, self.arrivals, Slot(frame))));
            } else if self.held.is_none() && self.rng.gen_bool(cfg.reorder) {
                self.held = Some((frame, now + cfg.max_delay));
            } else {
                out.push_back(frame);
                if let Some((h, _)) = self.held.take() {
                    self.counts.reordered += 1;
                    out.push_back(h);
                }
            }
        }
    }

    /// The next frame to process, in order, if any.
    pub fn poll(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to release.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        let held = self.held.as_ref().map(|(_, at)| *at);
        delayed.into_iter().chain(held).min()
    }

    /// Releases the frames whose delay has passed by `now` to [`poll`](Self::poll).
    pub fn handle_timeout(&mut self, now: Instant) {
        let out = &mut self.ready;
        while self
            .delayed
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Reverse((_, _, Slot(f))) = self.delayed.pop().expect("peeked");
            out.push_back(f);
        }
        if self.held.as_ref().is_some_and(|(_, at)| *at <= now) {
            out.push_back(self.held.take().expect("checked").0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: LinkFaults, n: u32) -> (Vec<u32>, FaultCounts) {
        let mut f = FaultInjector::new(cfg);
        let t0 = Instant::now();
        let mut out = Vec::new();
        for i in 0..n {
            f.handle_frame(i, t0);
            out.extend(std::iter::from_fn(|| f.poll()));
        }
        f.handle_timeout(t0 + Duration::from_secs(1));
        out.extend(std::iter::from_fn(|| f.poll()));
        assert!(f.poll_timeout().is_none());
        (out, f.counts())
    }

    #[test]
    fn off_by_default_and_deterministic() {
        let (out, c) = run(LinkFaults::default(), 100);
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert_eq!(c, FaultCounts::default());
        assert!(!LinkFaults::default().is_active());
        let cfg = LinkFaults {
            drop: 0.2,
            duplicate: 0.1,
            reorder: 0.2,
            delay: 0.1,
            seed: 7,
            ..Default::default()
        };
        assert_eq!(run(cfg, 1000), run(cfg, 1000));
    }

    #[test]
    fn every_frame_is_accounted_for() {
        let cfg = LinkFaults {
            drop: 0.2,
            duplicate: 0.1,
            reorder: 0.3,
            delay: 0.1,
            seed: 3,
            ..Default::default()
        };
        let (out, c) = run(cfg, 10_000);
        assert_eq!(out.len() as u64, 10_000 - c.dropped + c.duplicated);
        let rate = c.dropped as f64 / 10_000.0;
        assert!((0.15..0.25).contains(&rate), "drop rate {rate}");
        assert!(c.reordered > 0 && c.delayed > 0);
        assert!(out.windows(2).any(|w| w[0] > w[1]), "some reordering");
        let bad = LinkFaults {
            drop: 1.5,
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
