//! Reliable delivery features between real peers: handlers with retries and
//! dead letters, idempotency keys, backpressure, explicit losses.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus::{Backpressure, Delivery, Error, HandlerOptions, Loss, Peer};
use common::*;
use parking_lot::Mutex;

async fn two(tune_b: impl FnOnce(chorus::PeerBuilder) -> chorus::PeerBuilder) -> (Peer, Peer) {
    let a = fast("a", &unique_url("inproc", "da"))
        .retransmit_buffer(16)
        .backpressure(Backpressure::FailFast)
        .start()
        .await
        .unwrap();
    let b = tune_b(fast("b", &unique_url("inproc", "db")).seed(a.local_url()))
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    (a, b)
}

/// A handler on `work.>` of `peer` that finishes one delivery per permit
/// added to the returned semaphore (none at first: it is stuck).
fn stuck_handler(peer: &Peer) -> (Arc<tokio::sync::Semaphore>, chorus::Handler) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let handler = peer
        .subscribe_with("work.>", move |_: Delivery<u32>| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Ok::<(), String>(())
            }
        })
        .unwrap();
    (gate, handler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_retry_then_dead_letter() {
    let (a, b) = two(|b| b).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (tries, sink) = (attempts.clone(), dead.clone());
    let opts = HandlerOptions::new()
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .dead_letter(move |dl| sink.lock().push((dl.envelope.seq, dl.attempts, dl.error)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let _h = b
        .subscribe_with_options("jobs.*", opts, move |d: Delivery<u32>| {
            let (tries, log) = (tries.clone(), log.clone());
            async move {
                match d.value {
                    // Fails twice, then succeeds.
                    3 if tries.fetch_add(1, Ordering::SeqCst) < 2 => Err("transient".to_string()),
                    5 => Err("poison".to_string()),
                    v => {
                        log.lock().push(v);
                        Ok(())
                    }
                }
            }
        })
        .unwrap();
    for i in 1..=6u32 {
        a.publish("jobs.run", &i).await.unwrap();
    }
    wait_for("all handled", || {
        b.stats().handled == 5 && b.stats().dead_lettered == 1
    })
    .await;
    assert_eq!(
        *seen.lock(),
        [1, 2, 3, 4, 6],
        "in order, 3 after its retries"
    );
    assert_eq!(*dead.lock(), [(5, 3, "poison".to_string())]);
    assert_eq!(b.stats().handler_retries, 4);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_retry_with_the_same_key_is_processed_once() {
    let (a, b) = two(|b| b).await;
    let mut sub = b.subscribe::<String>("pay.*").unwrap();
    a.publish_with_id("payment-42", "pay.done", "first")
        .await
        .unwrap();
    a.publish_with_id("payment-42", "pay.done", "retry")
        .await
        .unwrap();
    a.publish_with_id("payment-43", "pay.done", "other")
        .await
        .unwrap();
    assert_eq!(next("first", &mut sub).await.value, "first");
    assert_eq!(next("other", &mut sub).await.value, "other");
    assert_eq!(b.stats().duplicate_keys, 1);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flush_every_member_has_every_event() {
    let (a, b) = two(|b| b).await;
    let mut sub = b.subscribe::<u32>("work.>").unwrap();
    for round in 0..5u32 {
        for i in 0..10 {
            a.publish("work.item", &(round * 10 + i)).await.unwrap();
        }
        within("flush", a.flush(Duration::from_secs(5)))
            .await
            .unwrap();
        // Acknowledged means received: all ten are there without waiting.
        for i in 0..10 {
            let d = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut sub))
                .flatten()
                .unwrap_or_else(|| panic!("event {i} of round {round} not delivered at flush"));
            assert_eq!(d.value, round * 10 + i);
        }
    }
    // Nothing published since: a flush returns at once.
    within("empty flush", a.flush(Duration::from_secs(5)))
        .await
        .unwrap();
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_times_out_names_the_member_that_did_not_acknowledge() {
    let (a, b) = two(|b| b.name("stuck-service")).await;
    let (gate, _h) = stuck_handler(&b);
    a.publish("work.item", &1u32).await.unwrap();
    let e = a.flush(Duration::from_millis(500)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Timeout(_)), "{text}");
    assert!(
        text.contains("1 of 1 members") && text.contains("stuck-service"),
        "{text}"
    );
    // Once the handler is done, the same flush succeeds.
    gate.add_permits(1);
    within("flush", a.flush(Duration::from_secs(5)))
        .await
        .unwrap();
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_shutdown_loses_nothing() {
    for run in 0..5 {
        let (a, b) = two(|b| b).await;
        let mut sub = b.subscribe::<u32>("work.>").unwrap();
        for i in 0..5u32 {
            a.publish("work.item", &i).await.unwrap();
        }
        // No flush: shutdown sends what is queued and waits for the acks
        // before it announces Left.
        within("shutdown", a.shutdown()).await;
        for i in 0..5 {
            let d = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut sub))
                .flatten()
                .unwrap_or_else(|| panic!("run {run}: event {i} lost at shutdown"));
            assert_eq!(d.value, i);
        }
        within("shutdown", b.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_payloads_are_dead_lettered_or_announced_never_skipped_silently() {
    // Issue 16, case 4: they were counted and acknowledged, and nobody saw them.
    #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
    enum Kind {
        Standard,
    }
    #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
    struct Order {
        id: u32,
        kind: Kind,
    }
    #[derive(serde::Serialize)]
    struct NoKind {
        id: u32,
    }
    #[derive(serde::Serialize)]
    struct OtherKind {
        id: u32,
        kind: &'static str,
    }
    let (a, b) = two(|b| b).await;
    let dead = Arc::new(Mutex::new(Vec::new()));
    let d = dead.clone();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let _handler = b
        .subscribe_with_options(
            "orders.>",
            HandlerOptions::new()
                .dead_letter(move |dl| d.lock().push((dl.envelope.seq, dl.attempts, dl.error))),
            move |_: Delivery<Order>| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            },
        )
        .unwrap();
    let mut plain = b.subscribe::<Order>("orders.>").unwrap();
    let mut announced = b.undecodable();
    a.publish(
        "orders.new",
        &Order {
            id: 1,
            kind: Kind::Standard,
        },
    )
    .await
    .unwrap();
    a.publish("orders.new", &NoKind { id: 2 }).await.unwrap();
    a.publish(
        "orders.new",
        &OtherKind {
            id: 3,
            kind: "Express",
        },
    )
    .await
    .unwrap();
    assert_eq!(next("the good one", &mut plain).await.value.id, 1);
    wait_for("dead letters", || dead.lock().len() == 2).await;
    let dead = dead.lock().clone();
    assert_eq!((dead[0].0, dead[0].1), (2, 0), "{dead:?}");
    assert_eq!((dead[1].0, dead[1].1), (3, 0), "{dead:?}");
    assert!(
        dead.iter()
            .all(|(_, _, e)| e.starts_with("undecodable payload")),
        "{dead:?}"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    // The plain stream skips them when read (nothing else is there).
    assert!(futures::FutureExt::now_or_never(futures::StreamExt::next(&mut plain)).is_none());
    // Both subscriptions announce both (the handler's and the plain one's).
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let u = next("undecodable event", &mut announced).await;
        assert_eq!(u.pattern, "orders.>");
        seqs.push(u.envelope.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 2, 3, 3]);
    assert_eq!(b.stats().undecodable, 4);
    // Still acknowledged: the origin's buffer empties.
    within("flush", a.flush(Duration::from_secs(5)))
        .await
        .unwrap();
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_another_topic_is_another_event() {
    let (a, b) = two(|b| b).await;
    let mut sub = b.subscribe::<String>("orders.*").unwrap();
    a.publish_with_id("order-7", "orders.created", "created")
        .await
        .unwrap();
    a.publish_with_id("order-7", "orders.shipped", "shipped")
        .await
        .unwrap();
    a.publish_with_id("order-7", "orders.shipped", "shipped again")
        .await
        .unwrap();
    assert_eq!(next("created", &mut sub).await.value, "created");
    assert_eq!(next("shipped", &mut sub).await.value, "shipped");
    wait_for("the retry dropped", || b.stats().duplicate_keys == 1).await;
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_handler_fills_the_buffer_and_fail_fast_publish_says_so() {
    let (a, b) = two(|b| b).await;
    let (gate, _h) = stuck_handler(&b);
    // Nothing is acknowledged while the handler is stuck: after 16 retained
    // messages (plus the publish queue) publish fails fast.
    let mut sent = 0u32;
    let refused = within("the buffer to fill", async {
        loop {
            match a.publish("work.item", &sent).await {
                Ok(()) => sent += 1,
                Err(e) => return e,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(matches!(refused, Error::BufferFull), "{refused}");
    assert!(a.stats().retransmit_buffer <= 16);
    // Unblock: acks free the buffer and publishing works again.
    gate.add_permits(100_000);
    wait_for("everything handled", || {
        b.stats().handled == u64::from(sent)
    })
    .await;
    wait_for("buffer freed", || a.stats().retransmit_buffer == 0).await;
    a.publish("work.item", &sent).await.unwrap();
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

fn frame(incarnation: u64, seq: u64, value: u32) -> Vec<u8> {
    chorus::Envelope {
        origin: chorus::PeerId(77),
        incarnation,
        seq,
        topic: "t.x".into(),
        timestamp_us: 0,
        payload: rmp_serde::to_vec(&value).unwrap().into(),
        meta: None,
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_that_cannot_be_repaired_is_reported_lost_never_skipped() {
    // The publisher is a hand-made member that retains nothing (its repair
    // endpoint is dead). It sends seq 1, 2, 5, then restarts (incarnation 2):
    // 3 and 4 can never arrive.
    let b = fast("b", "tcp://127.0.0.1:0").start().await.unwrap();
    let fake = FakeMember::honest(b.local_url(), 77);
    wait_for("link from the fake member", || b.stats().links_in == 1).await;
    let mut sub = b.subscribe::<u32>("t.>").unwrap();
    let mut losses = b.losses();
    for (inc, seq, v) in [(1, 1, 10), (1, 2, 20), (1, 5, 50), (2, 1, 100)] {
        fake.send(&frame(inc, seq, v));
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next("delivery", &mut sub).await;
        got.push((d.incarnation(), d.seq(), d.value));
    }
    assert_eq!(
        got,
        [(1, 1, 10), (1, 2, 20), (1, 5, 50), (2, 1, 100)],
        "in order, 5 only after the loss"
    );
    let loss = next("loss", &mut losses).await;
    assert_eq!(
        loss,
        Loss {
            origin: chorus::PeerId(77),
            incarnation: 1,
            first: 3,
            last: 4
        }
    );
    assert_eq!(b.stats().lost, 2);
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_acknowledged_directly_long_before_the_count() {
    // 400 events of 16 KiB: far fewer than the 4096 events a direct ack
    // waits for, but 6 MiB — an origin's byte bound (16 MiB) fills long
    // before 4096 such events arrive, so the receiver acks after 4 MiB
    // (or once the stream stopped: which of the two is the unit tests' to
    // tell apart, `proto::direct_acks`).
    let a = fast("a", &unique_url("inproc", "la"))
        .start()
        .await
        .unwrap();
    let b = fast("b", &unique_url("inproc", "lb"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let mut sub = b.subscribe_bytes("big").unwrap();
    for i in 0..400u32 {
        let mut payload = vec![0u8; 16 * 1024];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        a.publish_bytes("big", payload).await.unwrap();
    }
    for _ in 0..400 {
        next("a large event", &mut sub).await;
    }
    wait_for("a direct ack", || b.stats().direct_acks_sent >= 1).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_retransmit_buffer_is_freed_by_direct_acks_not_heartbeats() {
    // 256 envelopes, far fewer than the 4096 events after which a receiver
    // acks at once: the full publisher sends nothing, and the receiver acks
    // once it sees the stream stopped (checked every 5 ms), so the
    // publisher waits milliseconds for room, not the 1 s heartbeat that
    // also carries the watermark (20 heartbeats for these 5000 events,
    // longer than the deadline below).
    let slow = |name: &str, url: &str| {
        Peer::builder()
            .name(name)
            .listen(url)
            .heartbeat_interval(Duration::from_secs(1))
    };
    let a = slow("a", &unique_url("inproc", "sa"))
        .retransmit_buffer(256)
        .start()
        .await
        .unwrap();
    let b = slow("b", &unique_url("inproc", "sb"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let mut sub = b.subscribe_bytes("small").unwrap();
    let publish = async {
        for i in 0..5000u32 {
            a.publish_bytes("small", i.to_le_bytes().to_vec())
                .await
                .unwrap();
        }
    };
    let receive = async {
        for _ in 0..5000 {
            next("an event", &mut sub).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(publish, receive),
    )
    .await
    .expect("5000 events through a 256-envelope buffer within 10 s");
    assert!(b.stats().direct_acks_sent >= 5000 / 256, "{:?}", b.stats());
    assert_eq!(b.stats().lost, 0);
    a.shutdown().await;
    b.shutdown().await;
}
