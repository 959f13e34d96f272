//! Time, schedules and latency histograms of the benchmark.
//!
//! Owns: the open-loop send schedule (each message stamped with the time it
//! was due, the correction for coordinated omission), payloads carrying
//! their stamp, and the HdrHistogram every latency goes into.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::json;

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Lets this thread's sleeps end within microseconds of their deadline
/// (Linux's default timer slack is 50 µs, comparable to what is measured).
pub(crate) fn fine_timer() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and touches only the
    // calling thread's scheduling attribute.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// A fixed send schedule: message `i` is due at `start + i / rate`. The
/// sender sleeps (no spinning: a spinning sender would steal one of the two
/// cores from the system under test) and stamps each message with the time
/// it was *due*, in µs since the epoch, so its own lateness is measured too.
pub(crate) struct Schedule {
    start: Instant,
    start_us: u64,
    rate: f64,
}

impl Schedule {
    pub(crate) fn new(rate: f64) -> Self {
        fine_timer();
        Schedule {
            start: Instant::now(),
            start_us: now_us(),
            rate,
        }
    }

    /// Waits until message `i` is due; returns its stamp.
    pub(crate) fn wait(&self, i: u64) -> u64 {
        let offset = Duration::from_secs_f64(i as f64 / self.rate);
        if let Some(wait) = (self.start + offset).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        self.start_us + offset.as_micros() as u64
    }
}

/// Records the latency of a message stamped `stamp` (µs since the epoch).
pub(crate) fn record(h: &mut Histogram<u64>, stamp: u64) {
    h.saturating_record(now_us().saturating_sub(stamp).max(1));
}

/// A payload of `size` bytes starting with the send time in µs.
pub(crate) fn payload(size: usize, stamp: u64) -> Vec<u8> {
    let mut p = vec![0xa5u8; size.max(8)];
    p[..8].copy_from_slice(&stamp.to_le_bytes());
    p
}

pub(crate) fn stamp_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Latency percentiles in µs.
pub(crate) fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50": h.value_at_quantile(0.50), "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99), "p99_9": h.value_at_quantile(0.999), "max": h.max(),
        "count": h.len(),
    })
}
