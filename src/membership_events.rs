//! The stream of membership changes returned by [`Peer::membership`](crate::Peer::membership).
//!
//! Owns: fan-out of [`MemberEvent`]s to any number of readers. A reader that
//! falls more than the buffer behind misses the oldest events; the miss is
//! counted (`membership_events_lagged`) and logged, and the stream goes on —
//! `Peer::members` always has the current view.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::member::MemberEvent;
use crate::stats::Counters;

/// Membership events buffered per reader.
pub(crate) const EVENT_BUFFER: usize = 1024;

/// A stream of [`MemberEvent`]s, from the moment it was created.
pub struct MembershipEvents {
    inner: BroadcastStream<MemberEvent>,
    counters: Arc<Counters>,
}

impl MembershipEvents {
    pub(crate) fn new(
        rx: tokio::sync::broadcast::Receiver<MemberEvent>,
        counters: Arc<Counters>,
    ) -> Self {
        MembershipEvents {
            inner: BroadcastStream::new(rx),
            counters,
        }
    }
}

impl Stream for MembershipEvents {
    type Item = MemberEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MemberEvent>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(e))) => return Poll::Ready(Some(e)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    Counters::add(&self.counters.membership_events_lagged, n);
                    tracing::warn!(
                        missed = n,
                        "membership stream read too slowly; events skipped"
                    );
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for MembershipEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MembershipEvents")
    }
}
