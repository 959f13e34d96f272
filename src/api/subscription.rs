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
use tokio::sync::{broadcast, mpsc};

use crate::api::delivery::{Delivery, Undecodable};
use crate::api::stats::Counters;
use crate::driver::inflight::InFlight;
use crate::proto::cursor::Cursor;
use crate::wire::envelope::Envelope;
use crate::wire::topic::Pattern;

/// One envelope on its way to a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub envelope: Arc<Envelope>,
    /// It may already have reached an earlier life of this peer.
    pub redelivered: bool,
    /// Only for durable subscriptions (see `Inbox::is_replay`).
    pub replay: bool,
}

struct Entry {
    id: u64,
    pattern: Pattern,
    tx: mpsc::Sender<Routed>,
    /// A handler subscription: what it is given is in flight until it is done.
    tracked: bool,
    /// A durable subscription: what it is handed.
    durable: Option<Mutex<Cursor>>,
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
}

/// The set of live subscriptions of one peer.
#[derive(Default)]
pub(crate) struct Registry {
    entries: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    pub(crate) inflight: InFlight,
}

/// What [`Registry::dispatch`] did with one envelope.
pub(crate) enum Dispatched {
    /// No subscription matched.
    Unmatched,
    /// Every matching subscription had room.
    Done,
    /// These matching subscriptions were full: the caller awaits them.
    Full(Vec<(mpsc::Sender<Routed>, Routed)>),
}

impl Registry {
    fn add(
        &self,
        pattern: Pattern,
        capacity: usize,
        reader: Reader,
    ) -> Option<(u64, mpsc::Receiver<Routed>)> {
        let mut entries = self.entries.write();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity);
        entries.push(Entry {
            id,
            pattern,
            tx,
            tracked: !matches!(reader, Reader::Stream),
            durable: match reader {
                Reader::Durable(c) => Some(Mutex::new(c)),
                _ => None,
            },
        });
        Some((id, rx))
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

    /// Offers `env` to every subscription whose pattern matches its topic
    /// without waiting; the full ones are returned for the caller to await,
    /// so that a slow subscription exerts backpressure instead of losing data.
    pub(crate) fn dispatch(&self, received: &Routed) -> Dispatched {
        let env = &received.envelope;
        let entries = self.entries.read();
        let mut matched = false;
        let mut full = Vec::new();
        for e in entries.iter().filter(|e| e.pattern.matches(&env.topic)) {
            // A replay is for durable subscriptions only; each of those
            // skips what it committed and flags its uncommitted tail.
            let mut routed = None;
            match &e.durable {
                None if received.replay => continue,
                None => {}
                Some(cursor) => {
                    let mut cursor = cursor.lock();
                    if !cursor.admit(env, received.replay) {
                        continue;
                    }
                    if cursor.redelivered(env) && !received.redelivered {
                        routed = Some(Routed {
                            redelivered: true,
                            ..received.clone()
                        });
                    }
                }
            }
            matched = true;
            if e.tracked {
                self.inflight
                    .add(e.id, env.origin, env.incarnation, env.seq);
            }
            let routed = routed.unwrap_or_else(|| received.clone());
            if let Err(mpsc::error::TrySendError::Full(r)) = e.tx.try_send(routed) {
                full.push((e.tx.clone(), r));
            }
        }
        match (matched, full.is_empty()) {
            (false, _) => Dispatched::Unmatched,
            (true, true) => Dispatched::Done,
            (true, false) => Dispatched::Full(full),
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
/// when it is full the peer's receive path waits for it.
pub struct Subscription<T> {
    rx: mpsc::Receiver<Routed>,
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
                    envelope: env,
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
