//! Consumer groups on the wire: what a member announces of its groups in
//! its heartbeats, the views an origin announces in its heartbeats and in
//! its stream, and the reassignment of an event to another member.
//!
//! Owns: [`GroupStatus`], [`GroupPosition`], [`ViewInfo`], [`ReassignBody`],
//! the reserved topics of the control events an origin puts in its own
//! stream ([`VIEW_TOPIC`], [`REASSIGN_TOPIC`]) and the validation of all of
//! them (bounds, names, patterns). See `docs/WIRE.md`, "Consumer groups".

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::frame::DecodeError;
use crate::wire::id::PeerId;
use crate::wire::topic::Pattern;

/// Prefix of the topics chorus reserves for its own control events; an
/// application may neither publish on them nor see them in a subscription.
pub const RESERVED_PREFIX: &str = "$chorus.";
/// Topic of a view control event: its payload is a [`ViewInfo`].
pub const VIEW_TOPIC: &str = "$chorus.group.view";
/// Topic of a reassignment: its payload is a [`ReassignBody`].
pub const REASSIGN_TOPIC: &str = "$chorus.group.reassign";
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 200;
/// Most groups one heartbeat announces (statuses or views).
pub const MAX_GROUPS: usize = 64;
/// Most patterns of one member's handler in a group.
pub const MAX_GROUP_PATTERNS: usize = 16;
/// Most group positions one heartbeat announces, in all.
pub const MAX_GROUP_POSITIONS: usize = 1024;
/// Most members of one view.
pub const MAX_VIEW_MEMBERS: usize = 1024;

/// "I am a member of `group` with these patterns; of each origin's stream
/// I follow its view from `start` and have processed through `seq`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group's name (1 to [`MAX_GROUP_NAME`] bytes).
    pub group: String,
    /// The patterns its handler subscribed with (1 to [`MAX_GROUP_PATTERNS`]).
    pub patterns: Vec<String>,
    /// False once the handler stopped: the positions are final.
    pub active: bool,
    /// Per origin stream (up to [`MAX_GROUP_POSITIONS`] in all).
    pub positions: Vec<GroupPosition>,
    /// Whether the group is durable: each origin keeps what it published
    /// for the group while no member is live, and (with a data dir) the
    /// group's position across its own restarts. Optional on the wire
    /// (absent: false; written only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub durable: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a group member stands in one origin's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPosition {
    /// The publishing peer.
    pub origin: PeerId,
    /// Its stream epoch.
    pub incarnation: u64,
    /// The first sequence number from which the member follows the view.
    pub start: u64,
    /// Processed through this sequence number.
    pub seq: u64,
}

/// One member of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewMemberInfo {
    /// The member.
    pub id: PeerId,
    /// Its handler's patterns.
    pub patterns: Vec<String>,
}

/// A group as an origin counts it: in a view control event (`since`: 0,
/// the event's own sequence number counts) or in the origin's heartbeat
/// (`since`: the sequence number of the view event it took effect at).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewInfo {
    /// The group's name.
    pub group: String,
    /// One more at each change of the view, per origin stream.
    pub epoch: u64,
    /// See the type's documentation.
    pub since: u64,
    /// By id, ascending, each once (up to [`MAX_VIEW_MEMBERS`]).
    pub members: Vec<ViewMemberInfo>,
}

/// The payload of a reassignment: the event `seq` of this stream, handed
/// to the group member `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignBody {
    /// The group.
    pub group: String,
    /// The event's own sequence number.
    pub seq: u64,
    /// The member that handles it now.
    pub to: PeerId,
    /// Whether another member may have handled it already.
    pub redelivered: bool,
    /// The event's frame (kind 0), as first published.
    pub frame: Bytes,
}

fn check_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(DecodeError::Malformed(format!(
            "a group name of {} bytes (1 to {MAX_GROUP_NAME})",
            name.len()
        )));
    }
    Ok(())
}

/// Parses a member's patterns; malformed if there are none, too many or an
/// invalid one.
pub fn parse_patterns(patterns: &[String]) -> Result<Vec<Pattern>, DecodeError> {
    if patterns.is_empty() || patterns.len() > MAX_GROUP_PATTERNS {
        return Err(DecodeError::Malformed(format!(
            "{} patterns in a group (1 to {MAX_GROUP_PATTERNS})",
            patterns.len()
        )));
    }
    patterns
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| DecodeError::Malformed(e.to_string())))
        .collect()
}

/// Checks what a heartbeat says of groups: statuses and views.
pub(crate) fn check(statuses: &[GroupStatus], views: &[ViewInfo]) -> Result<(), DecodeError> {
    if statuses.len() > MAX_GROUPS || views.len() > MAX_GROUPS {
        return Err(DecodeError::Malformed(format!(
            "{} group statuses and {} views, at most {MAX_GROUPS} each",
            statuses.len(),
            views.len()
        )));
    }
    let positions: usize = statuses.iter().map(|s| s.positions.len()).sum();
    if positions > MAX_GROUP_POSITIONS {
        return Err(DecodeError::Malformed(format!(
            "{positions} group positions, at most {MAX_GROUP_POSITIONS} accepted"
        )));
    }
    for s in statuses {
        check_name(&s.group)?;
        parse_patterns(&s.patterns)?;
    }
    for v in views {
        v.check()?;
    }
    Ok(())
}

impl ViewInfo {
    /// Checks its name, its members (ascending, bounded) and their patterns.
    pub fn check(&self) -> Result<(), DecodeError> {
        check_name(&self.group)?;
        if self.members.len() > MAX_VIEW_MEMBERS {
            return Err(DecodeError::Malformed(format!(
                "a view of {} members, at most {MAX_VIEW_MEMBERS}",
                self.members.len()
            )));
        }
        if self.members.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(DecodeError::Malformed(
                "a view's members are not in ascending order of id".into(),
            ));
        }
        for m in &self.members {
            parse_patterns(&m.patterns)?;
        }
        Ok(())
    }

    /// Decodes the payload of a view control event. Never panics.
    pub fn decode(payload: &[u8]) -> Result<ViewInfo, DecodeError> {
        let v: ViewInfo = rmp_serde::from_slice(payload).map_err(DecodeError::malformed)?;
        v.check()?;
        Ok(v)
    }

    /// Encodes it as a view control event's payload.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a view encodes")
    }
}

impl ReassignBody {
    /// Decodes the payload of a reassignment. Never panics.
    pub fn decode(payload: &[u8]) -> Result<ReassignBody, DecodeError> {
        let r: ReassignBody = rmp_serde::from_slice(payload).map_err(DecodeError::malformed)?;
        check_name(&r.group)?;
        Ok(r)
    }

    /// Encodes it as a reassignment's payload.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a reassignment encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view() -> ViewInfo {
        ViewInfo {
            group: "work-orders".into(),
            epoch: 3,
            since: 0,
            members: vec![
                ViewMemberInfo {
                    id: PeerId(1),
                    patterns: vec!["bids.>".into()],
                },
                ViewMemberInfo {
                    id: PeerId(9),
                    patterns: vec!["bids.accepted".into(), "bids.*".into()],
                },
            ],
        }
    }

    #[test]
    fn views_and_reassignments_round_trip() {
        let v = view();
        assert_eq!(ViewInfo::decode(&v.encode()).unwrap(), v);
        let r = ReassignBody {
            group: "g".into(),
            seq: 7,
            to: PeerId(9),
            redelivered: true,
            frame: Bytes::from_static(b"\x93\x01\x00"),
        };
        assert_eq!(ReassignBody::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn bad_views_are_malformed() {
        let mut v = view();
        v.members.swap(0, 1);
        assert!(ViewInfo::decode(&v.encode()).is_err(), "out of order");
        let mut v = view();
        v.members[0].patterns = vec!["bids..x".into()];
        assert!(ViewInfo::decode(&v.encode()).is_err(), "invalid pattern");
        let mut v = view();
        v.members[0].patterns.clear();
        assert!(ViewInfo::decode(&v.encode()).is_err(), "no pattern");
        let mut v = view();
        v.group = String::new();
        assert!(ViewInfo::decode(&v.encode()).is_err(), "no name");
        let mut v = view();
        v.group = "x".repeat(MAX_GROUP_NAME + 1);
        assert!(ViewInfo::decode(&v.encode()).is_err(), "long name");
    }

    #[test]
    fn statuses_are_bounded() {
        let status = GroupStatus {
            group: "g".into(),
            patterns: vec!["a.>".into()],
            active: true,
            positions: vec![],
            durable: false,
        };
        assert!(check(std::slice::from_ref(&status), &[view()]).is_ok());
        assert!(check(&vec![status.clone(); MAX_GROUPS + 1], &[]).is_err());
        let mut many = status.clone();
        many.patterns = vec!["a".into(); MAX_GROUP_PATTERNS + 1];
        assert!(check(&[many], &[]).is_err());
        let mut far = status;
        far.positions = vec![
            GroupPosition {
                origin: PeerId(1),
                incarnation: 1,
                start: 1,
                seq: 1,
            };
            MAX_GROUP_POSITIONS + 1
        ];
        assert!(check(&[far], &[]).is_err());
    }

    #[test]
    fn durable_is_written_only_when_set_and_read_as_false_when_absent() {
        let status = GroupStatus {
            group: "g".into(),
            patterns: vec!["a.>".into()],
            active: true,
            positions: vec![],
            durable: false,
        };
        let plain = rmp_serde::to_vec(&status).unwrap();
        // An earlier writer's four fields: the same bytes.
        let four = rmp_serde::to_vec(&("g", ["a.>"], true, Vec::<u8>::new())).unwrap();
        assert_eq!(plain, four);
        assert!(!rmp_serde::from_slice::<GroupStatus>(&four).unwrap().durable);
        let durable = GroupStatus {
            durable: true,
            ..status
        };
        let bytes = rmp_serde::to_vec(&durable).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<GroupStatus>(&bytes).unwrap(),
            durable
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = ViewInfo::decode(&bytes);
            let _ = ReassignBody::decode(&bytes);
        }
    }
}
