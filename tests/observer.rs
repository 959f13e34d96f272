//! The observer and flow correlation between real peers: correlation ids
//! carried from a handled event to what its handler publishes, tracing
//! spans naming the flow, and missing/late effects reported.

mod common;

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chorus::{Delivery, Observation, Observer, Peer, PublishOptions};
use common::*;
use futures::StreamExt;
use parking_lot::Mutex;

/// Everything logged by this test binary (a global subscriber, since the
/// peers' tasks run on the runtime's worker threads).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .init();
        buf
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn three() -> (Peer, Peer, Peer) {
    let a = fast("bids", &unique_url("inproc", "ob"))
        .start()
        .await
        .unwrap();
    let b = fast("work", &unique_url("inproc", "ow"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let c = fast("watch", &unique_url("inproc", "oc"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b, &c]).await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_carry_the_flow_and_the_observer_reports_the_missing_effect() {
    let logs = logs();
    let (bids, work, watch) = three().await;
    let mut observer = Observer::builder()
        .expect(
            "work order",
            "bids.accepted",
            "work.created",
            Duration::from_millis(500),
        )
        .start(&watch)
        .unwrap();
    let mut created = watch.subscribe::<u32>("work.created").unwrap();
    // The work service creates an order for every bid except number 2.
    let publisher = work.clone();
    let _h = work
        .subscribe_with("bids.accepted", move |d: Delivery<u32>| {
            let work = publisher.clone();
            async move {
                tracing::info!(bid = d.value, "creating work order");
                if d.value != 2 {
                    work.publish("work.created", &d.value).await?;
                }
                Ok::<(), chorus::Error>(())
            }
        })
        .unwrap();
    for bid in 1..=3u32 {
        bids.publish_with_id(format!("bid-{bid}"), "bids.accepted", &bid)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let d = next("work order", &mut created).await;
        // The flow id of a first event is its application id.
        assert_eq!(
            d.correlation_id(),
            Some(format!("bid-{}", d.value).as_str())
        );
    }
    let o = next("observation", &mut observer).await;
    match &o {
        Observation::Missing {
            key, waited_for, ..
        } => {
            assert_eq!(key, "bid-2");
            assert_eq!(&**waited_for, "work.created");
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    // A late effect is reported as such.
    work.publish_with(
        "work.created",
        &2u32,
        PublishOptions::new().correlation_id("bid-2"),
    )
    .await
    .unwrap();
    let o = next("late observation", &mut observer).await;
    assert!(
        matches!(&o, Observation::Late { key, .. } if key == "bid-2"),
        "{o:?}"
    );
    let s = observer.stats();
    assert_eq!((s.matched, s.missing, s.late), (2, 1, 1));

    // The handler's log line names the flow it belongs to.
    let text = String::from_utf8_lossy(&logs.lock()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("creating work order") && l.contains("bid=3"))
        .unwrap_or_else(|| panic!("no handler log line in:\n{text}"));
    assert!(
        line.contains("deliver{")
            && line.contains("topic=\"bids.accepted\"")
            && line.contains("correlation_id=bid-3"),
        "{line}"
    );
    for p in [bids, work, watch] {
        within("shutdown", p.shutdown()).await;
    }
    // The observer ends with its peer.
    assert!(within("observer end", observer.next()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caused_by_joins_a_flow_outside_handlers_and_correlation_ids_are_kept() {
    let (a, b, _c) = three().await;
    let mut first = b.subscribe::<u32>("flow.first").unwrap();
    let mut second = a.subscribe::<u32>("flow.second").unwrap();
    a.publish_with(
        "flow.first",
        &1u32,
        PublishOptions::new().correlation_id("order-9"),
    )
    .await
    .unwrap();
    let d = next("first", &mut first).await;
    assert_eq!(d.flow_id(), "order-9");
    b.publish_with("flow.second", &2u32, PublishOptions::new().caused_by(&d))
        .await
        .unwrap();
    let d2 = next("second", &mut second).await;
    assert_eq!(d2.correlation_id(), Some("order-9"));
    // Outside a handler and without `caused_by`, nothing is invented.
    b.publish("flow.second", &3u32).await.unwrap();
    let d3 = next("third", &mut second).await;
    assert_eq!(d3.correlation_id(), None);
    assert_eq!(
        d3.flow_id(),
        format!("{}/{}/{}", d3.origin(), d3.incarnation(), d3.seq())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_with_an_invalid_expectation_is_refused() {
    let (a, _b) = pair("inproc").await;
    let err = Observer::builder()
        .expect(
            "x",
            "bids..accepted",
            "work.created",
            Duration::from_secs(1),
        )
        .start(&a)
        .unwrap_err();
    assert!(err.to_string().contains("bids..accepted"), "{err}");
}
