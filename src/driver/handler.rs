//! Handler subscriptions: an async function run for each delivery, with
//! retries and a dead-letter hook.
//!
//! Owns: [`HandlerOptions`], [`DeadLetter`], [`Handler`] and the task that
//! drives one handler. A delivery counts as processed — its ack lets the
//! origin free it — only once the handler returned `Ok`, or failed
//! `max_attempts` times and was handed to the dead-letter hook. Until then
//! the origin retains it (see `inflight`), so a slow handler slows its
//! publishers down (backpressure) instead of losing messages. Each handler
//! processes its deliveries one at a time, in order.
//!
//! Each run of a handler is inside a `deliver` tracing span (topic, origin,
//! seq, correlation id) and in the delivery's flow: what the handler
//! publishes carries the delivery's flow id as its correlation id
//! ([`current_flow`]).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::api::delivery::Delivery;
use crate::api::stats::Counters;
use crate::api::subscription::Subscription;
use crate::driver::durable::Committer;
use crate::driver::group::GroupSub;
use crate::driver::output_acks::OutputAcks;
use crate::proto::cursor::StartAt;
use crate::wire::envelope::Envelope;

/// What a handler run carries in its task: its delivery's flow, and
/// whether it published anything.
struct Run {
    flow: Arc<str>,
    published: std::sync::atomic::AtomicBool,
}

tokio::task_local! {
    /// The run of the delivery a handler is processing.
    static RUN: Arc<Run>;
}

/// The flow id of the delivery the calling handler is processing, if any.
pub(crate) fn current_flow() -> Option<String> {
    RUN.try_with(|run| run.flow.to_string()).ok()
}

/// Notes that the calling handler run (if any) published an event.
pub(crate) fn note_published() {
    let _ = RUN.try_with(|run| {
        run.published
            .store(true, std::sync::atomic::Ordering::Relaxed)
    });
}

/// A delivery given up on after `max_attempts` failures, or at once when
/// its payload does not decode into the handler's type.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message.
    pub envelope: Arc<Envelope>,
    /// The last error the handler returned, or `undecodable payload: …`.
    pub error: String,
    /// How many times the handler was run (0: the payload did not decode).
    pub attempts: u32,
}

/// Called with every dead letter.
pub type DeadLetterHook = Arc<dyn Fn(DeadLetter) + Send + Sync>;

/// Retry policy and dead-letter hook of a handler subscription.
///
/// ```
/// use std::time::Duration;
/// let opts = chorus::HandlerOptions::new()
///     .max_attempts(3)
///     .backoff(Duration::from_millis(10), Duration::from_secs(1))
///     .dead_letter(|dl| eprintln!("gave up on {} after {} tries: {}", dl.envelope.seq, dl.attempts, dl.error));
/// ```
#[derive(Clone)]
pub struct HandlerOptions {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    dead_letter: Option<DeadLetterHook>,
    pub(crate) durable: Option<String>,
    pub(crate) start_at: StartAt,
    pub(crate) group: Option<String>,
}

impl Default for HandlerOptions {
    /// 5 attempts, backoff from 10 ms doubling up to 1 s, dead letters logged.
    fn default() -> Self {
        HandlerOptions {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            dead_letter: None,
            durable: None,
            start_at: StartAt::New,
            group: None,
        }
    }
}

impl std::fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("dead_letter", &self.dead_letter.is_some())
            .field("durable", &self.durable)
            .field("start_at", &self.start_at)
            .field("group", &self.group)
            .finish()
    }
}

impl HandlerOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs of the handler per delivery before it is dead-lettered (≥ 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Wait before the first retry, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Called with each delivery given up on (default: logged at `error`).
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.dead_letter = Some(Arc::new(hook));
        self
    }

    /// Makes this a durable consumer named `name` (1 to 200 bytes; needs
    /// [`PeerBuilder::data_dir`](crate::PeerBuilder::data_dir)). Its
    /// position in every origin's stream is committed in the data dir after
    /// the handler returned (at most 256 events per stream behind it), so a
    /// restarted service (the same data dir, at any address) goes on where
    /// it stopped: each origin sends what it still has after that position,
    /// in order, before what follows. After a crash, the uncommitted tail
    /// is handled again, flagged [`Delivery::redelivered`]; a handler whose
    /// side effect is not in one transaction with chorus's commit dedups it
    /// by [`Delivery::key`]. What an origin no longer keeps when the
    /// consumer comes back is reported as a [`Loss`](crate::Loss).
    ///
    /// With [`group`](Self::group), `name` must be the group's name: the
    /// group is durable, and its position is the group's, kept by each
    /// origin (no data dir is needed on the members); see there.
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.durable = Some(name.into());
        self
    }

    /// Makes this handler a member of the consumer group `name` (1 to 200
    /// bytes): all handlers of that name on the bus are one service, and
    /// each event of a matching topic is handled by one of them. Different
    /// groups, and handlers in no group, each get their own copy.
    ///
    /// There is no coordinator: the origin of each stream assigns its own
    /// events to the group's members (rendezvous hashing of the event's key
    /// — [`PublishOptions::key`](crate::PublishOptions::key), else its
    /// message id, else none — over the members it counts as live), so
    /// events with the same key go to the same member while the group is
    /// stable and keep their order there. When a member joins, new events
    /// of some keys move to it; when one fails, the origin gives what it had
    /// not processed to the others, flagged [`Delivery::redelivered`] (the
    /// failed member may have handled it just before it died). A member that
    /// shuts down gracefully hands over what it had not started, unflagged,
    /// and handles nothing twice. Order per key can break around such a
    /// change: the old and the new member may work on the same key at once
    /// for a moment. One group handler per group name per peer.
    ///
    /// A group that is not durable gets what is published while it has a
    /// live member. With [`durable`](Self::durable)`(name)` the group is
    /// durable: an origin that has counted it keeps, while no member is
    /// live, what matches its members' last patterns, and gives it to the
    /// next member that joins (so a service whose replicas are all
    /// redeployed at once misses nothing), up to 65,536 events per group
    /// and origin (beyond, the oldest are dropped and counted in
    /// [`Stats::group_untracked`](crate::Stats::group_untracked)). An
    /// origin with a data dir also records the group's watermark (about
    /// once a second, and when it stops) and keeps its log for it within
    /// retention: after the origin restarts, what its log holds above the
    /// watermark is given again, flagged [`Delivery::redelivered`] (some
    /// may have been handled before). A durable group no member has
    /// announced for longer than the retention age is forgotten. A request
    /// ([`Peer::request`](crate::Peer::request)) is never kept: with no
    /// live member it fails with no responder.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Where a new durable consumer starts (default [`StartAt::New`]).
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.start_at = start;
        self
    }
}

/// A running handler subscription. It stops when the peer shuts down, or
/// on [`stop`](Self::stop); dropping the handle leaves it running.
#[derive(Debug)]
pub struct Handler {
    task: JoinHandle<()>,
}

impl Handler {
    /// Stops the handler (a delivery being processed is abandoned and will
    /// be neither acknowledged nor retried here).
    pub fn stop(self) {
        self.task.abort();
    }

    /// Waits until the handler has stopped (after the peer shut down).
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// Hands `dl` to the hook, or logs it at `error` without one.
fn dead_letter(opts: &HandlerOptions, dl: DeadLetter) {
    match &opts.dead_letter {
        Some(hook) => hook(dl),
        None => {
            tracing::error!(topic = %dl.envelope.topic, origin = %dl.envelope.origin,
                seq = dl.envelope.seq, error = %dl.error, attempts = dl.attempts, "dead letter")
        }
    }
}

/// How often a durable handler commits its position while idle.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Commits a durable handler's position, retrying until the data dir takes
/// it: the handler does not run ahead of what can be committed.
async fn commit(committer: &mut Committer, counters: &Counters) {
    loop {
        match committer.commit() {
            Ok(()) => return,
            Err(e) => {
                Counters::add(&counters.commit_failures, 1);
                tracing::error!(error = %e, durable = %committer.name, "cannot commit a durable position; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What a handler task works with besides its subscription.
pub(crate) struct HandlerParts {
    pub counters: Arc<Counters>,
    /// A durable handler's position.
    pub committer: Option<Committer>,
    /// Told once a durable handler committed its final position.
    pub finished: Option<tokio::sync::oneshot::Sender<()>>,
    /// A group handler's membership.
    pub group: Option<Arc<GroupSub>>,
    /// The publisher's queue (flushes for what a run published).
    pub publish: tokio::sync::mpsc::Sender<crate::driver::publisher::Queued>,
}

pub(crate) fn spawn<T, F, Fut, E>(
    mut sub: Subscription<T>,
    opts: HandlerOptions,
    parts: HandlerParts,
    handler: F,
) -> Handler
where
    T: Clone + Send + 'static,
    F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let HandlerParts {
        counters,
        mut committer,
        finished,
        group,
        publish,
    } = parts;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outputs = OutputAcks::new(publish);
        loop {
            let next = tokio::select! {
                n = futures::future::poll_fn(|cx| sub.poll_decoded(cx)) => n,
                _ = tick.tick(), if committer.is_some() => {
                    commit(committer.as_mut().expect("checked"), &counters).await;
                    continue;
                }
                Some(batch) = outputs.done.recv() => {
                    for env in &batch {
                        sub.done(env);
                    }
                    if let Some(g) = &group {
                        g.released(batch.len());
                    }
                    outputs.finished();
                    continue;
                }
            };
            let Some(next) = next else { break };
            let env = match &next {
                Ok(d) => d.envelope_arc(),
                Err(bad) => bad.envelope.clone(),
            };
            if let Some(c) = &mut committer {
                if c.must_commit_before(&env) {
                    commit(c, &counters).await;
                }
            }
            let delivery = match next {
                Ok(delivery) => delivery,
                Err(bad) => {
                    // It would not decode on any retry: a dead letter at once.
                    Counters::add(&counters.dead_lettered, 1);
                    dead_letter(
                        &opts,
                        DeadLetter {
                            envelope: bad.envelope.clone(),
                            error: format!("undecodable payload: {}", bad.error),
                            attempts: 0,
                        },
                    );
                    sub.done(&bad.envelope);
                    continue;
                }
            };
            // A group handler stopped gracefully runs nothing more: what it
            // has not started goes to the other members.
            let _running = match &group {
                Some(g) => {
                    let guard = g.running.lock().await;
                    if g.is_stopped() {
                        continue;
                    }
                    Some(guard)
                }
                None => None,
            };
            let mut backoff = opts.initial_backoff;
            let mut attempt = 1;
            let run = Arc::new(Run {
                flow: delivery.flow_id().into(),
                published: false.into(),
            });
            let flow = run.flow.clone();
            loop {
                let span = tracing::info_span!("deliver", topic = delivery.topic(), origin = %delivery.origin(),
                    seq = delivery.seq(), correlation_id = %flow, attempt);
                let run = RUN.scope(run.clone(), handler(delivery.clone()));
                let result = tracing::Instrument::instrument(run, span).await;
                match result {
                    Ok(()) => {
                        Counters::add(&counters.handled, 1);
                        break;
                    }
                    Err(e) if attempt < opts.max_attempts => {
                        Counters::add(&counters.handler_retries, 1);
                        tracing::debug!(error = %e, attempt, seq = delivery.seq(), "handler failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(opts.max_backoff);
                        attempt += 1;
                    }
                    Err(e) => {
                        Counters::add(&counters.dead_lettered, 1);
                        let dl = DeadLetter {
                            envelope: env.clone(),
                            error: e.to_string(),
                            attempts: attempt,
                        };
                        dead_letter(&opts, dl);
                        break;
                    }
                }
            }
            // Done now, or once what the run published is acknowledged.
            if run.published.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(g) = &group {
                    g.held(1);
                }
                outputs.hold(env.clone());
            } else {
                sub.done(delivery.envelope());
            }
        }
        // Everything it was handed is handled: the position goes to the end.
        if let Some(c) = &mut committer {
            if let Err(e) = c.close() {
                tracing::error!(error = %e, durable = %c.name, "cannot commit a durable position at the end");
            }
        }
        // Before saying it is done: the committer holds the data dir, which
        // must be free once the peer's shutdown returns.
        drop(committer);
        drop(sub);
        if let Some(done) = finished {
            let _ = done.send(());
        }
    });
    Handler { task }
}
