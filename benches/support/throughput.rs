//! Throughput and latency of reliable, deduplicated chorus delivery, side by
//! side with raw NNG pub/sub measured in the same run.
//!
//! The engine shared by `cargo bench --bench throughput` and `chorus bench`
//! (both include this file); see `benches/throughput.rs` for the options.
//!
//! Each point (publishers × subscribers, payload, transport):
//! - **raw NNG**: one pub0 socket per publisher and one sub0 per subscriber,
//!   with chorus's default buffer sizes, paced at increasing rates; the
//!   highest rate with at most 0.1 % drops is its drop-free rate.
//! - **chorus flood**: every publisher (a tokio task, as in an application)
//!   publishes as fast as `publish` returns (backpressure included);
//!   delivered msg/s per subscriber and in aggregate, with retransmits,
//!   duplicates dropped and losses.
//! - **latency, paced**: both at 10 % of raw NNG's drop-free rate, in
//!   alternating rounds (raw, chorus, raw, chorus, …) so that a burst of CPU
//!   steal hits both alike. Latency runs from each message's *intended*
//!   send time on a fixed schedule (open loop), so a stall of the sender or
//!   of the system counts for every message it held up: the correction for
//!   coordinated omission. Percentiles from HdrHistogram.
//! - **subscriber in its own process** (tcp): a child process joins as the
//!   only subscriber of a flooding publisher; its delivered rate and its peak
//!   RSS against the memory its configured buffers allow.
//!
//! Everything but that child lives in this one process (2 cores): figures
//! compare chorus and raw NNG under the same conditions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chorus::{Peer, Subscription};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use nng::options::{Options as _, RecvBufferSize, RecvTimeout, SendBufferSize};
use nng::{Protocol, Socket};
use serde_json::json;

const BUFFER: i32 = 1024; // chorus's default send/recv buffer, used for raw NNG too

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Lets this thread's sleeps end within microseconds of their deadline
/// (Linux's default timer slack is 50 µs, comparable to what is measured).
fn fine_timer() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and touches only the
    // calling thread's scheduling attribute.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// A fixed send schedule: message `i` is due at `start + i / rate`. The
/// sender sleeps (no spinning: a spinning sender would steal one of the two
/// cores from the system under test) and stamps each message with the time
/// it was *due*, in µs since the epoch, so its own lateness is measured too.
struct Schedule {
    start: Instant,
    start_us: u64,
    rate: f64,
}

impl Schedule {
    fn new(rate: f64) -> Self {
        fine_timer();
        Schedule {
            start: Instant::now(),
            start_us: now_us(),
            rate,
        }
    }

    /// Waits until message `i` is due; returns its stamp.
    fn wait(&self, i: u64) -> u64 {
        let offset = Duration::from_secs_f64(i as f64 / self.rate);
        if let Some(wait) = (self.start + offset).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        self.start_us + offset.as_micros() as u64
    }
}

/// Records the latency of a message stamped `stamp` (µs since the epoch).
fn record(h: &mut Histogram<u64>, stamp: u64) {
    h.saturating_record(now_us().saturating_sub(stamp).max(1));
}

/// A payload of `size` bytes starting with the send time in µs.
fn payload(size: usize, stamp: u64) -> Vec<u8> {
    let mut p = vec![0xa5u8; size.max(8)];
    p[..8].copy_from_slice(&stamp.to_le_bytes());
    p
}

fn stamp_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[..8].try_into().unwrap())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

#[derive(Clone, Copy, Debug)]
struct Point {
    pubs: usize,
    subs: usize,
    size: usize,
    tcp: bool,
}

impl Point {
    fn name(&self) -> String {
        format!(
            "{}x{} {}B {}",
            self.pubs,
            self.subs,
            self.size,
            if self.tcp { "tcp" } else { "inproc" }
        )
    }
}

/// Latency percentiles in µs.
fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50": h.value_at_quantile(0.50), "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99), "p99_9": h.value_at_quantile(0.999), "max": h.max(),
        "count": h.len(),
    })
}

// ---------------------------------------------------------------- raw NNG

struct RawRun {
    sent: u64,
    min_received: u64,
    delivered_per_sec: f64,
    latency: Histogram<u64>,
}

/// Raw NNG pub/sub sockets: one pub0 per publisher, one sub0 per
/// subscriber dialed to every publisher, with chorus's default buffers.
struct RawBus {
    pubs: Vec<Socket>,
    subs: Vec<Socket>,
}

impl RawBus {
    fn open(p: Point, addr: &mut u32) -> RawBus {
        *addr += 1;
        let mut pubs = Vec::new();
        let mut bound = Vec::new();
        for i in 0..p.pubs {
            let url = if p.tcp {
                "tcp://127.0.0.1:0".to_string()
            } else {
                format!("inproc://raw-{}-{addr}-{i}", std::process::id())
            };
            let s = Socket::new(Protocol::Pub0).unwrap();
            s.set_opt::<SendBufferSize>(BUFFER).unwrap();
            let l = nng::Listener::new(&s, &url).unwrap();
            bound.push(if p.tcp {
                let port = l.get_opt::<nng::options::transport::tcp::BoundPort>();
                format!("tcp://127.0.0.1:{}", port.unwrap())
            } else {
                url
            });
            pubs.push(s);
        }
        let subs = (0..p.subs)
            .map(|_| {
                let s = Socket::new(Protocol::Sub0).unwrap();
                s.set_opt::<RecvBufferSize>(BUFFER).unwrap();
                s.set_opt::<RecvTimeout>(Some(Duration::from_millis(50)))
                    .unwrap();
                s.set_opt::<nng::options::protocol::pubsub::Subscribe>(Vec::new())
                    .unwrap();
                for u in &bound {
                    s.dial(u).unwrap();
                }
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200)); // links up
        RawBus { pubs, subs }
    }

    /// Every publisher sends on the same schedule, `rate` msg/s in all, for
    /// `secs`; readers stop once nothing more arrives.
    fn segment(&self, size: usize, rate: f64, secs: f64) -> RawRun {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = self
            .subs
            .iter()
            .map(|s| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut h = histogram();
                    let (mut n, mut first, mut last) = (0u64, None, Instant::now());
                    loop {
                        match s.recv() {
                            Ok(m) => {
                                record(&mut h, stamp_of(m.as_slice()));
                                n += 1;
                                first.get_or_insert_with(Instant::now);
                                last = Instant::now();
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => {}
                        }
                    }
                    let secs = first.map_or(0.0, |f: Instant| (last - f).as_secs_f64());
                    (n, secs, h)
                })
            })
            .collect();
        let per_pub = (rate * secs) as u64 / self.pubs.len() as u64;
        let rate = rate / self.pubs.len() as f64;
        let senders: Vec<_> = self
            .pubs
            .iter()
            .map(|s| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let schedule = Schedule::new(rate);
                    for i in 0..per_pub {
                        let stamp = schedule.wait(i);
                        let _ = s.send(nng::Message::from(&payload(size, stamp)[..]));
                    }
                })
            })
            .collect();
        for t in senders {
            t.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100)); // the tail arrives
        stop.store(true, Ordering::Relaxed);
        let mut latency = histogram();
        let (mut min_received, mut rate_sum) = (u64::MAX, 0.0);
        for r in readers {
            let (n, secs, h) = r.join().unwrap();
            latency.add(&h).unwrap();
            min_received = min_received.min(n);
            rate_sum += if secs > 0.0 { n as f64 / secs } else { 0.0 };
        }
        RawRun {
            sent: per_pub * self.pubs.len() as u64,
            min_received,
            delivered_per_sec: rate_sum / self.subs.len() as f64,
            latency,
        }
    }

    fn close(self) {
        for s in self.pubs.into_iter().chain(self.subs) {
            s.close();
        }
    }
}

/// Raw pub/sub paced at `rate` msg/s in all for `secs`, on fresh sockets.
fn raw_run(p: Point, rate: f64, secs: f64, addr: &mut u32) -> RawRun {
    let bus = RawBus::open(p, addr);
    let run = bus.segment(p.size, rate, secs);
    bus.close();
    run
}

/// The highest paced rate (msg/s per subscriber) raw NNG sustains with at
/// most 0.1 % drops, from a doubling then refining search.
fn raw_drop_free(p: Point, secs: f64, addr: &mut u32, bar: &ProgressBar) -> (f64, f64) {
    let (mut best, mut best_delivered) = (0.0, 0.0);
    let mut rate = 5_000.0;
    let mut failed = None;
    for _ in 0..12 {
        bar.set_message(format!("{} raw NNG at {:.0} msg/s", p.name(), rate));
        let r = raw_run(p, rate, secs, addr);
        let ok = r.min_received as f64 >= r.sent as f64 * 0.999;
        if ok {
            best = rate;
            best_delivered = r.delivered_per_sec;
        } else {
            failed = Some(rate);
        }
        rate = match failed {
            None => rate * 2.0,
            Some(f) if f / best.max(1.0) > 1.15 => (best.max(2_500.0) + f) / 2.0,
            Some(_) => break,
        };
    }
    (best, best_delivered)
}

// ---------------------------------------------------------------- chorus

struct ChorusRun {
    per_sub: Vec<f64>,
    latency: Histogram<u64>,
    retransmits: u64,
    duplicates: u64,
    lost: u64,
    batches: u64,
}

/// Batch size of chorus peers in this run (`--batch-bytes`, 0 = unbatched).
static BATCH_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(64 * 1024);

/// Bus key of chorus peers in this run (`--bus-key`; none by default).
static BUS_KEY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn builder(name: String, url: String) -> chorus::PeerBuilder {
    let b = Peer::builder()
        .name(name)
        .listen(url)
        .batch_bytes(BATCH_BYTES.load(Ordering::Relaxed));
    match BUS_KEY.lock().unwrap().as_deref() {
        Some(key) => b.bus_key(key),
        None => b,
    }
}

/// A chorus bus: publishers, subscribers and one subscription each to the
/// bench topic, kept across the segments of a run.
struct Bus {
    pubs: Vec<Peer>,
    subs: Vec<Peer>,
    streams: Vec<Subscription<Bytes>>,
}

impl Bus {
    async fn open(p: Point, addr: &mut u32) -> Bus {
        *addr += 1;
        let url = |role: &str, i: usize| {
            if p.tcp {
                "tcp://127.0.0.1:0".to_string()
            } else {
                format!("inproc://bench-{}-{addr}-{role}{i}", std::process::id())
            }
        };
        let seed = builder("pub-0".into(), url("p", 0)).start().await.unwrap();
        let join = |name: String, url: String| builder(name, url).seed(seed.local_url()).start();
        let mut pubs = vec![seed.clone()];
        for i in 1..p.pubs {
            pubs.push(join(format!("pub-{i}"), url("p", i)).await.unwrap());
        }
        let mut subs = Vec::new();
        for i in 0..p.subs {
            subs.push(join(format!("sub-{i}"), url("s", i)).await.unwrap());
        }
        let n = (p.pubs + p.subs) as u64 - 1;
        for x in pubs.iter().chain(&subs) {
            x.wait_for_members(n, Duration::from_secs(30))
                .await
                .expect("bus did not form");
        }
        let streams = subs
            .iter()
            .map(|s| s.subscribe_bytes("bench.>").unwrap())
            .collect();
        Bus {
            pubs,
            subs,
            streams,
        }
    }

    /// Every publisher sends `count` messages of `size` bytes, `rate` msg/s
    /// in all (None: flood); returns each subscriber's delivered rate and
    /// the latencies seen by all.
    async fn segment(
        &mut self,
        count: u64,
        size: usize,
        rate: Option<f64>,
    ) -> (Vec<f64>, Histogram<u64>) {
        let total = count * self.pubs.len() as u64;
        let readers: Vec<_> = std::mem::take(&mut self.streams)
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut h = histogram();
                    let mut first = None;
                    for _ in 0..total {
                        let d = stream.next().await.expect("stream open");
                        record(&mut h, stamp_of(&d.value));
                        first.get_or_insert_with(Instant::now);
                    }
                    (stream, first.unwrap().elapsed(), h)
                })
            })
            .collect();
        match rate {
            // Flood: publishers are tokio tasks, as in an application.
            None => {
                let writers: Vec<_> = self
                    .pubs
                    .iter()
                    .map(|x| {
                        let x = x.clone();
                        tokio::spawn(async move { flood(&x, count, size).await })
                    })
                    .collect();
                for w in writers {
                    w.await.unwrap();
                }
            }
            // Paced: publishers keep the raw NNG senders' schedule on their
            // own threads (tokio's millisecond timer would add its own
            // lateness), calling into the runtime for each publish.
            Some(rate) => {
                let handle = tokio::runtime::Handle::current();
                let per_pub_rate = rate / self.pubs.len() as f64;
                let writers: Vec<_> = self
                    .pubs
                    .iter()
                    .map(|x| {
                        let (x, handle) = (x.clone(), handle.clone());
                        std::thread::spawn(move || {
                            let schedule = Schedule::new(per_pub_rate);
                            for i in 0..count {
                                let p = Bytes::from(payload(size, schedule.wait(i)));
                                handle.block_on(x.publish_bytes("bench.data", p)).unwrap();
                            }
                        })
                    })
                    .collect();
                tokio::task::spawn_blocking(move || {
                    for w in writers {
                        w.join().unwrap();
                    }
                })
                .await
                .unwrap();
            }
        }
        let mut latency = histogram();
        let mut per_sub = Vec::new();
        for r in readers {
            let (stream, elapsed, h) = tokio::time::timeout(Duration::from_secs(300), r)
                .await
                .expect("delivery finished")
                .unwrap();
            self.streams.push(stream);
            per_sub.push(total as f64 / elapsed.as_secs_f64());
            latency.add(&h).unwrap();
        }
        (per_sub, latency)
    }

    /// Shuts every peer down; returns the reliability counters of the run.
    async fn close(self, per_sub: Vec<f64>, latency: Histogram<u64>) -> ChorusRun {
        let stats: Vec<_> = self
            .pubs
            .iter()
            .chain(&self.subs)
            .map(|x| x.stats())
            .collect();
        let run = ChorusRun {
            per_sub,
            latency,
            retransmits: stats.iter().map(|s| s.retransmits).sum(),
            duplicates: stats.iter().map(|s| s.duplicates + s.duplicate_keys).sum(),
            lost: stats.iter().map(|s| s.lost).sum(),
            batches: stats.iter().map(|s| s.batches_sent).sum(),
        };
        drop(self.streams);
        for x in self.pubs.into_iter().chain(self.subs) {
            x.shutdown().await;
        }
        run
    }
}

/// `peer` publishes `count` messages of `size` bytes as fast as `publish`
/// returns, each stamped with its send time.
async fn flood(peer: &Peer, count: u64, size: usize) {
    for _ in 0..count {
        let p = Bytes::from(payload(size, now_us()));
        peer.publish_bytes("bench.data", p).await.unwrap();
    }
}

/// Chorus flooding: every publisher sends `count` messages.
async fn chorus_flood(p: Point, count: u64, addr: &mut u32) -> ChorusRun {
    let mut bus = Bus::open(p, addr).await;
    let (per_sub, latency) = bus.segment(count, p.size, None).await;
    bus.close(per_sub, latency).await
}

/// Rounds of the paced comparison: raw NNG and chorus alternate.
const ROUNDS: u64 = 10;

/// Paced latency of raw NNG and chorus at `rate` msg/s in all, `count`
/// messages per publisher each, in alternating rounds on buses kept open.
/// Returns both merged histograms, the chorus run, and the median over
/// rounds of chorus p99 ÷ raw p99 (adjacent in time, so robust to a burst
/// of CPU steal that hits one round).
fn paced(
    rt: &tokio::runtime::Runtime,
    p: Point,
    rate: f64,
    count: u64,
    addr: &mut u32,
) -> (Histogram<u64>, ChorusRun, f64) {
    let per_round = (count / ROUNDS).max(100);
    let secs = (per_round * p.pubs as u64) as f64 / rate;
    let raw_bus = RawBus::open(p, addr);
    let mut bus = rt.block_on(Bus::open(p, addr));
    let (mut raw, mut chorus) = (histogram(), histogram());
    let mut per_sub = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let r = raw_bus.segment(p.size, rate, secs).latency;
        let (rates, c) = rt.block_on(bus.segment(per_round, p.size, Some(rate)));
        ratios.push(c.value_at_quantile(0.99) as f64 / r.value_at_quantile(0.99).max(1) as f64);
        raw.add(&r).unwrap();
        chorus.add(&c).unwrap();
        per_sub = rates;
    }
    raw_bus.close();
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[ratios.len() / 2] + ratios[(ratios.len() - 1) / 2]) / 2.0;
    (raw, rt.block_on(bus.close(per_sub, chorus)), median)
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM` = peak RSS).
fn status_kib(field: &str) -> u64 {
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
pub fn subscriber_child(seed: &str, count: &str) {
    let count: u64 = count.parse().expect("COUNT");
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
const CHILD_KEY_ENV: &str = "CHORUS_BENCH_CHILD_KEY";

/// One publisher here floods `count` messages of `size` bytes to a
/// subscriber in a child process (`child` + `--subscriber-child SEED
/// COUNT`); the child's figures, with the memory its buffers allow.
fn subscriber_process(
    rt: &tokio::runtime::Runtime,
    child: &[String],
    size: usize,
    count: u64,
    batch_bytes: usize,
) -> serde_json::Value {
    use std::io::BufRead;
    let publisher = rt
        .block_on(builder("publisher".into(), "tcp://127.0.0.1:0".into()).start())
        .unwrap();
    let mut cmd = std::process::Command::new(&child[0]);
    cmd.args(&child[1..])
        .args([
            "--subscriber-child",
            publisher.local_url(),
            &count.to_string(),
        ])
        .stdout(std::process::Stdio::piped());
    if let Some(key) = BUS_KEY.lock().unwrap().as_deref() {
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
    // envelope), the subscription (1024 deliveries) and the envelopes held
    // back for order (4096), each envelope ~60 bytes of fields + payload.
    let envelope = size + 60;
    let bound = 1024 * (batch_bytes.max(envelope) + envelope) + (1024 + 4096) * envelope;
    figures["buffers_bound_kib"] = json!(bound / 1024);
    figures
}

/// How much to measure: `Smoke` is one tiny point for `cargo test`,
/// `Quick` under a minute, `Full` every point at full length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One tiny point; figures only checked for sanity.
    Smoke,
    /// Short runs of 1→1 tcp, 64 B and 1 KiB (under a minute).
    Quick,
    /// Every point, full length (several minutes).
    Full,
}

/// What to measure and where to write the figures.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run length.
    pub mode: Mode,
    /// (publishers, subscribers) pairs.
    pub scenarios: Vec<(usize, usize)>,
    /// Payload sizes in bytes.
    pub payloads: Vec<usize>,
    /// `true` for tcp loopback, `false` for inproc.
    pub transports: Vec<bool>,
    /// Where the JSON with every figure goes.
    pub json: String,
    /// Where the latency plot goes.
    pub svg: String,
    /// How to start this benchmark again as a subscriber in a child
    /// process (program and arguments, before `--subscriber-child SEED
    /// COUNT`); `None` skips that measurement.
    pub child: Option<Vec<String>>,
    /// chorus's batch size (0 = unbatched).
    pub batch_bytes: usize,
    /// A bus key for the chorus peers (every message authenticated).
    pub bus_key: Option<String>,
}

impl Options {
    /// The defaults of `mode`.
    pub fn new(mode: Mode) -> Self {
        let (scenarios, payloads, transports, files) = match mode {
            Mode::Smoke => ("1x1", "64", "tcp", "target/throughput-smoke"),
            Mode::Quick => ("1x1", "64,1024", "tcp", "target/throughput"),
            Mode::Full => (
                "1x1,1x4,4x4",
                "64,1024,16384",
                "tcp,inproc",
                "target/throughput",
            ),
        };
        Options {
            mode,
            scenarios: parse_scenarios(scenarios).expect("valid default"),
            payloads: parse_payloads(payloads).expect("valid default"),
            transports: parse_transports(transports).expect("valid default"),
            json: format!("{files}.json"),
            svg: format!("{files}.svg"),
            child: None,
            batch_bytes: 64 * 1024,
            bus_key: None,
        }
    }
}

/// `1x1,1x4,4x4` → publishers × subscribers pairs.
pub fn parse_scenarios(list: &str) -> Result<Vec<(usize, usize)>, String> {
    list.split(',')
        .map(|s| {
            s.split_once('x')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .filter(|&(a, b): &(usize, usize)| a > 0 && b > 0)
                .ok_or_else(|| format!("invalid scenario {s:?} (expected e.g. 1x4)"))
        })
        .collect()
}

/// `64,1024` → payload sizes (at least 8 bytes: the send time).
pub fn parse_payloads(list: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|s| {
            s.parse()
                .ok()
                .filter(|&n: &usize| (8..=1 << 20).contains(&n))
                .ok_or_else(|| format!("invalid payload size {s:?} (8 to 1048576 bytes)"))
        })
        .collect()
}

/// `tcp,inproc` → transports.
pub fn parse_transports(list: &str) -> Result<Vec<bool>, String> {
    list.split(',')
        .map(|t| match t {
            "tcp" => Ok(true),
            "inproc" => Ok(false),
            _ => Err(format!("invalid transport {t:?} (tcp or inproc)")),
        })
        .collect()
}

/// Measures every point of `o` with a progress bar, prints the summary
/// table, writes the JSON and the plot, and returns the JSON document.
pub fn run(o: &Options) -> serde_json::Value {
    let smoke = o.mode == Mode::Smoke;
    let quick = o.mode != Mode::Full;
    let (scenarios, sizes, transports) = (&o.scenarios, &o.payloads, &o.transports);
    let (json_path, svg_path) = (&o.json, &o.svg);
    // Raw runs must be long enough that NNG's and the kernel's buffers cannot
    // hide drops: a quarter second of 64 B messages fits in socket buffers.
    let raw_secs = if smoke { 0.25 } else { 1.0 };
    BATCH_BYTES.store(o.batch_bytes, Ordering::Relaxed);
    *BUS_KEY.lock().unwrap() = o.bus_key.clone();

    let mut points = Vec::new();
    for &(pubs, subs) in scenarios {
        for &size in sizes {
            for &tcp in transports {
                points.push(Point {
                    pubs,
                    subs,
                    size,
                    tcp,
                });
            }
        }
    }
    let bar = ProgressBar::new(points.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut addr = 0;
    let mut results = Vec::new();
    let mut curves = Vec::new();
    let mut table = BTreeMap::new();
    let mut memory = Vec::new();
    for p in points {
        let (raw_rate, raw_delivered) = raw_drop_free(p, raw_secs, &mut addr, &bar);
        // Flood: a fixed byte budget per point, within a message-count range.
        let budget_bytes = if smoke {
            1 << 20
        } else if quick {
            256 << 20
        } else {
            1 << 30
        };
        let max_count = if smoke {
            10_000
        } else if quick {
            1_000_000
        } else {
            3_000_000
        };
        let count =
            ((budget_bytes / p.size.max(64)) as u64 / p.pubs as u64).clamp(2_000, max_count);
        bar.set_message(format!(
            "{} chorus flood, {count} msgs per publisher",
            p.name()
        ));
        let flood = rt.block_on(chorus_flood(p, count, &mut addr));
        let process = match &o.child {
            Some(child) if p.tcp && p.pubs == 1 && p.subs == 1 => {
                bar.set_message(format!("{} subscriber in its own process", p.name()));
                let f = subscriber_process(&rt, child, p.size, count, o.batch_bytes);
                let mib = |k: &serde_json::Value| k.as_f64().unwrap_or(0.0) / 1024.0;
                memory.push(format!(
                    "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    p.name(),
                    f["per_sec"].as_f64().unwrap_or(0.0),
                    mib(&f["idle_rss_kib"]),
                    mib(&f["joined_rss_kib"]),
                    mib(&f["peak_rss_kib"]),
                    mib(&f["buffers_bound_kib"]),
                ));
                f
            }
            _ => serde_json::Value::Null,
        };
        // Paced latency at 10 % of raw's drop-free rate, for both.
        let paced_rate = (raw_rate * 0.1).max(500.0);
        let paced_count =
            ((paced_rate * if quick { 1.0 } else { 3.0 }) as u64 / p.pubs as u64).max(200);
        bar.set_message(format!(
            "{} paced latency at {paced_rate:.0} msg/s",
            p.name()
        ));
        let (raw_paced, chorus_paced, round_ratio) =
            paced(&rt, p, paced_rate, paced_count, &mut addr);
        let chorus_rate = flood.per_sub.iter().sum::<f64>() / flood.per_sub.len() as f64;
        let mb = |rate: f64| rate * p.size as f64 / 1e6;
        let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99);
        let ratio = chorus_rate / raw_delivered.max(1.0);
        let lat_ratio = p99(&chorus_paced.latency) as f64 / p99(&raw_paced).max(1) as f64;
        table.insert(
            p.name(),
            format!(
                "| {} | {:.0} ({:.1} MB/s) | {:.0} ({:.1} MB/s) | {:.0} | **{:.1}×** | {} / {} µs | {} / {} µs | {:.2}× / {:.2}× | {} / {} / {} |",
                p.name(),
                raw_delivered,
                mb(raw_delivered),
                chorus_rate,
                mb(chorus_rate),
                chorus_rate * p.subs as f64,
                ratio,
                p99(&raw_paced),
                raw_paced.max(),
                p99(&chorus_paced.latency),
                chorus_paced.latency.max(),
                lat_ratio,
                round_ratio,
                flood.retransmits,
                flood.duplicates,
                flood.lost
            ),
        );
        curves.push((p.name(), ladder(&raw_paced), ladder(&chorus_paced.latency)));
        results.push(json!({
            "point": p.name(), "publishers": p.pubs, "subscribers": p.subs, "payload": p.size,
            "transport": if p.tcp { "tcp" } else { "inproc" },
            "raw_nng": { "drop_free_rate": raw_rate, "delivered_per_sub": raw_delivered,
                          "paced_rate": paced_rate, "paced_latency_us": percentiles(&raw_paced) },
            "chorus": { "messages_per_publisher": count, "delivered_per_sub": flood.per_sub,
                        "delivered_per_sub_mean": chorus_rate, "aggregate": chorus_rate * p.subs as f64,
                        "mb_per_sec_per_sub": mb(chorus_rate),
                        "flood_latency_us": percentiles(&flood.latency),
                        "paced_latency_us": percentiles(&chorus_paced.latency),
                        "retransmits": flood.retransmits, "duplicates_dropped": flood.duplicates,
                        "lost": flood.lost, "batches_sent": flood.batches },
            "ratio_throughput": ratio, "ratio_p99_paced": lat_ratio,
            "ratio_p99_paced_median_of_rounds": round_ratio, "paced_rounds": ROUNDS,
            "subscriber_process": process,
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rss = status_kib("VmHWM:");
    println!("| point | raw NNG drop-free msg/s per sub | chorus msg/s per sub | chorus aggregate | chorus ÷ raw | raw paced p99 / max | chorus paced p99 / max | p99 ratio: all / median of rounds | retransmits / dups dropped / lost |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in table.values() {
        println!("{row}");
    }
    if !memory.is_empty() {
        println!();
        println!("| point, subscriber in its own process | delivered msg/s | RSS idle MiB | RSS linked MiB | peak RSS MiB | its buffers hold at most MiB |");
        println!("|---|---|---|---|---|---|");
        for row in &memory {
            println!("{row}");
        }
    }
    println!("peak RSS of the whole bench process: {} MiB", rss / 1024);
    let doc = json!({ "quick": quick, "bus_key": o.bus_key.is_some(), "peak_rss_kib": rss, "points": results });
    if let Some(dir) = std::path::Path::new(json_path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    plot(svg_path, &curves);
    println!("all figures: {json_path}; latency plot: {svg_path}");
    doc
}

/// Latency at the percentile ladder drawn in the plot.
const LADDER: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

fn ladder(h: &Histogram<u64>) -> Vec<u64> {
    LADDER
        .iter()
        .map(|(q, _)| {
            if *q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(*q)
            }
        })
        .collect()
}

/// Paced latency percentile distributions, chorus (solid) against raw NNG
/// (dashed) for every point, as an SVG.
fn plot(path: &str, curves: &[(String, Vec<u64>, Vec<u64>)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let top = curves
        .iter()
        .flat_map(|(_, r, c)| r.iter().chain(c))
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "paced latency at 10 % of raw NNG's drop-free rate (µs, log)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..(LADDER.len() - 1) as f64,
            (1f64..top.max(10.0)).log_scale(),
        )
        .unwrap();
    chart
        .configure_mesh()
        .x_labels(LADDER.len())
        .x_label_formatter(&|x| {
            LADDER
                .get(x.round() as usize)
                .map_or(String::new(), |l| l.1.to_string())
        })
        .y_desc("µs")
        .draw()
        .unwrap();
    for (i, (name, raw, chorus)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = |v: &Vec<u64>| {
            v.iter()
                .enumerate()
                .map(|(x, y)| (x as f64, (*y).max(1) as f64))
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(pts(chorus), color.stroke_width(2)))
            .unwrap()
            .label(format!("chorus {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(pts(raw), 6, 4, color.stroke_width(1)))
            .unwrap()
            .label(format!("raw NNG {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
