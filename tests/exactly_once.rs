//! Exactly-once processing over real NNG sockets on tcp loopback: 3
//! publishers × 3 subscribers, 20 % drop + 10 % duplication + reordering and
//! delay injected on every subscriber's links, 100,000 messages in all. A
//! checker counts (origin, seq) per subscriber: zero missing, zero twice.
//!
//! And a slow subscriber: its handler sleeps, so NNG drops on the publisher
//! side; repair still gives exactly-once and the publisher's retransmit
//! buffer stays within its bound (backpressure engaged).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus::faults::LinkFaults;
use chorus::{Delivery, Peer, PeerId};
use common::*;
use futures::StreamExt;
use parking_lot::Mutex;

const TOTAL: u64 = 100_000;

/// Test heartbeats (100 ms) with a miss limit that a debug build flooding
/// two cores cannot trip: a member wrongly declared Failed is (correctly)
/// no longer owed anything, which would turn this test's subject into
/// membership under CPU starvation.
fn loaded(name: &str) -> chorus::PeerBuilder {
    fast(name, "tcp://127.0.0.1:0")
        .miss_limit(30)
        .suspect_after(10)
}

/// (origin, seq) → times processed, per subscriber.
type Checker = Arc<Mutex<HashMap<(PeerId, u64), u32>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_by_three_under_loss_duplication_and_reordering() {
    let seed = loaded("pub-0").start().await.unwrap();
    let mut pubs = vec![seed.clone()];
    for i in 1..3 {
        pubs.push(
            loaded(&format!("pub-{i}"))
                .seed(seed.local_url())
                .start()
                .await
                .unwrap(),
        );
    }
    let mut subs = Vec::new();
    for i in 0..3u64 {
        let faults = LinkFaults {
            drop: 0.2,
            duplicate: 0.1,
            reorder: 0.1,
            delay: 0.05,
            max_delay: Duration::from_millis(5),
            seed: 1000 + i,
        };
        subs.push(
            loaded(&format!("sub-{i}"))
                .seed(seed.local_url())
                .link_faults(faults)
                .start()
                .await
                .unwrap(),
        );
    }
    let all: Vec<&Peer> = pubs.iter().chain(&subs).collect();
    wait_mesh(&all).await;

    let mut checkers: Vec<Checker> = Vec::new();
    let mut readers = Vec::new();
    for s in &subs {
        let checker: Checker = Default::default();
        let c = checker.clone();
        let mut stream = s.subscribe::<u64>("load.>").unwrap();
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < TOTAL {
                let Some(d) = stream.next().await else { break };
                *c.lock().entry((d.origin(), d.seq())).or_default() += 1;
                n += 1;
            }
        }));
        checkers.push(checker);
    }

    let started = Instant::now();
    let per_pub = TOTAL / 3;
    let mut writers = Vec::new();
    for (i, p) in pubs.iter().enumerate() {
        let p = p.clone();
        let count = if i == 0 { TOTAL - 2 * per_pub } else { per_pub };
        writers.push(tokio::spawn(async move {
            for k in 0..count {
                p.publish("load.item", &k).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        if tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .is_err()
        {
            for p in pubs.iter().chain(&subs) {
                eprintln!("{}: {:?}", p.name(), p.stats());
            }
            for (s, c) in subs.iter().zip(&checkers) {
                let seen = c.lock();
                eprintln!("{} processed {}", s.name(), seen.len());
                for p in &pubs {
                    let n = p.stats().published;
                    let missing: Vec<u64> = (1..=n)
                        .filter(|q| !seen.contains_key(&(p.id(), *q)))
                        .collect();
                    if !missing.is_empty() {
                        eprintln!(
                            "  from {}: {} missing, first {:?} last {:?}",
                            p.name(),
                            missing.len(),
                            missing.first(),
                            missing.last()
                        );
                    }
                }
            }
            panic!("a subscriber did not finish");
        }
    }
    let elapsed = started.elapsed();

    let published: HashMap<PeerId, u64> =
        pubs.iter().map(|p| (p.id(), p.stats().published)).collect();
    for (s, checker) in subs.iter().zip(&checkers) {
        let seen = checker.lock();
        let twice = seen.values().filter(|&&n| n > 1).count();
        let missing: u64 = published
            .iter()
            .map(|(origin, &n)| {
                (1..=n)
                    .filter(|seq| !seen.contains_key(&(*origin, *seq)))
                    .count() as u64
            })
            .sum();
        let st = s.stats();
        eprintln!(
            "{}: processed {} in {elapsed:?}; dropped {} duplicated {} reordered {} delayed {}; \
             naks {} repaired {} duplicates dropped {} lost {}",
            s.name(),
            seen.len(),
            st.faults_dropped,
            st.faults_duplicated,
            st.faults_reordered,
            st.faults_delayed,
            st.naks_sent,
            st.repaired,
            st.duplicates,
            st.lost
        );
        assert_eq!(missing, 0, "{}: missing messages", s.name());
        assert_eq!(twice, 0, "{}: messages processed twice", s.name());
        assert_eq!(seen.len() as u64, TOTAL);
        // Most frames never reach the fault layer: an unpaced flood makes NNG
        // drop them first (as measured for raw NNG), and repair fills in.
        assert!(st.faults_dropped > 0 && st.faults_duplicated > 0 && st.faults_reordered > 0);
        assert_eq!(st.lost, 0);
    }
    for p in pubs.iter().chain(&subs) {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_everything_once_and_the_publisher_stays_bounded() {
    const N: u64 = 3000;
    const BUFFER: usize = 256;
    // Tiny NNG queues so a slow subscriber makes NNG drop on the pub side.
    // Unbatched: one NNG message per event, so the 8-message queues overflow.
    let a = loaded("fast-pub")
        .batch_bytes(0)
        .send_buffer(8)
        .retransmit_buffer(BUFFER)
        .start()
        .await
        .unwrap();
    let b = loaded("slow-sub")
        .seed(a.local_url())
        .recv_buffer(8)
        .subscription_buffer(8)
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let checker: Checker = Default::default();
    let c = checker.clone();
    let _h = b
        .subscribe_with("slow.>", move |d: Delivery<u64>| {
            let c = c.clone();
            async move {
                if d.seq().is_multiple_of(100) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                *c.lock().entry((d.origin(), d.seq())).or_default() += 1;
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let peak = Arc::new(Mutex::new(0u64));
    let (pk, watch) = (peak.clone(), a.clone());
    let sampler = tokio::spawn(async move {
        loop {
            {
                let mut p = pk.lock();
                *p = (*p).max(watch.stats().retransmit_buffer);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for k in 0..N {
        a.publish("slow.item", &k).await.unwrap();
    }
    wait_for("slow subscriber done", || b.stats().handled == N).await;
    sampler.abort();
    {
        let seen = checker.lock();
        assert_eq!(seen.len() as u64, N);
        assert!(seen.values().all(|&n| n == 1), "processed twice");
    }
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!(
        "slow subscriber: peak retransmit buffer {} (bound {BUFFER}), retransmits {}, naks {}",
        *peak.lock(),
        sa.retransmits,
        sb.naks_sent
    );
    assert!(*peak.lock() <= BUFFER as u64, "buffer over its bound");
    assert!(sa.retransmits > 0, "NNG dropped and repair filled in");
    assert_eq!(sb.lost, 0);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}
