//! Reliable delivery features between real peers: handlers with retries and
//! dead letters, idempotency keys, backpressure, explicit losses.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus::faults::LinkFaults;
use chorus::{Backpressure, Delivery, Error, HandlerOptions, Loss, Peer};
use common::*;
use futures::StreamExt;
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
    a.shutdown().await;
    b.shutdown().await;
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
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_handler_fills_the_buffer_and_fail_fast_publish_says_so() {
    let (a, b) = two(|b| b).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let _h = b
        .subscribe_with("work.>", move |_: Delivery<u32>| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Ok::<(), String>(())
            }
        })
        .unwrap();
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
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_origin_no_longer_has_is_reported_lost_never_skipped() {
    // b loses every pub/sub frame; a keeps only 16 envelopes because a third
    // member (which never acknowledges) keeps its buffer in ring mode.
    let a = fast("a", &unique_url("inproc", "la"))
        .retransmit_buffer(16)
        .start()
        .await
        .unwrap();
    let _silent = FakeMember::honest(a.local_url(), 4242);
    let b = fast("b", &unique_url("inproc", "lb"))
        .seed(a.local_url())
        .link_faults(LinkFaults {
            drop: 1.0,
            ..Default::default()
        })
        .start()
        .await
        .unwrap();
    wait_for("a sees both", || {
        a.stats().members == 2 && a.stats().links_out >= 1
    })
    .await;
    wait_for("b sees a", || {
        b.stats().members >= 1 && b.stats().links_in >= 1
    })
    .await;
    let mut sub = b.subscribe::<u32>(">").unwrap();
    let mut losses = b.losses();
    for i in 0..100u32 {
        a.publish("t", &i).await.unwrap();
    }
    let mut delivered = Vec::new();
    let mut lost: Vec<Loss> = Vec::new();
    within("every message delivered or lost", async {
        while delivered.len() as u64 + lost.iter().map(Loss::count).sum::<u64>() < 100 {
            tokio::select! {
                Some(d) = sub.next() => delivered.push(d.value),
                Some(l) = losses.next() => lost.push(l),
            }
        }
    })
    .await;
    let lost_count: u64 = lost.iter().map(Loss::count).sum();
    assert!(lost_count > 0, "some were gone");
    assert_eq!(b.stats().lost, lost_count);
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order, once");
    // Lost ranges come first: everything delivered is after them.
    let last_lost = lost.iter().map(|l| l.last).max().unwrap();
    assert!(delivered.iter().all(|&v| u64::from(v) + 1 > last_lost));
    a.shutdown().await;
    b.shutdown().await;
}
