//! Event streams fanned out to any number of readers: membership changes
//! ([`Peer::membership`](crate::Peer::membership)), explicit losses
//! ([`Peer::losses`](crate::Peer::losses)) and payloads that did not decode
//! ([`Peer::undecodable`](crate::Peer::undecodable)).
//!
//! Owns: [`Events`], a stream over a bounded broadcast. A reader that falls
//! more than the buffer behind misses the oldest events; the miss is counted
//! (`events_lagged`) and logged, and the stream goes on — the current state
//! is always available from the peer (`members()`, `stats()`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::api::stats::Counters;
use crate::wire::member::MemberEvent;

/// Events buffered per reader.
pub(crate) const EVENT_BUFFER: usize = 1024;

/// A stream of events of one kind, from the moment it was created.
pub struct Events<T> {
    inner: BroadcastStream<T>,
    counters: Arc<Counters>,
}

/// The stream returned by [`Peer::membership`](crate::Peer::membership).
pub type MembershipEvents = Events<MemberEvent>;

impl<T: Clone + Send + 'static> Events<T> {
    pub(crate) fn new(rx: tokio::sync::broadcast::Receiver<T>, counters: Arc<Counters>) -> Self {
        Events {
            inner: BroadcastStream::new(rx),
            counters,
        }
    }
}

impl<T: Clone + Send + 'static> Stream for Events<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(e))) => return Poll::Ready(Some(e)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    Counters::add(&self.counters.events_lagged, n);
                    tracing::warn!(missed = n, "event stream read too slowly; events skipped");
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> std::fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}
