//! Subscriptions: the registry the receiver dispatches into, and the
//! [`Subscription`] stream the application reads.
//!
//! Owns: which patterns are subscribed and the bounded channel of each, and
//! turning payload bytes into the subscriber's type. A payload that does not
//! decode is counted (`undecodable`), logged once per subscription,
//! announced as an [`Undecodable`] event (and, for a handler, dead-lettered)
//! and skipped; the stream goes on. Must not touch sockets.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::api::delivery::{Delivery, Undecodable};
use crate::api::queue::{self, Feed, Refused};
use crate::api::stats::Counters;
use crate::driver::group::{ControlEvent, GroupSub, Route};
use crate::driver::inflight::InFlight;
use crate::driver::replies::Replies;
use crate::proto::cursor::Cursor;
use crate::proto::group_view::GroupView;
use crate::wire::envelope::Envelope;
use crate::wire::group::{GroupStatus, RESERVED_PREFIX};
use crate::wire::id::PeerId;
use crate::wire::reply::REPLY_FOR_HEADER;
use crate::wire::topic::Pattern;

/// One envelope on its way to a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub envelope: Envelope,
    /// It may already have reached an earlier life of this peer.
    pub redelivered: bool,
    /// Only for durable subscriptions (see `Inbox::is_replay`).
    pub replay: bool,
}

struct Entry {
    id: u64,
    pattern: Pattern,
    tx: Feed<Routed>,
    /// A handler subscription: what it is given is in flight until it is done.
    tracked: bool,
    /// A durable subscription: what it is handed.
    durable: Option<Mutex<Cursor>>,
    /// A group handler: handed its share.
    group: Option<Arc<GroupSub>>,
}

/// Who reads a subscription, which decides what it is handed and whether
/// its deliveries are tracked until done.
#[derive(Debug)]
pub(crate) enum Reader {
    /// A stream the application reads: acknowledged once queued.
    Stream,
    /// A handler: in flight until it is done with a delivery.
    Handler,
    /// A durable handler: handed what its cursor admits.
    Durable(Cursor),
    /// A handler in consumer group `name` (`durable` or not) on the peer
    /// `me`: handed what the origins assign to it.
    Group {
        name: Arc<str>,
        durable: bool,
        me: PeerId,
    },
}

/// The set of live subscriptions of one peer.
#[derive(Default)]
pub(crate) struct Registry {
    entries: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    pub(crate) inflight: InFlight,
    /// Control events received that did not decode.
    pub(crate) bad_controls: AtomicU64,
    /// Group deliveries handed out.
    pub(crate) group_delivered: AtomicU64,
    /// Group handlers stopped gracefully: announced with their final
    /// positions until the peer is gone.
    stopped_groups: Mutex<Vec<Arc<GroupSub>>>,
    /// The largest frame accepted (for the events reassignments carry).
    pub(crate) max_message_size: AtomicU64,
    /// This peer's requests waiting for a reply.
    pub(crate) replies: Replies,
    /// The topic replies to this peer's requests arrive on.
    pub(crate) reply_topic: std::sync::OnceLock<String>,
}

/// What [`Registry::dispatch`] did with one envelope.
pub(crate) enum Dispatched {
    /// No subscription matched.
    Unmatched,
    /// Every matching subscription had room.
    Done,
    /// These matching subscriptions were full: the caller awaits them.
    Full(Vec<(Feed<Routed>, Routed)>),
}

impl Registry {
    fn add(
        &self,
        pattern: Pattern,
        capacity: usize,
        reader: Reader,
    ) -> Option<(u64, queue::Reader<Routed>)> {
        let mut entries = self.entries.write();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::queue(capacity);
        let tracked = !matches!(reader, Reader::Stream);
        let (durable, group) = match reader {
            Reader::Durable(c) => (Some(Mutex::new(c)), None),
            Reader::Group { name, durable, me } => (
                None,
                Some(Arc::new(GroupSub::new(
                    name,
                    pattern.clone(),
                    durable,
                    me,
                    id,
                ))),
            ),
            _ => (None, None),
        };
        entries.push(Entry {
            id,
            pattern,
            tx,
            tracked,
            durable,
            group,
        });
        Some((id, rx))
    }

    /// The group membership of subscription `id`, if it is a group handler.
    pub(crate) fn group(&self, id: u64) -> Option<Arc<GroupSub>> {
        self.entries
            .read()
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| e.group.clone())
    }

    /// Whether any group handler is subscribed here.
    pub(crate) fn has_groups(&self) -> bool {
        self.entries.read().iter().any(|e| e.group.is_some())
    }

    /// Whether a group handler of `name` is subscribed here.
    pub(crate) fn has_group(&self, name: &str) -> bool {
        self.entries
            .read()
            .iter()
            .any(|e| e.group.as_ref().is_some_and(|g| &*g.name == name))
    }

    /// What this peer's heartbeats announce of its groups: the active ones
    /// and those stopped gracefully (with their final positions).
    pub(crate) fn group_statuses(&self) -> Vec<GroupStatus> {
        let entries = self.entries.read();
        let stopped = self.stopped_groups.lock();
        entries
            .iter()
            .filter_map(|e| e.group.as_ref())
            .chain(stopped.iter())
            .map(|g| g.status(&self.inflight))
            .collect()
    }

    /// An origin's heartbeat: its last sequence number and its views.
    pub(crate) fn handle_views(
        &self,
        origin: PeerId,
        incarnation: u64,
        last_seq: u64,
        views: &[(u64, GroupView)],
    ) {
        for e in self.entries.read().iter() {
            if let Some(g) = &e.group {
                g.handle_views(origin, incarnation, last_seq, views);
            }
        }
    }

    /// The origin left or failed: its group views are forgotten.
    pub(crate) fn forget_origin(&self, origin: PeerId) {
        for e in self.entries.read().iter() {
            if let Some(g) = &e.group {
                g.forget(origin);
            }
        }
    }

    /// Stops every group handler gracefully (see [`GroupSub::stop`]); they
    /// are announced inactive, with their final positions, from now on.
    pub(crate) async fn stop_groups(&self) {
        let groups: Vec<Arc<GroupSub>> = self
            .entries
            .read()
            .iter()
            .filter_map(|e| e.group.clone())
            .collect();
        for g in &groups {
            g.stop(&self.inflight).await;
        }
        self.stopped_groups.lock().extend(groups);
    }

    fn remove(&self, id: u64) {
        self.entries.write().retain(|e| e.id != id);
        self.inflight.drop_sub(id);
    }

    /// Drops every subscription's sender: open streams end. No new ones are accepted.
    pub(crate) fn close(&self) {
        let mut entries = self.entries.write();
        self.closed.store(true, Ordering::Release);
        for e in entries.drain(..) {
            // A durable subscription's unfinished deliveries keep holding
            // its position until it is dropped (it handles what it has
            // queued, then commits).
            if e.durable.is_none() {
                self.inflight.drop_sub(e.id);
            }
        }
    }

    /// Wakes every subscription whose reader has deliveries it was not
    /// woken for: the receive path calls it once it has dispatched what it
    /// had (see [`queue`]).
    pub(crate) fn flush(&self) {
        for e in self.entries.read().iter() {
            e.tx.flush();
        }
    }

    /// Offers `received` to every subscription whose pattern matches its
    /// topic without waiting (a copy to each but the last); the full ones
    /// are returned for the caller to await, so that a slow subscription
    /// exerts backpressure instead of losing data.
    pub(crate) fn dispatch(&self, received: Routed) -> Dispatched {
        let env = &received.envelope;
        let reserved = env.topic.starts_with(RESERVED_PREFIX);
        if reserved && self.reply_topic.get().is_some_and(|t| **t == *env.topic) {
            match env.headers().get(REPLY_FOR_HEADER).cloned() {
                Some(id) => self.replies.deliver(&id, Arc::new(received.envelope)),
                None => {
                    self.replies.unclaimed.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Dispatched::Done;
        }
        let entries = self.entries.read();
        // A control event of the origin's stream, decoded once, for the
        // group handlers (the others never see one).
        let mut control = None;
        if reserved && entries.iter().any(|e| e.group.is_some()) {
            let max = self.max_message_size.load(Ordering::Relaxed) as usize;
            match ControlEvent::decode(env, max) {
                Some(Ok(c)) => control = Some(c),
                Some(Err(e)) => {
                    self.bad_controls.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(origin = %env.origin, seq = env.seq, error = %e, "malformed group control event ignored");
                }
                None => {}
            }
        }
        let mut matched = reserved; // a control event is never "unmatched"
        let mut full = Vec::new();
        // The last subscription found to take `received` as it is: it is
        // handed the original once every other one has had its copy.
        let mut last: Option<&Entry> = None;
        for e in entries.iter() {
            // A replay is for durable subscriptions only; each of those
            // skips what it committed and flags its uncommitted tail.
            let mut own = None;
            if let Some(g) = &e.group {
                if received.replay {
                    continue;
                }
                match g.route(&received.envelope, control.as_ref()) {
                    Route::Skip => continue,
                    Route::Take => {
                        self.group_delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Route::Reassigned(envelope, flagged) => {
                        self.group_delivered.fetch_add(1, Ordering::Relaxed);
                        own = Some(Routed {
                            envelope,
                            redelivered: received.redelivered || flagged,
                            replay: false,
                        });
                    }
                }
            } else {
                if reserved || !e.pattern.matches(&env.topic) {
                    continue;
                }
                match &e.durable {
                    None if received.replay => continue,
                    None => {}
                    Some(cursor) => {
                        let mut cursor = cursor.lock();
                        if !cursor.admit(env, received.replay) {
                            continue;
                        }
                        if cursor.redelivered(env) && !received.redelivered {
                            own = Some(Routed {
                                redelivered: true,
                                ..received.clone()
                            });
                        }
                    }
                }
            }
            matched = true;
            match own {
                Some(routed) => self.offer(e, routed, &mut full),
                None => {
                    if let Some(before) = last.replace(e) {
                        self.offer(before, received.clone(), &mut full);
                    }
                }
            }
        }
        if let Some(e) = last {
            self.offer(e, received, &mut full);
        }
        match (matched, full.is_empty()) {
            (false, _) => Dispatched::Unmatched,
            (true, true) => Dispatched::Done,
            (true, false) => Dispatched::Full(full),
        }
    }

    /// Queues `routed` for the subscription `e` (tracked until done for
    /// a handler), or adds it to `full`.
    fn offer(&self, e: &Entry, routed: Routed, full: &mut Vec<(Feed<Routed>, Routed)>) {
        if e.tracked {
            let r = &routed.envelope;
            self.inflight.add(e.id, r.origin, r.incarnation, r.seq);
        }
        match e.tx.try_push(routed) {
            Ok(()) | Err(Refused::Gone) => {}
            Err(Refused::Full(r)) => full.push((e.tx.clone(), *r)),
        }
    }
}

/// Turns payload bytes into the subscription's item type.
type Decode<T> = fn(&Bytes) -> Result<T, String>;

pub(crate) fn decode_msgpack<T: DeserializeOwned>(payload: &Bytes) -> Result<T, String> {
    rmp_serde::from_slice(payload).map_err(|e| e.to_string())
}

pub(crate) fn decode_raw(payload: &Bytes) -> Result<Bytes, String> {
    Ok(payload.clone())
}

/// A stream of [`Delivery`] values for one topic pattern, in arrival order.
///
/// Ends when the peer shuts down. Dropping it unsubscribes. Each
/// subscription has a bounded buffer
/// ([`PeerBuilder::subscription_buffer`](crate::PeerBuilder::subscription_buffer));
/// when it is full the peer's receive path waits for it. The stream takes
/// what is queued in one go, so up to as many again may be in its hands.
pub struct Subscription<T> {
    rx: queue::Reader<Routed>,
    decode: Decode<T>,
    id: u64,
    pattern: Pattern,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    undecodable: broadcast::Sender<Undecodable>,
    warned: bool,
    tracked: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// Registers a subscription; `None` if the peer is shut down.
    pub(crate) fn register(
        registry: &Arc<Registry>,
        counters: &Arc<Counters>,
        undecodable: &broadcast::Sender<Undecodable>,
        pattern: Pattern,
        capacity: usize,
        decode: Decode<T>,
        reader: Reader,
    ) -> Option<Self> {
        let tracked = !matches!(reader, Reader::Stream);
        let (id, rx) = registry.add(pattern.clone(), capacity, reader)?;
        Some(Subscription {
            rx,
            decode,
            id,
            pattern,
            registry: registry.clone(),
            counters: counters.clone(),
            undecodable: undecodable.clone(),
            warned: false,
            tracked,
            _t: PhantomData,
        })
    }

    /// Marks a delivery of a handler subscription as processed.
    /// Its id in the registry.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn done(&self, env: &Envelope) {
        if self.tracked {
            self.registry
                .inflight
                .done(self.id, env.origin, env.incarnation, env.seq);
        }
    }

    /// The pattern this subscription matches.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }
}

impl<T> Subscription<T> {
    /// The next delivery, or an event that did not decode (already
    /// counted, logged and announced; a handler dead-letters it).
    pub(crate) fn poll_decoded(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery<T>, Undecodable>>> {
        let Routed {
            envelope: env,
            redelivered,
            ..
        } = match self.rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => r,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        match (self.decode)(&env.payload) {
            Ok(value) => {
                Counters::add(&self.counters.delivered, 1);
                Poll::Ready(Some(Ok(Delivery::new(value, env, redelivered))))
            }
            Err(error) => {
                Counters::add(&self.counters.undecodable, 1);
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(pattern = %self.pattern, topic = %env.topic, origin = %env.origin,
                        seq = env.seq, %error,
                        "payload does not decode into this subscription's type; skipped and announced (further ones at debug)");
                } else {
                    tracing::debug!(pattern = %self.pattern, topic = %env.topic, %error, "undecodable payload skipped");
                }
                let bad = Undecodable {
                    envelope: Arc::new(env),
                    pattern: self.pattern.as_str().to_owned(),
                    error,
                };
                let _ = self.undecodable.send(bad.clone());
                Poll::Ready(Some(Err(bad)))
            }
        }
    }
}

impl<T> Stream for Subscription<T> {
    type Item = Delivery<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.poll_decoded(cx) {
                Poll::Ready(Some(Ok(d))) => return Poll::Ready(Some(d)),
                Poll::Ready(Some(Err(bad))) => this.done(&bad.envelope),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .finish()
    }
}
