//! Bus-key authentication between real peers and hand-made outsiders:
//! peers without the key or with a wrong key stay out of membership and
//! delivery, forged and replayed messages are rejected and counted, keys
//! rotate, and a link that keeps failing is closed and its address
//! quarantined.

mod common;

use bytes::Bytes;
use chorus::heartbeat::Response;
use chorus::{Envelope, Peer, PeerId};
use common::*;

const KEY: &[u8] = b"the bus key of the tests, 32 b.";
const OTHER: &[u8] = b"not the bus key, but long enough";

async fn keyed(name: &str, seed: Option<&str>, keys: &[&[u8]]) -> Peer {
    let mut b = fast(name, "tcp://127.0.0.1:0").bus_keys(keys.iter().copied());
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.start().await.unwrap()
}

fn envelope(origin: u64, incarnation: u64, seq: u64, payload: &'static [u8]) -> Vec<u8> {
    Envelope {
        origin: PeerId(origin),
        incarnation,
        seq,
        topic: "auth.test".into(),
        timestamp_us: 1,
        payload: Bytes::from_static(payload),
        meta: None,
    }
    .encode()
}

fn is_member(p: &Peer, id: PeerId) -> bool {
    p.members()
        .iter()
        .any(|m| m.id() == id && m.state.is_live())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_key_stay_out_of_membership_and_delivery() {
    let a = keyed("a", None, &[KEY]).await;
    let b = keyed("b", Some(a.local_url()), &[KEY]).await;
    wait_mesh(&[&a, &b]).await;
    let mut got = b.subscribe_bytes("auth.>").unwrap();

    let no_key = fast("no-key", "tcp://127.0.0.1:0")
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let wrong_key = keyed("wrong-key", Some(a.local_url()), &[OTHER]).await;
    // The outsiders cannot even read the bus's heartbeats.
    wait_for("outsiders reject the bus's heartbeats", || {
        no_key.stats().heartbeat_malformed >= 3 && wrong_key.stats().auth_failed >= 3
    })
    .await;
    // Five more heartbeat rounds of every peer (what joining takes is one or
    // two), and still nobody counts anybody across the key boundary.
    let rounds = |p: &Peer| p.stats().heartbeat_rounds;
    let start: Vec<u64> = [&a, &b, &no_key, &wrong_key]
        .iter()
        .map(|p| rounds(p))
        .collect();
    wait_for("five more rounds everywhere", || {
        [&a, &b, &no_key, &wrong_key]
            .iter()
            .zip(&start)
            .all(|(p, r0)| rounds(p) >= r0 + 5)
    })
    .await;
    for outsider in [&no_key, &wrong_key] {
        assert!(!is_member(&a, outsider.id()) && !is_member(&b, outsider.id()));
        assert!(outsider.members().is_empty(), "{:?}", outsider.members());
    }
    assert_eq!(a.stats().members, 1);
    // Their publishes reach nobody; the bus's own traffic flows.
    wrong_key
        .publish_bytes("auth.x", &b"intruder"[..])
        .await
        .unwrap();
    no_key
        .publish_bytes("auth.x", &b"intruder"[..])
        .await
        .unwrap();
    a.publish_bytes("auth.x", &b"member"[..]).await.unwrap();
    let d = next("the member's event", &mut got).await;
    assert_eq!(&d.value[..], b"member");
    for p in [a, b, no_key, wrong_key] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_are_counted_and_their_link_closed_then_quarantined() {
    let a = keyed("a", None, &[KEY]).await;
    let b = keyed("b", Some(a.local_url()), &[KEY]).await;
    wait_mesh(&[&a, &b]).await;
    // An outsider answers a's surveys claiming to be b, with no tag.
    let forged = b.info().clone();
    let _impostor = FakeMember::start(a.local_url(), 99, move |_| {
        let mut heartbeat = 1_000_000;
        Box::new(move |_| {
            heartbeat += 1;
            Some(
                Response {
                    from: forged.clone(),
                    heartbeat,
                    last_seq: 999,
                    acks: vec![],
                    durable: vec![],
                    groups: vec![],
                    views: vec![],
                    gossip: vec![],
                }
                .encode(),
            )
        })
    });
    wait_for("the forged link closed and its redial refused", || {
        let s = a.stats();
        s.pipes_closed >= 1 && s.pipes_refused >= 1
    })
    .await;
    let s = a.stats();
    assert!(s.auth_failed >= 3, "{s:?}");
    assert_eq!(s.heartbeat_conflicts, 0, "forgeries never reach membership");
    assert!(is_member(&a, b.id()));
    // Existing links keep working while the address is quarantined.
    let mut got = b.subscribe_bytes("auth.>").unwrap();
    a.publish_bytes("auth.y", &b"still here"[..]).await.unwrap();
    assert_eq!(&next("delivery", &mut got).await.value[..], b"still here");
    for p in [a, b] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_fail_authentication_are_dropped_and_replays_of_an_old_incarnation_rejected() {
    let r = keyed("r", None, &[KEY]).await;
    let mut got = r.subscribe_bytes("auth.>").unwrap();
    // An insider (holds the key), incarnation 1.
    let old = FakeMember::honest_with(r.local_url(), 77, 1, Some(KEY));
    wait_for("insider linked", || {
        r.stats().links_in == 1 && r.stats().members == 1
    })
    .await;
    old.send(&envelope(77, 1, 1, b"one"));
    assert_eq!(&next("seq 1", &mut got).await.value[..], b"one");
    // An unsealed and a tampered copy of seq 2 are dropped (a third failure
    // would close the link: see the forged-heartbeat test).
    let seq2 = envelope(77, 1, 2, b"two");
    old.send_unsealed(&seq2);
    let mut tampered = chorus::auth::seal_frame(KEY, &envelope(77, 1, 2, b"TWO"));
    tampered[10] ^= 1;
    old.send_unsealed(&tampered);
    // What an eavesdropper captured of incarnation 1, never delivered here.
    let captured = chorus::auth::seal_frame(KEY, &envelope(77, 1, 3, b"captured"));
    old.send(&seq2);
    assert_eq!(&next("seq 2", &mut got).await.value[..], b"two");
    assert_eq!(r.stats().auth_failed, 2);
    drop(old);

    // The insider restarts (incarnation 2); the captured message is replayed.
    let new = FakeMember::honest_with(r.local_url(), 77, 2, Some(KEY));
    wait_for("restarted insider linked", || {
        r.members()
            .iter()
            .any(|m| m.id() == PeerId(77) && m.info.incarnation == 2)
            && r.stats().links_in == 1
    })
    .await;
    new.send_unsealed(&captured);
    new.send(&envelope(77, 2, 1, b"fresh"));
    let d = next("incarnation 2 seq 1", &mut got).await;
    assert_eq!((&d.value[..], d.incarnation()), (&b"fresh"[..], 2));
    // The replay was not delivered (fresh came first) and is counted stale.
    wait_for("the replay counted stale", || r.stats().stale >= 1).await;
    within("shutdown", r.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_across_adjacent_stages() {
    // Stage 1 signs with the old key, stage 2 with the new; both accept both.
    let stage1 = keyed("stage1", None, &[KEY, OTHER]).await;
    let stage2 = keyed("stage2", Some(stage1.local_url()), &[OTHER, KEY]).await;
    wait_mesh(&[&stage1, &stage2]).await;
    // Stage 3 knows only the new key: it talks with stage 2.
    let stage3 = keyed("stage3", Some(stage2.local_url()), &[OTHER]).await;
    wait_for("stage 2 and 3 linked", || {
        is_member(&stage2, stage3.id()) && is_member(&stage3, stage2.id())
    })
    .await;
    let mut at1 = stage1.subscribe_bytes("auth.>").unwrap();
    let mut at3 = stage3.subscribe_bytes("auth.>").unwrap();
    wait_for("stage 3 linked to stage 2's publisher", || {
        stage2.stats().links_out >= 2
    })
    .await;
    stage2
        .publish_bytes("auth.z", &b"new key"[..])
        .await
        .unwrap();
    assert_eq!(&next("stage 1", &mut at1).await.value[..], b"new key");
    assert_eq!(&next("stage 3", &mut at3).await.value[..], b"new key");
    for p in [stage1, stage2, stage3] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test]
async fn a_short_key_is_refused() {
    let err = fast("x", "inproc://auth-short")
        .bus_key("short")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 16"), "{err}");
}
