//! What a subscription yields: a decoded value plus the envelope it came in.
//!
//! Owns: [`Delivery`] and its metadata accessors. Cheap to create: the
//! envelope is shared (`Arc`) between every subscription it matched.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::wire::envelope::{Envelope, Headers};
use crate::wire::id::PeerId;

/// One event delivered to a subscription: the value and its metadata.
///
/// ```
/// # #[tokio::main] async fn main() -> chorus::Result<()> {
/// use futures::StreamExt;
/// use chorus::{Peer, PublishOptions};
/// let shop = Peer::builder().listen("inproc://shop").start().await?;
/// let peer = Peer::builder().listen("inproc://billing").seed(shop.local_url()).start().await?;
/// let mut orders = peer.subscribe::<String>("orders.*")?;
/// shop.wait_for_members(1, std::time::Duration::from_secs(10)).await?;
/// let opts = PublishOptions::new().id("order-1").header("tenant", "acme");
/// shop.publish_with("orders.placed", "two tickets", opts).await?;
/// let d = orders.next().await.unwrap();
/// println!("{} #{} from {}: {}", d.topic(), d.seq(), d.origin(), d.value);
/// assert_eq!((d.topic(), d.seq(), d.id()), ("orders.placed", 1, Some("order-1")));
/// assert_eq!(d.headers()["tenant"], "acme");
/// assert_eq!(d.flow_id(), "order-1"); // what events published while handling it carry
/// # shop.shutdown().await; peer.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Delivery<T> {
    /// The payload, decoded into the subscription's type.
    pub value: T,
    envelope: Envelope,
    redelivered: bool,
}

impl<T> Delivery<T> {
    pub(crate) fn new(value: T, envelope: Envelope, redelivered: bool) -> Self {
        Delivery {
            value,
            envelope,
            redelivered,
        }
    }

    /// Whether this event may already have been delivered to an earlier
    /// life of this peer: it restarted (or came back after being declared
    /// Failed) before acknowledging it, and the origin sent it again. A
    /// handler whose side effects are not idempotent checks this (and the
    /// event's id or `(origin, incarnation, seq)`) against its own records.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// A stable key of this event: its origin, the epoch of the origin's
    /// stream and its sequence number. The same event always has the same
    /// key, across redeliveries and restarts of either side (a durable
    /// origin keeps its epoch), and no two events of the bus share one: a
    /// handler dedups on it in its own store, in the transaction of its
    /// side effect, to turn "redelivered" into "handled once".
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey {
            origin: self.envelope.origin,
            stream: self.envelope.incarnation,
            seq: self.envelope.seq,
        }
    }

    /// The publishing peer.
    pub fn origin(&self) -> PeerId {
        self.envelope.origin
    }

    /// The epoch of the publishing peer's stream: its incarnation (which
    /// changes when it restarts), or, for a durable publisher (a data dir),
    /// the epoch its stream keeps across restarts.
    pub fn incarnation(&self) -> u64 {
        self.envelope.incarnation
    }

    /// Sequence number in the origin's stream (per incarnation, from 1).
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }

    /// The concrete topic the event was published on.
    pub fn topic(&self) -> &str {
        &self.envelope.topic
    }

    /// The application message id (idempotency key), if the publisher set one.
    pub fn id(&self) -> Option<&str> {
        self.envelope.id()
    }

    /// Publish time by the publisher's clock.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.envelope.timestamp_us)
    }

    /// The correlation id, if the publisher set one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.envelope.correlation_id()
    }

    /// The flow this event belongs to (see [`Envelope::flow_id`]); what
    /// events published while handling it carry as correlation id.
    pub fn flow_id(&self) -> std::borrow::Cow<'_, str> {
        self.envelope.flow_id()
    }

    /// Application headers.
    pub fn headers(&self) -> &Headers {
        self.envelope.headers()
    }

    /// The raw payload bytes as they arrived.
    pub fn payload(&self) -> &Bytes {
        &self.envelope.payload
    }

    /// The whole envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// A shared copy of the envelope (handlers keep it past the delivery).
    pub(crate) fn envelope_arc(&self) -> Arc<Envelope> {
        Arc::new(self.envelope.clone())
    }

    /// The value, dropping the metadata.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// The stable key of an event ([`Delivery::key`]). Displayed as
/// `origin/stream/seq`, e.g. `00000000000000ab/1733150000000000/42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    /// The publishing peer.
    pub origin: PeerId,
    /// The epoch of its stream.
    pub stream: u64,
    /// The event's sequence number in that stream.
    pub seq: u64,
}

impl std::fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.origin, self.stream, self.seq)
    }
}

/// An event whose payload did not decode into a subscription's type (a
/// missing field, an unknown enum variant, another encoding): counted in
/// `Stats::undecodable`, yielded by
/// [`Peer::undecodable`](crate::Peer::undecodable), and for a handler
/// subscription handed to its dead-letter hook too. It is acknowledged
/// (it would not decode on a redelivery either), never silently.
#[derive(Debug, Clone)]
pub struct Undecodable {
    /// The event as it arrived.
    pub envelope: Arc<Envelope>,
    /// The pattern of the subscription it did not decode for.
    pub pattern: String,
    /// What the decoder said.
    pub error: String,
}

/// Sequence numbers of one origin that will never be delivered: the origin
/// no longer retained them when asked, restarted, or left. Yielded by
/// [`Peer::losses`](crate::Peer::losses) and counted in `Stats::lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loss {
    /// The publishing peer.
    pub origin: PeerId,
    /// Its incarnation.
    pub incarnation: u64,
    /// First lost sequence number.
    pub first: u64,
    /// Last lost sequence number (inclusive).
    pub last: u64,
}

impl Loss {
    /// How many messages were lost.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}
