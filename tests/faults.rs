//! The link-fault layer on a real peer's receive path.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chorus::faults::LinkFaults;
use chorus::Peer;
use common::*;

async fn faulty_pair(faults: LinkFaults) -> (Peer, Peer) {
    let a = peer("a", &unique_url("inproc", "fa")).await.unwrap();
    let b = fast("b", &unique_url("inproc", "fb"))
        .seed(a.local_url())
        .link_faults(faults)
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    (a, b)
}

#[tokio::test]
async fn dropped_frames_never_arrive_and_are_counted() {
    let (a, b) = faulty_pair(LinkFaults {
        drop: 1.0,
        ..Default::default()
    })
    .await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..200u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("drops counted", || b.stats().faults_dropped == 200).await;
    assert_eq!(b.stats().received, 0);
    assert!(futures::FutureExt::now_or_never(futures::StreamExt::next(&mut sub)).is_none());
    // Heartbeats are not on this path: the peers stay members.
    assert_eq!(b.stats().members, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn duplicated_frames_arrive_twice() {
    let (a, b) = faulty_pair(LinkFaults {
        duplicate: 1.0,
        ..Default::default()
    })
    .await;
    for i in 0..200u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("copies received", || b.stats().received == 400).await;
    assert_eq!(b.stats().faults_duplicated, 200);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn reordered_and_delayed_frames_all_arrive_out_of_order() {
    let faults = LinkFaults {
        reorder: 0.3,
        delay: 0.2,
        max_delay: Duration::from_millis(10),
        seed: 42,
        ..Default::default()
    };
    let (a, b) = faulty_pair(faults).await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..500u32 {
        a.publish("t", &i).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 500 {
        got.push(next("every frame, eventually", &mut sub).await.value);
    }
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        (0..500).collect()
    );
    assert!(got.windows(2).any(|w| w[0] > w[1]), "order was disturbed");
    let s = b.stats();
    assert!(s.faults_reordered > 0 && s.faults_delayed > 0, "{s:?}");
    a.shutdown().await;
    b.shutdown().await;
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
