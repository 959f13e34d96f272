//! Discovery figures on loopback with the default heartbeat settings:
//! convergence time of N peers joining through one seed, failure-detection
//! time after a peer disappears without goodbye, and the CPU an idle bus uses.
//!
//! Run: `cargo bench --bench discovery` (options: `-- --peers 8,32 --idle-secs 10`).
//! Under `cargo test` (no `--bench` argument) it runs 4 peers for 1 s as a
//! smoke test.
//! All peers run in this one process (one tokio runtime, NNG's shared
//! threads), so the CPU figure is for the whole bus; per peer is total / N.

use std::time::{Duration, Instant};

use chorus::{MemberEventKind, Peer};
use futures::StreamExt;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (fields 14 and 15).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<i64> = after_comm
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // After the command name: state is not numeric, so utime/stime are at 10 and 11 here.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0); // tpgid may be -1
    ticks as f64 / 100.0
}

async fn bus(n: usize) -> (Vec<Peer>, Duration) {
    let started = Instant::now();
    let seed = Peer::builder().name("p0").start().await.unwrap();
    let mut peers = vec![seed.clone()];
    for i in 1..n {
        let p = Peer::builder()
            .name(format!("p{i}"))
            .seed(seed.local_url())
            .start()
            .await
            .unwrap();
        peers.push(p);
    }
    let want = n as u64 - 1;
    while !peers.iter().all(|p| {
        let s = p.stats();
        s.members == want && s.links_in == want && s.links_out == want
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (peers, started.elapsed())
}

async fn measure(n: usize, idle: Duration) {
    let (mut peers, converge) = bus(n).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let cpu = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();

    let victim = peers.pop().unwrap();
    let id = victim.id();
    let mut watchers: Vec<_> = peers.iter().map(|p| p.membership()).collect();
    let killed = Instant::now();
    drop(victim);
    let mut detect = Vec::new();
    for w in &mut watchers {
        while let Some(e) = w.next().await {
            if e.kind == MemberEventKind::Failed && e.member.id() == id {
                detect.push(killed.elapsed());
                break;
            }
        }
    }
    detect.sort();
    let pct = |q: f64| detect[((detect.len() - 1) as f64 * q) as usize].as_millis();
    let stats = peers[0].stats();
    println!(
        "| {n} | {} ms | {} / {} / {} ms | {:.1} % of one core ({:.2} % per peer) | {} rounds, {} responses on peer 0 |",
        converge.as_millis(),
        pct(0.0),
        pct(0.5),
        pct(1.0),
        cpu * 100.0,
        cpu * 100.0 / n as f64,
        stats.heartbeat_rounds,
        stats.heartbeat_responses,
    );
    for p in peers {
        p.shutdown().await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_owned())
    };
    let smoke = !args.iter().any(|a| a == "--bench");
    let (peers, idle) = if smoke { ("4", "1") } else { ("8,32", "10") };
    let sizes: Vec<usize> = opt("--peers", peers)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let idle = Duration::from_secs(opt("--idle-secs", idle).parse().unwrap_or(10));
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "defaults: interval 500 ms, deadline 250 ms, suspect_after 2, miss_limit 4 (bound 3250 ms)"
    );
    println!(
        "| peers | converge | detect min / median / max | idle CPU ({}s) | |",
        idle.as_secs()
    );
    println!("|---|---|---|---|---|");
    for n in sizes {
        rt.block_on(measure(n, idle));
    }
}
