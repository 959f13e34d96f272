//! The membership core fed an arbitrary sequence of surveys, responses
//! (with gossip), rounds and time: never a panic, the table stays within
//! `max_members`, and this peer never lists itself.
#![no_main]
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use chorus::heartbeat::{Gossip, Response, Survey};
use chorus::membership::{Membership, MembershipConfig};
use chorus::{Endpoints, PeerId, PeerInfo};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Who {
    id: u8,
    incarnation: u8,
    /// Other endpoints for the same identity (a conflict).
    moved: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Survey {
        from: Who,
        heartbeat: u16,
        leaving: bool,
    },
    Response {
        from: Who,
        heartbeat: u16,
        gossip: Vec<(Who, u16)>,
    },
    StartRound,
    EndRound,
    Wait(u16),
}

const ME: u64 = 1000;
const MAX: usize = 8;

fn info(w: &Who) -> Arc<PeerInfo> {
    // Id 0 is invalid on the wire; id 1000 is this peer.
    let id = if w.id == 255 {
        ME
    } else {
        u64::from(w.id % 32) + 1
    };
    let port = 10_000 + u32::from(w.id) + if w.moved { 1000 } else { 0 };
    Arc::new(PeerInfo {
        id: PeerId(id),
        incarnation: u64::from(w.incarnation % 4) + 1,
        name: format!("p{id}"),
        endpoints: Endpoints {
            survey: format!("tcp://127.0.0.1:{port}"),
            publish: format!("tcp://127.0.0.1:{}", port + 1),
            repair: format!("tcp://127.0.0.1:{}", port + 2),
        },
        heartbeat_interval_ms: 0,
        tool: false,
        stream: 0,
    })
}

fuzz_target!(|ops: Vec<Op>| {
    let me = info(&Who {
        id: 255,
        incarnation: 0,
        moved: false,
    });
    let cfg = MembershipConfig {
        max_members: MAX,
        ..MembershipConfig::default()
    };
    let mut m = Membership::new(me, cfg);
    let mut now = Instant::now();
    for op in ops {
        match op {
            Op::Survey {
                from,
                heartbeat,
                leaving,
            } => {
                let s = Survey {
                    from: info(&from),
                    heartbeat: heartbeat.into(),
                    leaving,
                    last_seq: 0,
                    acks: vec![],
                    durable: vec![],
                    groups: vec![],
                    views: vec![],
                };
                let r = m.handle_survey(&s, now);
                assert_eq!(r.from.id, PeerId(ME));
            }
            Op::Response {
                from,
                heartbeat,
                gossip,
            } => {
                let gossip = gossip
                    .iter()
                    .map(|(w, hb)| Gossip {
                        info: info(w),
                        heartbeat: (*hb).into(),
                        state: 0,
                    })
                    .collect();
                let r = Response {
                    from: info(&from),
                    heartbeat: heartbeat.into(),
                    last_seq: 0,
                    gossip,
                    acks: vec![],
                    durable: vec![],
                    groups: vec![],
                    views: vec![],
                };
                m.handle_response(&r, now);
            }
            Op::StartRound => {
                m.start_round();
            }
            Op::EndRound => m.end_round(),
            Op::Wait(ms) => now += Duration::from_millis(ms.into()),
        }
        while m.poll().is_some() {}
        let members: Vec<_> = m.members().collect();
        assert!(members.len() <= MAX, "{} members", members.len());
        assert!(members.iter().all(|x| x.id() != PeerId(ME)));
    }
});
