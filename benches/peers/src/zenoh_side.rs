//! Zenoh, as its own examples use it: peer mode, default settings but
//! multicast scouting off (the two sides are told each other's address),
//! tcp loopback, reliable, congestion control Block (no drop), a publisher
//! putting a fresh Vec per event, a callback subscriber.

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zenoh::qos::CongestionControl;

use crate::{cpu_time, payload, ready, time_pings, Counter, Pinger, System};

pub struct Zenoh;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("a tokio runtime")
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Listens on a free port (returns its endpoint) or connects to `connect`.
async fn open(connect: Option<&str>) -> (zenoh::Session, String) {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", r#""peer""#).expect("mode");
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .expect("scouting");
    let endpoint = match connect {
        Some(c) => {
            config
                .insert_json5("connect/endpoints", &format!(r#"["{c}"]"#))
                .expect("connect");
            config
                .insert_json5("listen/endpoints", "[]")
                .expect("listen");
            c.to_owned()
        }
        None => {
            let e = format!("tcp/127.0.0.1:{}", free_port());
            config
                .insert_json5("listen/endpoints", &format!(r#"["{e}"]"#))
                .expect("listen");
            e
        }
    };
    let session = zenoh::open(config).await.expect("a zenoh session");
    (session, endpoint)
}

async fn publisher(
    session: &zenoh::Session,
    key: &'static str,
) -> zenoh::pubsub::Publisher<'static> {
    let p = session
        .declare_publisher(key)
        .congestion_control(CongestionControl::Block)
        .await
        .expect("a publisher");
    // Until the other side's subscriber is known, puts go nowhere.
    let start = Instant::now();
    while !p.matching_status().await.expect("matching").matching() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no subscriber for {key}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p
}

impl System for Zenoh {
    fn sub(&self, warmup: f64, secs: f64) -> Value {
        runtime().block_on(async {
            let (session, endpoint) = open(None).await;
            let (done_tx, done) = mpsc::channel();
            // Taken out once its window is over (events go on arriving).
            let counter = Mutex::new(Some(Counter::new(warmup, secs)));
            let _sub = session
                .declare_subscriber("bench/thr")
                .callback(move |sample| {
                    let mut c = counter.lock().expect("not poisoned");
                    let Some(counter) = c.as_mut() else {
                        return;
                    };
                    if counter.event(&sample.payload().to_bytes()) {
                        let counter = c.take().expect("checked");
                        let _ = done_tx.send(counter.result());
                    }
                })
                .await
                .expect("a subscriber");
            ready(&endpoint);
            tokio::task::spawn_blocking(move || done.recv().expect("a result"))
                .await
                .expect("joined")
        })
    }

    fn publish(&self, connect: &str, size: usize, secs: f64) -> Value {
        runtime().block_on(async {
            let (session, _) = open(Some(connect)).await;
            let p = publisher(&session, "bench/thr").await;
            let cpu0 = cpu_time();
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..256 {
                    p.put(payload(n, size)).await.expect("put");
                    n += 1;
                }
            }
            let cpu = cpu_time() - cpu0;
            json!({ "published": n, "cpu_us_per_event": cpu.as_secs_f64() * 1e6 / n as f64 })
        })
    }

    fn pong(&self) -> Value {
        runtime().block_on(async {
            let (session, endpoint) = open(None).await;
            let pings = session
                .declare_subscriber("bench/ping")
                .await
                .expect("a subscriber");
            ready(&endpoint);
            let p = publisher(&session, "bench/pong").await;
            while let Ok(sample) = pings.recv_async().await {
                p.put(sample.payload().clone()).await.expect("put");
            }
            json!({})
        })
    }

    fn ping(&self, connect: &str, pings: usize) -> Value {
        runtime().block_on(async {
            let (session, _) = open(Some(connect)).await;
            let pongs = session
                .declare_subscriber("bench/pong")
                .await
                .expect("a subscriber");
            let p = publisher(&session, "bench/ping").await;
            // The pong side's publisher waits for our subscriber: give it
            // time to see it before the first ping.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut pinger = ZenohPinger {
                publisher: p,
                pongs,
            };
            time_pings(&mut pinger, pings).await
        })
    }
}

struct ZenohPinger {
    publisher: zenoh::pubsub::Publisher<'static>,
    pongs: zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
}

impl Pinger for ZenohPinger {
    async fn round_trip(&mut self, n: u64) {
        self.publisher.put(payload(n, 64)).await.expect("put");
        loop {
            let s = self.pongs.recv_async().await.expect("a pong");
            if s.payload().to_bytes()[..8] == n.to_le_bytes() {
                return;
            }
        }
    }
}
