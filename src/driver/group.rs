//! A group handler on this peer: its membership of a consumer group.
//!
//! Owns: per origin stream, the views of the group this member follows
//! ([`OriginViews`]); the routing of each envelope of that stream (its own
//! share of the events, the reassignments addressed to it, the views in
//! between); what it announces in heartbeats ([`GroupStatus`]: where it
//! follows each stream from and has processed through); and the graceful
//! stop at shutdown (no delivery runs after the final positions are taken,
//! so what is given to others was never handled here). Must not number,
//! send or decide an assignment: that is the origin's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::driver::inflight::InFlight;
use crate::proto::group_member::OriginViews;
use crate::proto::group_view::{envelope_key, GroupView};
use crate::wire::envelope::Envelope;
use crate::wire::frame::DecodeError;
use crate::wire::group::{
    GroupPosition, GroupStatus, ReassignBody, ViewInfo, REASSIGN_TOPIC, RESERVED_PREFIX, VIEW_TOPIC,
};
use crate::wire::id::PeerId;
use crate::wire::topic::{Interner, Pattern};

/// How long a graceful stop waits for the outputs of handled deliveries.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A control event of an origin's stream, decoded once per dispatch.
#[derive(Debug)]
pub(crate) enum ControlEvent {
    View(GroupView),
    Reassign {
        group: Arc<str>,
        to: PeerId,
        redelivered: bool,
        envelope: Envelope,
    },
}

impl ControlEvent {
    /// Decodes the control event `env` carries (`None`: not a control
    /// event). A reassignment must carry an event of the same stream.
    pub(crate) fn decode(env: &Envelope, max_size: usize) -> Option<Result<Self, DecodeError>> {
        match &*env.topic {
            VIEW_TOPIC => Some(
                ViewInfo::decode(&env.payload)
                    .and_then(|info| GroupView::from_info(&info))
                    .map(ControlEvent::View),
            ),
            REASSIGN_TOPIC => Some((|| {
                let body = ReassignBody::decode(&env.payload)?;
                let inner = decode_one(&body.frame, max_size)?;
                if inner.origin != env.origin
                    || inner.incarnation != env.incarnation
                    || inner.seq >= env.seq
                {
                    return Err(DecodeError::Malformed(format!(
                        "a reassignment at {} of an event of another stream or later ({}/{}/{})",
                        env.seq, inner.origin, inner.incarnation, inner.seq
                    )));
                }
                Ok(ControlEvent::Reassign {
                    group: body.group.as_str().into(),
                    to: body.to,
                    redelivered: body.redelivered,
                    envelope: inner,
                })
            })()),
            _ => None,
        }
    }
}

/// One event frame (kind 0) of a reassignment.
fn decode_one(frame: &Bytes, max_size: usize) -> Result<Envelope, DecodeError> {
    let mut out = Vec::with_capacity(1);
    Envelope::decode_events_shared(frame, max_size, &mut Interner::default(), &mut out)?;
    match (out.pop(), out.is_empty()) {
        (Some(env), true) => Ok(env),
        _ => Err(DecodeError::Malformed(
            "a reassignment carries one event".into(),
        )),
    }
}

/// What a group handler is given of one envelope.
pub(crate) enum Route {
    /// Not its own.
    Skip,
    /// Its share: this envelope.
    Take,
    /// Its share of a reassignment: the event it carries, flagged as
    /// possibly handled elsewhere.
    Reassigned(Envelope, bool),
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct GroupSub {
    pub name: Arc<str>,
    pub pattern: Pattern,
    /// Whether the group is durable (announced: origins keep what no live
    /// member can take).
    pub durable: bool,
    me: PeerId,
    /// Its subscription's id in the registry (what it has in flight).
    pub sub: u64,
    /// Per origin: the stream epoch and its views.
    views: Mutex<HashMap<PeerId, (u64, OriginViews)>>,
    /// Set when it stops taking deliveries (graceful shutdown).
    stopped: AtomicBool,
    /// Held while the handler runs a delivery.
    pub running: tokio::sync::Mutex<()>,
    /// Its positions once stopped.
    last: Mutex<Option<Vec<GroupPosition>>>,
    /// Deliveries handled whose outputs are not acknowledged yet
    /// (processed, not acked): a graceful stop waits for them.
    holding: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

impl GroupSub {
    pub(crate) fn new(
        name: Arc<str>,
        pattern: Pattern,
        durable: bool,
        me: PeerId,
        sub: u64,
    ) -> Self {
        GroupSub {
            name,
            pattern,
            durable,
            me,
            sub,
            views: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            holding: 0.into(),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Whether it stopped taking deliveries.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The next envelope of a stream, in order; `control` is its control
    /// event, decoded (if it is one and decoded).
    pub(crate) fn route(&self, env: &Envelope, control: Option<&ControlEvent>) -> Route {
        if self.is_stopped() {
            return Route::Skip;
        }
        let mut views = self.views.lock();
        let entry = views
            .entry(env.origin)
            .or_insert_with(|| (env.incarnation, OriginViews::new()));
        if entry.0 != env.incarnation {
            *entry = (env.incarnation, OriginViews::new());
        }
        let o = &mut entry.1;
        o.observe(env.seq);
        match control {
            Some(ControlEvent::View(v)) => {
                if v.group == self.name {
                    o.handle_view(env.seq, v.clone());
                }
                Route::Skip
            }
            Some(ControlEvent::Reassign {
                group,
                to,
                redelivered,
                envelope,
            }) => {
                if *group == self.name
                    && self.pattern.matches(&envelope.topic)
                    && o.takes(self.me, group, env.seq, *to)
                {
                    Route::Reassigned(envelope.clone(), *redelivered)
                } else {
                    Route::Skip
                }
            }
            None => {
                if !env.topic.starts_with(RESERVED_PREFIX)
                    && self.pattern.matches(&env.topic)
                    && o.is_mine(self.me, &self.name, env.seq, &env.topic, envelope_key(env))
                {
                    Route::Take
                } else {
                    Route::Skip
                }
            }
        }
    }

    /// An origin's heartbeat: its last sequence number and its views.
    pub(crate) fn handle_views(
        &self,
        origin: PeerId,
        incarnation: u64,
        last_seq: u64,
        views: &[(u64, GroupView)],
    ) {
        let mut table = self.views.lock();
        let entry = table
            .entry(origin)
            .or_insert_with(|| (incarnation, OriginViews::new()));
        if entry.0 < incarnation {
            *entry = (incarnation, OriginViews::new());
        }
        if entry.0 == incarnation {
            entry.1.handle_heartbeat(last_seq, views.to_vec());
        }
    }

    /// The origin is gone, or part of its stream was lost (a view may have
    /// been in it): its views are forgotten, and learnt again from its
    /// next events and a heartbeat as recent (a later start, announced:
    /// the origin gives what it owed before that to others, flagged).
    pub(crate) fn forget(&self, origin: PeerId) {
        self.views.lock().remove(&origin);
    }

    /// Where it stands in each stream: the first sequence number it
    /// follows the view from, and processed through (below what it still
    /// has in flight).
    fn positions(&self, inflight: &InFlight) -> Vec<GroupPosition> {
        if let Some(last) = &*self.last.lock() {
            return last.clone();
        }
        let mut views = self.views.lock();
        views
            .iter_mut()
            .filter_map(|(origin, (incarnation, o))| {
                let start = o.start(&self.name)?;
                let through = o.last();
                let seq = inflight
                    .oldest_of(self.sub, *origin, *incarnation)
                    .map_or(through, |oldest| through.min(oldest - 1));
                Some(GroupPosition {
                    origin: *origin,
                    incarnation: *incarnation,
                    start,
                    seq,
                })
            })
            .collect()
    }

    /// What its heartbeats announce.
    pub(crate) fn status(&self, inflight: &InFlight) -> GroupStatus {
        GroupStatus {
            group: self.name.to_string(),
            patterns: vec![self.pattern.as_str().to_owned()],
            active: !self.is_stopped(),
            positions: self.positions(inflight),
            durable: self.durable,
        }
    }

    /// `n` handled deliveries wait for their outputs' acks.
    pub(crate) fn held(&self, n: usize) {
        self.holding.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` of them are done.
    pub(crate) fn released(&self, n: usize) {
        self.holding.fetch_sub(n, Ordering::AcqRel);
        self.released.notify_waiters();
    }

    /// Stops taking deliveries, waits for the one running and (up to
    /// [`STOP_WAIT`]) for the outputs of those handled to be acknowledged,
    /// and fixes its positions: what it had not processed then goes to
    /// other members, unflagged, and is never handled here.
    pub(crate) async fn stop(&self, inflight: &InFlight) {
        self.stopped.store(true, Ordering::Release);
        drop(self.running.lock().await);
        let waited = tokio::time::timeout(STOP_WAIT, async {
            loop {
                let released = self.released.notified();
                if self.holding.load(Ordering::Acquire) == 0 {
                    return;
                }
                released.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(group = %self.name, "handled deliveries whose outputs were not acknowledged in time: they are handed over too");
        }
        let positions = self.positions(inflight);
        *self.last.lock() = Some(positions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(topic: &str, seq: u64, payload: Vec<u8>) -> Envelope {
        Envelope {
            origin: PeerId(1),
            incarnation: 2,
            seq,
            topic: topic.into(),
            timestamp_us: 0,
            payload: Bytes::from(payload),
            meta: None,
        }
    }

    fn reassign(inner: &Envelope, seq: u64) -> Envelope {
        let body = ReassignBody {
            group: "g".into(),
            seq: inner.seq,
            to: PeerId(7),
            redelivered: true,
            frame: Bytes::from(inner.encode()),
        };
        env(REASSIGN_TOPIC, seq, body.encode())
    }

    #[test]
    fn a_reassignment_carries_an_earlier_event_of_the_same_stream() {
        let inner = env("bids.accepted", 5, b"\x01".to_vec());
        match ControlEvent::decode(&reassign(&inner, 9), 1 << 20) {
            Some(Ok(ControlEvent::Reassign { envelope, to, .. })) => {
                assert_eq!((envelope.seq, to), (5, PeerId(7)));
            }
            other => panic!("{other:?}"),
        }
        // Of another stream, or not earlier: malformed.
        let mut other = inner.clone();
        other.origin = PeerId(3);
        assert!(matches!(
            ControlEvent::decode(&reassign(&other, 9), 1 << 20),
            Some(Err(_))
        ));
        assert!(matches!(
            ControlEvent::decode(&reassign(&inner, 5), 1 << 20),
            Some(Err(_))
        ));
        assert!(
            ControlEvent::decode(&inner, 1 << 20).is_none(),
            "not a control event"
        );
    }

    proptest! {
        #[test]
        fn control_decoding_never_panics(payload in prop::collection::vec(any::<u8>(), 0..300), view in any::<bool>()) {
            let topic = if view { VIEW_TOPIC } else { REASSIGN_TOPIC };
            let _ = ControlEvent::decode(&env(topic, 9, payload), 1 << 20);
        }
    }
}
