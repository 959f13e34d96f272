//! Heartbeat messages: what surveyors ask and respondents answer.
//!
//! Owns: the [`Survey`] and [`Response`] bodies, their frame kinds and their
//! validation (every advertised [`PeerInfo`] is checked, gossip lists are
//! bounded). No sockets, no clock. See `docs/WIRE.md`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::wire::frame::{self, DecodeError};
use crate::wire::group::{self, GroupStatus, ViewInfo};
use crate::wire::id::PeerId;
use crate::wire::member::PeerInfo;

/// Frame kind of a survey (surveyor → respondents).
pub const KIND_SURVEY: u8 = 1;
/// Frame kind of a survey response (respondent → surveyor).
pub const KIND_RESPONSE: u8 = 2;
/// Most gossip entries accepted in one response.
pub const MAX_GOSSIP: usize = 1024;
/// Most durable positions accepted in one heartbeat (more are not sent).
pub const MAX_POSITIONS: usize = 1024;
/// Longest durable consumer name, in bytes.
pub const MAX_DURABLE_NAME: usize = 200;

/// A heartbeat round's question, sent to every respondent connected to the
/// surveyor. It is also the surveyor's own heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    /// The surveying peer.
    pub from: Arc<PeerInfo>,
    /// The surveyor's heartbeat counter (one more each round).
    pub heartbeat: u64,
    /// True when the surveyor is shutting down gracefully.
    pub leaving: bool,
    /// Last event sequence number the surveyor published (0: none yet).
    pub last_seq: u64,
    /// What the surveyor has received from each origin.
    pub acks: Vec<Ack>,
    /// Where the surveyor's durable consumers stand in each origin's
    /// stream. Optional on the wire (absent: none).
    #[serde(default)]
    pub durable: Vec<DurablePosition>,
    /// The surveyor's consumer groups and where each stands in each
    /// origin's stream. Optional on the wire (absent: none).
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// The views of the groups the surveyor's own stream is assigned to.
    /// Optional on the wire (absent: none; written only when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewInfo>,
}

/// A respondent's answer: its own heartbeat plus gossip about other members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The responding peer.
    pub from: Arc<PeerInfo>,
    /// The respondent's heartbeat counter.
    pub heartbeat: u64,
    /// Last event sequence number the respondent published (0: none yet).
    pub last_seq: u64,
    /// Some live members the respondent knows, with the highest heartbeat
    /// counter it has seen for each.
    pub gossip: Vec<Gossip>,
    /// What the respondent has received from each origin.
    pub acks: Vec<Ack>,
    /// Where the respondent's durable consumers stand in each origin's
    /// stream. Optional on the wire (absent: none).
    #[serde(default)]
    pub durable: Vec<DurablePosition>,
    /// The respondent's consumer groups and where each stands in each
    /// origin's stream. Optional on the wire (absent: none).
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// The views of the groups the respondent's own stream is assigned to.
    /// Optional on the wire (absent: none; written only when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewInfo>,
}

/// "I have received everything `origin` published in `incarnation` up to
/// and including `seq`": what lets an origin free its retransmit buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The publishing peer.
    pub origin: PeerId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Received through this sequence number.
    pub seq: u64,
}

/// "My durable consumer `name` has processed everything `origin`
/// published in its stream `incarnation` through `seq`": what lets a
/// durable origin keep its log for a consumer that is offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurablePosition {
    /// The publishing peer.
    pub origin: PeerId,
    /// Its stream epoch.
    pub incarnation: u64,
    /// The durable consumer's name (1 to [`MAX_DURABLE_NAME`] bytes).
    pub name: String,
    /// Processed through this sequence number.
    pub seq: u64,
}

/// Gossip [`state`](Gossip::state): the member is live.
pub const GOSSIP_LIVE: u8 = 0;
/// Gossip [`state`](Gossip::state): the gossiper declared the member Failed.
pub const GOSSIP_FAILED: u8 = 1;
/// Gossip [`state`](Gossip::state): the member left gracefully.
pub const GOSSIP_LEFT: u8 = 2;

/// One member as another peer has seen it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    /// What the member advertises.
    pub info: Arc<PeerInfo>,
    /// Highest heartbeat counter of that member the gossiper has seen.
    pub heartbeat: u64,
    /// [`GOSSIP_LIVE`], [`GOSSIP_FAILED`] or [`GOSSIP_LEFT`]: what the
    /// gossiper holds the member to be. A receiver only records a Failed or
    /// Left member it does not know (so a peer that just joined can show
    /// recent departures); gossip never removes nor revives a member.
    /// Optional on the wire (absent: live).
    #[serde(default)]
    pub state: u8,
}

fn check_acks(acks: &[Ack], durable: &[DurablePosition]) -> Result<(), DecodeError> {
    if acks.len() > MAX_GOSSIP {
        return Err(DecodeError::Malformed(format!(
            "{} acks, at most {MAX_GOSSIP} accepted",
            acks.len()
        )));
    }
    if durable.len() > MAX_POSITIONS {
        return Err(DecodeError::Malformed(format!(
            "{} durable positions, at most {MAX_POSITIONS} accepted",
            durable.len()
        )));
    }
    if let Some(p) = durable
        .iter()
        .find(|p| p.name.is_empty() || p.name.len() > MAX_DURABLE_NAME)
    {
        return Err(DecodeError::Malformed(format!(
            "a durable name of {} bytes (1 to {MAX_DURABLE_NAME})",
            p.name.len()
        )));
    }
    Ok(())
}

impl Survey {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        frame::encode_into(&mut buf, KIND_SURVEY, self);
        buf
    }

    /// Decodes and validates a survey frame. Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        let s: Survey = frame::decode(bytes, max_size, KIND_SURVEY)?;
        check_acks(&s.acks, &s.durable)?;
        group::check(&s.groups, &s.views)?;
        s.from.validate().map_err(DecodeError::Malformed)?;
        Ok(s)
    }
}

impl Response {
    /// Encodes as a complete frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256 + 160 * self.gossip.len());
        frame::encode_into(&mut buf, KIND_RESPONSE, self);
        buf
    }

    /// Decodes and validates a response frame. Never panics.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        let r: Response = frame::decode(bytes, max_size, KIND_RESPONSE)?;
        if r.gossip.len() > MAX_GOSSIP {
            return Err(DecodeError::Malformed(format!(
                "{} gossip entries, at most {MAX_GOSSIP} accepted",
                r.gossip.len()
            )));
        }
        check_acks(&r.acks, &r.durable)?;
        group::check(&r.groups, &r.views)?;
        r.from.validate().map_err(DecodeError::Malformed)?;
        for g in &r.gossip {
            g.info.validate().map_err(DecodeError::Malformed)?;
            if g.state > GOSSIP_LEFT {
                return Err(DecodeError::Malformed(format!(
                    "gossip state {} (0 live, 1 failed, 2 left)",
                    g.state
                )));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::member::Endpoints;
    use proptest::prelude::*;

    fn info(id: u64) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            id: PeerId(id),
            incarnation: 1_000 + id,
            name: format!("svc-{id}"),
            endpoints: Endpoints {
                survey: format!("tcp://127.0.0.1:{}", 7000 + id),
                publish: format!("tcp://127.0.0.1:{}", 8000 + id),
                repair: format!("tcp://127.0.0.1:{}", 9000 + id),
            },
            heartbeat_interval_ms: 0,
            tool: false,
            stream: 0,
        })
    }

    fn response() -> Response {
        Response {
            from: info(1),
            heartbeat: 9,
            last_seq: 4,
            gossip: vec![
                Gossip {
                    info: info(2),
                    heartbeat: 3,
                    state: 0,
                },
                Gossip {
                    info: info(3),
                    heartbeat: 5,
                    state: 0,
                },
            ],
            acks: vec![Ack {
                origin: PeerId(2),
                incarnation: 1,
                seq: 99,
            }],
            durable: vec![DurablePosition {
                origin: PeerId(2),
                incarnation: 1,
                name: "invoicing".into(),
                seq: 90,
            }],
            groups: vec![crate::wire::group::GroupStatus {
                group: "work-orders".into(),
                patterns: vec!["bids.>".into()],
                active: true,
                positions: vec![crate::wire::group::GroupPosition {
                    origin: PeerId(2),
                    incarnation: 1,
                    start: 3,
                    seq: 90,
                }],
                durable: true,
            }],
            views: vec![],
        }
    }

    #[test]
    fn round_trips() {
        let s = Survey {
            from: info(1),
            heartbeat: 7,
            leaving: true,
            last_seq: 12,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
        };
        assert_eq!(Survey::decode(&s.encode(), 1 << 20).unwrap(), s);
        let r = response();
        assert_eq!(Response::decode(&r.encode(), 1 << 20).unwrap(), r);
    }

    #[test]
    fn survey_layout_matches_wire_doc() {
        let from = Arc::new(PeerInfo {
            id: PeerId(1),
            incarnation: 2,
            name: "a".into(),
            endpoints: Endpoints {
                survey: "inproc://a".into(),
                publish: "inproc://a.pub".into(),
                repair: "inproc://a.repair".into(),
            },
            heartbeat_interval_ms: 500,
            tool: false,
            stream: 0,
        });
        let s = Survey {
            from,
            heartbeat: 5,
            leaving: false,
            last_seq: 0,
            acks: vec![Ack {
                origin: PeerId(3),
                incarnation: 4,
                seq: 6,
            }],
            durable: vec![],

            groups: vec![],

            views: vec![],
        };
        let mut expected = vec![
            0x93, 0x01, 0x01, 0x97, 0x96, 0x01, 0x02, 0xa1, b'a', 0x93, 0xaa,
        ];
        expected.extend_from_slice(b"inproc://a");
        expected.push(0xae);
        expected.extend_from_slice(b"inproc://a.pub");
        expected.push(0xb1);
        expected.extend_from_slice(b"inproc://a.repair");
        expected.extend_from_slice(&[0xcd, 0x01, 0xf4, 0xc2]); // 500 ms, not a tool
        expected.extend_from_slice(&[0x05, 0xc2, 0x00, 0x91, 0x93, 0x03, 0x04, 0x06]);
        expected.extend_from_slice(&[0x90, 0x90]); // no durable positions, no groups
        assert_eq!(s.encode(), expected);
        // Without the optional durable and groups (an earlier writer).
        let mut five = expected.clone();
        five[3] = 0x95;
        five.truncate(five.len() - 2);
        assert_eq!(Survey::decode(&five, 1 << 20).unwrap(), s);
        expected = five;
        // A PeerInfo of 4 (no interval, no tool flag) still decodes, with defaults.
        let mut short = expected.clone();
        short[4] = 0x94;
        let at = short.len() - 12;
        short.drain(at..at + 4);
        let old = Survey::decode(&short, 1 << 20).unwrap();
        assert_eq!((old.from.heartbeat_interval_ms, old.from.tool), (0, false));
        assert_eq!(old.from.name, "a");
        // A durable peer writes its stream epoch as a seventh element.
        let durable = Survey {
            from: Arc::new(PeerInfo {
                stream: 77,
                ..(*s.from).clone()
            }),
            ..s.clone()
        };
        let bytes = durable.encode();
        assert_eq!(bytes[4], 0x97);
        assert_eq!(bytes[at + 4], 77);
        let back = Survey::decode(&bytes, 1 << 20).unwrap();
        assert_eq!((back.from.stream, back.from.stream_epoch()), (77, 77));
        assert_eq!(s.from.stream_epoch(), 2);
    }

    #[test]
    fn durable_positions_are_bounded() {
        let mut r = response();
        r.durable[0].name = String::new();
        assert!(matches!(
            Response::decode(&r.encode(), 1 << 20),
            Err(DecodeError::Malformed(m)) if m.contains("durable name")
        ));
        r.durable[0].name = "x".repeat(MAX_DURABLE_NAME + 1);
        assert!(Response::decode(&r.encode(), 1 << 20).is_err());
        r.durable = vec![response().durable[0].clone(); MAX_POSITIONS + 1];
        assert!(matches!(
            Response::decode(&r.encode(), 1 << 20),
            Err(DecodeError::Malformed(m)) if m.contains("durable positions")
        ));
        // A response without them (an older peer's) decodes with none.
        let mut old = response();
        old.durable.clear();
        assert_eq!(Response::decode(&old.encode(), 1 << 20).unwrap(), old);
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let s = Survey {
            from: info(1),
            heartbeat: 7,
            leaving: false,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
        };
        assert_eq!(
            Response::decode(&s.encode(), 1 << 20),
            Err(DecodeError::UnknownKind(KIND_SURVEY))
        );
        assert!(crate::Envelope::decode(&s.encode(), 1 << 20).is_err());
    }

    #[test]
    fn invalid_peer_info_is_malformed() {
        let mut r = response();
        Arc::make_mut(&mut r.gossip[1].info).endpoints.publish = "http://nope".into();
        assert!(matches!(
            Response::decode(&r.encode(), 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        let mut r = response();
        Arc::make_mut(&mut r.from).id = PeerId(0);
        assert!(matches!(
            Response::decode(&r.encode(), 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        let mut r = response();
        r.gossip = (0..MAX_GOSSIP as u64 + 1)
            .map(|i| Gossip {
                info: info(i + 1),
                heartbeat: 1,
                state: 0,
            })
            .collect();
        assert!(matches!(
            Response::decode(&r.encode(), 1 << 30),
            Err(DecodeError::Malformed(_))
        ));
        let bytes = response().encode();
        for cut in 0..bytes.len() {
            assert!(Response::decode(&bytes[..cut], 1 << 20).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Survey::decode(&bytes, usize::MAX);
            let _ = Response::decode(&bytes, usize::MAX);
        }

        #[test]
        fn decoders_survive_mutations(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut bytes = response().encode();
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            let _ = Response::decode(&bytes, usize::MAX);
            let _ = Survey::decode(&bytes, usize::MAX);
        }
    }
}
