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
//! Layers (see `DESIGN.md`): the public API ([`Peer`], [`Subscription`],
//! [`MembershipEvents`]), driver tasks that own the NNG sockets, sans-IO
//! protocol cores ([`membership`]) and the wire format ([`Envelope`],
//! [`heartbeat`], specified in `docs/WIRE.md`).

#![warn(missing_docs)]

mod answerer;
pub mod auth;
mod bad_input;
mod builder;
pub mod correlator;
pub mod dedup;
mod delivery;
mod discovery;
mod envelope;
mod error;
mod events;
pub mod faults;
mod frame;
mod gate;
mod handler;
pub mod heartbeat;
pub mod inbox;
mod inflight;
mod linger;
mod member;
pub mod membership;
mod observer;
pub mod outbox;
mod peer;
mod publish_options;
mod publisher;
mod quarantine;
mod receiver;
pub mod repair;
mod repairer;
mod stats;
mod subscription;
mod topic;
mod transport;

pub use auth::MIN_BUS_KEY_LEN;
pub use builder::{Backpressure, PeerBuilder, MAX_NNG_BUFFER};
pub use correlator::{Correlator, CorrelatorStats, Expectation, Observation};
pub use delivery::{Delivery, Loss};
pub use envelope::{Envelope, Headers, PeerId, KIND_EVENT};
pub use error::{Error, Result};
pub use events::{Events, MembershipEvents};
pub use frame::{DecodeError, WIRE_VERSION};
pub use handler::{DeadLetter, DeadLetterHook, Handler, HandlerOptions};
pub use member::{
    Endpoints, Member, MemberEvent, MemberEventKind, MemberState, PeerInfo, MAX_NAME_LEN,
    MAX_URL_LEN,
};
pub use observer::{KeyFn, Observer, ObserverBuilder, DEFAULT_MAX_PENDING};
pub use peer::Peer;
pub use publish_options::PublishOptions;
pub use stats::Stats;
pub use subscription::Subscription;
pub use topic::{validate_topic, Pattern, MAX_TOPIC_LEN};

/// README's code blocks are compiled as doc tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
