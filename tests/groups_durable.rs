//! Durable consumer groups over real sockets, in one process: what an
//! origin publishes while every member of a durable group is down is kept
//! for the group and handled by its next member, once; with a data dir the
//! origin keeps it across its own restart too (flagged, from its log);
//! a group that is not durable does not get it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus::{Error, HandlerOptions, Peer, PeerBuilder};
use common::{fast, unique_url, wait_for, wait_mesh, DEADLINE};
use parking_lot::Mutex;

/// (index, redelivered) per handled event.
type Log = Arc<Mutex<Vec<(u32, bool)>>>;

async fn member(name: &str, seed: &str, durable: bool, log: &Log) -> Peer {
    let p = fast(name, &unique_url("tcp", "m"))
        .seed(seed)
        .start()
        .await
        .unwrap();
    let mut options = HandlerOptions::new().group("work");
    if durable {
        options = options.durable("work");
    }
    let log = log.clone();
    p.subscribe_with_options("bids.>", options, move |d: chorus::Delivery<u32>| {
        let log = log.clone();
        async move {
            log.lock().push((d.value, d.redelivered()));
            Ok::<(), String>(())
        }
    })
    .unwrap();
    p
}

async fn publish(origin: &Peer, range: std::ops::Range<u32>) {
    for n in range {
        origin.publish("bids.accepted", &n).await.unwrap();
    }
}

fn counts(log: &Log) -> HashMap<u32, usize> {
    let mut by = HashMap::new();
    for (n, _) in log.lock().iter() {
        *by.entry(*n).or_default() += 1;
    }
    by
}

/// Starts members, waits until the origin counts them, returns them.
async fn members(origin: &Peer, names: &[&str], durable: bool, log: &Log) -> Vec<Peer> {
    let seed = origin.local_url().to_string();
    let mut peers = Vec::new();
    for name in names {
        peers.push(member(name, &seed, durable, log).await);
    }
    let all: Vec<&Peer> = std::iter::once(origin).chain(&peers).collect();
    wait_mesh(&all).await;
    let n = names.len() as u64;
    wait_for("the origin counts the group's members", || {
        origin.stats().group_members == n
    })
    .await;
    peers
}

async fn stop_all(origin: &Peer, peers: Vec<Peer>) {
    for p in peers {
        p.shutdown().await;
    }
    wait_for("the origin counts no member", || {
        origin.stats().group_members == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_group_handles_what_was_published_while_all_its_members_were_down() {
    let origin = fast("origin", &unique_url("tcp", "o"))
        .start()
        .await
        .unwrap();
    let log: Log = Default::default();
    let peers = members(&origin, &["m1", "m2"], true, &log).await;
    publish(&origin, 0..300).await;
    wait_for("the first 300 handled", || counts(&log).len() == 300).await;
    stop_all(&origin, peers).await;

    // Nobody in the group is live: kept for it.
    publish(&origin, 300..600).await;
    wait_for("300 kept for the group", || {
        origin.stats().group_kept == 300
    })
    .await;
    let peers = members(&origin, &["m3", "m4"], true, &log).await;
    wait_for("all 600 handled", || counts(&log).len() == 600).await;
    publish(&origin, 600..700).await;
    wait_for("all 700 handled", || counts(&log).len() == 700).await;
    origin.flush(DEADLINE).await.unwrap();
    let by = counts(&log);
    assert!(by.values().all(|&c| c == 1), "an event handled twice");
    // Graceful stops: nothing was possibly handled before.
    assert!(log.lock().iter().all(|(_, r)| !r), "an event flagged");
    stop_all(&origin, peers).await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_that_is_not_durable_misses_what_was_published_while_it_was_empty() {
    let origin = fast("origin", &unique_url("tcp", "o"))
        .start()
        .await
        .unwrap();
    let log: Log = Default::default();
    let peers = members(&origin, &["m1"], false, &log).await;
    publish(&origin, 0..50).await;
    wait_for("the first 50 handled", || counts(&log).len() == 50).await;
    stop_all(&origin, peers).await;
    publish(&origin, 50..100).await;
    let peers = members(&origin, &["m2"], false, &log).await;
    publish(&origin, 100..150).await;
    wait_for("the last 50 handled", || {
        (100..150).all(|n| counts(&log).contains_key(&n))
    })
    .await;
    origin.flush(DEADLINE).await.unwrap();
    let by = counts(&log);
    assert!((50..100).all(|n| !by.contains_key(&n)));
    assert_eq!(origin.stats().group_kept, 0);
    stop_all(&origin, peers).await;
    origin.shutdown().await;
}

fn durable_origin(path: &std::path::Path) -> PeerBuilder {
    fast("origin", &unique_url("tcp", "o")).data_dir(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_origin_keeps_a_durable_groups_events_across_its_restart() {
    let dir = tempfile::Builder::new()
        .prefix("chorus-groups-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("origin");
    let origin = durable_origin(&path).start().await.unwrap();
    let log: Log = Default::default();
    let peers = members(&origin, &["m1"], true, &log).await;
    publish(&origin, 0..200).await;
    wait_for("the first 200 handled", || counts(&log).len() == 200).await;
    stop_all(&origin, peers).await;
    publish(&origin, 200..400).await;
    origin.shutdown().await;

    // The same data dir at a new address: the group and its 200 events
    // come back from the log.
    let origin = durable_origin(&path).start().await.unwrap();
    assert_eq!(origin.stats().group_kept, 200);
    let peers = members(&origin, &["m2", "m3"], true, &log).await;
    wait_for("all 400 handled", || counts(&log).len() == 400).await;
    publish(&origin, 400..450).await;
    wait_for("all 450 handled", || counts(&log).len() == 450).await;
    origin.flush(DEADLINE).await.unwrap();
    let by = counts(&log);
    assert!(by.values().all(|&c| c == 1), "an event handled twice");
    for (n, redelivered) in log.lock().iter() {
        // What came back from the log may have been handled before the
        // restart, as far as the origin knows: flagged.
        assert_eq!(*redelivered, (200..400).contains(n), "event {n}");
    }
    stop_all(&origin, peers).await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_group_is_named_by_its_group() {
    let p = fast("p", &unique_url("inproc", "p")).start().await.unwrap();
    let options = HandlerOptions::new().group("work").durable("other");
    let got = p.subscribe_with_options("bids.>", options, |_d: chorus::Delivery<u32>| async {
        Ok::<(), String>(())
    });
    assert!(matches!(got, Err(Error::Config(_))), "{got:?}");
    let options = HandlerOptions::new()
        .group("work")
        .durable("work")
        .start_at(chorus::StartAt::Beginning);
    let got = p.subscribe_with_options("bids.>", options, |_d: chorus::Delivery<u32>| async {
        Ok::<(), String>(())
    });
    assert!(matches!(got, Err(Error::Config(_))), "{got:?}");
    tokio::time::timeout(Duration::from_secs(10), p.shutdown())
        .await
        .unwrap();
}
