//! NNG transport: sockets bridged to tokio, and the gate every pipe and
//! message passes through.
//!
//! May use: nng, tokio's readiness and Aio bridging, the wire format
//! (authentication tags) and the shared counters. Knows nothing about
//! envelopes, members or sequence numbers; must not use `crate::proto`,
//! `crate::driver` or `crate::api` beyond the shared counters.

pub(crate) mod bad_input;
pub(crate) mod gate;
pub(crate) mod socket;
