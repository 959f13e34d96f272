//! Protocol cores: pure, synchronous state machines (sans-IO).
//!
//! Each core takes its input and the current time as arguments and returns
//! what to do, in the shape of quinn-proto: `handle_*(…, now)` feeds it a
//! message or an event, `poll_*()` drains the actions it decided on, and
//! `poll_timeout()` says when it next wants to be woken (and
//! `handle_timeout(now)` wakes it). An answer to one request, such as the
//! outbox's answer to a NAK, is the return value of its `handle_*` call.
//! The driver tasks (`crate::driver`) own the sockets and the clock and call
//! them.
//!
//! May use: `std` (but not `std::net`), the wire types (`crate::wire`),
//! `crate::error`, and plain-data crates (serde, bytes, rand with a seed
//! given in, fnv). Must not use: tokio, nng, `Instant::now`,
//! `SystemTime::now`, `std::net`, spawning threads or tasks, or anything
//! under `crate::driver`, `crate::transport` or `crate::api`.
//! `tests/layers.rs` checks this rule on every test run.

pub mod assign;
pub mod correlator;
pub mod cursor;
pub mod dedup;
pub(crate) mod direct_acks;
pub mod faults;
pub mod group_member;
pub mod group_view;
pub mod inbox;
pub(crate) mod linger;
pub mod membership;
pub mod outbox;
pub(crate) mod quarantine;
