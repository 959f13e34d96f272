//! The observer: watches pairs of correlated events on the bus and reports
//! the effects that do not follow their causes in time.
//!
//! Owns: [`Observer`] (a stream of [`Observation`]s) and its builder. The
//! logic is the sans-IO [`Correlator`]; this file only feeds it from
//! subscriptions of a [`Peer`] and a timer, in one task. Observations go
//! through a bounded broadcast like membership events: a reader that falls
//! behind skips the oldest (counted in `Stats::events_lagged`), and a
//! reader that never reads cannot stall the peer's receive path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::driver::clock;

use futures::stream::{self, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::api::events::{Events, EVENT_BUFFER};
use crate::api::peer::Peer;
use crate::error::Result;
use crate::proto::correlator::{Correlator, CorrelatorStats, Expectation, Observation};
use crate::wire::envelope::Envelope;

/// Extracts the correlation key of an event; `None` ignores the event.
pub type KeyFn = Arc<dyn Fn(&Envelope) -> Option<String> + Send + Sync>;

/// Default bound of each table of each expectation (see [`Correlator`]).
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// Configures an [`Observer`].
pub struct ObserverBuilder {
    expectations: Vec<Result<Expectation>>,
    max_pending: usize,
    key: KeyFn,
}

impl std::fmt::Debug for ObserverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverBuilder")
            .field("expectations", &self.expectations)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

impl ObserverBuilder {
    /// Expects every event on `cause` to be followed within `within` by an
    /// event on `effect` with the same key. Invalid patterns are reported
    /// by [`start`](Self::start).
    pub fn expect(mut self, name: &str, cause: &str, effect: &str, within: Duration) -> Self {
        self.expectations
            .push(Expectation::new(name, cause, effect, within));
        self
    }

    /// Keys kept per table of each expectation (default
    /// [`DEFAULT_MAX_PENDING`]); the oldest pending cause beyond it is
    /// reported [`Observation::Evicted`].
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// How an event's key is found (default: [`Envelope::flow_id`], so a
    /// cause and the events published while handling it share a key).
    pub fn key(
        mut self,
        key: impl Fn(&Envelope) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Subscribes `peer` to the expectations' patterns and starts watching.
    /// Must be called inside a tokio runtime.
    pub fn start(self, peer: &Peer) -> Result<Observer> {
        let expectations = self.expectations.into_iter().collect::<Result<Vec<_>>>()?;
        let mut core = Correlator::new(expectations, self.max_pending);
        let subs = core
            .patterns()
            .iter()
            .enumerate()
            .map(|(i, p)| Ok(peer.subscribe_bytes(p.as_str())?.map(move |d| (i, d))))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = broadcast::channel(EVENT_BUFFER);
        let stats = Arc::new(Mutex::new(core.stats()));
        let shared = stats.clone();
        let key = self.key;
        let task = tokio::spawn(async move {
            let mut deliveries = stream::select_all(subs);
            loop {
                let deadline = core.poll_timeout();
                tokio::select! {
                    next = deliveries.next() => {
                        let Some((i, d)) = next else { break };
                        if let Some(k) = key(d.envelope()) {
                            core.handle_match(i, &k, d.timestamp(), clock::now());
                        }
                    }
                    _ = sleep_until(deadline) => core.handle_timeout(clock::now()),
                }
                *shared.lock() = core.stats();
                while let Some(o) = core.poll() {
                    report(&o);
                    let _ = tx.send(o);
                }
            }
        });
        Ok(Observer {
            events: Events::new(rx, peer.counters()),
            stats,
            task,
        })
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn report(o: &Observation) {
    match o {
        Observation::Missing {
            expectation, key, ..
        } => tracing::warn!(%expectation, %key, "expected event missing"),
        Observation::Late {
            expectation,
            key,
            after,
            ..
        } => tracing::info!(%expectation, %key, ?after, "expected event late"),
        Observation::Evicted {
            expectation, key, ..
        } => tracing::warn!(%expectation, %key, "pending key dropped at the observer's bound"),
    }
}

/// Watches correlated events and yields an [`Observation`] for each effect
/// that is missing or late. Stops when the peer shuts down or the observer
/// is dropped.
///
/// ```
/// # #[tokio::main] async fn main() -> chorus::Result<()> {
/// use futures::StreamExt;
/// use std::time::Duration;
/// let peer = chorus::Peer::builder().listen("inproc://dashboard").start().await?;
/// let bids = chorus::Peer::builder().listen("inproc://bids").seed(peer.local_url()).start().await?;
/// let mut observer = chorus::Observer::builder()
///     .expect("work order for every bid", "bids.accepted", "work.created", Duration::from_millis(100))
///     .start(&peer)?;
/// bids.wait_for_members(1, Duration::from_secs(10)).await?;
/// // A bid that nobody turns into a work order.
/// bids.publish_with_id("bid-1", "bids.accepted", &1u32).await?;
/// if let Some(chorus::Observation::Missing { key, waited_for, .. }) = observer.next().await {
///     eprintln!("no {waited_for} for {key}");
///     assert_eq!(key, "bid-1");
/// }
/// # bids.shutdown().await; peer.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Observer {
    events: Events<Observation>,
    stats: Arc<Mutex<CorrelatorStats>>,
    task: JoinHandle<()>,
}

impl Observer {
    /// An observer builder with no expectations.
    pub fn builder() -> ObserverBuilder {
        ObserverBuilder {
            expectations: Vec::new(),
            max_pending: DEFAULT_MAX_PENDING,
            key: Arc::new(|env| Some(env.flow_id().into_owned())),
        }
    }

    /// The correlator's counters (matched, missing, late, …) so far.
    pub fn stats(&self) -> CorrelatorStats {
        *self.stats.lock()
    }
}

impl Stream for Observer {
    type Item = Observation;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Observation>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("stats", &self.stats())
            .finish()
    }
}
