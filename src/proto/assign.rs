//! The origin's side of consumer groups: which member owes which of its
//! events, and what to give to another member when one fails or leaves.
//!
//! Owns: the [`GroupView`] of every group the origin's stream is assigned
//! to (who is in it, as the members announce themselves in heartbeats),
//! the events each member was given and has not processed yet (with their
//! frames, so they can be given again), and the control events that go in
//! the stream: a new view before any event assigned by it, a reassignment
//! of an event to another member after its member failed, left or could
//! not have seen it. There is no coordinator: each stream has one origin,
//! which alone assigns its events, so there is no split brain within a
//! stream. Sans-IO: the publish driver feeds it and numbers what it returns.
//!
//! Policy: an event is assigned when it is numbered, by
//! [`GroupView::assignee`] over the current view, and owed by that member
//! until the member's announced position (processed through, in this
//! stream) reaches it. A member that fails, or stops announcing the group,
//! has what it owed reassigned, flagged as possibly handled already
//! (`redelivered`); a member that leaves the group gracefully (announces it
//! inactive, with its final position) has the rest reassigned unflagged,
//! so it is never handled twice. Events a member says it did not follow
//! (before its announced `start`) are reassigned unflagged, or flagged if
//! its start moved on (it followed the stream before, then lost it). An event no
//! member can take waits (homeless) until the view changes. Events of a
//! topic no member wants when they are published are not owed to the
//! group — unless the group is *durable*: then it is kept with no member
//! at all, and what its last members' patterns match waits for the next
//! member, with the events restored from the log after the origin's
//! restart (above the group's [`durable`](Assigner::durable) watermark).
//! At most [`AssignConfig::max_owned`] events are tracked per group;
//! beyond, the oldest stop being protected against failover (counted).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::proto::group_view::{GroupView, ViewMember};
use crate::wire::id::PeerId;
use crate::wire::topic::Pattern;

/// Most durable groups an origin keeps (their names come from the network).
pub const MAX_DURABLE_GROUPS: usize = 256;

/// Sizing of an [`Assigner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignConfig {
    /// Events tracked per group at most (owed, or waiting for a member).
    pub max_owned: usize,
}

impl Default for AssignConfig {
    fn default() -> Self {
        AssignConfig { max_owned: 65_536 }
    }
}

/// What a member announces about one of its groups, for this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The group.
    pub group: Arc<str>,
    /// Its handler's patterns.
    pub patterns: Vec<Pattern>,
    /// False once the handler stopped: `position` is final.
    pub active: bool,
    /// Whether the member says the group is durable.
    pub durable: bool,
    /// The first sequence number of this stream the member followed the
    /// group's view from (0: not known yet).
    pub start: u64,
    /// Processed through this sequence number of this stream.
    pub position: u64,
}

/// An event given to another member of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassign {
    /// The group.
    pub group: Arc<str>,
    /// The event's own sequence number in this stream.
    pub seq: u64,
    /// The member that handles it now.
    pub to: PeerId,
    /// Whether a member it was given to before may have handled it.
    pub redelivered: bool,
    /// The event's frame.
    pub frame: Bytes,
}

/// A control event to put in the stream, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The group's view from here on.
    View(GroupView),
    /// An event for one member of a group.
    Reassign(Reassign),
}

/// Counters of an [`Assigner`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssignStats {
    /// Events given to a member when published.
    pub assigned: u64,
    /// Events given to another member afterwards.
    pub reassigned: u64,
    /// Of those, flagged as possibly handled already (after a failure).
    pub failed_over: u64,
    /// Events no longer tracked because a group's bound was reached, or
    /// because a durable group was forgotten with them.
    pub untracked: u64,
    /// Events kept for a durable group while no member could take them.
    pub kept: u64,
}

/// What an origin records of one of its durable groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableGroup {
    /// The group.
    pub group: Arc<str>,
    /// Every event of the stream through this sequence number is done for
    /// the group (handled by a member, or not the group's).
    pub through: u64,
    /// The patterns its members last had (what it is owed while none is
    /// live).
    pub patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Owned {
    seq: u64,
    topic: Arc<str>,
    key: u64,
    frame: Bytes,
    member: PeerId,
    redelivered: bool,
}

#[derive(Debug)]
struct Group {
    view: GroupView,
    /// The view changed and is not in the stream yet.
    changed: bool,
    /// By the stream sequence number it was given to its member at (its
    /// own, or its reassignment's).
    owned: BTreeMap<u64, Owned>,
    /// To give to a member again, in order.
    homeless: VecDeque<Owned>,
    /// Homeless that no member could take in the current view.
    waiting: VecDeque<Owned>,
    /// The start each member last announced: one that moves on (the
    /// member began following the stream again, after a gap) may have
    /// handled some of what lies before it, so that is given again flagged.
    starts: std::collections::HashMap<PeerId, u64>,
    /// Kept with no member, owed what `wants` matches meanwhile.
    durable: bool,
    /// A durable group's patterns: its members', as last seen.
    wants: Vec<Pattern>,
    /// Since when a durable group has had no member (µs, as
    /// [`Assigner::expire`] was told).
    idle_since: Option<u64>,
}

impl Group {
    fn new(name: Arc<str>) -> Self {
        Group {
            view: GroupView::new(name),
            changed: false,
            owned: BTreeMap::new(),
            homeless: VecDeque::new(),
            waiting: VecDeque::new(),
            starts: std::collections::HashMap::new(),
            durable: false,
            wants: Vec::new(),
            idle_since: None,
        }
    }

    fn tracked(&self) -> usize {
        self.owned.len() + self.homeless.len() + self.waiting.len()
    }

    /// A durable group's patterns become its members' (kept once it has
    /// none).
    fn refresh_wants(&mut self) {
        if self.view.members.is_empty() {
            return;
        }
        self.wants.clear();
        for p in self.view.members.iter().flat_map(|m| &m.patterns) {
            if !self.wants.iter().any(|w| w.as_str() == p.as_str()) {
                self.wants.push(p.clone());
            }
        }
    }

    /// The oldest event sequence number it tracks.
    fn oldest(&self) -> Option<u64> {
        let all = self
            .owned
            .values()
            .chain(&self.homeless)
            .chain(&self.waiting);
        all.map(|o| o.seq).min()
    }

    fn mark_changed(&mut self) {
        if !self.changed {
            self.view.epoch += 1;
            self.changed = true;
        }
        self.homeless.extend(self.waiting.drain(..));
    }

    /// What `member` owes with a stream seq in `range` becomes homeless.
    fn evict(&mut self, member: PeerId, below: Option<u64>, redelivered: bool) {
        let keys: Vec<u64> = self
            .owned
            .iter()
            .take_while(|(at, _)| below.is_none_or(|b| **at < b))
            .filter(|(_, o)| o.member == member)
            .map(|(at, _)| *at)
            .collect();
        for at in keys {
            let mut o = self.owned.remove(&at).expect("listed");
            o.redelivered |= redelivered;
            self.homeless.push_back(o);
        }
    }

    fn release(&mut self, member: PeerId, through: u64) {
        let keys: Vec<u64> = self
            .owned
            .range(..=through)
            .filter(|(_, o)| o.member == member)
            .map(|(at, _)| *at)
            .collect();
        for at in keys {
            self.owned.remove(&at);
        }
    }

    fn leave(&mut self, member: PeerId, redelivered: bool) {
        if self.view.remove(member) {
            self.mark_changed();
        }
        self.starts.remove(&member);
        self.refresh_wants();
        self.evict(member, None, redelivered);
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Assigner {
    cfg: AssignConfig,
    groups: BTreeMap<Arc<str>, Group>,
    stats: AssignStats,
}

impl Assigner {
    /// An assigner with no groups.
    pub fn new(cfg: AssignConfig) -> Self {
        Assigner {
            cfg,
            groups: BTreeMap::new(),
            stats: AssignStats::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> AssignStats {
        self.stats
    }

    /// The current view of every group (what the stream says once the
    /// pending controls are in it).
    pub fn views(&self) -> impl Iterator<Item = &GroupView> + '_ {
        self.groups.values().map(|g| &g.view)
    }

    /// Events tracked: owed by a member or waiting for one.
    pub fn tracked(&self) -> usize {
        self.groups.values().map(Group::tracked).sum()
    }

    /// Events waiting for a member (homeless), all groups.
    pub fn homeless(&self) -> usize {
        self.groups
            .values()
            .map(|g| g.homeless.len() + g.waiting.len())
            .sum()
    }

    /// Every event owed, as (group, its sequence number, the member).
    pub fn owed(&self) -> impl Iterator<Item = (&str, u64, PeerId)> + '_ {
        self.groups.values().flat_map(|g| {
            g.owned
                .values()
                .map(move |o| (&*g.view.group, o.seq, o.member))
        })
    }

    /// Who owes the event `seq` of `group` (tests and stats).
    pub fn owner(&self, group: &str, seq: u64) -> Option<PeerId> {
        self.groups
            .get(group)?
            .owned
            .values()
            .find(|o| o.seq == seq)
            .map(|o| o.member)
    }

    /// A live member's heartbeat: its groups, as it announces them for this
    /// stream. A group it stopped announcing is left as after a failure.
    pub fn handle_groups(&mut self, member: PeerId, announced: &[Announced]) {
        let mut durables = self.groups.values().filter(|g| g.durable).count();
        for a in announced {
            let g = self
                .groups
                .entry(a.group.clone())
                .or_insert_with(|| Group::new(a.group.clone()));
            if a.start > 0 {
                // What it was given before it followed the view, it never
                // saw — unless it had followed from an earlier start.
                let moved = g
                    .starts
                    .insert(member, a.start)
                    .is_some_and(|before| before < a.start);
                g.evict(member, Some(a.start), moved);
                g.release(member, a.position);
            }
            if a.durable != g.durable {
                if a.durable && durables >= MAX_DURABLE_GROUPS {
                    tracing::warn!(group = %a.group, "too many durable groups: this one is kept only while it has members");
                } else {
                    durables = if a.durable {
                        durables + 1
                    } else {
                        durables - 1
                    };
                    g.durable = a.durable;
                }
            }
            if !a.active {
                g.leave(member, false);
                continue;
            }
            let joined = g.view.upsert(ViewMember {
                id: member,
                patterns: a.patterns.clone(),
            });
            if joined {
                g.mark_changed();
                g.refresh_wants();
            }
        }
        for (name, g) in self.groups.iter_mut() {
            if g.view.member(member).is_some() && !announced.iter().any(|a| a.group == *name) {
                g.leave(member, true);
            }
        }
    }

    /// The member failed (or restarted): what it owed goes to others,
    /// flagged as possibly handled.
    pub fn handle_failed(&mut self, member: PeerId) {
        for g in self.groups.values_mut() {
            g.leave(member, true);
        }
    }

    /// Whether any group is known (then every event is offered to
    /// [`assign`](Self::assign)).
    pub fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Whether a control event waits to be numbered: [`assign`](Self::assign)
    /// must not be called before [`next_control`](Self::next_control) has
    /// returned `None`.
    pub fn has_control(&self) -> bool {
        self.groups
            .values()
            .any(|g| g.changed || !g.homeless.is_empty())
    }

    /// The next control event, which takes the sequence number `seq`.
    /// Once there is none, groups left with no member and nothing tracked
    /// (their empty view already in the stream) are forgotten, so names
    /// announced and dropped by members do not accumulate.
    pub fn next_control(&mut self, seq: u64) -> Option<Control> {
        let control = self.take_control(seq);
        if control.is_none() {
            self.groups.retain(|_, g| {
                g.changed || g.durable || !g.view.members.is_empty() || g.tracked() > 0
            });
        }
        control
    }

    fn take_control(&mut self, seq: u64) -> Option<Control> {
        for g in self.groups.values_mut() {
            if g.changed {
                g.changed = false;
                return Some(Control::View(g.view.clone()));
            }
        }
        for g in self.groups.values_mut() {
            while let Some(o) = g.homeless.pop_front() {
                let Some(to) = g.view.assignee(&o.topic, o.key) else {
                    g.waiting.push_back(o);
                    continue;
                };
                self.stats.reassigned += 1;
                if o.redelivered {
                    self.stats.failed_over += 1;
                }
                let control = Reassign {
                    group: g.view.group.clone(),
                    seq: o.seq,
                    to,
                    redelivered: o.redelivered,
                    frame: o.frame.clone(),
                };
                g.owned.insert(seq, Owned { member: to, ..o });
                return Some(Control::Reassign(control));
            }
        }
        None
    }

    /// The event `seq` (of `topic`, partition key `key`) was numbered:
    /// each group with a member that wants it owes it, and (if `keep`) a
    /// durable group whose patterns match it keeps it for its next member.
    /// Returns how many groups a live member owes it in.
    pub fn assign(
        &mut self,
        seq: u64,
        topic: &Arc<str>,
        key: u64,
        frame: &Bytes,
        keep: bool,
    ) -> usize {
        debug_assert!(!self.has_control(), "controls first");
        let mut groups = 0;
        // Kept in a buffer of its own: `frame` may be a slice of a larger
        // block (the publisher's), which a frame tracked for long would
        // keep alive whole. One copy per event, shared by its groups.
        let mut own: Option<Bytes> = None;
        for g in self.groups.values_mut() {
            let mut owned = || Owned {
                seq,
                topic: topic.clone(),
                key,
                frame: own
                    .get_or_insert_with(|| Bytes::copy_from_slice(frame))
                    .clone(),
                member: PeerId(0),
                redelivered: false,
            };
            match g.view.assignee(topic, key) {
                Some(member) => {
                    self.stats.assigned += 1;
                    groups += 1;
                    g.owned.insert(seq, Owned { member, ..owned() });
                }
                None if keep && g.durable && g.wants.iter().any(|p| p.matches(topic)) => {
                    self.stats.kept += 1;
                    g.waiting.push_back(owned());
                }
                None => continue,
            }
            while g.tracked() > self.cfg.max_owned {
                self.stats.untracked += 1;
                if g.waiting.pop_front().is_none() && g.homeless.pop_front().is_none() {
                    g.owned.pop_first();
                }
            }
        }
        groups
    }

    /// The durable groups, each with its watermark: what it tracks is all
    /// after it; with nothing tracked, `numbered` (the last sequence number
    /// given to [`assign`](Self::assign)).
    pub fn durable(&self, numbered: u64) -> impl Iterator<Item = DurableGroup> + '_ {
        self.groups
            .values()
            .filter(|g| g.durable)
            .map(move |g| DurableGroup {
                group: g.view.group.clone(),
                through: g.oldest().map_or(numbered, |s| s - 1),
                patterns: g.wants.clone(),
            })
    }

    /// A durable group as recorded before this origin restarted: kept, with
    /// no member until one announces itself.
    pub fn restore(&mut self, record: &DurableGroup) {
        let g = self
            .groups
            .entry(record.group.clone())
            .or_insert_with(|| Group::new(record.group.clone()));
        g.durable = true;
        g.wants = record.patterns.clone();
    }

    /// An event of the log above a restored durable group's watermark,
    /// oldest first: waits for a member, flagged (one may have handled it
    /// before the restart).
    pub fn restore_event(
        &mut self,
        group: &str,
        seq: u64,
        topic: &Arc<str>,
        key: u64,
        frame: Bytes,
    ) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if !g.wants.iter().any(|p| p.matches(topic)) {
            return;
        }
        g.waiting.push_back(Owned {
            seq,
            topic: topic.clone(),
            key,
            // Its own buffer: `frame` may be a slice of a whole log record.
            frame: Bytes::copy_from_slice(&frame),
            member: PeerId(0),
            redelivered: true,
        });
        self.stats.kept += 1;
        if g.tracked() > self.cfg.max_owned {
            self.stats.untracked += 1;
            g.waiting.pop_front();
        }
    }

    /// Forgets the durable groups that have had no member for longer than
    /// `max_age_us` (with what they kept, counted as untracked); returns
    /// their names.
    pub fn expire(&mut self, now_us: u64, max_age_us: u64) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        for (name, g) in self.groups.iter_mut().filter(|(_, g)| g.durable) {
            if !g.view.members.is_empty() {
                g.idle_since = None;
                continue;
            }
            let since = *g.idle_since.get_or_insert(now_us);
            if now_us.saturating_sub(since) > max_age_us {
                tracing::info!(group = %name, dropped = g.tracked(),
                    "a durable group with no member within the retention age is forgotten");
                self.stats.untracked += g.tracked() as u64;
                gone.push(name.clone());
            }
        }
        for name in &gone {
            self.groups.remove(name);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::group_view::partition_key;

    fn ann(group: &str, start: u64, position: u64) -> Announced {
        Announced {
            group: group.into(),
            patterns: vec![Pattern::parse("orders.>").unwrap()],
            active: true,
            durable: false,
            start,
            position,
        }
    }

    /// Drains the controls from `*seq` on; returns them.
    fn controls(a: &mut Assigner, seq: &mut u64) -> Vec<Control> {
        let mut out = Vec::new();
        while let Some(c) = a.next_control(*seq + 1) {
            *seq += 1;
            out.push(c);
        }
        out
    }

    fn publish(a: &mut Assigner, seq: &mut u64, n: u64) {
        let topic: Arc<str> = "orders.new".into();
        for _ in 0..n {
            *seq += 1;
            a.assign(*seq, &topic, partition_key(None, *seq), &Bytes::new(), true);
        }
    }

    #[test]
    fn a_view_goes_in_the_stream_before_the_events_it_assigns() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 0, 0)]);
        a.handle_groups(PeerId(2), &[ann("g", 0, 0)]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), 1, "one view for both joins");
        let Control::View(v) = &c[0] else { panic!() };
        assert_eq!((v.epoch, v.members.len()), (1, 2));
        publish(&mut a, &mut seq, 100);
        assert_eq!(a.stats().assigned, 100);
        assert_eq!(a.tracked(), 100);
        // Positions release what each member processed.
        a.handle_groups(PeerId(1), &[ann("g", 1, 101)]);
        a.handle_groups(PeerId(2), &[ann("g", 1, 60)]);
        assert!(a.tracked() < 50);
        assert!(controls(&mut a, &mut seq).is_empty());
    }

    #[test]
    fn a_failed_members_events_go_to_the_others_flagged() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        for m in 1..=3 {
            a.handle_groups(PeerId(m), &[ann("g", 1, 0)]);
        }
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 300);
        let owed_by_2 = (2..=301)
            .filter(|&s| a.owner("g", s) == Some(PeerId(2)))
            .count();
        assert!(owed_by_2 > 50);
        a.handle_failed(PeerId(2));
        let c = controls(&mut a, &mut seq);
        let Control::View(v) = &c[0] else { panic!() };
        assert_eq!(v.members.len(), 2);
        assert_eq!(c.len(), 1 + owed_by_2);
        for c in &c[1..] {
            let Control::Reassign(r) = c else { panic!() };
            assert!(r.redelivered && r.to != PeerId(2));
        }
        assert_eq!(a.stats().failed_over, owed_by_2 as u64);
    }

    #[test]
    fn a_graceful_leave_reassigns_only_what_was_not_processed_unflagged() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 1, 0)]);
        a.handle_groups(PeerId(2), &[ann("g", 1, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 100);
        let mut leaving = ann("g", 1, 50);
        leaving.active = false;
        let after_50 = (51..=101)
            .filter(|&s| a.owner("g", s) == Some(PeerId(1)))
            .count();
        a.handle_groups(PeerId(1), &[leaving]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), 1 + after_50);
        assert!(c[1..]
            .iter()
            .all(|c| matches!(c, Control::Reassign(r) if !r.redelivered && r.to == PeerId(2))));
    }

    #[test]
    fn events_wait_for_a_member_when_none_is_left() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 1, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 10);
        a.handle_failed(PeerId(1));
        assert_eq!(controls(&mut a, &mut seq).len(), 1, "the empty view only");
        assert_eq!(a.homeless(), 10);
        publish(&mut a, &mut seq, 5); // nobody wants them: not owed
        assert_eq!(a.tracked(), 10);
        a.handle_groups(PeerId(7), &[ann("g", 0, 0)]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), 11);
        assert_eq!(a.homeless(), 0);
    }

    #[test]
    fn what_a_member_did_not_follow_is_given_again_unflagged() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 0, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 10);
        // It only followed the view from 6 on: 2..=5 never reached its handler.
        a.handle_groups(PeerId(1), &[ann("g", 6, 11)]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), 4);
        assert!(c
            .iter()
            .all(|c| matches!(c, Control::Reassign(r) if !r.redelivered && r.to == PeerId(1))));
        assert_eq!(a.tracked(), 4);
    }

    #[test]
    fn a_start_that_moves_on_gives_what_lies_before_it_again_flagged() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 0, 0)]);
        a.handle_groups(PeerId(2), &[ann("g", 0, 0)]);
        controls(&mut a, &mut seq);
        a.handle_groups(PeerId(1), &[ann("g", 2, 1)]);
        publish(&mut a, &mut seq, 20);
        // It lost the stream after 5 and follows it again from 15: all it
        // owed before 15 is given again (what it handled of it, flagged).
        let owed = (2..15)
            .filter(|&s| a.owner("g", s) == Some(PeerId(1)))
            .count();
        a.handle_groups(PeerId(1), &[ann("g", 15, 5)]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), owed);
        assert!(c
            .iter()
            .all(|c| matches!(c, Control::Reassign(r) if r.redelivered)));
    }

    #[test]
    fn a_group_not_announced_any_more_is_left_as_after_a_failure() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 1, 0), ann("h", 1, 0)]);
        a.handle_groups(PeerId(2), &[ann("g", 1, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 20);
        a.handle_groups(PeerId(1), &[ann("h", 1, 0)]);
        let c = controls(&mut a, &mut seq);
        assert!(
            matches!(&c[0], Control::View(v) if v.group.as_ref() == "g" && v.members.len() == 1)
        );
        assert!(c[1..]
            .iter()
            .all(|c| matches!(c, Control::Reassign(r) if r.redelivered)));
    }

    #[test]
    fn groups_left_empty_are_forgotten_once_their_view_is_out() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        for n in 0..100 {
            let name = format!("g{n}");
            a.handle_groups(PeerId(1), &[ann(&name, 0, 0)]);
            a.handle_groups(PeerId(1), &[]); // dropped again
        }
        assert!(!controls(&mut a, &mut seq).is_empty());
        assert_eq!(a.views().count(), 0, "no empty group kept");
        assert!(!a.has_groups());
    }

    fn durable(group: &str, start: u64, position: u64) -> Announced {
        Announced {
            durable: true,
            ..ann(group, start, position)
        }
    }

    #[test]
    fn a_durable_group_keeps_what_is_published_while_it_has_no_member() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[durable("g", 1, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 10);
        a.handle_failed(PeerId(1));
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 5); // kept for the group, not lost
        let other: Arc<str> = "billing.new".into();
        seq += 1;
        a.assign(seq, &other, 0, &Bytes::new(), true); // not the group's patterns
        seq += 1;
        let topic: Arc<str> = "orders.new".into();
        a.assign(seq, &topic, 0, &Bytes::new(), false); // a request: not kept
        assert_eq!(a.homeless(), 15);
        assert_eq!(a.stats().kept, 5);
        assert!(
            a.has_groups(),
            "a durable group is not forgotten when empty"
        );
        assert_eq!(a.durable(seq).next().unwrap().through, 1);
        a.handle_groups(PeerId(7), &[durable("g", 0, 0)]);
        let c = controls(&mut a, &mut seq);
        let given: Vec<u64> = c
            .iter()
            .filter_map(|c| match c {
                Control::Reassign(r) if r.to == PeerId(7) => Some(r.seq),
                _ => None,
            })
            .collect();
        // 12 is the empty view.
        assert_eq!(given, (2..=11).chain(13..=17).collect::<Vec<_>>());
        // Flagged only what the failed member may have handled.
        let flagged = c
            .iter()
            .filter(|c| matches!(c, Control::Reassign(r) if r.redelivered))
            .count();
        assert_eq!(flagged, 10);
    }

    #[test]
    fn a_durable_groups_watermark_is_below_what_it_tracks() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[durable("g", 0, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 10); // 2..=11
        a.handle_groups(PeerId(1), &[durable("g", 1, 6)]);
        let g = a.durable(seq).next().unwrap();
        assert_eq!((g.through, g.patterns.len()), (6, 1));
        a.handle_groups(PeerId(1), &[durable("g", 1, 11)]);
        assert_eq!(
            a.durable(seq).next().unwrap().through,
            11,
            "nothing tracked"
        );
        // A group that is not durable has no watermark.
        a.handle_groups(PeerId(2), &[ann("h", 0, 0)]);
        assert_eq!(a.durable(seq).count(), 1);
    }

    #[test]
    fn a_restored_durable_group_gives_its_events_to_the_first_member_flagged() {
        let mut a = Assigner::new(AssignConfig::default());
        let record = DurableGroup {
            group: "g".into(),
            through: 4,
            patterns: vec![Pattern::parse("orders.>").unwrap()],
        };
        a.restore(&record);
        let topic: Arc<str> = "orders.new".into();
        let other: Arc<str> = "billing.new".into();
        for seq in 5..=9 {
            a.restore_event("g", seq, &topic, seq, Bytes::new());
        }
        a.restore_event("g", 10, &other, 10, Bytes::new());
        assert_eq!(a.homeless(), 5);
        assert_eq!(a.durable(10).next().unwrap().through, 4);
        let mut seq = 10;
        a.handle_groups(PeerId(3), &[durable("g", 0, 0)]);
        let c = controls(&mut a, &mut seq);
        assert_eq!(c.len(), 6);
        assert!(c[1..]
            .iter()
            .all(|c| matches!(c, Control::Reassign(r) if r.redelivered && r.to == PeerId(3))));
    }

    #[test]
    fn a_durable_group_with_no_member_for_longer_than_the_age_is_forgotten() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[durable("g", 1, 0)]);
        controls(&mut a, &mut seq);
        assert!(a.expire(0, 100).is_empty(), "it has a member");
        a.handle_failed(PeerId(1));
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 3);
        assert!(a.expire(1_000, 100).is_empty(), "idle from now");
        assert!(a.expire(1_100, 100).is_empty());
        assert_eq!(a.expire(1_101, 100), vec![Arc::<str>::from("g")]);
        assert!(!a.has_groups());
        assert_eq!(a.stats().untracked, 3);
    }

    #[test]
    fn a_group_announced_not_durable_any_more_is_forgotten_when_empty() {
        let mut a = Assigner::new(AssignConfig::default());
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[durable("g", 1, 0)]);
        a.handle_groups(PeerId(1), &[ann("g", 1, 0)]);
        a.handle_failed(PeerId(1));
        controls(&mut a, &mut seq);
        assert!(!a.has_groups());
    }

    #[test]
    fn the_bound_stops_tracking_the_oldest() {
        let mut a = Assigner::new(AssignConfig { max_owned: 8 });
        let mut seq = 0;
        a.handle_groups(PeerId(1), &[ann("g", 1, 0)]);
        controls(&mut a, &mut seq);
        publish(&mut a, &mut seq, 20);
        assert_eq!(a.tracked(), 8);
        assert_eq!(a.stats().untracked, 12);
    }
}
