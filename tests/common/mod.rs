//! Helpers shared by the integration tests: waiting on conditions with a
//! deadline (never sleep-and-hope) and wiring two peers together.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use chorus::{Peer, Result};
use futures::{Stream, StreamExt};

/// Generous bound for anything that should happen "soon" on a loaded CI box.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds, panicking with `what` after [`DEADLINE`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, panicking with `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Next item of a stream, with a deadline.
pub async fn next<S: Stream + Unpin>(what: &str, s: &mut S) -> S::Item {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// Starts a peer listening on `url`.
pub async fn peer(name: &str, url: &str) -> Result<Peer> {
    Peer::builder().name(name).listen(url).start().await
}

/// Makes `receiver` receive from `publisher` and waits until the link is up
/// on both ends, so nothing published afterwards is lost to a late join.
pub async fn link(publisher: &Peer, receiver: &Peer) {
    let before_out = publisher.stats().links_out;
    let before_in = receiver.stats().links_in;
    receiver.connect(publisher.local_url()).await.unwrap();
    wait_for("pub/sub link", || {
        publisher.stats().links_out > before_out && receiver.stats().links_in > before_in
    })
    .await;
}

/// A unique inproc or ipc URL for this test process.
pub fn unique_url(scheme: &str, tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    match scheme {
        "inproc" => format!("inproc://chorus-{tag}-{pid}-{n}"),
        "ipc" => format!(
            "ipc://{}/chorus-{tag}-{pid}-{n}.sock",
            std::env::temp_dir().display()
        ),
        _ => "tcp://127.0.0.1:0".to_string(),
    }
}
