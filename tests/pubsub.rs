//! Typed pub/sub between real peers over tcp loopback, ipc and inproc.

mod common;

use common::*;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use chorus::{Error, PublishOptions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    lines: Vec<(String, u32)>,
}

fn order(n: u64) -> OrderPlaced {
    OrderPlaced {
        order: n,
        customer: format!("c{n}"),
        lines: vec![("widget".into(), 3), ("gadget".into(), 1)],
    }
}

async fn typed_round_trip(scheme: &str) {
    let (a, b) = pair(scheme).await;
    let mut sub = b.subscribe::<OrderPlaced>("orders.placed").unwrap();

    let opts = PublishOptions::new()
        .id("order-1")
        .correlation_id("flow-9")
        .header("tenant", "acme");
    a.publish_with("orders.placed", &order(1), opts)
        .await
        .unwrap();
    a.publish("orders.placed", &order(2)).await.unwrap();

    let d1 = next("first order", &mut sub).await;
    assert_eq!(d1.value, order(1));
    assert_eq!(d1.origin(), a.id());
    assert_eq!(d1.incarnation(), a.incarnation());
    assert_eq!(d1.topic(), "orders.placed");
    assert_eq!(d1.id(), Some("order-1"));
    assert_eq!(d1.correlation_id(), Some("flow-9"));
    assert_eq!(d1.headers()["tenant"], "acme");
    let age = std::time::SystemTime::now()
        .duration_since(d1.timestamp())
        .unwrap();
    assert!(age < DEADLINE, "timestamp {age:?} old");

    let d2 = next("second order", &mut sub).await;
    assert_eq!(d2.value, order(2));
    assert_eq!(d2.seq(), d1.seq() + 1);
    assert_eq!(d2.id(), None);

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.published, 2);
    assert_eq!(sb.received, 2);
    assert_eq!(sb.delivered, 2);
    assert_eq!(sb.malformed + sb.undecodable + sb.oversized, 0);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn typed_round_trip_tcp() {
    typed_round_trip("tcp").await;
}

#[tokio::test]
async fn typed_round_trip_inproc() {
    typed_round_trip("inproc").await;
}

#[tokio::test]
async fn typed_round_trip_ipc() {
    typed_round_trip("ipc").await;
}

#[tokio::test]
async fn tcp_port_zero_advertises_the_bound_port() {
    let a = peer("a", "tcp://127.0.0.1:0").await.unwrap();
    let port: u16 = a.local_url().rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{}", a.local_url());
    // The advertised port really is where the peer listens.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("advertised port accepts connections");
    within("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn pattern_matching_star_rest_exact() {
    let (a, b) = pair("tcp").await;
    let mut star = b.subscribe::<u32>("orders.*").unwrap();
    let mut rest = b.subscribe::<u32>("orders.>").unwrap();
    let mut exact = b.subscribe::<u32>("orders.created").unwrap();
    let mut mid = b.subscribe::<u32>("orders.*.created").unwrap();
    let mut all = b.subscribe::<u32>(">").unwrap();

    let topics = [
        "orders.created",
        "orders.eu.created",
        "orders",
        "invoices.created",
        "orders.deleted",
        "orders.eu.created.late",
    ];
    for (i, t) in topics.iter().enumerate() {
        a.publish(t, &(i as u32)).await.unwrap();
    }
    // `>` sees everything; once it has the last one, the receiver has
    // dispatched every earlier message to every subscription (one origin is FIFO).
    for i in 0..topics.len() as u32 {
        assert_eq!(next("catch-all", &mut all).await.value, i);
    }
    let drain = |s: &mut chorus::Subscription<u32>| {
        let mut got = Vec::new();
        while let Some(Some(d)) = s.next().now_or_never() {
            got.push(d.value);
        }
        got
    };
    assert_eq!(drain(&mut star), [0, 4]);
    assert_eq!(drain(&mut rest), [0, 1, 4, 5]);
    assert_eq!(drain(&mut exact), [0]);
    assert_eq!(drain(&mut mid), [1]);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn several_subscribers_on_one_peer_each_get_every_message() {
    let (a, b) = pair("inproc").await;
    let mut s1 = b.subscribe::<OrderPlaced>("orders.>").unwrap();
    let mut s2 = b.subscribe::<OrderPlaced>("orders.>").unwrap();
    let mut raw = b.subscribe_bytes("orders.placed").unwrap();
    for n in 0..100 {
        a.publish("orders.placed", &order(n)).await.unwrap();
    }
    for n in 0..100 {
        assert_eq!(next("s1", &mut s1).await.value, order(n));
        assert_eq!(next("s2", &mut s2).await.value, order(n));
        let bytes = next("raw", &mut raw).await.value;
        let decoded: OrderPlaced = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(decoded, order(n));
    }
    assert_eq!(b.stats().delivered, 300);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn bytes_round_trip_and_dropping_a_subscription_unsubscribes() {
    let (a, b) = pair("tcp").await;
    let dropped = b.subscribe_bytes("raw.>").unwrap();
    drop(dropped);
    let mut kept = b.subscribe_bytes("raw.data").unwrap();
    a.publish_bytes("raw.data", &b"\x00\xffnot msgpack"[..])
        .await
        .unwrap();
    let d = next("raw bytes", &mut kept).await;
    assert_eq!(&d.value[..], b"\x00\xffnot msgpack");
    assert_eq!(b.stats().delivered, 1);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn shutdown_with_subscriptions_open_ends_streams() {
    let (a, b) = pair("tcp").await;
    let mut s1 = b.subscribe::<u32>(">").unwrap();
    let mut s2 = b.subscribe::<u32>("x.*").unwrap();
    a.publish("x.y", &1u32).await.unwrap();
    assert_eq!(next("before shutdown", &mut s1).await.value, 1);

    let clone = b.clone();
    within("shutdown", b.shutdown()).await;
    within("shutdown", clone.shutdown()).await; // idempotent, from any clone
                                                // x.y is still buffered in s2: delivered, then the stream ends.
    assert_eq!(next("buffered", &mut s2).await.value, 1);
    assert!(within("end of s2", s2.next()).await.is_none());
    assert!(within("end of s1", s1.next()).await.is_none());
    assert!(matches!(
        b.publish("x.y", &2u32).await,
        Err(Error::Shutdown)
    ));
    assert!(matches!(b.subscribe::<u32>(">"), Err(Error::Shutdown)));
    // The other peer is unaffected.
    a.publish("x.y", &3u32).await.unwrap();
    within("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn dropping_every_handle_stops_the_peer() {
    let (a, b) = pair("tcp").await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    drop(b);
    assert!(within("stream end after drop", sub.next()).await.is_none());
    wait_for("publisher sees the link close", || a.stats().links_out == 0).await;
    within("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn caller_errors_are_clear() {
    let a = peer("a", "tcp://127.0.0.1:0").await.unwrap();
    let e = a.publish("orders..x", &1).await.unwrap_err();
    assert!(matches!(e, Error::InvalidTopic { .. }), "{e}");
    let e = a.publish("orders.*", &1).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("only allowed in subscription patterns"),
        "{e}"
    );
    let e = a.subscribe::<u32>("orders.>.x").unwrap_err();
    assert!(matches!(e, Error::InvalidPattern { .. }), "{e}");
    let e = chorus::Peer::builder()
        .seed("http://example")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");

    let big = vec![0u8; 2 << 20];
    let e = a.publish_bytes("big", big).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { max: 1048576, .. }), "{e}");

    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }
    let e = a.publish("t", &Fails).await.unwrap_err();
    assert!(matches!(e, Error::Serialize(_)), "{e}");
    assert_eq!(a.stats().published, 0);

    let e = chorus::Peer::builder()
        .send_buffer(0)
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("send_buffer"), "{e}");
    let e = chorus::Peer::builder()
        .retransmit_bytes(100)
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("retransmit_bytes"), "{e}");
    let e = chorus::Peer::builder()
        .listen("udp://x:1")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
    // Listening twice on one address is a transport error naming the URL.
    let e = chorus::Peer::builder()
        .listen(a.local_url())
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains(a.local_url()), "{e}");
    within("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_full_unread_subscription() {
    let a = peer("a", &unique_url("inproc", "a")).await.unwrap();
    let b = fast("b", &unique_url("inproc", "b"))
        .subscription_buffer(64)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let _never_read = b.subscribe::<u32>(">").unwrap();
    // More than the subscription buffer: the receive path blocks on it.
    for i in 0..500u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("the subscription to fill", || {
        let s = b.stats();
        s.received + s.repaired >= 65
    })
    .await;
    within("shutdown with a full subscription", b.shutdown()).await;
    within("shutdown", a.shutdown()).await;
}

/// A batch that reaches its bound with an event of the largest size is
/// still a frame every receiver accepts: mixed sizes up to the limit,
/// published back to back, arrive whole, in batches, with nothing counted
/// as oversized and nothing to repair.
#[tokio::test]
async fn batches_of_events_up_to_the_limit_are_accepted() {
    const MAX: usize = 64 * 1024;
    let a = fast("a", "tcp://127.0.0.1:0")
        .max_message_size(MAX)
        .start()
        .await
        .unwrap();
    let b = fast("b", "tcp://127.0.0.1:0")
        .max_message_size(MAX)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let mut sub = b.subscribe_bytes("big.>").unwrap();
    let sizes = [1_000, 30_000, 63_000, 63_000, 5];
    let n = 2_000;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let d = next("an event", &mut sub).await;
            assert_eq!(d.value.len(), sizes[i % sizes.len()], "event {i}");
            assert_eq!(d.value[0], i as u8, "event {i}");
        }
    });
    for i in 0..n {
        let payload = vec![i as u8; sizes[i % sizes.len()]];
        a.publish_bytes("big.x", payload).await.unwrap();
    }
    within("every event", reader).await.unwrap();
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.batches_sent < n as u64 / 2, "batched: {sa:?}");
    assert_eq!(sb.oversized + sb.malformed, 0, "{sb:?}");
    assert_eq!(sb.naks_sent, 0, "{sb:?}");
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}
