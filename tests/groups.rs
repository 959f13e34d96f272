//! Consumer groups over real sockets, in one process: each event is handled
//! by one member of a group, fairly spread, per-key order kept while the
//! group is stable; other groups and plain handlers get their own copy; a
//! member that stops gracefully hands over what it had not started (no
//! event twice); a member whose handler vanishes is failed over (flagged).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus::{HandlerOptions, Peer, PublishOptions};
use common::{fast, unique_url, wait_for, wait_mesh};
use parking_lot::Mutex;

/// (member, key, index, redelivered) per handled event.
type Log = Arc<Mutex<Vec<(usize, String, u32, bool)>>>;

async fn member(i: usize, seed: &str, group: &str, log: &Log) -> (Peer, chorus::Handler) {
    let p = fast(&format!("m{i}"), &unique_url("tcp", "m"))
        .seed(seed)
        .start()
        .await
        .unwrap();
    let log = log.clone();
    let h = p
        .subscribe_with_options(
            "bids.>",
            HandlerOptions::new().group(group),
            move |d: chorus::Delivery<(String, u32)>| {
                let log = log.clone();
                async move {
                    let (key, n) = d.value.clone();
                    log.lock().push((i, key, n, d.redelivered()));
                    Ok::<(), String>(())
                }
            },
        )
        .unwrap();
    (p, h)
}

async fn publish(origin: &Peer, from: u32, to: u32) {
    for n in from..to {
        let key = format!("bid-{}", n % 300);
        origin
            .publish_with(
                "bids.accepted",
                &(key.clone(), n),
                PublishOptions::new().key(key),
            )
            .await
            .unwrap();
    }
}

fn count_by_index(log: &Log) -> HashMap<u32, usize> {
    let mut by = HashMap::new();
    for (_, _, n, _) in log.lock().iter() {
        *by.entry(*n).or_default() += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_shares_the_work_and_other_groups_get_their_own_copy() {
    let origin = fast("origin", &unique_url("tcp", "o"))
        .start()
        .await
        .unwrap();
    let seed = origin.local_url().to_string();
    let work: Log = Default::default();
    let audit: Log = Default::default();
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(member(i, &seed, "work", &work).await);
    }
    peers.push(member(9, &seed, "audit", &audit).await);
    let all: Vec<&Peer> = std::iter::once(&origin)
        .chain(peers.iter().map(|(p, _)| p))
        .collect();
    wait_mesh(&all).await;
    wait_for("the origin counts 4 group members", || {
        origin.stats().group_members == 4
    })
    .await;
    publish(&origin, 0, 3000).await;
    wait_for("every event handled by each group", || {
        count_by_index(&work).len() == 3000 && count_by_index(&audit).len() == 3000
    })
    .await;
    origin.flush(Duration::from_secs(10)).await.unwrap();
    let by = count_by_index(&work);
    assert!(
        by.values().all(|&c| c == 1),
        "an event handled twice in the group"
    );
    assert_eq!(work.lock().len(), 3000);
    assert_eq!(audit.lock().len(), 3000);
    // Fair: no member below half its share; one member per key, in order.
    let mut per_member = [0usize; 3];
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut last: HashMap<String, u32> = HashMap::new();
    for (m, key, n, redelivered) in work.lock().iter() {
        assert!(!redelivered);
        per_member[*m] += 1;
        assert_eq!(*owner.entry(key.clone()).or_insert(*m), *m, "{key} moved");
        if let Some(prev) = last.insert(key.clone(), *n) {
            assert!(prev < *n, "{key}: {n} after {prev}");
        }
    }
    assert!(
        per_member.iter().all(|&c| c >= 500),
        "unfair: {per_member:?}"
    );
    let s = origin.stats();
    assert_eq!(s.group_assigned, 6000);
    assert_eq!(s.group_reassigned, 0);
    for (p, _) in &peers {
        p.shutdown().await;
    }
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_leave_hands_over_without_doubles_and_a_vanished_handler_is_failed_over() {
    let origin = fast("origin", &unique_url("tcp", "o"))
        .start()
        .await
        .unwrap();
    let seed = origin.local_url().to_string();
    let work: Log = Default::default();
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(member(i, &seed, "work", &work).await);
    }
    let all: Vec<&Peer> = std::iter::once(&origin)
        .chain(peers.iter().map(|(p, _)| p))
        .collect();
    wait_mesh(&all).await;
    wait_for("3 group members", || origin.stats().group_members == 3).await;
    publish(&origin, 0, 1000).await;
    // Member 0 leaves gracefully while events flow.
    let (leaver, _) = peers.remove(0);
    let publishing = {
        let origin = origin.clone();
        tokio::spawn(async move { publish(&origin, 1000, 2000).await })
    };
    leaver.shutdown().await;
    publishing.await.unwrap();
    wait_for("every event handled", || {
        count_by_index(&work).len() == 2000
    })
    .await;
    origin.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        count_by_index(&work).values().all(|&c| c == 1),
        "a graceful leave made an event handled twice"
    );
    assert!(
        work.lock().iter().all(|e| !e.3),
        "a graceful handover is not flagged"
    );
    // Member 1's handler stops without a goodbye: the origin fails it over.
    wait_for("2 group members", || origin.stats().group_members == 2).await;
    let (p1, h1) = peers.remove(0);
    h1.stop();
    publish(&origin, 2000, 3000).await;
    wait_for("every event handled after the failover", || {
        count_by_index(&work).len() == 3000
    })
    .await;
    let by = count_by_index(&work);
    for (n, c) in &by {
        if *c > 1 {
            let flagged = work.lock().iter().filter(|e| e.2 == *n && e.3).count();
            assert!(
                flagged >= c - 1,
                "event {n} handled {c} times, {flagged} flagged"
            );
        }
    }
    wait_for("1 group member", || origin.stats().group_members == 1).await;
    p1.shutdown().await;
    for (p, _) in &peers {
        p.shutdown().await;
    }
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_joining_one_by_one_while_events_flow_share_them_once() {
    let origin = fast("origin", &unique_url("tcp", "o"))
        .start()
        .await
        .unwrap();
    let seed = origin.local_url().to_string();
    let work: Log = Default::default();
    // A group of one first: it gets everything.
    let mut peers = vec![member(0, &seed, "work", &work).await];
    wait_mesh(&[&origin, &peers[0].0]).await;
    wait_for("1 group member", || origin.stats().group_members == 1).await;
    publish(&origin, 0, 300).await;
    wait_for("a group of one handles everything", || {
        count_by_index(&work).len() == 300
    })
    .await;
    assert!(work.lock().iter().all(|e| e.0 == 0));
    // Then two more join, one by one, while events flow (paced: ~3 s).
    let publishing = {
        let origin = origin.clone();
        tokio::spawn(async move {
            for from in (300..3300).step_by(10) {
                publish(&origin, from, from + 10).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for i in 1..3 {
        peers.push(member(i, &seed, "work", &work).await);
        let n = i as u64 + 1;
        wait_for("the new member counted", || {
            origin.stats().group_members == n
        })
        .await;
    }
    publishing.await.unwrap();
    wait_for("every event handled", || {
        count_by_index(&work).len() == 3300
    })
    .await;
    origin.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        count_by_index(&work).values().all(|&c| c == 1),
        "a join made an event handled twice"
    );
    assert!(work.lock().iter().all(|e| !e.3), "nothing was failed over");
    // The late members got a share of what followed their join.
    let late: Vec<usize> = (1..3)
        .map(|m| work.lock().iter().filter(|e| e.0 == m).count())
        .collect();
    assert!(late.iter().all(|&c| c > 0), "{late:?}");
    for (p, _) in &peers {
        p.shutdown().await;
    }
    origin.shutdown().await;
}
