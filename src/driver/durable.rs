//! Durable consumers: a handler subscription with a name whose position in
//! every origin's stream is kept in the data dir, so that a restarted
//! service goes on where it stopped.
//!
//! Owns: opening a durable consumer from the data dir (its [`Cursor`]: what
//! the registry hands it) and [`Committer`] (the position of each stream,
//! committed after the handler returned, at most [`TAIL`] events behind
//! it). A
//! position is "processed through N": everything of the stream through N
//! was received here and every delivery of it to this subscription was
//! handled (events that did not match its pattern count as processed).

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::subscription::Registry;
use crate::driver::clock::now_us;
use crate::driver::receiver::AckView;
use crate::error::{Error, Result};
use crate::proto::cursor::{Cursor, StartAt, StreamKey};
use crate::store::positions::{Positions, MAX_DURABLE_NAME};
use crate::store::DataDir;
use crate::wire::envelope::Envelope;
use crate::wire::id::PeerId;

pub use crate::proto::cursor::TAIL;

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
    pub cursor: Cursor,
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
    let cursor = Cursor::new(
        loaded.iter().map(|&(o, e, s)| ((o, e), s)),
        !consumer.clean,
        history.then_some(consumer.not_before_us),
    );
    tracing::info!(
        durable = name,
        streams = loaded.len(),
        fresh,
        "durable consumer opened"
    );
    Ok(Opened {
        cursor,
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
