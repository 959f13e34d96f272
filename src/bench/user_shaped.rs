//! The user-shaped 1→1 point, across processes: what an application sees.
//!
//! Owns: the publisher written as user code writes it (one tokio task
//! looping `publish_bytes("bench.user", fresh_vec).await`, the event's
//! number in its first 8 bytes) in this process; the subscriber, a child
//! process (`--rate-child SEED WARMUP SECS`) counting a `subscribe_bytes`
//! stream and checking that every number arrives once and in order; tcp
//! loopback, default settings. Each payload is measured in memory and with
//! a data dir (fsync per batch, and OS buffered), alternating run by run
//! (memory, every batch, OS buffered, memory, …) so that noise on the
//! machine hits every mode alike. Figures per run: delivered msg/s over the
//! window, CPU time per event of each process, the subscriber's peak RSS.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::{Fsync, Peer};

use super::scenario::PeerSettings;
use super::subscriber_process::{status_kib, CHILD_KEY_ENV};

/// Where the publisher keeps its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// No data dir.
    Memory,
    /// A data dir, fsync per batch (the default).
    EveryBatch,
    /// A data dir, OS buffered.
    OsBuffered,
}

impl Durability {
    /// Every mode, the reference first.
    pub const ALL: [Durability; 3] = [
        Durability::Memory,
        Durability::EveryBatch,
        Durability::OsBuffered,
    ];

    /// How the tables name it.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Memory => "in memory",
            Durability::EveryBatch => "data dir, fsync per batch",
            Durability::OsBuffered => "data dir, OS buffered",
        }
    }
}

/// CPU time this process used so far, user + system.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// The child side (`--rate-child SEED WARMUP SECS`): joins through SEED
/// with default settings, says `ready`, counts what arrives; after WARMUP
/// seconds from the first event says `measuring`, and after SECS more
/// prints one JSON line with its figures and exits.
pub fn rate_child(seed: &str, warmup: f64, secs: f64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut b = Peer::builder()
            .name("rate-child")
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
        println!("ready");
        let (mut next, mut out_of_order) = (0u64, 0u64);
        let mut check = |payload: &[u8]| {
            let n = payload
                .get(..8)
                .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().unwrap()));
            if n != next {
                out_of_order += 1;
            }
            next = n.wrapping_add(1);
        };
        let first = stream.next().await.expect("stream open");
        check(&first.value);
        let warm_until = Instant::now() + Duration::from_secs_f64(warmup);
        while Instant::now() < warm_until {
            check(&stream.next().await.expect("stream open").value);
        }
        println!("measuring");
        let (t0, cpu0) = (Instant::now(), cpu_time());
        let until = t0 + Duration::from_secs_f64(secs);
        let mut count = 0u64;
        while Instant::now() < until {
            check(&stream.next().await.expect("stream open").value);
            count += 1;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = (cpu_time() - cpu0).as_secs_f64();
        let st = peer.stats();
        println!(
            "{}",
            json!({ "received": count, "per_sec": count as f64 / elapsed,
                    "cpu_us_per_event": 1e6 * cpu / count.max(1) as f64,
                    "peak_rss_kib": status_kib("VmHWM:"),
                    "out_of_order": out_of_order, "lost": st.lost,
                    "duplicates_dropped": st.duplicates })
        );
        drop(stream);
        peer.shutdown().await;
    });
}

/// The publisher as user code writes it: one task looping
/// `publish_bytes(topic, fresh_vec).await` (the event's number in its first
/// 8 bytes) until `stop`.
pub(crate) fn user_writer(
    publisher: &Peer,
    topic: &'static str,
    size: usize,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (p, halt) = (publisher.clone(), stop.clone());
    tokio::spawn(async move {
        let mut n = 0u64;
        while !halt.load(Ordering::Relaxed) {
            let mut v = vec![0u8; size];
            v[..8].copy_from_slice(&n.to_le_bytes());
            p.publish_bytes(topic, v).await.expect("publish");
            n += 1;
        }
    })
}

/// One run: the publisher here with `durability`, the subscriber in a
/// child process (`child` + `--rate-child …`). The child's figures, with
/// the publisher's CPU time per event over the same window.
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    peers: &PeerSettings,
    child: &[String],
    size: usize,
    durability: Durability,
    (warmup, secs): (f64, f64),
) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("a temporary data dir");
    let mut b = peers.builder("publisher".into(), "tcp://127.0.0.1:0".into());
    b = match durability {
        Durability::Memory => b,
        Durability::EveryBatch => b.data_dir(dir.path()).fsync(Fsync::EveryBatch),
        Durability::OsBuffered => b.data_dir(dir.path()).fsync(Fsync::OsBuffered),
    };
    let publisher = rt.block_on(b.start()).expect("publisher starts");
    let mut cmd = std::process::Command::new(&child[0]);
    cmd.args(&child[1..])
        .arg("--rate-child")
        .args([
            publisher.local_url(),
            &warmup.to_string(),
            &secs.to_string(),
        ])
        .stdout(std::process::Stdio::piped());
    if let Some(key) = peers.bus_key.as_deref() {
        cmd.env(CHILD_KEY_ENV, key);
    }
    let mut proc = cmd.spawn().expect("subscriber process starts");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = proc.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (figures, pub_cpu) = rt.block_on(async {
        let mut line = async || {
            lines
                .recv()
                .await
                .expect("a line from the subscriber process")
        };
        assert_eq!(line().await, "ready");
        publisher
            .wait_for_members(1, Duration::from_secs(30))
            .await
            .expect("subscriber process joined");
        let writer = user_writer(&publisher, "bench.user", size, &stop);
        assert_eq!(line().await, "measuring");
        let cpu0 = cpu_time();
        let figures: serde_json::Value = serde_json::from_str(&line().await).expect("JSON figures");
        let cpu = (cpu_time() - cpu0).as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("publisher task");
        (figures, cpu)
    });
    assert!(proc.wait().unwrap().success(), "subscriber process failed");
    let _ = reader.join();
    let st = publisher.stats();
    rt.block_on(publisher.shutdown());
    let mut figures = figures;
    figures["publisher_retransmits"] = json!(st.retransmits);
    figures["publisher_messages"] = json!(st.batches_sent);
    let received = figures["received"].as_f64().unwrap_or(0.0).max(1.0);
    figures["publisher_cpu_us_per_event"] = json!(1e6 * pub_cpu / received);
    figures["mode"] = json!(durability.name());
    figures["payload"] = json!(size);
    figures
}

/// Every payload × durability, `runs` times alternating: the table rows
/// (median, range, share of in-memory) and the JSON of every run.
pub(crate) fn measure(
    rt: &tokio::runtime::Runtime,
    peers: &PeerSettings,
    child: &[String],
    sizes: &[usize],
    modes: &[Durability],
    runs: usize,
    window: (f64, f64),
) -> (Vec<String>, serde_json::Value) {
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for &size in sizes {
        let mut per_mode: Vec<Vec<serde_json::Value>> = vec![Vec::new(); modes.len()];
        for _ in 0..runs {
            for (i, &mode) in modes.iter().enumerate() {
                per_mode[i].push(run(rt, peers, child, size, mode, window));
            }
        }
        let median = |v: &[serde_json::Value], key: &str| {
            let mut x: Vec<f64> = v.iter().filter_map(|f| f[key].as_f64()).collect();
            x.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (
                x.get(x.len() / 2).copied().unwrap_or(0.0),
                x.first().copied().unwrap_or(0.0),
                x.last().copied().unwrap_or(0.0),
            )
        };
        let memory = median(&per_mode[0], "per_sec").0.max(1.0);
        for (i, &mode) in modes.iter().enumerate() {
            let runs = &per_mode[i];
            let (rate, lo, hi) = median(runs, "per_sec");
            let sum = |key: &str| runs.iter().filter_map(|f| f[key].as_u64()).sum::<u64>();
            rows.push(format!(
                "| {size} B | {} | {:.0} k ({:.0}–{:.0} k) | {:.0} % | {:.2} | {:.2} | {:.0} | {} / {} |",
                mode.name(),
                rate / 1e3,
                lo / 1e3,
                hi / 1e3,
                100.0 * rate / memory,
                median(runs, "publisher_cpu_us_per_event").0,
                median(runs, "cpu_us_per_event").0,
                median(runs, "peak_rss_kib").0 / 1024.0,
                sum("lost"),
                sum("out_of_order"),
            ));
            all.extend(runs.iter().cloned());
        }
    }
    (rows, serde_json::Value::Array(all))
}

/// Prints the rows of [`measure`] as a markdown table.
pub(crate) fn print_table(rows: &[String], runs: usize, (warmup, secs): (f64, f64)) {
    println!();
    println!("user-shaped publisher (fresh payload, one .await per publish) → subscriber in its own process, tcp, {runs} run(s) of {warmup} s warm-up + {secs} s per mode, alternating:");
    println!("| payload | publisher | delivered msg/s, median (min–max) | of in memory | publisher CPU µs/event | subscriber CPU µs/event | subscriber peak RSS MiB | lost / out of order |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
