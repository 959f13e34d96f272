//! chorus, as a user writes it: default settings, tcp loopback, one tokio
//! task publishing with one `.await` per event, a `subscribe_bytes` stream.

use std::time::{Duration, Instant};

use chorus::Peer;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::{cpu_time, payload, ready, time_pings, Counter, Pinger, System};

pub struct Chorus;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("a tokio runtime")
}

async fn start(name: &str, seed: Option<&str>) -> Peer {
    let mut b = Peer::builder().name(name).listen("tcp://127.0.0.1:0");
    if let Some(seed) = seed {
        b = b.seed(seed);
    }
    let peer = b.start().await.expect("a chorus peer");
    if seed.is_some() {
        peer.wait_for_members(1, Duration::from_secs(30))
            .await
            .expect("the other side joins");
    }
    peer
}

impl System for Chorus {
    fn sub(&self, warmup: f64, secs: f64) -> Value {
        runtime().block_on(async {
            let peer = start("thr-sub", None).await;
            let mut events = peer.subscribe_bytes("bench.thr").expect("subscribe");
            ready(peer.local_url());
            let mut counter = Counter::new(warmup, secs);
            while let Some(d) = events.next().await {
                if counter.event(&d.value) {
                    break;
                }
            }
            counter.result()
        })
    }

    fn publish(&self, connect: &str, size: usize, secs: f64) -> Value {
        runtime().block_on(async {
            let peer = start("thr-pub", Some(connect)).await;
            // The subscriber's subscription is live once it is a member.
            let cpu0 = cpu_time();
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..256 {
                    peer.publish_bytes("bench.thr", payload(n, size))
                        .await
                        .expect("publish");
                    n += 1;
                }
            }
            let cpu = cpu_time() - cpu0;
            json!({ "published": n, "cpu_us_per_event": cpu.as_secs_f64() * 1e6 / n as f64 })
        })
    }

    fn pong(&self) -> Value {
        runtime().block_on(async {
            let peer = start("pong", None).await;
            let mut pings = peer.subscribe_bytes("bench.ping").expect("subscribe");
            ready(peer.local_url());
            while let Some(d) = pings.next().await {
                peer.publish_bytes("bench.pong", d.value.clone())
                    .await
                    .expect("publish");
            }
            json!({})
        })
    }

    fn ping(&self, connect: &str, pings: usize) -> Value {
        runtime().block_on(async {
            let peer = start("ping", Some(connect)).await;
            let pongs = peer.subscribe_bytes("bench.pong").expect("subscribe");
            // The pong side subscribes to our pongs' topic once it counts us.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut pinger = ChorusPinger { peer, pongs };
            time_pings(&mut pinger, pings).await
        })
    }
}

struct ChorusPinger {
    peer: Peer,
    pongs: chorus::Subscription<bytes::Bytes>,
}

impl Pinger for ChorusPinger {
    async fn round_trip(&mut self, n: u64) {
        self.peer
            .publish_bytes("bench.ping", payload(n, 64))
            .await
            .expect("publish");
        loop {
            let d = self.pongs.next().await.expect("a pong");
            if d.value[..8] == n.to_le_bytes() {
                return;
            }
        }
    }
}
