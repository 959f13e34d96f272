//! The clock every driver reads and hands to the protocol cores.
//!
//! Owns: the one source of monotonic time for a peer (tokio's clock, so a
//! test with `tokio::time::pause()` drives sleeps and cores alike) and the
//! wall clock used for timestamps and incarnations.

use std::time::{SystemTime, UNIX_EPOCH};

/// Monotonic now, on the clock tokio's timers sleep on.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Microseconds since the Unix epoch by the system clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
