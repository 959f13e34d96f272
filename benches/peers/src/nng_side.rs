//! Raw NNG, the floor under chorus: the same ping-pong over pub0/sub0
//! sockets with blocking calls (no reliability, no tokio). Each side
//! listens with a pub0 and dials the other's with a sub0.

use std::time::{Duration, Instant};

use nng::options::{Options as _, RecvTimeout};
use nng::{Protocol, Socket};
use serde_json::{json, Value};

use crate::{cpu_time, histogram, payload, peak_rss_kib, percentiles, ready, System};

pub struct RawNng;

/// A pub0 listening on a free port, and its URL.
fn listening_pub() -> (Socket, String) {
    let s = Socket::new(Protocol::Pub0).expect("pub0");
    let l = nng::Listener::new(&s, "tcp://127.0.0.1:0").expect("listen");
    let port = l
        .get_opt::<nng::options::transport::tcp::BoundPort>()
        .expect("bound port");
    (s, format!("tcp://127.0.0.1:{port}"))
}

fn dialed_sub(url: &str) -> Socket {
    let s = Socket::new(Protocol::Sub0).expect("sub0");
    s.set_opt::<nng::options::protocol::pubsub::Subscribe>(vec![])
        .expect("subscribe");
    nng::Dialer::new(&s, url, true).expect("dial");
    s
}

impl System for RawNng {
    fn sub(&self, _warmup: f64, _secs: f64) -> Value {
        panic!("raw NNG runs the round trip only (pub/sub drops under a flood)")
    }

    fn publish(&self, _connect: &str, _size: usize, _secs: f64) -> Value {
        panic!("raw NNG runs the round trip only")
    }

    fn pong(&self) -> Value {
        let (pongs, url) = listening_pub();
        ready(&url);
        // The ping side says where its pub0 listens through a file.
        let pings = loop {
            std::thread::sleep(Duration::from_millis(1));
            if let Ok(m) = std::fs::read_to_string(pong_file(&url)) {
                break dialed_sub(m.trim());
            }
        };
        loop {
            let m = pings.recv().expect("a ping");
            pongs.send(m).map_err(|(_, e)| e).expect("a pong");
        }
    }

    fn ping(&self, connect: &str, pings: usize) -> Value {
        let (out, url) = listening_pub();
        let back = dialed_sub(connect);
        // Written whole, then renamed: the pong side polls for the file
        // and must never read it half written.
        let file = pong_file(connect);
        let partial = file.with_extension("partial");
        std::fs::write(&partial, &url).expect("tell the pong side");
        std::fs::rename(&partial, &file).expect("tell the pong side");
        back.set_opt::<RecvTimeout>(Some(Duration::from_millis(100)))
            .expect("timeout");
        // Until both links are up, pings go nowhere: send until one returns.
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(30), "no pong");
            out.send(&payload(u64::MAX, 64)[..])
                .map_err(|(_, e)| e)
                .expect("send");
            if back.recv().is_ok() {
                break;
            }
        }
        back.set_opt::<RecvTimeout>(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut h = histogram();
        let cpu0 = cpu_time();
        for n in 0..(crate::PING_WARMUP + pings) as u64 {
            let sent = Instant::now();
            out.send(&payload(n, 64)[..])
                .map_err(|(_, e)| e)
                .expect("send");
            loop {
                let m = back.recv().expect("a pong within 5 s");
                if m[..8] == n.to_le_bytes() {
                    break;
                }
            }
            if n >= crate::PING_WARMUP as u64 {
                h.record(sent.elapsed().as_micros().max(1) as u64)
                    .expect("in range");
            }
        }
        let cpu = cpu_time() - cpu0;
        let _ = std::fs::remove_file(pong_file(connect));
        let mut v = percentiles(&h);
        v["cpu_us_per_round_trip"] =
            json!(cpu.as_secs_f64() * 1e6 / (crate::PING_WARMUP + pings) as f64);
        v["peak_rss_kib"] = json!(peak_rss_kib());
        v
    }
}

/// Where the ping side tells the pong side (listening at `url`) its own URL.
fn pong_file(url: &str) -> std::path::PathBuf {
    let port = url.rsplit(':').next().unwrap_or("0");
    std::env::temp_dir().join(format!("chorus-peers-nng-{port}"))
}
