//! A consumer group as the origin of a stream sees it, and the rule that
//! gives each of the origin's events to one member.
//!
//! Owns: [`GroupView`] (the group's members and their patterns, with an
//! epoch), [`partition_key`] and [`GroupView::assignee`], the deterministic
//! assignment (rendezvous hashing of the event's key over the members whose
//! patterns match its topic). The origin (which tracks what each member
//! still owes, `assign`) and every member (which handles what is its own,
//! `group_member`) compute it from the same view, which travels in the
//! origin's own stream, so they agree without asking each other. Must not
//! decide when a view changes: that is the origin's [`Assigner`](super::assign::Assigner).

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::wire::envelope::Envelope;
use crate::wire::frame::DecodeError;
use crate::wire::group::{parse_patterns, ViewInfo, ViewMemberInfo};
use crate::wire::id::PeerId;
use crate::wire::topic::Pattern;

/// Header that carries an event's partition key (set by
/// `PublishOptions::key`): events with the same key go to the same member
/// of a group while the group is stable.
pub const KEY_HEADER: &str = "chorus-key";

/// One member of a group view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMember {
    /// The member peer.
    pub id: PeerId,
    /// The patterns its group handler subscribed with.
    pub patterns: Vec<Pattern>,
}

impl ViewMember {
    /// Whether its handler wants `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }
}

/// A consumer group as one origin counts it at one point of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group's name.
    pub group: Arc<str>,
    /// One more at each change, per origin stream.
    pub epoch: u64,
    /// By id, ascending, each once.
    pub members: Vec<ViewMember>,
}

/// The key an event is assigned by: a hash of its partition key if it has
/// one (the [`KEY_HEADER`] header, else its message id), else of its
/// sequence number (events spread evenly, with no order between them).
pub fn partition_key(key: Option<&str>, seq: u64) -> u64 {
    match key {
        Some(k) => key_hash(k),
        None => seq_hash(seq),
    }
}

/// [`partition_key`] of an event with the key `k`.
pub fn key_hash(k: &str) -> u64 {
    xxh3_64_with_seed(k.as_bytes(), 0)
}

/// [`partition_key`] of an event without a key.
pub fn seq_hash(seq: u64) -> u64 {
    xxh3_64_with_seed(&seq.to_le_bytes(), 1)
}

/// The partition key of a received event: its [`KEY_HEADER`], else its
/// message id, else its sequence number.
pub fn envelope_key(env: &Envelope) -> u64 {
    let key = env
        .headers()
        .get(KEY_HEADER)
        .map(String::as_str)
        .or(env.id());
    partition_key(key, env.seq)
}

/// The rendezvous score of `member` for `key`: the member with the highest
/// score takes the event, so removing a member moves only its own keys.
fn score(key: u64, member: PeerId) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), member.0)
}

impl GroupView {
    /// An empty view of `group` at epoch 0.
    pub fn new(group: Arc<str>) -> Self {
        GroupView {
            group,
            epoch: 0,
            members: Vec::new(),
        }
    }

    /// The member that handles an event of `topic` with partition key
    /// `key`: the highest rendezvous score among the members that want the
    /// topic; `None` if none does.
    pub fn assignee(&self, topic: &str, key: u64) -> Option<PeerId> {
        self.assignee_without(topic, key, None)
    }

    /// [`assignee`](Self::assignee) with `except` left out.
    pub fn assignee_without(
        &self,
        topic: &str,
        key: u64,
        except: Option<PeerId>,
    ) -> Option<PeerId> {
        self.members
            .iter()
            .filter(|m| Some(m.id) != except && m.wants(topic))
            .max_by_key(|m| (score(key, m.id), m.id))
            .map(|m| m.id)
    }

    /// The member `id`, if in the view.
    pub fn member(&self, id: PeerId) -> Option<&ViewMember> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// Puts `member` in (or replaces its patterns); true if that changed
    /// the view.
    pub fn upsert(&mut self, member: ViewMember) -> bool {
        match self.members.binary_search_by_key(&member.id, |m| m.id) {
            Ok(i) if self.members[i] == member => false,
            Ok(i) => {
                self.members[i] = member;
                true
            }
            Err(i) => {
                self.members.insert(i, member);
                true
            }
        }
    }

    /// The view a [`ViewInfo`] carries (checked: members ascending,
    /// patterns valid).
    pub fn from_info(info: &ViewInfo) -> Result<GroupView, DecodeError> {
        info.check()?;
        let members = info
            .members
            .iter()
            .map(|m| {
                Ok(ViewMember {
                    id: m.id,
                    patterns: parse_patterns(&m.patterns)?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(GroupView {
            group: info.group.as_str().into(),
            epoch: info.epoch,
            members,
        })
    }

    /// This view on the wire, taking effect at `since` (0: where it is).
    pub fn to_info(&self, since: u64) -> ViewInfo {
        ViewInfo {
            group: self.group.to_string(),
            epoch: self.epoch,
            since,
            members: self
                .members
                .iter()
                .map(|m| ViewMemberInfo {
                    id: m.id,
                    patterns: m.patterns.iter().map(|p| p.as_str().to_owned()).collect(),
                })
                .collect(),
        }
    }

    /// Takes `id` out; true if it was in.
    pub fn remove(&mut self, id: PeerId) -> bool {
        match self.members.binary_search_by_key(&id, |m| m.id) {
            Ok(i) => {
                self.members.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ids: &[u64]) -> GroupView {
        let mut v = GroupView::new("g".into());
        for &id in ids {
            v.upsert(ViewMember {
                id: PeerId(id),
                patterns: vec![Pattern::parse("orders.>").unwrap()],
            });
        }
        v
    }

    #[test]
    fn each_event_has_one_assignee_among_the_members_that_want_it() {
        let v = view(&[3, 1, 2]);
        assert_eq!(
            v.members.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for seq in 1..100 {
            let a = v.assignee("orders.eu", partition_key(None, seq)).unwrap();
            assert!([1, 2, 3].contains(&a.0));
        }
        assert_eq!(v.assignee("bids.new", 7), None);
    }

    #[test]
    fn keys_spread_evenly_and_a_removal_moves_only_the_removed_members_keys() {
        let v = view(&[10, 20, 30]);
        let mut counts = [0u32; 3];
        let mut w = v.clone();
        w.remove(PeerId(20));
        for k in 0..3000u64 {
            let key = partition_key(Some(&format!("order-{k}")), k);
            let a = v.assignee("orders.x", key).unwrap();
            counts[(a.0 / 10 - 1) as usize] += 1;
            let b = w.assignee("orders.x", key).unwrap();
            if a != PeerId(20) {
                assert_eq!(a, b, "key {k} moved although its member stayed");
            }
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn the_same_key_goes_to_the_same_member() {
        let v = view(&[1, 2, 3, 4]);
        let k = partition_key(Some("customer-42"), 1);
        let first = v.assignee("orders.a", k);
        for _ in 0..10 {
            assert_eq!(v.assignee("orders.b", k), first);
        }
    }

    #[test]
    fn a_view_round_trips_through_its_wire_form() {
        let v = view(&[5, 2, 9]);
        let info = v.to_info(17);
        assert_eq!(info.since, 17);
        assert_eq!(GroupView::from_info(&info).unwrap(), v);
    }

    #[test]
    fn upsert_reports_changes_only() {
        let mut v = view(&[1]);
        let same = v.members[0].clone();
        assert!(!v.upsert(same));
        assert!(v.upsert(ViewMember {
            id: PeerId(1),
            patterns: vec![Pattern::parse("bids.*").unwrap()],
        }));
        assert!(v.remove(PeerId(1)));
        assert!(!v.remove(PeerId(1)));
    }
}
