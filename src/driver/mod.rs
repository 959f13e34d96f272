//! Drivers: the tokio tasks that own the NNG sockets and feed the protocol
//! cores, the only layer that knows about both time and I/O.
//!
//! One task per socket owner: discovery (surveyor + respondent), the
//! publisher (pub0 and the outbox), the repair server (rep0), the receiver
//! (sub0, the inbox and one NAK sender per origin), and one task per
//! handler. Other code talks to them through channels; no socket is shared.
//! [`spawn`](spawn::spawn) wires them for one peer. Drivers read time from
//! [`clock`] (tokio's clock, so `tokio::time::pause()` drives a whole peer)
//! and hand it to the cores.

pub(crate) mod clock;
pub(crate) mod discovery;
pub(crate) mod durable;
pub(crate) mod group;
pub(crate) mod handler;
pub(crate) mod inflight;
pub(crate) mod journal;
pub(crate) mod log_writer;
pub(crate) mod nak_sender;
pub(crate) mod output_acks;
pub(crate) mod publisher;
pub(crate) mod receiver;
pub(crate) mod repair_server;
pub(crate) mod replies;
pub(crate) mod spawn;
