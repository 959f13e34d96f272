//! When the publisher sends what it has staged: at once while the event
//! rate is low (no added latency), after gathering a batch under load.
//!
//! Owns: the estimate of the rate at which events are published and the
//! batch size worth waiting for. Sans-IO: the driver passes the time in and
//! keeps the timer (tokio's, so a linger lasts at most about a millisecond,
//! however short [`LINGER`] is).
//!
//! Why: a publisher whose application publishes slightly slower than the
//! driver sends would otherwise send every event alone, one NNG message
//! each, and a receiver in another process pays NNG's per-message cost for
//! each — the flood then overruns NNG's queues and turns into repair
//! traffic. Above [`LOADED_RATE`] the driver waits until it holds the events
//! of about [`LINGER`] (or the batch size bound) before sending.

use std::time::{Duration, Instant};

/// Events per second above which the publisher gathers batches.
pub(crate) const LOADED_RATE: f64 = 50_000.0;
/// How long a batch gathers events under load (its share of the rate).
pub(crate) const LINGER: Duration = Duration::from_micros(1000);

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Linger {
    /// Seconds between events, smoothed over recent sends (intervals, not
    /// rates: two events that happen to come together barely move it).
    interval: f64,
    last_send: Option<Instant>,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            interval: 1.0,
            last_send: None,
        }
    }
}

impl Linger {
    /// Whether `staged` events are worth sending now; if not, the driver
    /// waits for more, at most [`LINGER`].
    pub(crate) fn send_now(&self, staged: u32) -> bool {
        let rate = self.rate();
        if rate < LOADED_RATE {
            return true;
        }
        let target = (rate * LINGER.as_secs_f64()) as u32;
        staged >= target.max(2)
    }

    /// Records that `events` were sent at `now`.
    pub(crate) fn sent(&mut self, events: u32, now: Instant) {
        if let Some(last) = self.last_send {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.interval = 0.7 * self.interval + 0.3 * secs / f64::from(events.max(1));
        }
        self.last_send = Some(now);
    }

    /// The smoothed event rate, events per second.
    fn rate(&self) -> f64 {
        1.0 / self.interval.max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` single events `gap` apart, from `t`; returns the end time.
    fn singles(l: &mut Linger, t: Instant, gap: Duration, n: u32) -> Instant {
        let mut t = t;
        for _ in 0..n {
            t += gap;
            l.sent(1, t);
        }
        t
    }

    #[test]
    fn sends_at_once_while_the_rate_is_low() {
        let mut l = Linger::default();
        assert!(l.send_now(1), "nothing known yet: no waiting");
        // 10,000 events per second: every event goes out alone.
        let t = singles(&mut l, Instant::now(), Duration::from_micros(100), 50);
        assert!((l.rate() - 10_000.0).abs() < 100.0, "{}", l.rate());
        assert!(l.send_now(1));
        // A late event and the next one right after it (a jittery
        // schedule) do not make it linger.
        l.sent(1, t + Duration::from_micros(199));
        l.sent(1, t + Duration::from_micros(200));
        assert!(l.send_now(1), "{}", l.rate());
    }

    #[test]
    fn gathers_about_a_linger_of_events_under_load() {
        let mut l = Linger::default();
        // 500,000 events per second.
        let t = singles(&mut l, Instant::now(), Duration::from_micros(2), 50);
        assert!(!l.send_now(1));
        assert!(!l.send_now(250));
        assert!(l.send_now(500), "1 ms at 500 k/s");
        // Batches of 500 every millisecond keep the estimate where it is.
        let mut t = t;
        for _ in 0..20 {
            t += LINGER;
            l.sent(500, t);
        }
        assert!(!l.send_now(250) && l.send_now(500));
        // The load stops: one slow send and it sends at once again.
        l.sent(3, t + Duration::from_millis(5));
        l.sent(1, t + Duration::from_millis(15));
        assert!(l.send_now(1), "{}", l.rate());
    }
}
