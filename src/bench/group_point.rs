//! The consumer-group point, across processes: one origin, a group of
//! members in child processes, against 1→1 in the same run.
//!
//! Owns: the member child (`--group-child SEED`: a group handler on
//! `bench.>` counting what it handles, reporting its count every 50 ms
//! until its stdin closes), and the run: the user-shaped publisher of the
//! 1→1 point (fresh payload, one `.await` per publish) in this process,
//! [`MEMBERS`] member processes; the aggregate handled rate over the
//! window, then one member killed with SIGKILL and the time until the
//! origin has reassigned its share (it counts one member less and has
//! handed over what the dead one owed). Each payload alternates the 1→1
//! run and the group run, run by run.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use crate::{HandlerOptions, Peer};

use super::scenario::PeerSettings;
use super::subscriber_process::CHILD_KEY_ENV;
use super::user_shaped::{self, Durability};

/// Members of the group.
pub const MEMBERS: usize = 3;

/// The child side (`--group-child SEED`): see the module documentation.
pub fn group_child(seed: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut b = Peer::builder()
            .name("group-child")
            .listen("tcp://127.0.0.1:0")
            .seed(seed);
        if let Ok(key) = std::env::var(CHILD_KEY_ENV) {
            b = b.bus_key(key);
        }
        let peer = b.start().await.unwrap();
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        peer.subscribe_bytes_with_options(
            "bench.>",
            HandlerOptions::new().group("bench-group"),
            move |_d: crate::Delivery<bytes::Bytes>| {
                h.fetch_add(1, Ordering::Relaxed);
                async { Ok::<(), String>(()) }
            },
        )
        .unwrap();
        peer.wait_for_members(1, Duration::from_secs(30))
            .await
            .expect("joined");
        println!("ready");
        // Until the parent closes stdin (or is gone).
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            c.store(true, Ordering::Relaxed);
        });
        while !closed.load(Ordering::Relaxed) {
            println!("{}", json!({ "handled": handled.load(Ordering::Relaxed) }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peer.shutdown().await;
    });
}

/// One group run: the publisher here, [`MEMBERS`] member processes.
fn run_group(
    rt: &tokio::runtime::Runtime,
    peers: &PeerSettings,
    child: &[String],
    size: usize,
    (warmup, secs): (f64, f64),
) -> serde_json::Value {
    let b = peers.builder("publisher".into(), "tcp://127.0.0.1:0".into());
    let publisher = rt.block_on(b.start()).expect("publisher starts");
    let counts: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; MEMBERS]));
    let ready = Arc::new(AtomicU64::new(0));
    let mut procs = Vec::new();
    for i in 0..MEMBERS {
        let mut cmd = std::process::Command::new(&child[0]);
        cmd.args(&child[1..])
            .args(["--group-child", publisher.local_url()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(key) = peers.bus_key.as_deref() {
            cmd.env(CHILD_KEY_ENV, key);
        }
        let mut proc = cmd.spawn().expect("member process starts");
        let stdout = proc.stdout.take().unwrap();
        let (counts, ready) = (counts.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    ready.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    counts.lock()[i] = v["handled"].as_u64().unwrap_or(0);
                }
            }
        });
        procs.push(proc);
    }
    let total = |c: &Mutex<Vec<u64>>| c.lock().iter().sum::<u64>();
    let stop = Arc::new(AtomicBool::new(false));
    let figures = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready.load(Ordering::Relaxed) < MEMBERS as u64
            || publisher.stats().group_members < MEMBERS as u64
        {
            assert!(
                Instant::now() < deadline,
                "the member processes did not join"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writer = user_shaped::user_writer(&publisher, "bench.group", size, &stop);
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let (t0, n0) = (Instant::now(), total(&counts));
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (elapsed, n1) = (t0.elapsed().as_secs_f64(), total(&counts));
        let shares: Vec<u64> = counts.lock().clone();
        // SIGKILL of member 0; its share is the others' once the origin
        // counts one member less (and reassigned what it owed).
        let killed = Instant::now();
        let _ = procs[0].kill();
        let deadline = killed + Duration::from_secs(30);
        while publisher.stats().group_members >= MEMBERS as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let failover_ms = killed.elapsed().as_secs_f64() * 1e3;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("publisher task");
        json!({ "per_sec": (n1 - n0) as f64 / elapsed, "failover_ms": failover_ms,
                "shares": shares, "failed_over": publisher.stats().group_failed_over })
    });
    for mut p in procs {
        drop(p.stdin.take()); // the survivors leave
        let _ = p.wait();
    }
    rt.block_on(publisher.shutdown());
    let mut figures = figures;
    figures["payload"] = json!(size);
    figures["members"] = json!(MEMBERS);
    figures
}

/// Every payload, `runs` times, alternating 1→1 and the group: the table
/// rows and the JSON of every group run.
pub(crate) fn measure(
    rt: &tokio::runtime::Runtime,
    peers: &PeerSettings,
    child: &[String],
    sizes: &[usize],
    runs: usize,
    window: (f64, f64),
) -> (Vec<String>, serde_json::Value) {
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for &size in sizes {
        let (mut one, mut group) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = user_shaped::run(rt, peers, child, size, Durability::Memory, window);
            one.push(r["per_sec"].as_f64().unwrap_or(0.0));
            group.push(run_group(rt, peers, child, size, window));
        }
        let median = |mut x: Vec<f64>| {
            x.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (x[x.len() / 2], x[0], x[x.len() - 1])
        };
        let (o, _, _) = median(one);
        let (g, lo, hi) = median(group.iter().filter_map(|r| r["per_sec"].as_f64()).collect());
        let (f, flo, fhi) = median(
            group
                .iter()
                .filter_map(|r| r["failover_ms"].as_f64())
                .collect(),
        );
        rows.push(format!(
            "| {size} B | {:.0} k | {:.0} k ({:.0}–{:.0} k) | {:.2} | {:.0} ms ({:.0}–{:.0}) |",
            o / 1e3,
            g / 1e3,
            lo / 1e3,
            hi / 1e3,
            g / o.max(1.0),
            f,
            flo,
            fhi
        ));
        all.extend(group);
    }
    (rows, serde_json::Value::Array(all))
}

/// Prints the rows of [`measure`] as a markdown table.
pub(crate) fn print_table(rows: &[String], runs: usize, (warmup, secs): (f64, f64)) {
    println!();
    println!("consumer group: user-shaped publisher → {MEMBERS} group members, each its own process, tcp, {runs} run(s) of {warmup} s warm-up + {secs} s, alternating with 1→1:");
    println!("| payload | 1→1 delivered msg/s | group aggregate handled msg/s, median (min–max) | group ÷ 1→1 | SIGKILL of a member → its share reassigned, median (min–max) |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
