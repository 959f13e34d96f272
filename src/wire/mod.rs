//! The wire format: what travels between peers, and its encoders and
//! decoders (specified byte by byte in `docs/WIRE.md`).
//!
//! Every decoder returns a `Result` and never panics, whatever the input.
//!
//! May use: `std` (but not `std::net`), serde/rmp, bytes, blake3 and
//! `crate::error`. Must not use: tokio, nng, a clock, `std::net`, spawning,
//! the protocol cores (`crate::proto`) or anything under `crate::driver`,
//! `crate::transport` or `crate::api`. `tests/layers.rs` checks this rule on
//! every test run.

pub mod auth;
pub(crate) mod batch;
pub(crate) mod envelope;
pub(crate) mod frame;
pub mod group;
pub mod heartbeat;
pub(crate) mod id;
pub(crate) mod member;
pub mod repair;
pub mod reply;
pub(crate) mod topic;
pub(crate) mod url;
