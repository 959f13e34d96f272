//! chorus side by side with Zenoh (and raw NNG for the round trip), each
//! through its public API with default settings, publisher and subscriber
//! each in its own process over tcp loopback, alternating run by run
//! (chorus, Zenoh, chorus, …) so that the machine's noise hits both.
//!
//! - Throughput: the publisher is one tokio task looping
//!   `publish(topic, fresh Vec with its number in the first 8 bytes).await`;
//!   the subscriber counts what arrives over a window that starts a warm-up
//!   after its first event, and checks that nothing is lost or reordered.
//! - Round trip: the ping process publishes 64 B, the pong process
//!   republishes each ping from its subscription on another topic, the ping
//!   process waits for it (one in flight), HdrHistogram percentiles.
//!
//! Each child reports its CPU time per event (user + system, getrusage)
//! and its peak RSS; the parent records the machine's steal per run.
//! `run` prints a markdown table and writes JSON (default
//! `target/peers.json`).

mod chorus_side;
mod nng_side;
mod report;
mod zenoh_side;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "chorus side by side with Zenoh and raw NNG")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every point, alternating the systems run by run.
    Run {
        /// Payload sizes of the throughput points, bytes.
        #[arg(long, default_value = "64,1024,16384")]
        payloads: String,
        /// Runs per system and point.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Warm-up after the subscriber's first event, seconds.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Counted window, seconds.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Round trips counted per run (after 1,000 not counted); 0 skips.
        #[arg(long, default_value_t = 20_000)]
        pings: usize,
        /// Systems, in the order they alternate.
        #[arg(long, default_value = "chorus,zenoh")]
        systems: String,
        /// Where the figures go.
        #[arg(long, default_value = "target/peers.json")]
        json: String,
    },
    /// Child: a throughput subscriber.
    Sub {
        system: String,
        warmup: f64,
        secs: f64,
    },
    /// Child: a throughput publisher.
    Pub {
        system: String,
        connect: String,
        payload: usize,
        secs: f64,
    },
    /// Child: republishes each ping.
    Pong { system: String },
    /// Child: sends pings, one in flight, and times the pongs.
    Ping {
        system: String,
        connect: String,
        pings: usize,
    },
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Run {
            payloads,
            runs,
            warmup,
            secs,
            pings,
            systems,
            json,
        } => {
            let payloads: Vec<usize> = payloads
                .split(',')
                .map(|p| p.trim().parse().expect("a payload size"))
                .collect();
            assert!(
                payloads.iter().all(|&p| p >= 8),
                "payloads of 8 bytes or more"
            );
            let systems: Vec<String> = systems.split(',').map(|s| s.trim().to_owned()).collect();
            run(&payloads, runs, (warmup, secs), pings, &systems, &json);
        }
        Cmd::Sub {
            system,
            warmup,
            secs,
        } => child(&system, |s| s.sub(warmup, secs)),
        Cmd::Pub {
            system,
            connect,
            payload,
            secs,
        } => child(&system, |s| s.publish(&connect, payload, secs)),
        Cmd::Pong { system } => child(&system, |s| s.pong()),
        Cmd::Ping {
            system,
            connect,
            pings,
        } => child(&system, |s| s.ping(&connect, pings)),
    }
}

/// One system's side of every point (a child process runs one of them).
pub trait System {
    /// Prints `ready ADDR`, counts, prints its figures.
    fn sub(&self, warmup: f64, secs: f64) -> Value;
    /// Publishes to ADDR for `secs`, prints its figures.
    fn publish(&self, connect: &str, payload: usize, secs: f64) -> Value;
    /// Prints `ready ADDR`, republishes pings until killed.
    fn pong(&self) -> Value;
    /// Times `pings` round trips through ADDR.
    fn ping(&self, connect: &str, pings: usize) -> Value;
}

fn child(system: &str, f: impl FnOnce(&dyn System) -> Value) {
    let v = match system {
        "chorus" => f(&chorus_side::Chorus),
        "zenoh" => f(&zenoh_side::Zenoh),
        "nng" => f(&nng_side::RawNng),
        other => panic!("unknown system {other:?} (chorus, zenoh, nng)"),
    };
    println!("{v}");
    // Zenoh's and NNG's threads need not wind down.
    std::process::exit(0);
}

/// Says where a child listens.
pub fn ready(addr: &str) {
    println!("ready {addr}");
}

/// CPU time of this process so far, user + system.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// This process's peak resident set, KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A fresh payload of `size` bytes carrying `n` in its first 8.
pub fn payload(n: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

/// What a throughput subscriber counts: every number once and in order.
pub struct Counter {
    warmup: Duration,
    secs: Duration,
    first: Option<Instant>,
    next: u64,
    lost: u64,
    reordered: u64,
    counted: u64,
    cpu_at_start: Option<Duration>,
    result: Option<Value>,
}

impl Counter {
    pub fn new(warmup: f64, secs: f64) -> Self {
        Counter {
            warmup: Duration::from_secs_f64(warmup),
            secs: Duration::from_secs_f64(secs),
            first: None,
            next: 0,
            lost: 0,
            reordered: 0,
            counted: 0,
            cpu_at_start: None,
            result: None,
        }
    }

    /// One event (its payload); true once the window is over.
    pub fn event(&mut self, payload: &[u8]) -> bool {
        if self.result.is_some() {
            return true;
        }
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        let n = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        match n.cmp(&self.next) {
            std::cmp::Ordering::Equal => self.next += 1,
            std::cmp::Ordering::Greater => {
                self.lost += n - self.next;
                self.next = n + 1;
            }
            std::cmp::Ordering::Less => self.reordered += 1,
        }
        let since = now - first;
        if since < self.warmup {
            return false;
        }
        let cpu0 = *self.cpu_at_start.get_or_insert_with(|| {
            // The parent samples the publisher's CPU from here on.
            println!("measuring");
            cpu_time()
        });
        if since < self.warmup + self.secs {
            self.counted += 1;
            return false;
        }
        let cpu = cpu_time().saturating_sub(cpu0);
        self.result = Some(json!({
            "msgs_per_s": self.counted as f64 / self.secs.as_secs_f64(),
            "lost": self.lost,
            "reordered": self.reordered,
            "cpu_us_per_event": cpu.as_secs_f64() * 1e6 / self.counted.max(1) as f64,
            "peak_rss_kib": peak_rss_kib(),
        }));
        true
    }

    pub fn result(self) -> Value {
        self.result.expect("the window is over")
    }
}

/// Round trips, µs.
pub fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// Pings not counted at the start of a round-trip run.
pub const PING_WARMUP: usize = 1_000;

/// One system's ping side: sends ping `n` and waits for its pong.
pub(crate) trait Pinger {
    async fn round_trip(&mut self, n: u64);
}

/// Times `PING_WARMUP + pings` round trips (the first not counted): the
/// percentiles, the CPU per round trip and the peak RSS of this process.
pub(crate) async fn time_pings(pinger: &mut impl Pinger, pings: usize) -> Value {
    let mut h = histogram();
    let cpu0 = cpu_time();
    for n in 0..(PING_WARMUP + pings) as u64 {
        let sent = Instant::now();
        pinger.round_trip(n).await;
        if n >= PING_WARMUP as u64 {
            h.record(sent.elapsed().as_micros().max(1) as u64)
                .expect("in range");
        }
    }
    let cpu = cpu_time() - cpu0;
    let mut v = percentiles(&h);
    v["cpu_us_per_round_trip"] = json!(cpu.as_secs_f64() * 1e6 / (PING_WARMUP + pings) as f64);
    v["peak_rss_kib"] = json!(peak_rss_kib());
    v
}

/// The machine's (steal, total) jiffies so far.
fn steal_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    (cpu.get(7).copied().unwrap_or(0), cpu.iter().sum())
}

/// CPU time (user + system) of process `pid` so far, seconds.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: field 3 on; utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz.max(1.0)
}

/// A child process of this program, killed on drop.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn start(args: &[String]) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("a child process");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("a child said nothing within {within:?}: {e}"))
    }

    fn ready(&self) -> String {
        let line = self.line(Duration::from_secs(30));
        line.strip_prefix("ready ")
            .unwrap_or_else(|| panic!("expected `ready ADDR`, got {line:?}"))
            .to_owned()
    }

    fn result(&self, within: Duration) -> Value {
        let line = self.line(within);
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("expected a JSON line, got {line:?}: {e}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn throughput_run(system: &str, payload: usize, (warmup, secs): (f64, f64)) -> Value {
    let s = |v: f64| v.to_string();
    let sub = Proc::start(&["sub".into(), system.into(), s(warmup), s(secs)]);
    let addr = sub.ready();
    let steal0 = steal_jiffies();
    let publisher = Proc::start(&[
        "pub".into(),
        system.into(),
        addr,
        payload.to_string(),
        s(1e9), // until killed
    ]);
    let measuring = sub.line(Duration::from_secs_f64(warmup + 60.0));
    assert_eq!(measuring, "measuring");
    let pub_cpu0 = proc_cpu(publisher.child.id());
    let mut got = sub.result(Duration::from_secs_f64(secs + 60.0));
    let pub_cpu = proc_cpu(publisher.child.id()) - pub_cpu0;
    let steal1 = steal_jiffies();
    drop(publisher);
    let events = got["msgs_per_s"].as_f64().unwrap_or(0.0) * secs;
    got["pub_cpu_us_per_event"] = json!(pub_cpu * 1e6 / events.max(1.0));
    got["steal_pct"] =
        json!(100.0 * (steal1.0 - steal0.0) as f64 / (steal1.1 - steal0.1).max(1) as f64);
    got
}

fn round_trip_run(system: &str, pings: usize) -> Value {
    let pong = Proc::start(&["pong".into(), system.into()]);
    let addr = pong.ready();
    let steal0 = steal_jiffies();
    let ping = Proc::start(&["ping".into(), system.into(), addr, pings.to_string()]);
    let mut got = ping.result(Duration::from_secs(300));
    let steal1 = steal_jiffies();
    got["steal_pct"] =
        json!(100.0 * (steal1.0 - steal0.0) as f64 / (steal1.1 - steal0.1).max(1) as f64);
    got
}

fn run(
    payloads: &[usize],
    runs: usize,
    window: (f64, f64),
    pings: usize,
    systems: &[String],
    json_path: &str,
) {
    let mut thr = Vec::new();
    for &payload in payloads {
        for run in 0..runs {
            for system in systems {
                let mut r = throughput_run(system, payload, window);
                eprintln!("throughput {system} {payload} B run {run}: {r}");
                r["system"] = json!(system);
                r["payload"] = json!(payload);
                r["run"] = json!(run);
                thr.push(r);
            }
        }
    }
    let mut rtt = Vec::new();
    if pings > 0 {
        let mut with_nng = systems.to_vec();
        with_nng.push("nng".into());
        for run in 0..runs {
            for system in &with_nng {
                let mut r = round_trip_run(system, pings);
                eprintln!("round trip {system} run {run}: {r}");
                r["system"] = json!(system);
                r["run"] = json!(run);
                rtt.push(r);
            }
        }
    }
    let all =
        json!({ "throughput": thr, "round_trip": rtt, "window_s": window.1, "warmup_s": window.0 });
    if let Some(dir) = std::path::Path::new(json_path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&all).expect("json"))
        .expect("write the JSON figures");
    println!("{}", report::markdown(&all, systems));
    println!("all figures: {json_path}");
}
