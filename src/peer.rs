//! The public handle of one member of the bus.
//!
//! Owns: [`Peer`], the caller-facing side of publishing and subscribing:
//! argument validation, payload serialization, size checks, and shutdown.
//! It talks to the driver tasks only through their channels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use std::future::Future;

use crate::builder::Backpressure;
use crate::builder::PeerBuilder;
use crate::delivery::Delivery;
use crate::delivery::Loss;
use crate::discovery::{DiscoveryCmd, View};
use crate::envelope::{encoded_len_bound, Draft, Fields, PeerId};
use crate::error::{Error, Result};
use crate::events::{Events, MembershipEvents};
use crate::handler::{Handler, HandlerOptions};
use crate::member::{Member, MemberEvent, PeerInfo};
use crate::publish_options::PublishOptions;
use crate::publisher::PubCtl;
use crate::receiver::SubCmd;
use crate::stats::{Counters, Stats};
use crate::subscription::{decode_msgpack, decode_raw, Registry, Subscription};
use crate::topic::{validate_topic, Pattern};

/// What [`PeerBuilder::start`] hands over to a new [`Peer`].
pub(crate) struct Parts {
    pub info: Arc<PeerInfo>,
    pub config: PeerBuilder,
    pub counters: Arc<Counters>,
    pub registry: Arc<Registry>,
    pub view: View,
    pub events: broadcast::Sender<MemberEvent>,
    pub pub_tx: mpsc::Sender<Draft>,
    pub pub_ctl: mpsc::UnboundedSender<PubCtl>,
    pub full: Arc<AtomicBool>,
    pub losses: broadcast::Sender<Loss>,
    pub sub_tx: mpsc::UnboundedSender<SubCmd>,
    pub disc_tx: mpsc::Sender<DiscoveryCmd>,
    pub stopping: watch::Sender<bool>,
    pub tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    parts: Parts,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

/// A member of the bus: publishes events and subscribes to topic patterns.
///
/// Cheap to clone; all clones are the same peer. The driver tasks stop on
/// [`shutdown`](Self::shutdown) or when the last clone is dropped.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: u32 }
/// # #[tokio::main] async fn main() -> chorus::Result<()> {
/// use futures::StreamExt;
/// let a = chorus::Peer::builder().name("orders").listen("inproc://orders").start().await?;
/// let b = chorus::Peer::builder().name("billing").listen("inproc://billing")
///     .seed(a.local_url()).start().await?;
/// let mut placed = b.subscribe::<OrderPlaced>("orders.>")?;
/// // Pub/sub does not replay: publish once `a` has `b` as a linked member.
/// a.wait_for_members(1, std::time::Duration::from_secs(10)).await?;
/// a.publish("orders.placed", &OrderPlaced { id: 7 }).await?;
/// let delivery = placed.next().await.unwrap();
/// assert_eq!(delivery.value.id, 7);
/// assert_eq!(delivery.origin(), a.id());
/// # a.shutdown().await; b.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("url", &self.local_url())
            .finish()
    }
}

impl Peer {
    /// A builder with every setting at its default.
    pub fn builder() -> PeerBuilder {
        PeerBuilder::default()
    }

    pub(crate) fn new(mut parts: Parts) -> Self {
        let tasks = std::mem::take(&mut parts.tasks);
        Peer {
            inner: Arc::new(Inner {
                parts,
                tasks: Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.inner.parts.info.id
    }

    /// This peer's incarnation: its start time in µs since the Unix epoch,
    /// so a restarted peer always has a larger one.
    pub fn incarnation(&self) -> u64 {
        self.inner.parts.info.incarnation
    }

    /// The service name given at build time.
    pub fn name(&self) -> &str {
        &self.inner.parts.info.name
    }

    /// This peer's public address (its heartbeat surveyor): what other peers
    /// use as a seed. The real port when told to listen on port 0.
    pub fn local_url(&self) -> &str {
        &self.inner.parts.info.endpoints.survey
    }

    /// Everything this peer advertises to the bus.
    pub fn info(&self) -> &Arc<PeerInfo> {
        &self.inner.parts.info
    }

    /// A snapshot of the member table: every other peer known, live or
    /// remembered as Failed/Left, with its state and when it was last seen.
    pub fn members(&self) -> Vec<Member> {
        self.inner.parts.view.read().as_ref().clone()
    }

    /// Membership changes from now on, as a stream. Call
    /// [`members`](Self::members) for the state at this point.
    pub fn membership(&self) -> MembershipEvents {
        let parts = &self.inner.parts;
        MembershipEvents::new(parts.events.subscribe(), parts.counters.clone())
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.inner.parts.counters.clone()
    }

    /// Waits until at least `n` other members are live and linked both ways
    /// (they receive this peer's events, it receives theirs): what is
    /// published after this is owed to each of them — pub/sub does not
    /// replay what came before. [`Error::Timeout`] after `timeout`.
    pub async fn wait_for_members(&self, n: u64, timeout: std::time::Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.stats();
            if s.members >= n && s.links_in >= n && s.links_out >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "{} of {n} members live, {} linked in, {} linked out after {timeout:?}",
                    s.members, s.links_in, s.links_out
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A snapshot of this peer's counters.
    pub fn stats(&self) -> Stats {
        self.inner.parts.counters.snapshot()
    }

    /// Publishes `value`, serialized as MessagePack (named fields), on `topic`.
    ///
    /// Returns once the message is queued for sending. Waits while the
    /// publish queue or the retransmit buffer is full (see
    /// [`PeerBuilder::backpressure`]). Every live member receives it at least
    /// once (repaired on loss) and processes it at most once.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        self.publish_with(topic, value, PublishOptions::default())
            .await
    }

    /// [`publish`](Self::publish) with an id, correlation id or headers.
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<()> {
        let payload =
            rmp_serde::to_vec_named(value).map_err(|e| Error::Serialize(e.to_string()))?;
        self.publish_bytes_with(topic, payload, options).await
    }

    /// Publishes `value` with an application idempotency key: receivers drop
    /// a message whose key they processed within their duplicate window, so
    /// an application may retry a publish safely.
    pub async fn publish_with_id<T: Serialize + ?Sized>(
        &self,
        key: impl Into<String>,
        topic: &str,
        value: &T,
    ) -> Result<()> {
        self.publish_with(topic, value, PublishOptions::new().id(key))
            .await
    }

    /// Publishes raw bytes on `topic`; subscribers read them with
    /// [`subscribe_bytes`](Self::subscribe_bytes).
    pub async fn publish_bytes(&self, topic: &str, payload: impl Into<Bytes>) -> Result<()> {
        self.publish_bytes_with(topic, payload, PublishOptions::default())
            .await
    }

    /// [`publish_bytes`](Self::publish_bytes) with an id, correlation id or headers.
    ///
    /// Without a correlation id, a message published from inside a
    /// [`subscribe_with`](Self::subscribe_with) handler joins the flow of
    /// the delivery being handled (see [`PublishOptions::caused_by`]).
    pub async fn publish_bytes_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<()> {
        validate_topic(topic)?;
        let payload = payload.into();
        let mut options = options;
        if options.correlation_id.is_none() {
            options.correlation_id = crate::handler::current_flow();
        }
        let size = encoded_len_bound(
            topic,
            options.id.as_deref(),
            options.correlation_id.as_deref(),
            &options.headers,
            payload.len(),
        );
        let max = self.inner.parts.config.max_message_size;
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
        let parts = &self.inner.parts;
        // Encoded here, in the caller's task; the publisher only numbers it.
        let out = Draft::new(
            Fields {
                origin: parts.info.id,
                incarnation: parts.info.incarnation,
                seq: 0,
                id: options.id.as_deref(),
                topic,
                timestamp_us: 0,
                correlation_id: options.correlation_id.as_deref(),
                headers: &options.headers,
                payload: &payload,
            },
            size,
        );
        match parts.config.backpressure {
            Backpressure::Wait => parts.pub_tx.send(out).await.map_err(|_| Error::Shutdown),
            Backpressure::FailFast => {
                if parts.full.load(Ordering::Relaxed) {
                    return Err(Error::BufferFull);
                }
                parts.pub_tx.try_send(out).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => Error::BufferFull,
                    mpsc::error::TrySendError::Closed(_) => Error::Shutdown,
                })
            }
        }
    }

    /// Explicit losses from now on: sequence numbers of some origin that
    /// will never be delivered here (no longer retained by the origin when
    /// asked, or the origin restarted or left with them missing).
    pub fn losses(&self) -> Events<Loss> {
        let parts = &self.inner.parts;
        Events::new(parts.losses.subscribe(), parts.counters.clone())
    }

    /// Subscribes to `pattern` (`orders.created`, `orders.*`, `orders.>`),
    /// decoding each payload as MessagePack into `T`. Payloads that do not
    /// decode are skipped and counted in [`Stats::undecodable`].
    pub fn subscribe<T: DeserializeOwned>(&self, pattern: &str) -> Result<Subscription<T>> {
        self.register(pattern, decode_msgpack::<T>)
    }

    /// Runs `handler` for every delivery matching `pattern`, one at a time
    /// in order, with the default [`HandlerOptions`] (5 attempts with
    /// backoff, then a dead letter). A delivery is acknowledged to its origin
    /// only once the handler succeeded or it was dead-lettered.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> chorus::Result<()> {
    /// let peer = chorus::Peer::builder().listen("inproc://handlers").start().await?;
    /// let handler = peer.subscribe_with("orders.>", |d: chorus::Delivery<u64>| async move {
    ///     println!("order {}", d.value);
    ///     Ok::<(), std::io::Error>(())
    /// })?;
    /// peer.shutdown().await;
    /// handler.finished().await; // a handler stops with its peer
    /// # Ok(()) }
    /// ```
    pub fn subscribe_with<T, F, Fut, E>(&self, pattern: &str, handler: F) -> Result<Handler>
    where
        T: DeserializeOwned + Clone + Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.subscribe_with_options(pattern, HandlerOptions::default(), handler)
    }

    /// [`subscribe_with`](Self::subscribe_with) with a retry policy and dead-letter hook.
    pub fn subscribe_with_options<T, F, Fut, E>(
        &self,
        pattern: &str,
        options: HandlerOptions,
        handler: F,
    ) -> Result<Handler>
    where
        T: DeserializeOwned + Clone + Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let sub = self.register_tracked(pattern, decode_msgpack::<T>, true)?;
        Ok(crate::handler::spawn(
            sub,
            options,
            self.inner.parts.counters.clone(),
            handler,
        ))
    }

    /// Subscribes to `pattern`, yielding payloads as raw bytes.
    pub fn subscribe_bytes(&self, pattern: &str) -> Result<Subscription<Bytes>> {
        self.register(pattern, decode_raw)
    }

    fn register<T>(
        &self,
        pattern: &str,
        decode: fn(&Bytes) -> std::result::Result<T, String>,
    ) -> Result<Subscription<T>> {
        self.register_tracked(pattern, decode, false)
    }

    fn register_tracked<T>(
        &self,
        pattern: &str,
        decode: fn(&Bytes) -> std::result::Result<T, String>,
        tracked: bool,
    ) -> Result<Subscription<T>> {
        let pattern = Pattern::parse(pattern)?;
        let parts = &self.inner.parts;
        Subscription::register(
            &parts.registry,
            &parts.counters,
            pattern,
            parts.config.subscription_buffer,
            decode,
            tracked,
        )
        .ok_or(Error::Shutdown)
    }

    /// Stops the peer: announces Left to the members (so they drop it within
    /// a round trip instead of the failure bound), sends what was queued,
    /// closes its sockets and ends every open subscription stream. Later
    /// calls return at once; `publish` and `subscribe` then fail with
    /// [`Error::Shutdown`].
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let parts = &self.inner.parts;
        parts.stopping.send_replace(true);
        let (left, left_wait) = oneshot::channel();
        if parts.disc_tx.send(DiscoveryCmd::Leave(left)).await.is_ok() {
            let _ = left_wait.await;
        }
        let (pub_done, pub_wait) = oneshot::channel();
        let (sub_done, sub_wait) = oneshot::channel();
        if parts.pub_ctl.send(PubCtl::Shutdown(pub_done)).is_ok() {
            let _ = pub_wait.await;
        }
        if parts.sub_tx.send(SubCmd::Shutdown(sub_done)).is_ok() {
            let _ = sub_wait.await;
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(id = %self.id(), "peer shut down");
    }
}
