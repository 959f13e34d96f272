//! Bad input from the network: counted, logged, dropped, and valid traffic
//! on the same socket keeps flowing. The sender is a fake member made of raw NNG sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chorus::{Envelope, Peer, PeerId};
use common::*;
use nng::options::Options;

fn frame(seq: u64, topic: &str, payload: Vec<u8>) -> Vec<u8> {
    Envelope {
        origin: PeerId(77),
        incarnation: 1,
        seq,
        topic: topic.into(),
        timestamp_us: 0,
        payload: Bytes::from(payload),
        meta: None,
    }
    .encode()
}

fn valid(seq: u64) -> Vec<u8> {
    frame(seq, "t.ok", rmp_serde::to_vec(&(seq as u32)).unwrap())
}

/// A victim peer with a fake member (raw NNG sockets) joined to it.
async fn victim(max: usize) -> (Peer, FakeMember) {
    let b = fast("victim", "tcp://127.0.0.1:0")
        .max_message_size(max)
        .start()
        .await
        .unwrap();
    let fake = FakeMember::honest(b.local_url(), 77);
    wait_for("link from the fake member", || b.stats().links_in == 1).await;
    (b, fake)
}

#[tokio::test]
async fn every_kind_of_bad_frame_is_counted_and_valid_ones_flow() {
    let (b, raw) = victim(4096).await;
    let mut sub = b.subscribe::<u32>("t.>").unwrap();

    let good = valid(1);
    let mut wrong_version = good.clone();
    wrong_version[1] = 9;
    let mut wrong_kind = good.clone();
    wrong_kind[2] = 7;
    let sends: Vec<Vec<u8>> = vec![
        valid(1),
        b"\x00garbage that is not msgpack".to_vec(),
        good[..good.len() / 2].to_vec(), // truncated
        frame(2, "t..bad", vec![1]),     // invalid topic
        frame(3, "t.wild.*", vec![1]),   // wildcard in a concrete topic
        wrong_version,
        wrong_kind,
        frame(4, "t.big", vec![0; 5000]), // over 4096, under NNG's 2x cap
        // A valid envelope (the next sequence number) whose payload is not a u32.
        frame(
            2,
            "t.str",
            rmp_serde::to_vec("a string, not a u32").unwrap(),
        ),
        Vec::new(), // empty message
        valid(3),
    ];
    for m in sends {
        raw.send(&m);
    }
    assert_eq!(next("valid 1", &mut sub).await.value, 1);
    assert_eq!(next("valid 3", &mut sub).await.value, 3);
    let s = b.stats();
    assert_eq!(s.received, 11);
    assert_eq!(s.malformed, 5, "{s:?}");
    assert_eq!(s.unsupported, 2, "{s:?}");
    assert_eq!(s.oversized, 1, "{s:?}");
    assert_eq!(s.undecodable, 1, "{s:?}");
    assert_eq!(s.delivered, 2, "{s:?}");
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_frame_beyond_the_transport_cap_costs_a_reconnect_not_the_peer() {
    // This fake member keeps no retransmit buffer, so what it sends while the
    // link is down is never repaired: take deliveries as they come.
    let b = fast("victim", "tcp://127.0.0.1:0")
        .max_message_size(4096)
        .ordered_delivery(false)
        .start()
        .await
        .unwrap();
    let raw = FakeMember::honest(b.local_url(), 77);
    wait_for("link from the fake member", || b.stats().links_in == 1).await;
    let mut sub = b.subscribe::<u32>("t.>").unwrap();
    // 10x the limit, past what NNG accepts on the event socket (2x a batch's
    // 4x): NNG refuses it and drops the link; the dialer reconnects.
    raw.send(&frame(1, "t.huge", vec![7; 41_000]));
    // Valid traffic resumes: resend until one arrives (messages sent while
    // the link is down are lost, as pub/sub does).
    let got = within("traffic after the oversized frame", async {
        let mut seq = 2;
        loop {
            raw.send(&valid(seq));
            seq += 1;
            if let Ok(Some(d)) = tokio::time::timeout(
                Duration::from_millis(50),
                futures::StreamExt::next(&mut sub),
            )
            .await
            {
                return d.value;
            }
        }
    })
    .await;
    assert!(got >= 2);
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_garbage_flood_does_not_stop_valid_traffic() {
    let (b, raw) = victim(1 << 20).await;
    let mut sub = b.subscribe::<u32>("t.>").unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut sent, mut seq) = (0, 0);
    for i in 0..2000u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let junk: Vec<u8> = (0..(rng % 200)).map(|k| (rng >> (k % 56)) as u8).collect();
        raw.send(&junk);
        sent += 1;
        if i % 100 == 0 {
            seq += 1;
            raw.send(&frame(seq, "t.ok", rmp_serde::to_vec(&(i as u32)).unwrap()));
            sent += 1;
            // Pace so NNG's own queues never drop: this test is about decoding.
            wait_for("victim to catch up", || b.stats().received == sent).await;
        }
    }
    for i in (0..2000u32).step_by(100) {
        assert_eq!(next("valid among garbage", &mut sub).await.value, i);
    }
    let s = b.stats();
    assert_eq!(s.delivered, 20);
    assert!(s.malformed + s.unsupported >= 1900, "{s:?}");
    within("shutdown", b.shutdown()).await;
}

/// NAKs straight to a peer's repair endpoint from a raw req0 socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_absurd_and_foreign_naks_cost_little_and_change_nothing() {
    use chorus::repair::{Nak, Repair};
    let (a, b) = pair("tcp").await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    for i in 0..10u32 {
        a.publish("t.x", &i).await.unwrap();
    }
    for i in 0..10u32 {
        assert_eq!(next("before the abuse", &mut sub).await.value, i);
    }
    let req = nng::Socket::new(nng::Protocol::Req0).unwrap();
    req.set_opt::<nng::options::RecvTimeout>(Some(Duration::from_millis(500)))
        .unwrap();
    req.dial(&a.info().endpoints.repair).unwrap();
    let ask = |bytes: Vec<u8>| -> Option<Repair> {
        req.send(nng::Message::from(&bytes[..])).unwrap();
        req.recv()
            .ok()
            .map(|m| Repair::decode(m.as_slice(), 1 << 20).unwrap())
    };
    tokio::task::block_in_place(|| {
        assert!(
            ask(b"\x00not a nak".to_vec()).is_none(),
            "garbage gets no answer"
        );
        // The whole u64 range: bounded answer, never-published part refused.
        let r = ask(Nak {
            origin: a.id(),
            incarnation: a.incarnation(),
            ranges: vec![(1, u64::MAX)],
            member: chorus::PeerId(999),
            resume_from: 0,
        }
        .encode())
        .unwrap();
        assert_eq!(r.last_seq, 10);
        assert!(r.frames.len() <= 10);
        // Another origin's NAK: an empty answer naming who answered.
        let r = ask(Nak {
            origin: chorus::PeerId(12345),
            incarnation: 1,
            ranges: vec![(1, 5)],
            member: chorus::PeerId(999),
            resume_from: 0,
        }
        .encode())
        .unwrap();
        assert_eq!(r.origin, a.id());
        assert!(r.frames.is_empty() && r.gone.is_empty());
    });
    let s = a.stats();
    assert_eq!(s.naks_malformed, 1);
    assert!(s.naks_refused >= 2, "{s:?}");
    // Normal traffic is unaffected.
    a.publish("t.x", &10u32).await.unwrap();
    assert_eq!(next("after the abuse", &mut sub).await.value, 10);
    req.close();
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}
