//! The public API: what an application holds and calls.
//!
//! [`Peer`](peer::Peer) and its [`PeerBuilder`](builder::PeerBuilder),
//! subscriptions and deliveries, membership events, the observer, stats.
//! It validates arguments and encodes payloads in the caller's task, and
//! talks to the driver tasks only through their channels.

pub(crate) mod builder;
pub(crate) mod delivery;
pub(crate) mod events;
pub(crate) mod observer;
pub(crate) mod peer;
pub(crate) mod publish_options;
pub(crate) mod queue;
pub(crate) mod request;
pub(crate) mod stats;
pub(crate) mod subscription;
