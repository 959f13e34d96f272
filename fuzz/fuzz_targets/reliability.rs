//! The receiver's inbox and the publisher's outbox fed an arbitrary
//! sequence of envelopes (any origin, incarnation, order, duplicates),
//! heartbeats, repair answers, NAKs, acks, membership changes and time:
//! never a panic, buffers within their bounds, and no envelope
//! `(origin, incarnation, seq)` is ever delivered twice.
#![no_main]
use std::collections::HashSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use chorus::inbox::{Inbox, InboxConfig, InboxEvent};
use chorus::outbox::{Outbox, OutboxConfig};
use chorus::repair::Nak;
use chorus::{Envelope, PeerId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Envelope {
        origin: u8,
        incarnation: u8,
        seq: u16,
    },
    Heartbeat {
        origin: u8,
        incarnation: u8,
        last_seq: u16,
    },
    Repair {
        origin: u8,
        incarnation: u8,
        seqs: Vec<u16>,
        gone: Vec<(u16, u16)>,
        owed_from: u16,
    },
    Announce(u8),
    Forget(u8),
    Tick(u16),
    // Outbox side.
    Publish,
    Members(Vec<u8>),
    Ack {
        member: u8,
        incarnation: u8,
        seq: u16,
    },
    NoAck(u8),
    Nak {
        member: u8,
        incarnation: u8,
        ranges: Vec<(u16, u16)>,
    },
    Stall,
}

const MAX_HELD: usize = 64;
const CAPACITY: usize = 32;

fn env(origin: u8, incarnation: u8, seq: u16) -> Envelope {
    Envelope {
        origin: PeerId(u64::from(origin % 4) + 1),
        incarnation: u64::from(incarnation % 3) + 1,
        seq: u64::from(seq % 512) + 1,
        topic: "f".into(),
        timestamp_us: 0,
        payload: Bytes::new(),
        meta: None,
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = InboxConfig {
        me: PeerId(99),
        max_held: MAX_HELD,
        max_origins: 8,
        ..InboxConfig::default()
    };
    let mut inbox = Inbox::new(cfg);
    let out_cfg = OutboxConfig {
        capacity: CAPACITY,
        ..OutboxConfig::default()
    };
    let mut outbox = Outbox::new(PeerId(99), 5, out_cfg);
    let mut now = Instant::now();
    let mut delivered = HashSet::new();
    for op in ops {
        match op {
            Op::Envelope {
                origin,
                incarnation,
                seq,
            } => inbox.handle_envelope(env(origin, incarnation, seq), now),
            Op::Heartbeat {
                origin,
                incarnation,
                last_seq,
            } => {
                let e = env(origin, incarnation, 0);
                inbox.handle_heartbeat(e.origin, e.incarnation, u64::from(last_seq % 600), now)
            }
            Op::Repair {
                origin,
                incarnation,
                seqs,
                gone,
                owed_from,
            } => {
                let e = env(origin, incarnation, 0);
                let envelopes = seqs.iter().map(|s| env(origin, incarnation, *s)).collect();
                let gone: Vec<(u64, u64)> = gone
                    .iter()
                    .map(|(a, b)| (u64::from(*a % 600), u64::from(*b % 600)))
                    .collect();
                inbox.handle_repair(
                    e.origin,
                    e.incarnation,
                    envelopes,
                    &gone,
                    u64::from(owed_from % 600),
                    now,
                );
            }
            Op::Announce(o) => inbox.announce(env(o, 0, 0).origin),
            Op::Forget(o) => inbox.forget(env(o, 0, 0).origin),
            Op::Tick(ms) => {
                now += Duration::from_millis(ms.into());
                inbox.handle_timeout(now);
            }
            Op::Publish => {
                if !outbox.is_full() {
                    outbox.push(Bytes::from_static(b"frame"));
                }
            }
            Op::Members(ids) => outbox.set_members(ids.iter().map(|i| (PeerId(u64::from(*i % 8)), u64::from(*i / 8 % 2) + 1))),
            Op::Ack {
                member,
                incarnation,
                seq,
            } => outbox.handle_ack(
                PeerId(u64::from(member % 8)),
                u64::from(incarnation % 7),
                u64::from(seq),
            ),
            Op::NoAck(m) => outbox.handle_no_ack(PeerId(u64::from(m % 8))),
            Op::Stall => {
                outbox.check_stall(now, Duration::from_millis(100));
            }
            Op::Nak {
                member,
                incarnation,
                ranges,
            } => {
                let nak = Nak {
                    origin: PeerId(99),
                    incarnation: u64::from(incarnation % 7),
                    ranges: ranges
                        .iter()
                        .map(|(a, b)| (u64::from(*a), u64::from(*b)))
                        .collect(),
                    member: PeerId(u64::from(member % 8)),
                    resume_from: 0,
                };
                let answer = outbox.handle_nak(&nak);
                assert!(answer.frames.len() <= CAPACITY);
            }
        }
        while let Some(e) = inbox.poll() {
            if let InboxEvent::Deliver(env) = e {
                assert!(
                    delivered.insert((env.origin, env.incarnation, env.seq)),
                    "delivered twice: {:?} {} {}",
                    env.origin,
                    env.incarnation,
                    env.seq
                );
            }
        }
        assert!(inbox.held() <= MAX_HELD * 8, "held {}", inbox.held());
        assert!(outbox.len() <= CAPACITY);
    }
});
