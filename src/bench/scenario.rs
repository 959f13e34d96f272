//! The chorus side of each point, and the paced comparison with raw NNG.
//!
//! Owns: [`Point`], chorus buses built the way an application builds them
//! (publishers are tokio tasks calling `publish_bytes(…).await` with a
//! fresh payload each), flood segments, and the paced latency rounds that
//! alternate raw NNG and chorus on buses kept open.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::{Peer, PeerBuilder, Subscription};

use super::pacing::{histogram, now_us, payload, record, stamp_of, Schedule};
use super::raw_nng::RawBus;

/// One measured point: publishers × subscribers, payload, transport.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    /// Publishing peers.
    pub pubs: usize,
    /// Subscribing peers.
    pub subs: usize,
    /// Payload bytes.
    pub size: usize,
    /// tcp loopback (`false`: inproc).
    pub tcp: bool,
}

impl Point {
    pub(crate) fn name(&self) -> String {
        format!(
            "{}x{} {}B {}",
            self.pubs,
            self.subs,
            self.size,
            if self.tcp { "tcp" } else { "inproc" }
        )
    }
}

/// What one chorus run measured.
pub(crate) struct ChorusRun {
    pub per_sub: Vec<f64>,
    pub latency: Histogram<u64>,
    pub retransmits: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub batches: u64,
}

/// How the chorus peers of a run are built.
#[derive(Clone, Debug)]
pub(crate) struct PeerSettings {
    /// Batch size (`--batch-bytes`, 0 = unbatched).
    pub batch_bytes: usize,
    /// Bus key (`--bus-key`; none by default).
    pub bus_key: Option<String>,
    /// Retransmit buffer (`--retransmit-buffer`; the library's default).
    pub retransmit_buffer: Option<usize>,
}

impl PeerSettings {
    pub(crate) fn builder(&self, name: String, url: String) -> PeerBuilder {
        let mut b = Peer::builder()
            .name(name)
            .listen(url)
            .batch_bytes(self.batch_bytes);
        if let Some(n) = self.retransmit_buffer {
            b = b.retransmit_buffer(n);
        }
        match self.bus_key.as_deref() {
            Some(key) => b.bus_key(key),
            None => b,
        }
    }
}

/// A chorus bus: publishers, subscribers and one subscription each to the
/// bench topic, kept across the segments of a run.
pub(crate) struct Bus {
    pubs: Vec<Peer>,
    subs: Vec<Peer>,
    streams: Vec<Subscription<Bytes>>,
}

impl Bus {
    pub(crate) async fn open(p: Point, peers: &PeerSettings, addr: &mut u32) -> Bus {
        *addr += 1;
        let url = |role: &str, i: usize| {
            if p.tcp {
                "tcp://127.0.0.1:0".to_string()
            } else {
                format!("inproc://bench-{}-{addr}-{role}{i}", std::process::id())
            }
        };
        let seed = peers
            .builder("pub-0".into(), url("p", 0))
            .start()
            .await
            .unwrap();
        let join =
            |name: String, url: String| peers.builder(name, url).seed(seed.local_url()).start();
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
    pub(crate) async fn segment(
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
    pub(crate) async fn close(self, per_sub: Vec<f64>, latency: Histogram<u64>) -> ChorusRun {
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
pub(crate) async fn flood(peer: &Peer, count: u64, size: usize) {
    for _ in 0..count {
        let p = Bytes::from(payload(size, now_us()));
        peer.publish_bytes("bench.data", p).await.unwrap();
    }
}

/// Chorus flooding: every publisher sends `count` messages.
pub(crate) async fn chorus_flood(
    p: Point,
    peers: &PeerSettings,
    count: u64,
    addr: &mut u32,
) -> ChorusRun {
    let mut bus = Bus::open(p, peers, addr).await;
    let (per_sub, latency) = bus.segment(count, p.size, None).await;
    bus.close(per_sub, latency).await
}

/// Rounds of the paced comparison: raw NNG and chorus alternate.
pub(crate) const ROUNDS: u64 = 10;

/// Paced latency of raw NNG and chorus at `rate` msg/s in all, `count`
/// messages per publisher each, in alternating rounds on buses kept open.
/// Returns both merged histograms, the chorus run, and the median over
/// rounds of chorus p99 ÷ raw p99 (adjacent in time, so robust to a burst
/// of CPU steal that hits one round).
pub(crate) fn paced(
    rt: &tokio::runtime::Runtime,
    p: Point,
    peers: &PeerSettings,
    rate: f64,
    count: u64,
    addr: &mut u32,
) -> (Histogram<u64>, ChorusRun, f64) {
    let per_round = (count / ROUNDS).max(100);
    let secs = (per_round * p.pubs as u64) as f64 / rate;
    let raw_bus = RawBus::open(p, addr);
    let mut bus = rt.block_on(Bus::open(p, peers, addr));
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
