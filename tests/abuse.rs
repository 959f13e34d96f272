//! Resource bounds under abuse: a member that never acknowledges, a peer
//! announcing 10,000 fake members, a NAK storm. Each test checks that the
//! victim's state stays within its configured bounds and that its other
//! traffic keeps flowing, and prints what it measured (run with
//! `--nocapture`): the victim's counters, and the test process's CPU time
//! and resident memory over the abuse (attacker included: an upper bound).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus::heartbeat::{Ack, Gossip, Response};
use chorus::repair::Nak;
use chorus::{Endpoints, Peer, PeerId, PeerInfo};
use common::*;

/// CPU seconds used by this process so far, and its resident memory in KiB.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss)
}

fn report(what: &str, start: (f64, u64), wall: Duration) {
    let (cpu, rss) = usage();
    println!(
        "{what}: {:.2} s wall, {:.2} s CPU ({:.0} % of one core), RSS {} -> {} MiB",
        wall.as_secs_f64(),
        cpu - start.0,
        100.0 * (cpu - start.0) / wall.as_secs_f64(),
        start.1 / 1024,
        rss / 1024
    );
}

async fn victim_and_subscriber(
    tune: impl FnOnce(chorus::PeerBuilder) -> chorus::PeerBuilder,
) -> (Peer, Peer) {
    let v = tune(fast("victim", "tcp://127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let s = fast("sub", "tcp://127.0.0.1:0")
        .seed(v.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&v, &s]).await;
    (v, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_acknowledges_is_cut_off_and_publishing_goes_on() {
    let (v, s) = victim_and_subscriber(|b| {
        b.retransmit_buffer(16)
            .stall_limit(Duration::from_millis(500))
    })
    .await;
    let mut got = s.subscribe_bytes("abuse.>").unwrap();
    // A member that heartbeats faithfully but acks nothing past 0, forever.
    let (origin, incarnation) = (v.id(), v.incarnation());
    let stuck = FakeMember::start(v.local_url(), 4242, move |info| {
        let mut heartbeat = 0;
        Box::new(move |_| {
            heartbeat += 1;
            let acks = vec![Ack {
                origin,
                incarnation,
                seq: 0,
            }];
            let r = Response {
                from: info.clone(),
                heartbeat,
                last_seq: 0,
                gossip: vec![],
                acks,
                durable: vec![],
                groups: vec![],
                views: vec![],
            };
            Some(r.encode())
        })
    });
    wait_for("the stuck member joined", || v.stats().members == 2).await;
    let (start, t0) = (usage(), Instant::now());
    const N: u64 = 500;
    let publisher = v.clone();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish_bytes("abuse.data", i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });
    let mut max_buffer = 0;
    for i in 0..N {
        let d = next("delivery", &mut got).await;
        assert_eq!(d.value[..], i.to_be_bytes());
        max_buffer = max_buffer.max(v.stats().retransmit_buffer);
    }
    within("publisher done", sender).await.unwrap();
    report("never-acking member", start, t0.elapsed());
    let st = v.stats();
    println!(
        "  {N} messages to the other member in {:?}; cut off {}, retransmit buffer peak {max_buffer} (bound 16)",
        t0.elapsed(),
        st.members_cut_off
    );
    assert!(st.members_cut_off >= 1, "{st:?}");
    assert!(max_buffer <= 16);
    assert!(
        v.members().iter().any(|m| m.id() == stuck.info.id),
        "still a member, just not waited for"
    );
    for p in [v, s] {
        within("shutdown", p.shutdown()).await;
    }
}

fn fake_info(n: u32) -> Arc<PeerInfo> {
    // Nothing listens on these ports.
    let port = 20_000 + (n % 40_000);
    Arc::new(PeerInfo {
        id: PeerId(1_000_000 + u64::from(n)),
        incarnation: 1,
        name: format!("fake-{n}"),
        endpoints: Endpoints {
            survey: format!("tcp://127.0.0.1:{port}"),
            publish: format!("tcp://127.0.0.1:{port}"),
            repair: format!("tcp://127.0.0.1:{port}"),
        },
        heartbeat_interval_ms: 0,
        tool: false,
        stream: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_announced_members_stay_within_the_table_bound() {
    const MAX_MEMBERS: usize = 64;
    let (v, s) = victim_and_subscriber(|b| b.max_members(MAX_MEMBERS)).await;
    let mut got = s.subscribe_bytes("abuse.>").unwrap();
    let (start, t0) = (usage(), Instant::now());
    // Each response gossips 1,000 of 10,000 fake members, with rising counters.
    let _liar = FakeMember::start(v.local_url(), 4343, |info| {
        let (mut heartbeat, mut next) = (0, 0u32);
        Box::new(move |_| {
            heartbeat += 1;
            let gossip = (0..1000)
                .map(|i| Gossip {
                    info: fake_info((next + i) % 10_000),
                    heartbeat,
                    state: 0,
                })
                .collect();
            next = (next + 1000) % 10_000;
            let r = Response {
                from: info.clone(),
                heartbeat,
                last_seq: 0,
                gossip,
                acks: vec![],
                durable: vec![],
                groups: vec![],
                views: vec![],
            };
            Some(r.encode())
        })
    });
    wait_for("the table to fill and refuse", || {
        v.stats().members_refused >= 10_000
    })
    .await;
    // The real member is still there and still delivers.
    for i in 0..100u64 {
        v.publish_bytes("abuse.data", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for i in 0..100u64 {
        assert_eq!(next("delivery", &mut got).await.value[..], i.to_be_bytes());
    }
    report("10,000 announced members", start, t0.elapsed());
    let st = v.stats();
    println!(
        "  members {} (bound {MAX_MEMBERS}), refused {}, table entries {}",
        st.members,
        st.members_refused,
        v.members().len()
    );
    assert!(v.members().len() <= MAX_MEMBERS, "{}", v.members().len());
    assert!(v
        .members()
        .iter()
        .any(|m| m.id() == s.id() && m.state.is_live()));
    for p in [v, s] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nak_storm_does_bounded_work_and_traffic_flows() {
    let (v, s) = victim_and_subscriber(|b| b.retransmit_buffer(1024)).await;
    let mut got = s.subscribe_bytes("abuse.>").unwrap();
    for i in 0..1000u64 {
        v.publish_bytes("abuse.warmup", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for _ in 0..1000 {
        next("warm-up delivery", &mut got).await;
    }
    // Four attackers NAK everything, as fast as they are answered.
    let stop = Arc::new(AtomicBool::new(false));
    let repair_url = v.info().endpoints.repair.clone();
    let nak = Nak {
        origin: v.id(),
        incarnation: v.incarnation(),
        ranges: vec![(1, u64::MAX); 64],
        member: PeerId(5),
        resume_from: 0,
    }
    .encode();
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url, nak) = (stop.clone(), repair_url.clone(), nak.clone());
            std::thread::spawn(move || {
                let req = nng::Socket::new(nng::Protocol::Req0).unwrap();
                nng::Dialer::new(&req, &url, false).unwrap();
                let mut answers = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if req.send(nng::Message::from(&nak[..])).is_ok() && req.recv().is_ok() {
                        answers += 1;
                    }
                }
                answers
            })
        })
        .collect();
    // Two seconds of the storm while the victim publishes 1,000 messages/s.
    let (start, t0) = (usage(), Instant::now());
    let publisher = v.clone();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..200u64 {
            tick.tick().await;
            for j in 0..10 {
                let n = i * 10 + j;
                publisher
                    .publish_bytes("abuse.data", n.to_be_bytes().to_vec())
                    .await
                    .unwrap();
            }
        }
    });
    for i in 0..2000u64 {
        assert_eq!(
            next("delivery during the storm", &mut got).await.value[..],
            i.to_be_bytes()
        );
    }
    within("publisher done", sender).await.unwrap();
    let wall = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let answered: u64 = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    report("NAK storm", start, wall);
    let st = v.stats();
    println!(
        "  2000 messages delivered in {wall:?} during {answered} answered NAKs ({:.0}/s); retransmitted {} envelopes ({:.0} per NAK, bound 1024 retained)",
        answered as f64 / wall.as_secs_f64(),
        st.retransmits,
        st.retransmits as f64 / answered.max(1) as f64
    );
    assert!(answered > 0);
    assert!(st.retransmits <= (answered + 1) * 1024, "{st:?}");
    assert!(st.retransmit_buffer <= 1024);
    for p in [v, s] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_its_repair_answers_is_disconnected() {
    use std::io::Write;
    let (v, s) = victim_and_subscriber(|b| b.retransmit_buffer(4096)).await;
    // A member that never acks: the victim keeps its newest 4096 envelopes.
    let _ring = FakeMember::honest(v.local_url(), 4444);
    wait_for("ring member joined", || v.stats().members == 2).await;
    let mut got = s.subscribe_bytes("abuse.>").unwrap();
    for i in 0..4000u64 {
        let mut p = vec![0u8; 1024];
        p[..8].copy_from_slice(&i.to_be_bytes());
        v.publish_bytes("abuse.big", p).await.unwrap();
    }
    for _ in 0..4000 {
        next("warm-up", &mut got).await;
    }
    // A raw SP/TCP req0 client: handshake, then NAKs for everything, and it
    // never reads an answer.
    let addr = v
        .info()
        .endpoints
        .repair
        .trim_start_matches("tcp://")
        .to_owned();
    let nak = Nak {
        origin: v.id(),
        incarnation: v.incarnation(),
        ranges: vec![(1, u64::MAX)],
        member: PeerId(5),
        resume_from: 0,
    }
    .encode();
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    let attacker = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(&[0, b'S', b'P', 0, 0, 48, 0, 0]).unwrap(); // SP header, req0
        tcp.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut id = 0x8000_0000u32;
        while !halt.load(Ordering::Relaxed) {
            id += 1;
            let mut m = ((4 + nak.len()) as u64).to_be_bytes().to_vec();
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&nak);
            if tcp.write_all(&m).is_err() {
                std::thread::sleep(Duration::from_millis(10)); // closed or full: keep it open, unread
            }
        }
    });
    let t0 = Instant::now();
    wait_for("the non-reading link closed", || {
        v.stats().pipes_closed >= 1
    })
    .await;
    let closed_after = t0.elapsed();
    // Publishing goes on for the others.
    for i in 0..200u64 {
        v.publish_bytes("abuse.after", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for i in 0..200u64 {
        assert_eq!(
            next("delivery after", &mut got).await.value[..],
            i.to_be_bytes()
        );
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    println!(
        "non-reading NAKer: link closed {closed_after:?} after it started ({} NAKs answered before its buffers filled, {} envelopes)",
        v.stats().naks_received,
        v.stats().retransmits
    );
    for p in [v, s] {
        within("shutdown", p.shutdown()).await;
    }
}
