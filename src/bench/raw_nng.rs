//! The baseline: raw NNG pub/sub measured in the same run.
//!
//! Owns: raw pub0/sub0 buses with chorus's default buffer sizes, paced
//! segments on them, and the search for raw NNG's drop-free rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use nng::options::{Options as _, RecvBufferSize, RecvTimeout, SendBufferSize};
use nng::{Protocol, Socket};

use super::pacing::{histogram, payload, record, stamp_of, Schedule};
use super::scenario::Point;

/// chorus's default send/recv buffer, used for raw NNG too.
const BUFFER: i32 = 1024;

/// What one raw NNG segment measured.
pub(crate) struct RawRun {
    pub sent: u64,
    pub min_received: u64,
    pub delivered_per_sec: f64,
    pub latency: Histogram<u64>,
}

/// Raw NNG pub/sub sockets: one pub0 per publisher, one sub0 per
/// subscriber dialed to every publisher, with chorus's default buffers.
pub(crate) struct RawBus {
    pubs: Vec<Socket>,
    subs: Vec<Socket>,
}

impl RawBus {
    pub(crate) fn open(p: Point, addr: &mut u32) -> RawBus {
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
    pub(crate) fn segment(&self, size: usize, rate: f64, secs: f64) -> RawRun {
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

    pub(crate) fn close(self) {
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
pub(crate) fn raw_drop_free(p: Point, secs: f64, addr: &mut u32, bar: &ProgressBar) -> (f64, f64) {
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
