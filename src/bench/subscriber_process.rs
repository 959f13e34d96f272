//! The subscriber in a process of its own: what one subscriber receives
//! from a flooding publisher across processes, and the memory it takes.
//!
//! Owns: the child side (`--subscriber-child SEED COUNT`), the parent side
//! that starts it and floods it, and the bound its buffers allow.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::Peer;

use super::scenario::{flood, PeerSettings};

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM` = peak RSS).
pub(crate) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The child side of the subscriber-process measurement (the bench run
/// with `--subscriber-child SEED COUNT`): joins through SEED with default
/// buffers, says `ready` once linked, reads COUNT messages of the bench
/// topic, then prints one JSON line with its rate and memory and exits.
pub fn subscriber_child(seed: &str, count: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let idle = status_kib("VmRSS:");
        let mut b = Peer::builder()
            .name("subscriber-process")
            .listen("tcp://127.0.0.1:0")
            .seed(seed);
        if let Ok(key) = std::env::var(CHILD_KEY_ENV) {
            b = b.bus_key(key);
        }
        let peer = b.start().await.unwrap();
        let mut stream = peer.subscribe_bytes("bench.>").unwrap();
        peer.wait_for_members(1, Duration::from_secs(30))
            .await
            .expect("joined");
        let joined = status_kib("VmRSS:");
        println!("ready");
        let mut first = None;
        for _ in 0..count {
            stream.next().await.expect("stream open");
            first.get_or_insert_with(Instant::now);
        }
        let secs = first.unwrap().elapsed().as_secs_f64();
        let st = peer.stats();
        println!(
            "{}",
            json!({ "received": count, "per_sec": count as f64 / secs,
                    "idle_rss_kib": idle, "joined_rss_kib": joined,
                    "peak_rss_kib": status_kib("VmHWM:"), "lost": st.lost })
        );
        drop(stream);
        peer.shutdown().await;
    });
}

/// The bus key travels to the child in the environment, not its arguments.
pub(crate) const CHILD_KEY_ENV: &str = "CHORUS_BENCH_CHILD_KEY";

/// One publisher here floods `count` messages of `size` bytes to a
/// subscriber in a child process (`child` + `--subscriber-child SEED
/// COUNT`); the child's figures, with the memory its buffers allow.
pub(crate) fn subscriber_process(
    rt: &tokio::runtime::Runtime,
    peers: &PeerSettings,
    child: &[String],
    size: usize,
    count: u64,
    batch_bytes: usize,
) -> serde_json::Value {
    use std::io::BufRead;
    let publisher = rt
        .block_on(
            peers
                .builder("publisher".into(), "tcp://127.0.0.1:0".into())
                .start(),
        )
        .unwrap();
    let mut cmd = std::process::Command::new(&child[0]);
    cmd.args(&child[1..])
        .args([
            "--subscriber-child",
            publisher.local_url(),
            &count.to_string(),
        ])
        .stdout(std::process::Stdio::piped());
    if let Some(key) = peers.bus_key.as_deref() {
        cmd.env(CHILD_KEY_ENV, key);
    }
    let mut proc = cmd.spawn().expect("subscriber process starts");
    let mut lines = std::io::BufReader::new(proc.stdout.take().unwrap()).lines();
    let mut line = || {
        lines
            .next()
            .and_then(|l| l.ok())
            .expect("a line from the subscriber process")
    };
    assert_eq!(line(), "ready");
    rt.block_on(async {
        publisher
            .wait_for_members(1, Duration::from_secs(30))
            .await
            .expect("subscriber process joined");
        flood(&publisher, count, size).await;
    });
    let mut figures: serde_json::Value = serde_json::from_str(&line()).expect("JSON figures");
    assert!(proc.wait().unwrap().success(), "subscriber process failed");
    rt.block_on(publisher.shutdown());
    // What the subscriber's default buffers can hold: NNG's receive queue
    // (1024 messages, each a batch of at most `batch_bytes` plus one
    // envelope, and never more than the publisher's unacknowledged
    // window: 16384 envelopes or 16 MiB), the subscription (its default
    // deliveries queued and as many in its reader's hands) and the
    // envelopes held back for order (4096), each envelope ~60 bytes of
    // fields + payload.
    let envelope = size + 60;
    let nng = (1024 * (batch_bytes.max(envelope) + envelope)).min((16384 * envelope).min(16 << 20));
    let subscription = crate::api::builder::SUBSCRIPTION_BUFFER;
    let bound = nng + (2 * subscription + 4096) * envelope;
    figures["buffers_bound_kib"] = json!(bound / 1024);
    figures
}
