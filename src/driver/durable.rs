//! Durable consumers: a handler subscription with a name whose position in
//! every origin's stream is kept in the data dir, so that a restarted
//! service goes on where it stopped.
//!
//! Owns: [`DurableFilter`] (what the registry hands a durable subscription:
//! nothing its earlier lives committed, and the uncommitted tail flagged
//! redelivered) and [`Committer`] (the position of each stream, committed
//! after the handler returned, at most [`TAIL`] events behind it). A
//! position is "processed through N": everything of the stream through N
//! was received here and every delivery of it to this subscription was
//! handled (events that did not match its pattern count as processed).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::api::subscription::Registry;
use crate::driver::clock::now_us;
use crate::driver::handler::StartAt;
use crate::driver::receiver::AckView;
use crate::error::{Error, Result};
use crate::store::positions::{Positions, MAX_DURABLE_NAME};
use crate::store::DataDir;
use crate::wire::envelope::Envelope;
use crate::wire::id::PeerId;

/// Most events of one stream a durable handler runs ahead of its committed
/// position: after a crash, at most this many are handled again (each
/// flagged [`Delivery::redelivered`](crate::Delivery::redelivered)).
pub const TAIL: u64 = 256;

/// A stream: its origin and epoch.
pub(crate) type StreamKey = (PeerId, u64);

/// What a durable subscription is handed. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct DurableFilter {
    /// Per stream, the last event handed (or committed by an earlier life):
    /// nothing up to there is handed again. Streams arrive in order, so
    /// this is all the filter needs to hand each event once.
    pub handed_through: Mutex<HashMap<StreamKey, u64>>,
    /// May have been handled by the earlier life (its uncommitted tail).
    pub tail_through: HashMap<StreamKey, u64>,
    /// For a stream without a position: only events published at or after
    /// this time (µs since the epoch); `None`: what the live stream gives.
    pub not_before_us: Option<u64>,
}

impl DurableFilter {
    /// Whether `env` (a `replay` for durable subscriptions only, or not)
    /// goes to this subscription; if so, it counts as handed.
    pub(crate) fn admits(&self, env: &Envelope, replay: bool) -> bool {
        let mut handed = self.handed_through.lock();
        let key = (env.origin, env.incarnation);
        let take = match handed.get(&key) {
            Some(&through) => env.seq > through,
            // A stream it has no position in: from its start time, or, for
            // a consumer that takes the live streams, only what is live.
            None => match self.not_before_us {
                Some(t) => env.timestamp_us >= t,
                None => !replay,
            },
        };
        if take {
            handed.insert(key, env.seq);
        }
        take
    }

    /// Whether an earlier life may have handled `env`.
    pub(crate) fn redelivered(&self, env: &Envelope) -> bool {
        self.tail_through
            .get(&(env.origin, env.incarnation))
            .is_some_and(|&t| env.seq <= t)
    }
}

/// Computes and commits a durable subscription's positions.
pub(crate) struct Committer {
    pub name: String,
    pub sub: u64,
    pub dir: Arc<DataDir>,
    pub positions: Arc<Positions>,
    /// What the receiver has received (and dispatched) of each stream.
    pub received: AckView,
    pub registry: Arc<Registry>,
    /// As last committed (loaded ones included).
    pub committed: HashMap<StreamKey, u64>,
}

impl Committer {
    /// The position of each stream now: received through, and below the
    /// oldest delivery this subscription has not finished.
    fn current(&self) -> Vec<(StreamKey, u64)> {
        let received = self.received.read().clone();
        received
            .iter()
            .filter_map(|a| {
                let key = (a.origin, a.incarnation);
                let oldest = self
                    .registry
                    .inflight
                    .oldest_of(self.sub, a.origin, a.incarnation);
                let at = oldest.map_or(a.seq, |o| a.seq.min(o - 1));
                let before = self.committed.get(&key).copied().unwrap_or(0);
                (at > before).then_some((key, at))
            })
            .collect()
    }

    /// Whether `env` must wait for a commit: handling it would run more
    /// than [`TAIL`] events ahead of its stream's committed position.
    pub(crate) fn must_commit_before(&self, env: &Envelope) -> bool {
        let committed = self
            .committed
            .get(&(env.origin, env.incarnation))
            .copied()
            .unwrap_or(0);
        env.seq > committed + TAIL
    }

    /// The final commit, once everything handed was handled: marks the
    /// consumer as stopped cleanly (no tail to flag when it comes back).
    pub(crate) fn close(&mut self) -> Result<()> {
        self.commit()?;
        self.positions
            .close(&self.dir, &self.name)
            .map_err(|e| Error::Store(Arc::new(e)))
    }

    /// Commits every position that moved (one write).
    pub(crate) fn commit(&mut self) -> Result<()> {
        let moved = self.current();
        if moved.is_empty() {
            return Ok(());
        }
        let rows: Vec<(u64, u64, u64)> = moved
            .iter()
            .map(|((origin, epoch), seq)| (origin.0, *epoch, *seq))
            .collect();
        self.positions
            .commit(&self.dir, &self.name, &rows)
            .map_err(|e| Error::Store(Arc::new(e)))?;
        self.committed.extend(moved);
        Ok(())
    }
}

/// A durable consumer as loaded from the data dir, ready to subscribe.
pub(crate) struct Opened {
    /// What its subscription is handed.
    pub filter: Arc<DurableFilter>,
    /// Its committer (`sub` set once subscribed).
    pub committer: Committer,
    /// `(origin, epoch, processed through)` to resume from.
    pub positions: Vec<(PeerId, u64, u64)>,
    /// Whether streams it has no position in are replayed (and filtered by
    /// time) rather than taken live.
    pub history: bool,
}

/// Loads (or creates) the durable consumer `name` in `dir`.
pub(crate) fn open(
    name: &str,
    start_at: StartAt,
    dir: Arc<DataDir>,
    positions: Arc<Positions>,
    received: AckView,
    registry: Arc<Registry>,
) -> Result<Opened> {
    if name.is_empty() || name.len() > MAX_DURABLE_NAME {
        return Err(Error::Config(format!(
            "durable name {name:?}: must be 1 to {MAX_DURABLE_NAME} bytes"
        )));
    }
    let now = now_us();
    let not_before = match start_at {
        StartAt::Beginning => 0,
        StartAt::Time(t) => t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        StartAt::New => now,
    };
    let (consumer, fresh) = positions
        .load_or_create(&dir, name, now, not_before)
        .map_err(|e| Error::Store(Arc::new(e)))?;
    // A new consumer that starts with what is new takes the live streams;
    // any other replays what it has no position in, from its start time.
    let history = !(fresh && start_at == StartAt::New);
    let loaded: Vec<(PeerId, u64, u64)> = consumer
        .positions
        .iter()
        .map(|&(o, e, s)| (PeerId(o), e, s))
        .collect();
    let filter = DurableFilter {
        handed_through: Mutex::new(loaded.iter().map(|&(o, e, s)| ((o, e), s)).collect()),
        // After a crash, what follows each position may have been handled.
        tail_through: if consumer.clean {
            HashMap::new()
        } else {
            loaded.iter().map(|&(o, e, s)| ((o, e), s + TAIL)).collect()
        },
        not_before_us: history.then_some(consumer.not_before_us),
    };
    tracing::info!(
        durable = name,
        streams = loaded.len(),
        fresh,
        "durable consumer opened"
    );
    Ok(Opened {
        filter: Arc::new(filter),
        committer: Committer {
            name: name.to_owned(),
            sub: u64::MAX,
            dir,
            positions,
            received,
            registry,
            committed: loaded.iter().map(|&(o, e, s)| ((o, e), s)).collect(),
        },
        positions: loaded,
        history,
    })
}
