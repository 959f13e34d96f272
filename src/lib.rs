//! # chorus — brokerless messaging between peer services
//!
//! Services join a bus with no broker in the middle. Each [`Peer`] finds the
//! others through heartbeats (NNG surveyor/respondent) starting from one
//! seed address, publishes events on an NNG pub socket and receives every
//! member's events on an NNG sub socket; subscriptions select events by
//! NATS-style topic patterns (`orders.*`, `orders.>`).
//!
//! ```
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct BidAccepted { bid: u64, amount_cents: u64 }
//!
//! # #[tokio::main] async fn main() -> chorus::Result<()> {
//! let bids = chorus::Peer::builder().name("bids").start().await?;
//! let work = chorus::Peer::builder().name("work-orders").seed(bids.local_url()).start().await?;
//! // Pub/sub does not replay: wait until bids has discovered work-orders.
//! bids.wait_for_members(1, std::time::Duration::from_secs(10)).await?;
//!
//! let mut accepted = work.subscribe::<BidAccepted>("bids.accepted")?;
//! bids.publish("bids.accepted", &BidAccepted { bid: 1, amount_cents: 12_500 }).await?;
//! if let Some(d) = accepted.next().await {
//!     println!("{:?} from {} (seq {})", d.value, d.origin(), d.seq());
//! }
//! bids.shutdown().await;
//! work.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Delivery guarantees
//!
//! Every event published after a member became live and linked (see
//! [`Peer::wait_for_members`]) reaches it at least once: gaps are repaired
//! from the publisher's retransmit buffer, and what cannot be repaired is
//! reported as a [`Loss`] (and counted in [`Stats::lost`]), never skipped
//! silently. Processing is at most once per receiver: a per-origin window
//! and idempotency keys ([`PublishOptions::id`]) drop repeats. When a
//! delivery is acknowledged to its origin depends on how it is consumed:
//!
//! - [`Peer::subscribe`] / [`Peer::subscribe_bytes`]: once the delivery is
//!   queued on the subscription stream;
//! - [`Peer::subscribe_with`] (a [`Handler`]): once the handler returned
//!   `Ok`, or the delivery was dead-lettered after its retries.
//!
//! ## Layers
//!
//! Data flows down on publish and up on receive; each layer is a folder of
//! `src/`, described in `docs/ARCHITECTURE.md`:
//!
//! | layer | folder | what it holds |
//! |---|---|---|
//! | public API | `api/` | [`Peer`], [`PeerBuilder`], [`Subscription`], [`Delivery`], [`MembershipEvents`], [`Observer`], [`Stats`] |
//! | drivers | `driver/` | tokio tasks that own the sockets and feed the cores; [`Handler`] |
//! | protocol cores | `proto/` | sans-IO state machines: [`membership`], [`inbox`], [`outbox`], [`dedup`], [`correlator`], [`faults`] |
//! | wire format | `wire/` | [`Envelope`], [`heartbeat`], [`repair`], [`auth`], specified in `docs/WIRE.md` |
//! | transport | `transport/` | NNG sockets bridged to tokio, the authentication gate |
//!
//! `tests/layers.rs` checks that the protocol cores and the wire format use
//! no socket, clock, runtime or higher layer.

#![warn(missing_docs)]

mod api;
#[cfg(feature = "bench")]
pub mod bench;
mod driver;
mod error;
pub mod proto;
pub mod store;
mod transport;
pub mod wire;

// The public API.
pub use api::builder::{
    Backpressure, PeerBuilder, DEFAULT_RETENTION_AGE, DEFAULT_RETENTION_BYTES, MAX_NNG_BUFFER,
};
pub use api::delivery::{Delivery, DeliveryKey, Loss, Undecodable};
pub use api::events::{Events, MembershipEvents};
pub use api::observer::{KeyFn, Observer, ObserverBuilder, DEFAULT_MAX_PENDING};
pub use api::peer::Peer;
pub use api::publish_options::PublishOptions;
pub use api::stats::Stats;
pub use api::subscription::Subscription;
pub use driver::handler::{DeadLetter, DeadLetterHook, Handler, HandlerOptions};
pub use error::{Error, Result, TransportError};
pub use proto::cursor::{StartAt, TAIL as DURABLE_TAIL};
pub use store::{Fsync, StoreError};

// The wire format.
pub use wire::auth::MIN_BUS_KEY_LEN;
pub use wire::envelope::{Envelope, Headers, Meta, BATCH_FRAME_FACTOR, KIND_EVENT};
pub use wire::frame::{DecodeError, WIRE_VERSION};
pub use wire::id::PeerId;
pub use wire::member::{
    Endpoints, Member, MemberEvent, MemberEventKind, MemberState, PeerInfo,
    MAX_HEARTBEAT_INTERVAL_MS, MAX_NAME_LEN, MAX_URL_LEN,
};
pub use wire::topic::{validate_topic, Pattern, MAX_TOPIC_LEN};
pub use wire::{auth, heartbeat, repair};

// The protocol cores, at the paths they had before the layered tree.
pub use proto::correlator::{Correlator, CorrelatorStats, Expectation, Observation};
pub use proto::{correlator, cursor, dedup, faults, inbox, membership, outbox};

/// README's code blocks are compiled as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
