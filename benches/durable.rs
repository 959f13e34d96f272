//! What durability costs and how fast a durable consumer catches up, in
//! the same run: 1→1 tcp, 64 B and 1 KiB, a publisher shaped like user code
//! (a fresh payload per event, one `.await` per publish) against a
//! subscription, in memory and with a data dir (fsync per batch, and OS
//! buffered), alternating run by run; then the replay of a durable
//! consumer coming back to 1 M retained events (msg/s, and the process's
//! peak RSS before and after it: a replay must not load the log into
//! memory).
//!
//! Run: `cargo bench --bench durable` (options: `-- --runs 3 --secs 5
//! --replay 1000000`). Under `cargo test` it runs one short point and a
//! replay of 20,000 events as a smoke test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus::{Fsync, HandlerOptions, Peer, PeerBuilder, StartAt};
use futures::StreamExt;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Memory,
    EveryBatch,
    OsBuffered,
}

fn durable(b: PeerBuilder, mode: Mode, dir: &std::path::Path) -> PeerBuilder {
    match mode {
        Mode::Memory => b,
        Mode::EveryBatch => b.data_dir(dir).fsync(Fsync::EveryBatch),
        Mode::OsBuffered => b.data_dir(dir).fsync(Fsync::OsBuffered),
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Events per second delivered during `secs`, after a 1 s warm-up.
async fn throughput(mode: Mode, size: usize, secs: f64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let a = durable(Peer::builder().name("pub"), mode, &dir.path().join("a"))
        .start()
        .await
        .unwrap();
    let b = Peer::builder()
        .name("sub")
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    a.wait_for_members(1, Duration::from_secs(30))
        .await
        .unwrap();
    b.wait_for_members(1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut sub = b.subscribe_bytes("bench.>").unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let reader = tokio::spawn(async move {
        while sub.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let halt = stop.clone();
    let publisher = a.clone();
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !halt.load(Ordering::Relaxed) {
            let mut v = vec![0u8; size];
            v[..8].copy_from_slice(&n.to_le_bytes());
            if publisher.publish_bytes("bench.d", v).await.is_err() {
                break;
            }
            n += 1;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, n0) = (Instant::now(), got.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let rate = (got.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    assert_eq!(b.stats().lost, 0, "{mode:?}: events lost");
    a.shutdown().await;
    b.shutdown().await;
    reader.abort();
    rate
}

/// A durable consumer from the beginning of a log of `events` 64 B events:
/// (msg/s, peak RSS before, peak RSS after).
async fn replay(events: u64) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let a = Peer::builder()
        .name("origin")
        .data_dir(dir.path().join("a"))
        .fsync(Fsync::OsBuffered)
        .start()
        .await
        .unwrap();
    for n in 0..events {
        let mut v = vec![0u8; 64];
        v[..8].copy_from_slice(&n.to_le_bytes());
        a.publish_bytes("bench.d", v).await.unwrap();
    }
    a.flush(Duration::from_secs(60)).await.unwrap();
    let before = peak_rss_mib();
    let c = Peer::builder()
        .name("consumer")
        .data_dir(dir.path().join("c"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let opts = HandlerOptions::new()
        .durable("replay")
        .start_at(StartAt::Beginning);
    let t0 = Instant::now();
    let _h = c
        .subscribe_bytes_with_options("bench.>", opts, move |_d: chorus::Delivery<Bytes>| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .unwrap();
    while got.load(Ordering::Relaxed) < events {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "replay stalled at {}",
            got.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = events as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(c.stats().lost, 0);
    let after = peak_rss_mib();
    c.shutdown().await;
    a.shutdown().await;
    (rate, before, after)
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (runs, secs, events) = if bench {
        (
            arg("--runs", 3.0) as usize,
            arg("--secs", 5.0),
            arg("--replay", 1e6) as u64,
        )
    } else {
        (1, 0.5, 20_000)
    };
    let sizes: &[usize] = if bench { &[64, 1024] } else { &[64] };
    println!(
        "durable: 1->1 tcp, user-shaped publisher, {runs} runs of {secs} s per mode, alternating"
    );
    for &size in sizes {
        let modes = [Mode::Memory, Mode::EveryBatch, Mode::OsBuffered];
        let mut rates = vec![Vec::new(); modes.len()];
        for _ in 0..runs {
            for (i, mode) in modes.iter().enumerate() {
                rates[i].push(throughput(*mode, size, secs).await);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let memory = median(&mut rates[0].clone());
        for (i, mode) in modes.iter().enumerate() {
            let m = median(&mut rates[i]);
            println!(
                "  {size:>5} B {:<11} median {:>9.0} msg/s ({:>5.1} % of memory)  runs {:?}",
                format!("{mode:?}"),
                m,
                100.0 * m / memory,
                rates[i].iter().map(|r| *r as u64).collect::<Vec<_>>()
            );
        }
    }
    let (rate, before, after) = replay(events).await;
    println!(
        "replay: a durable consumer from the beginning of {events} retained 64 B events: {rate:.0} msg/s; peak RSS {before:.0} MiB before, {after:.0} MiB after"
    );
}
