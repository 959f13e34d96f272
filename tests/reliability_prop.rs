//! Property test of the reliability cores together (outbox + inbox + dedup
//! window): random loss, duplication and reordering of events, NAKs and
//! repairs, from a seed. Once faults stop, every message is delivered exactly
//! once, in order — or, when retention was exceeded, reported Lost exactly
//! once. Never both, never neither, never silently.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus::inbox::{Inbox, InboxConfig, InboxEvent};
use chorus::outbox::{Outbox, OutboxConfig};
use chorus::{Envelope, PeerId};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ORIGIN: PeerId = PeerId(1);
const RECEIVER: PeerId = PeerId(2);
const INC: u64 = 77;

#[derive(Debug, Clone)]
struct Faults {
    drop: f64,
    dup: f64,
    /// Probability of taking a random in-flight message instead of the oldest.
    reorder: f64,
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(
        Envelope {
            origin: ORIGIN,
            incarnation: INC,
            seq,
            topic: "p.t".into(),
            timestamp_us: seq,
            payload: Bytes::from(seq.to_le_bytes().to_vec()),
            meta: None,
        }
        .encode(),
    )
}

/// Runs one schedule; returns (delivered seqs in order, lost seqs).
fn run(
    n: u64,
    capacity: usize,
    acks_known: bool,
    faults: Faults,
    seed: u64,
) -> (Vec<u64>, Vec<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut outbox = Outbox::new(
        ORIGIN,
        INC,
        OutboxConfig {
            capacity,
            max_bytes: usize::MAX,
            max_reply_bytes: 4096,
            max_nak_seqs: 64,
        },
    );
    outbox.set_members([(RECEIVER, 1)]);
    if acks_known {
        outbox.handle_ack(RECEIVER, INC, 0);
    }
    let mut inbox = Inbox::new(InboxConfig::default());
    // The receiver learns of the origin (heartbeat) before anything is sent.
    inbox.handle_heartbeat(ORIGIN, INC, 0, t0);
    let mut wire: Vec<Bytes> = Vec::new();
    let (mut delivered, mut lost) = (Vec::new(), Vec::new());
    let mut step = 0u64;
    let faulty_until = 20 * n + 200;
    loop {
        step += 1;
        let now = t0 + Duration::from_millis(step);
        let faulty = step < faulty_until;
        let chance = |rng: &mut StdRng, p: f64| faulty && rng.gen_bool(p);
        // Publish when the outbox has room (backpressure otherwise).
        if outbox.last_seq() < n && !outbox.is_full() && rng.gen_bool(0.7) {
            let seq = outbox.last_seq() + 1;
            let f = frame(seq);
            assert_eq!(outbox.push(f.clone()), seq);
            if !chance(&mut rng, faults.drop) {
                wire.push(f.clone());
                if chance(&mut rng, faults.dup) {
                    wire.push(f);
                }
            }
        }
        // The network delivers one message, maybe out of order.
        if !wire.is_empty() {
            let i = if chance(&mut rng, faults.reorder) {
                rng.gen_range(0..wire.len())
            } else {
                0
            };
            let bytes = wire.remove(i);
            let env = Envelope::decode(&bytes, 1 << 20).unwrap();
            inbox.handle_envelope(env, now);
        }
        // Heartbeats: the origin advertises its last seq, the receiver its ack.
        if step.is_multiple_of(25) {
            inbox.handle_heartbeat(ORIGIN, INC, outbox.last_seq(), now);
            if !chance(&mut rng, faults.drop) {
                for (o, inc, seq) in inbox.acks() {
                    if o == ORIGIN {
                        outbox.handle_ack(RECEIVER, inc, seq);
                    }
                }
            }
            // What an ack freed goes a little per push, or at once like this.
            if rng.gen_bool(0.5) {
                outbox.drop_acked();
            }
        }
        inbox.handle_timeout(now);
        while let Some(ev) = inbox.poll() {
            match ev {
                InboxEvent::Deliver(e) => delivered.push(e.seq),
                InboxEvent::Lost { first, last, .. } => lost.extend(first..=last),
                InboxEvent::Nak(nak) => {
                    if chance(&mut rng, faults.drop) {
                        continue; // NAK lost
                    }
                    let repair = outbox.handle_nak(&nak);
                    if chance(&mut rng, faults.drop) {
                        continue; // answer lost
                    }
                    let envs = repair
                        .frames
                        .iter()
                        .map(|f| Envelope::decode(f, 1 << 20).unwrap())
                        .collect();
                    inbox.handle_repair(
                        repair.origin,
                        repair.incarnation,
                        envs,
                        &repair.gone,
                        repair.owed_from,
                        now,
                    );
                }
            }
        }
        if delivered.len() as u64 + lost.len() as u64 >= n && outbox.last_seq() == n {
            break;
        }
        assert!(
            step < faulty_until + 20_000,
            "no progress: delivered {} lost {} of {n}",
            delivered.len(),
            lost.len()
        );
    }
    (delivered, lost)
}

fn check(n: u64, delivered: &[u64], lost: &[u64], acks_known: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "not in order / duplicated: {:?}",
        delivered
    );
    let d: BTreeSet<u64> = delivered.iter().copied().collect();
    let l: BTreeSet<u64> = lost.iter().copied().collect();
    prop_assert_eq!(l.len(), lost.len(), "a loss reported twice");
    prop_assert!(d.is_disjoint(&l), "delivered and lost");
    let all: BTreeSet<u64> = d.union(&l).copied().collect();
    prop_assert_eq!(
        all,
        (1..=n).collect::<BTreeSet<u64>>(),
        "a message neither delivered nor lost"
    );
    if acks_known {
        prop_assert!(
            lost.is_empty(),
            "lost {} although retention followed the acks",
            lost.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exactly_once_or_explicitly_lost(
        n in 1u64..400,
        capacity in 8usize..512,
        acks_known in any::<bool>(),
        drop in 0.0f64..0.3,
        dup in 0.0f64..0.3,
        reorder in 0.0f64..0.5,
        seed in any::<u64>(),
    ) {
        let (delivered, lost) = run(n, capacity, acks_known, Faults { drop, dup, reorder }, seed);
        check(n, &delivered, &lost, acks_known)?;
    }
}

#[test]
fn heavy_faults_with_tight_retention_still_account_for_everything() {
    for seed in 0..20 {
        let f = Faults {
            drop: 0.3,
            dup: 0.2,
            reorder: 0.5,
        };
        let (d, l) = run(1000, 16, seed % 2 == 0, f, seed);
        eprintln!("seed {seed}: delivered {} lost {}", d.len(), l.len());
        check(1000, &d, &l, seed % 2 == 0).unwrap();
    }
}
