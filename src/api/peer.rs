//! The public handle of one member of the bus.
//!
//! Owns: [`Peer`], the caller-facing side of publishing and subscribing:
//! argument validation, payload serialization, size checks, and shutdown.
//! It talks to the driver tasks only through their channels.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::future::Future;

use crate::api::builder::{Backpressure, Limits, PeerBuilder};
use crate::api::delivery::{Delivery, Loss, Undecodable};
use crate::api::events::{Events, MembershipEvents};
use crate::api::publish_options::PublishOptions;
use crate::api::stats::{Counters, Stats};
use crate::api::subscription::{decode_msgpack, decode_raw, Reader, Subscription};
use crate::driver::discovery::DiscoveryCmd;
use crate::driver::durable;
use crate::driver::handler::{self, Handler, HandlerOptions, HandlerParts};
use crate::driver::publisher::{FlushRequest, NotStaged, PublisherCmd, Queued, Unacked};
use crate::driver::receiver::ReceiverCmd;
use crate::driver::spawn::{spawn, Drivers};
use crate::error::{Error, Result};
use crate::proto::group_view::{key_hash, KEY_HEADER};
use crate::wire::envelope::{encoded_len_bound, Draft, Fields};
use crate::wire::group::{MAX_GROUP_NAME, RESERVED_PREFIX};
use crate::wire::id::PeerId;
use crate::wire::member::{Member, PeerInfo};
use crate::wire::topic::{validate_topic, Pattern};

/// What every clone of a [`Peer`] shares.
struct Shared {
    drivers: Drivers,
    limits: Limits,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Durable consumers subscribed: their names, and a signal each sends
    /// once it has committed its final position.
    durables: Mutex<(HashSet<String>, Vec<oneshot::Receiver<()>>)>,
    /// Held while a group handler is checked and registered.
    groups: Mutex<()>,
}

impl PeerBuilder {
    /// Starts the peer: checks every setting, then opens the sockets,
    /// listens, joins through the seeds and starts the driver tasks. Must be
    /// called inside a tokio runtime (multi-threaded preferred: heartbeats
    /// run on their own task).
    pub async fn start(self) -> Result<Peer> {
        let (config, limits) = self.checked()?;
        let mut drivers = spawn(config)?;
        let tasks = std::mem::take(&mut drivers.tasks);
        Ok(Peer {
            shared: Arc::new(Shared {
                drivers,
                limits,
                tasks: Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
                durables: Mutex::default(),
                groups: Mutex::default(),
            }),
        })
    }
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
    shared: Arc<Shared>,
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

    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.shared.drivers.info.id
    }

    /// This peer's incarnation: its start time in µs since the Unix epoch,
    /// so a restarted peer always has a larger one.
    pub fn incarnation(&self) -> u64 {
        self.shared.drivers.info.incarnation
    }

    /// The service name given at build time.
    pub fn name(&self) -> &str {
        &self.shared.drivers.info.name
    }

    /// This peer's public address (its heartbeat surveyor): what other peers
    /// use as a seed. The real port when told to listen on port 0.
    pub fn local_url(&self) -> &str {
        &self.shared.drivers.info.endpoints.survey
    }

    /// Everything this peer advertises to the bus.
    pub fn info(&self) -> &Arc<PeerInfo> {
        &self.shared.drivers.info
    }

    /// A snapshot of the member table: every other peer known, live or
    /// remembered as Failed/Left, with its state and when it was last seen.
    pub fn members(&self) -> Vec<Member> {
        self.shared.drivers.view.read().as_ref().clone()
    }

    /// Membership changes from now on, as a stream. Call
    /// [`members`](Self::members) for the state at this point.
    pub fn membership(&self) -> MembershipEvents {
        let parts = &self.shared.drivers;
        MembershipEvents::new(parts.events.subscribe(), parts.counters.clone())
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.shared.drivers.counters.clone()
    }

    /// Waits until at least `n` other members are live and linked both ways
    /// (they receive this peer's events, it receives theirs): what is
    /// published after this is owed to each of them — pub/sub does not
    /// replay what came before. [`Error::Timeout`] after `timeout`. Every
    /// member counts, tools included; to wait for the services a peer
    /// needs by name, use [`wait_for_services`](Self::wait_for_services).
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

    /// Waits until, for every name in `services`, a live member of that
    /// service name (one started without [`PeerBuilder::tool`]) is on the
    /// bus, and every live member is linked both ways: what a service
    /// publishes after this reaches the services it needs. Tools (the
    /// `chorus` command line, scripts) are members but never count as a
    /// service. [`Error::Timeout`] after `timeout`, naming what is missing.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> chorus::Result<()> {
    /// use std::time::Duration;
    /// let bids = chorus::Peer::builder().name("bids").listen("inproc://svc-bids").start().await?;
    /// let work = chorus::Peer::builder().name("work-orders").listen("inproc://svc-work")
    ///     .seed(bids.local_url()).start().await?;
    /// bids.wait_for_services(&["work-orders"], Duration::from_secs(10)).await?;
    /// # bids.shutdown().await; work.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_services(
        &self,
        services: &[&str],
        timeout: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let members = self.members();
            let missing: Vec<&str> = services
                .iter()
                .copied()
                .filter(|name| {
                    !members
                        .iter()
                        .any(|m| m.state.is_live() && !m.info.tool && m.name() == *name)
                })
                .collect();
            let s = self.stats();
            let linked = s.links_in >= s.members && s.links_out >= s.members;
            if missing.is_empty() && linked {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(if missing.is_empty() {
                    format!(
                        "every service is live, but of {} members {} are linked in and {} out after {timeout:?}",
                        s.members, s.links_in, s.links_out
                    )
                } else {
                    format!(
                        "no live member of service {} after {timeout:?} ({} members live)",
                        missing.join(", "),
                        s.members
                    )
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A snapshot of this peer's counters.
    pub fn stats(&self) -> Stats {
        self.shared.drivers.counters.snapshot()
    }

    /// Publishes `value`, serialized as MessagePack (named fields), on `topic`.
    ///
    /// Returns once the message is numbered and staged for sending (sent
    /// at once at a low rate, within ~1 ms under load). Waits while the
    /// retransmit buffer is full (see
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
        self.check_topic(topic)?;
        self.enqueue(topic, payload.into(), options, None).await
    }

    /// A topic an application may publish on: valid, not reserved.
    pub(crate) fn check_topic(&self, topic: &str) -> Result<()> {
        validate_topic(topic)?;
        if topic.starts_with(RESERVED_PREFIX) {
            return Err(Error::InvalidTopic {
                topic: topic.to_owned(),
                reason: "the prefix \"$chorus.\" is reserved for chorus's own control events",
            });
        }
        Ok(())
    }

    /// The subscriptions (and pending requests) of this peer.
    pub(crate) fn registry(&self) -> &crate::api::subscription::Registry {
        &self.shared.drivers.registry
    }

    /// Encodes and queues one event (its topic checked by the caller);
    /// with `assigned`, told whether a consumer group was given it.
    pub(crate) async fn enqueue(
        &self,
        topic: &str,
        payload: Bytes,
        options: PublishOptions,
        assigned: Option<oneshot::Sender<bool>>,
    ) -> Result<()> {
        let mut options = options;
        if options.correlation_id.is_none() {
            options.correlation_id = handler::current_flow();
        }
        handler::note_published();
        let size = encoded_len_bound(
            topic,
            options.id.as_deref(),
            options.correlation_id.as_deref(),
            &options.headers,
            payload.len(),
        );
        let max = self.shared.limits.max_message_size;
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
        let parts = &self.shared.drivers;
        parts.store.check()?;
        // The consumer groups' partition key, hashed here too.
        let key = options
            .headers
            .get(KEY_HEADER)
            .or(options.id.as_ref())
            .map(|k| key_hash(k));
        // Encoded here, in the caller's task; the publisher only numbers it.
        let out = Draft::new(
            Fields {
                origin: parts.info.id,
                incarnation: parts.info.stream_epoch(),
                seq: 0,
                id: options.id.as_deref(),
                topic,
                timestamp_us: 0,
                correlation_id: options.correlation_id.as_deref(),
                headers: &options.headers,
                payload: &payload,
            },
            size,
            key,
        );
        let out = match assigned {
            None => Queued::Event(out),
            Some(tx) => Queued::Request(out, tx),
        };
        // Numbered and staged by this task itself.
        match self.shared.limits.backpressure {
            Backpressure::Wait => parts.publish.stage(out).await.map_err(|_| Error::Shutdown),
            Backpressure::FailFast => match parts.publish.try_stage(out) {
                Ok(()) => Ok(()),
                Err(NotStaged::Full(_)) => Err(Error::BufferFull),
                Err(NotStaged::Closed) => Err(Error::Shutdown),
            },
        }
    }

    /// Waits until every event published so far is in the retransmit
    /// buffer, sent, and acknowledged by every live member (acks ride on
    /// heartbeats, so this takes up to about one heartbeat interval).
    /// [`Error::Timeout`] after `timeout`, naming the members that had not
    /// acknowledged; [`Error::Shutdown`] if the peer is shut down meanwhile.
    ///
    /// A program that publishes and exits calls this (or
    /// [`shutdown`](Self::shutdown), which flushes within
    /// [`PeerBuilder::shutdown_linger`]) so that its last events are not
    /// lost with it: `publish` returns once an event is queued, not sent.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> chorus::Result<()> {
    /// # let a = chorus::Peer::builder().listen("inproc://flush-a").start().await?;
    /// # let b = chorus::Peer::builder().listen("inproc://flush-b").seed(a.local_url()).start().await?;
    /// # a.wait_for_members(1, std::time::Duration::from_secs(10)).await?;
    /// a.publish("orders.created", &7u32).await?;
    /// a.flush(std::time::Duration::from_secs(5)).await?; // b has it
    /// # a.shutdown().await; b.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<()> {
        let parts = &self.shared.drivers;
        let (sent_tx, sent) = oneshot::channel();
        let (acked_tx, acked) = oneshot::channel();
        let request = Queued::Flush(FlushRequest {
            sent: sent_tx,
            acked: acked_tx,
        });
        let work = async {
            parts
                .publish
                .tx
                .send(request)
                .await
                .map_err(|_| Error::Shutdown)?;
            let through = sent.await.map_err(|_| Error::Shutdown)?;
            parts.store.check()?; // what was sent is in the log
            acked.await.map_err(|_| Error::Shutdown)?;
            Ok::<u64, Error>(through)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(done) => done.map(|_| ()),
            Err(_) => Err(self.unacknowledged(timeout).await),
        }
    }

    /// The error of a flush that timed out: who had not acknowledged what.
    async fn unacknowledged(&self, timeout: std::time::Duration) -> Error {
        let (tx, rx) = oneshot::channel();
        let parts = &self.shared.drivers;
        if parts
            .publisher
            .send(PublisherCmd::Unacked(None, tx))
            .is_err()
        {
            return Error::Shutdown;
        }
        let Ok((last_seq, unacked)) = rx.await else {
            return Error::Shutdown;
        };
        let tx = &parts.publish.tx;
        let queued = tx.max_capacity() - tx.capacity();
        Error::Timeout(describe_unacked(
            &self.members(),
            last_seq,
            &unacked,
            queued,
            timeout,
        ))
    }

    /// Events from now on whose payload did not decode into the type of a
    /// subscription they matched (each also counted in
    /// [`Stats::undecodable`]; a handler subscription dead-letters them too).
    pub fn undecodable(&self) -> Events<Undecodable> {
        let parts = &self.shared.drivers;
        Events::new(parts.undecodable.subscribe(), parts.counters.clone())
    }

    /// Explicit losses from now on: sequence numbers of some origin that
    /// will never be delivered here (no longer retained by the origin when
    /// asked, or the origin restarted or left with them missing).
    pub fn losses(&self) -> Events<Loss> {
        let parts = &self.shared.drivers;
        Events::new(parts.losses.subscribe(), parts.counters.clone())
    }

    /// Subscribes to `pattern` (`orders.created`, `orders.*`, `orders.>`),
    /// decoding each payload as MessagePack into `T`. Payloads that do not
    /// decode are skipped, counted in [`Stats::undecodable`] and announced
    /// on [`undecodable`](Self::undecodable).
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
        self.handle(pattern, decode_msgpack::<T>, options, handler)
    }

    /// [`subscribe_with_options`](Self::subscribe_with_options) for raw
    /// payload bytes (any encoding: nothing is decoded).
    pub fn subscribe_bytes_with_options<F, Fut, E>(
        &self,
        pattern: &str,
        options: HandlerOptions,
        handler: F,
    ) -> Result<Handler>
    where
        F: Fn(Delivery<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.handle(pattern, decode_raw, options, handler)
    }

    fn handle<T, F, Fut, E>(
        &self,
        pattern: &str,
        decode: fn(&Bytes) -> std::result::Result<T, String>,
        options: HandlerOptions,
        handler: F,
    ) -> Result<Handler>
    where
        T: Clone + Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if let Some(group) = options.group.clone() {
            return self.handle_group(pattern, decode, options, group, handler);
        }
        let Some(name) = options.durable.clone() else {
            let sub = self.register_as(pattern, decode, Reader::Handler)?;
            let parts = self.handler_parts(None, None, None);
            return Ok(handler::spawn(sub, options, parts, handler));
        };
        let parts = &self.shared.drivers;
        let Some((dir, positions)) = parts.durable_store.lock().clone() else {
            return Err(Error::Config(format!(
                "durable consumer {name:?} needs a data dir (PeerBuilder::data_dir) to keep its position in"
            )));
        };
        if !self.shared.durables.lock().0.insert(name.clone()) {
            return Err(Error::Config(format!(
                "durable consumer {name:?} is already subscribed on this peer"
            )));
        }
        let opened = durable::open(
            &name,
            options.start_at,
            dir,
            positions,
            parts.received.clone(),
            parts.registry.clone(),
        );
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                self.shared.durables.lock().0.remove(&name);
                return Err(e);
            }
        };
        let sub = self.register_as(pattern, decode, Reader::Durable(opened.cursor))?;
        let mut committer = opened.committer;
        committer.sub = sub.id();
        let _ = parts.receiver.send(ReceiverCmd::Durable {
            positions: opened.positions,
            history: opened.history,
        });
        let (finished, done) = oneshot::channel();
        self.shared.durables.lock().1.push(done);
        let parts = self.handler_parts(Some(committer), Some(finished), None);
        Ok(handler::spawn(sub, options, parts, handler))
    }

    /// A handler in a consumer group (see [`HandlerOptions::group`]).
    fn handle_group<T, F, Fut, E>(
        &self,
        pattern: &str,
        decode: fn(&Bytes) -> std::result::Result<T, String>,
        options: HandlerOptions,
        name: String,
        handler: F,
    ) -> Result<Handler>
    where
        T: Clone + Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(Error::Config(format!(
                "a group name of {} bytes (1 to {MAX_GROUP_NAME})",
                name.len()
            )));
        }
        let durable = match &options.durable {
            None => false,
            Some(d) if *d == name => true,
            Some(d) => {
                return Err(Error::Config(format!(
                    "group {name:?} with durable({d:?}): a durable group's position is the group's, kept under its name; give .durable({name:?})"
                )))
            }
        };
        if !matches!(options.start_at, crate::StartAt::New) {
            return Err(Error::Config(format!(
                "group {name:?}: start_at is for durable consumers; a group gets what its origins publish from when they first count it"
            )));
        }
        let parts = &self.shared.drivers;
        // Checked and registered under one lock: one handler per group here.
        let _one = self.shared.groups.lock();
        if parts.registry.has_group(&name) {
            return Err(Error::Config(format!(
                "group {name:?} already has a handler on this peer"
            )));
        }
        let reader = Reader::Group {
            name: name.as_str().into(),
            durable,
            me: parts.info.id,
        };
        let sub = self.register_as(pattern, decode, reader)?;
        let group = parts.registry.group(sub.id());
        let parts = self.handler_parts(None, None, group);
        Ok(handler::spawn(sub, options, parts, handler))
    }

    /// What a handler task works with, besides its subscription.
    fn handler_parts(
        &self,
        committer: Option<durable::Committer>,
        finished: Option<oneshot::Sender<()>>,
        group: Option<Arc<crate::driver::group::GroupSub>>,
    ) -> HandlerParts {
        let d = &self.shared.drivers;
        HandlerParts {
            counters: d.counters.clone(),
            committer,
            finished,
            group,
            publish: d.publish.tx.clone(),
        }
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
        self.register_as(pattern, decode, Reader::Stream)
    }

    fn register_as<T>(
        &self,
        pattern: &str,
        decode: fn(&Bytes) -> std::result::Result<T, String>,
        reader: Reader,
    ) -> Result<Subscription<T>> {
        let pattern = Pattern::parse(pattern)?;
        let parts = &self.shared.drivers;
        Subscription::register(
            &parts.registry,
            &parts.counters,
            &parts.undecodable,
            pattern,
            self.shared.limits.subscription_buffer,
            decode,
            reader,
        )
        .ok_or(Error::Shutdown)
    }

    /// Stops the peer: sends what was queued and waits up to
    /// [`PeerBuilder::shutdown_linger`] (default 2 s) until every live member
    /// acknowledged it (a warning names those that did not), then announces
    /// Left to the members (so they drop it within a round trip instead of
    /// the failure bound), closes its sockets and ends every open
    /// subscription stream. Later
    /// calls return at once; `publish` and `subscribe` then fail with
    /// [`Error::Shutdown`].
    pub async fn shutdown(&self) {
        if self.shared.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let linger = self.shared.limits.shutdown_linger;
        if !linger.is_zero() {
            if let Err(e) = self.flush(linger).await {
                tracing::warn!(error = %e, "shutting down with events not acknowledged by every member");
            }
        }
        let parts = &self.shared.drivers;
        // Group handlers stop taking work; their final positions go out
        // with the goodbye, so what they had not started is handed over.
        parts.registry.stop_groups().await;
        parts.stopping.send_replace(true);
        let (left, left_wait) = oneshot::channel();
        if parts
            .discovery
            .send(DiscoveryCmd::Leave(left))
            .await
            .is_ok()
        {
            let _ = left_wait.await;
        }
        let (pub_done, pub_wait) = oneshot::channel();
        let (sub_done, sub_wait) = oneshot::channel();
        if parts
            .publisher
            .send(PublisherCmd::Shutdown(pub_done))
            .is_ok()
        {
            let _ = pub_wait.await;
        }
        if parts.receiver.send(ReceiverCmd::Shutdown(sub_done)).is_ok() {
            let _ = sub_wait.await;
        }
        // Durable handlers finish what they were handed and commit.
        let durables = std::mem::take(&mut self.shared.durables.lock().1);
        for done in durables {
            if tokio::time::timeout(linger.max(Duration::from_secs(1)), done)
                .await
                .is_err()
            {
                tracing::warn!("a durable handler did not finish in time; its uncommitted tail will be handled again (flagged redelivered)");
            }
        }
        parts.durable_store.lock().take(); // the data dir is free once the tasks are done
        let tasks = std::mem::take(&mut *self.shared.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(id = %self.id(), "peer shut down");
    }
}

/// "2 of 3 members had not acknowledged seq 57 after 5s: invoicing
/// (00…0a) through 40, work-1 (00…0b) nothing".
fn describe_unacked(
    members: &[Member],
    last_seq: u64,
    unacked: &Unacked,
    queued: usize,
    timeout: std::time::Duration,
) -> String {
    let live = members.iter().filter(|m| m.state.is_live()).count();
    let who: Vec<String> = unacked
        .iter()
        .map(|(id, ack)| {
            let name = members
                .iter()
                .find(|m| m.id() == *id)
                .map_or("?", |m| m.name());
            match ack {
                Some(seq) => format!("{name} ({id}) through {seq}"),
                None => format!("{name} ({id}) nothing yet"),
            }
        })
        .collect();
    let mut text = format!(
        "{} of {live} members had not acknowledged seq {last_seq} after {timeout:?}",
        unacked.len()
    );
    if !who.is_empty() {
        text.push_str(": ");
        text.push_str(&who.join(", "));
    }
    if queued > 0 {
        text.push_str(&format!(
            "; {queued} events still queued (the retransmit buffer is full)"
        ));
    }
    text
}
