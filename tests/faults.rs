//! The link-fault layer on a real peer's receive path, and reliable delivery
//! repairing what it breaks: every message processed exactly once.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chorus::faults::LinkFaults;
use chorus::{Peer, PeerBuilder};
use common::*;

async fn faulty_pair(
    faults: LinkFaults,
    tune: impl FnOnce(PeerBuilder) -> PeerBuilder,
) -> (Peer, Peer) {
    // Unbatched, so every event is its own frame for the fault layer to hit.
    let a = fast("a", &unique_url("inproc", "fa"))
        .batch_bytes(0)
        .start()
        .await
        .unwrap();
    let b = tune(
        fast("b", &unique_url("inproc", "fb"))
            .seed(a.local_url())
            .link_faults(faults),
    )
    .start()
    .await
    .unwrap();
    wait_mesh(&[&a, &b]).await;
    (a, b)
}

async fn collect(sub: &mut chorus::Subscription<u32>, n: usize) -> Vec<u32> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(next("every message, eventually", sub).await.value);
    }
    got
}

#[tokio::test]
async fn every_dropped_frame_is_repaired() {
    let (a, b) = faulty_pair(
        LinkFaults {
            drop: 1.0,
            ..Default::default()
        },
        |b| b,
    )
    .await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..200u32 {
        a.publish("t", &i).await.unwrap();
    }
    // Nothing arrives by pub/sub: the heartbeats' last sequence number
    // reveals the tail, NAKs fetch it from a's retransmit buffer.
    assert_eq!(collect(&mut sub, 200).await, (0..200).collect::<Vec<_>>());
    let s = b.stats();
    assert_eq!(s.faults_dropped, 200);
    assert!(s.repaired >= 200 && s.naks_sent > 0, "{s:?}");
    assert_eq!(s.lost, 0);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn duplicated_frames_are_processed_once() {
    let (a, b) = faulty_pair(
        LinkFaults {
            duplicate: 1.0,
            ..Default::default()
        },
        |b| b,
    )
    .await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..200u32 {
        a.publish("t", &i).await.unwrap();
    }
    assert_eq!(collect(&mut sub, 200).await, (0..200).collect::<Vec<_>>());
    // What the inbox made of a frame is published just after it is counted
    // as received.
    wait_for("copies dropped as duplicates", || {
        b.stats().duplicates >= 200
    })
    .await;
    let s = b.stats();
    assert_eq!(s.received, 400);
    assert_eq!(s.faults_duplicated, 200);
    assert!(s.duplicates >= 200, "{s:?}");
    assert_eq!(s.delivered, 200);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

fn shuffling() -> LinkFaults {
    LinkFaults {
        reorder: 0.3,
        delay: 0.2,
        max_delay: Duration::from_millis(10),
        seed: 42,
        ..Default::default()
    }
}

#[tokio::test]
async fn reordered_and_delayed_frames_are_delivered_in_order() {
    let (a, b) = faulty_pair(shuffling(), |b| b).await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..500u32 {
        a.publish("t", &i).await.unwrap();
    }
    assert_eq!(collect(&mut sub, 500).await, (0..500).collect::<Vec<_>>());
    let s = b.stats();
    assert!(s.faults_reordered > 0 && s.faults_delayed > 0, "{s:?}");
    assert_eq!(s.lost, 0);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn unordered_delivery_takes_them_as_they_come_still_once() {
    let (a, b) = faulty_pair(shuffling(), |b| b.ordered_delivery(false)).await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..500u32 {
        a.publish("t", &i).await.unwrap();
    }
    let got = collect(&mut sub, 500).await;
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        (0..500).collect()
    );
    assert!(got.windows(2).any(|w| w[0] > w[1]), "order was disturbed");
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn invalid_fault_settings_are_refused() {
    let e = Peer::builder()
        .link_faults(LinkFaults {
            drop: 2.0,
            ..Default::default()
        })
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("drop"), "{e}");
}
