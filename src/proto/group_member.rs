//! A group member's side of consumer groups: which events of one origin's
//! stream are its own.
//!
//! Owns: the views of the origin's groups as the member learns them — from
//! the stream itself (view control events, in order) and, for the part of
//! the stream before the member started receiving it, from one heartbeat
//! of the origin — and the first sequence number from which the member
//! follows each group's view (`start`, announced back to the origin, which
//! gives again what it had assigned to the member before it). Sans-IO: the
//! receive driver feeds it, in stream order.
//!
//! A heartbeat's views are current as of its `last_seq`, each with the
//! sequence number of its view event (`since`); one that is not older than
//! the first event the member received tells the view in effect from
//! `since` (or from the first event, if later) on, because every later
//! change is in the part of the stream the member receives. Until the
//! member knows a group's view it handles none of that group's events (the
//! origin gives them again).

use std::collections::HashMap;
use std::sync::Arc;

use crate::proto::group_view::GroupView;
use crate::wire::id::PeerId;

#[derive(Debug, Clone)]
struct Known {
    start: u64,
    view: GroupView,
}

/// The group views of one origin stream. See the module documentation.
#[derive(Debug, Default)]
pub struct OriginViews {
    /// The first and the last sequence number received, in order.
    first: Option<u64>,
    last: u64,
    /// The newest heartbeat not used yet: its last_seq and views.
    beat: Option<(u64, Vec<(u64, GroupView)>)>,
    /// Views from a heartbeat as recent as the first event, with where
    /// each took effect; a group absent had no view (no member).
    base: Option<HashMap<Arc<str>, (u64, GroupView)>>,
    /// The first sequence number decided with `base`.
    base_from: u64,
    known: HashMap<Arc<str>, Known>,
}

impl OriginViews {
    /// Nothing received yet.
    pub fn new() -> Self {
        OriginViews::default()
    }

    /// A heartbeat of the origin: its last sequence number and its views
    /// as of then (read after it), each with the sequence number of its
    /// view event.
    ///
    /// It counts only against the first event actually received (a member
    /// is not owed, and may never see, what came before that), so an origin
    /// that publishes nothing leaves a new member without a view until its
    /// next event.
    pub fn handle_heartbeat(&mut self, last_seq: u64, views: Vec<(u64, GroupView)>) {
        if self.base.is_none() {
            self.beat = Some((last_seq, views));
            self.adopt();
        }
    }

    /// The next event of the stream, in order (every event, control or not).
    pub fn observe(&mut self, seq: u64) {
        if self.first.is_none() {
            self.first = Some(seq);
            self.adopt();
        }
        self.last = self.last.max(seq);
    }

    /// The last sequence number received in order (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Where the stream is received from (`None`: nothing yet).
    pub fn first(&self) -> Option<u64> {
        self.first
    }

    /// A view control event at `seq`, in order (after [`observe`](Self::observe)).
    pub fn handle_view(&mut self, seq: u64, view: GroupView) {
        match self.known.get_mut(&view.group) {
            Some(k) => k.view = view,
            None => {
                self.known
                    .insert(view.group.clone(), Known { start: seq, view });
            }
        }
    }

    fn adopt(&mut self) {
        let (Some(first), Some((last_seq, _))) = (self.first, &self.beat) else {
            return;
        };
        if *last_seq + 1 < first {
            return; // older than what we receive: changes may be missing
        }
        let (_, views) = self.beat.take().expect("checked");
        // Adopted before the first event, or between two: from the next one.
        self.base_from = self.last.max(first - 1) + 1;
        self.base = Some(
            views
                .into_iter()
                .map(|(since, v)| (v.group.clone(), (since, v)))
                .collect(),
        );
    }

    /// The first sequence number from which `group`'s view is followed
    /// (`None`: not known yet).
    pub fn start(&mut self, group: &Arc<str>) -> Option<u64> {
        self.follow(group, self.last + 1)
    }

    /// Starts following `group` at `from` at the earliest if its view is
    /// known; returns where it is followed from.
    fn follow(&mut self, group: &Arc<str>, from: u64) -> Option<u64> {
        if let Some(k) = self.known.get(group) {
            return Some(k.start);
        }
        let base = self.base.as_ref()?;
        // Before its view event, a view held by an earlier one we do not know.
        let (since, view) = base
            .get(group)
            .cloned()
            .unwrap_or_else(|| (0, GroupView::new(group.clone())));
        let start = from.max(self.base_from).max(since);
        self.known.insert(group.clone(), Known { start, view });
        Some(start)
    }

    /// The view of `group` followed now, if known.
    pub fn view(&self, group: &str) -> Option<&GroupView> {
        self.known.get(group).map(|k| &k.view)
    }

    /// Whether a reassignment at `seq` of an event to `to` in `group` is
    /// `me`'s to handle: it is addressed to `me` and within what `me`
    /// follows (the origin gives what is before that again).
    pub fn takes(&mut self, me: PeerId, group: &Arc<str>, seq: u64, to: PeerId) -> bool {
        to == me && self.follow(group, seq).is_some_and(|s| seq >= s)
    }

    /// Whether the event `seq` (of `topic`, partition key `key`) is `me`'s
    /// to handle in `group`. Called in stream order, after
    /// [`observe`](Self::observe) of it.
    pub fn is_mine(
        &mut self,
        me: PeerId,
        group: &Arc<str>,
        seq: u64,
        topic: &str,
        key: u64,
    ) -> bool {
        if self.follow(group, seq).is_none_or(|s| seq < s) {
            return false;
        }
        self.known[group].view.assignee(topic, key) == Some(me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::group_view::{partition_key, ViewMember};
    use crate::wire::topic::Pattern;

    fn view(epoch: u64, ids: &[u64]) -> GroupView {
        let mut v = GroupView::new("g".into());
        v.epoch = epoch;
        for &id in ids {
            v.upsert(ViewMember {
                id: PeerId(id),
                patterns: vec![Pattern::parse(">").unwrap()],
            });
        }
        v
    }

    #[test]
    fn nothing_is_mine_before_a_view_is_known() {
        let g: Arc<str> = "g".into();
        let mut o = OriginViews::new();
        o.observe(10);
        assert!(!o.is_mine(PeerId(1), &g, 10, "t", 1));
        assert_eq!(o.start(&g), None);
        // A heartbeat older than the first event received tells nothing.
        o.handle_heartbeat(5, vec![(1, view(1, &[1]))]);
        o.observe(11);
        assert!(!o.is_mine(PeerId(1), &g, 11, "t", 1));
        // One as recent: from the next event on.
        o.handle_heartbeat(11, vec![(1, view(1, &[1]))]);
        o.observe(12);
        assert!(o.is_mine(PeerId(1), &g, 12, "t", 1));
        assert_eq!(o.start(&g), Some(12));
    }

    #[test]
    fn a_view_in_the_stream_is_followed_from_its_place() {
        let g: Arc<str> = "g".into();
        let mut o = OriginViews::new();
        o.observe(3);
        o.handle_view(3, view(2, &[1, 2]));
        assert_eq!(o.start(&g), Some(3));
        let (mut mine, mut total) = (0, 0);
        for seq in 4..200 {
            o.observe(seq);
            total += 1;
            if o.is_mine(PeerId(1), &g, seq, "t", partition_key(None, seq)) {
                mine += 1;
            }
        }
        assert!(
            mine > total / 4 && mine < total * 3 / 4,
            "{mine} of {total}"
        );
        o.observe(200);
        o.handle_view(200, view(3, &[2]));
        for seq in 201..300 {
            o.observe(seq);
            assert!(!o.is_mine(PeerId(1), &g, seq, "t", partition_key(None, seq)));
        }
    }

    #[test]
    fn a_heartbeat_view_newer_than_the_first_event_counts_from_its_place() {
        let g: Arc<str> = "g".into();
        let mut o = OriginViews::new();
        o.observe(10);
        // The view changed at 15: what held for 10..15 is not known.
        o.handle_heartbeat(20, vec![(15, view(2, &[1]))]);
        for seq in 11..15 {
            o.observe(seq);
            assert!(!o.is_mine(PeerId(1), &g, seq, "t", 1));
        }
        assert_eq!(o.start(&g), Some(15));
        o.observe(15);
        o.handle_view(15, view(2, &[1]));
        o.observe(16);
        assert!(o.is_mine(PeerId(1), &g, 16, "t", 1));
        assert_eq!(o.start(&g), Some(15));
    }

    #[test]
    fn a_group_absent_from_the_heartbeat_has_no_member() {
        let g: Arc<str> = "g".into();
        let mut o = OriginViews::new();
        o.handle_heartbeat(0, vec![]);
        o.observe(1);
        assert!(!o.is_mine(PeerId(1), &g, 1, "t", 1));
        assert_eq!(o.start(&g), Some(1));
        o.observe(2);
        o.handle_view(2, view(1, &[1]));
        assert_eq!(o.start(&g), Some(1), "followed since 1");
        o.observe(3);
        assert!(o.is_mine(PeerId(1), &g, 3, "t", 1));
    }
}
