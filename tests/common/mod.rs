//! Helpers shared by the integration tests: waiting on conditions with a
//! deadline (never sleep-and-hope) and wiring two peers together.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus::heartbeat::{Response, Survey};
use chorus::{Endpoints, PeerId, PeerInfo};
use nng::options::Options;

use chorus::{Peer, PeerBuilder, Result};
use futures::{Stream, StreamExt};

/// Generous bound for anything that should happen "soon" on a loaded CI box.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds, panicking with `what` after [`DEADLINE`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, panicking with `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Next item of a stream, with a deadline.
pub async fn next<S: Stream + Unpin>(what: &str, s: &mut S) -> S::Item {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// A builder with test-friendly heartbeats (100 ms rounds).
pub fn fast(name: &str, url: &str) -> PeerBuilder {
    Peer::builder()
        .name(name)
        .listen(url)
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_deadline(Duration::from_millis(50))
}

/// Starts a peer listening on `url`, joining through `seed` if given.
pub async fn peer(name: &str, url: &str) -> Result<Peer> {
    fast(name, url).start().await
}

/// Waits until every peer sees all the others as live members and has its
/// pub/sub links up, so nothing published afterwards is lost to a late join.
pub async fn wait_mesh(peers: &[&Peer]) {
    let others = peers.len() as u64 - 1;
    for p in peers {
        p.wait_for_members(others, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("full mesh: {e}"));
    }
}

/// Two peers on `scheme`, `b` joined through `a`, fully linked.
pub async fn pair(scheme: &str) -> (Peer, Peer) {
    let a = peer("a", &unique_url(scheme, "a")).await.unwrap();
    let b = fast("b", &unique_url(scheme, "b"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    (a, b)
}

/// A unique inproc or ipc URL for this test process.
pub fn unique_url(scheme: &str, tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    match scheme {
        "inproc" => format!("inproc://chorus-{tag}-{pid}-{n}"),
        "ipc" => format!(
            "ipc://{}/chorus-{tag}-{pid}-{n}.sock",
            std::env::temp_dir().display()
        ),
        _ => "tcp://127.0.0.1:0".to_string(),
    }
}

/// A member written by hand from docs/WIRE.md: a raw pub socket for events
/// and a raw respondent that answers surveys through `answer`.
pub struct FakeMember {
    pub info: Arc<PeerInfo>,
    pub publisher: nng::Socket,
    /// Bus key: surveys are opened and replies and events sealed with it.
    key: Option<Vec<u8>>,
    respondent: nng::Socket,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Builds the reply to one survey, as raw bytes (or none).
pub type Answer = Box<dyn FnMut(&Survey) -> Option<Vec<u8>> + Send>;

impl FakeMember {
    /// A fake member that joins through `seed` and answers with `answer`.
    pub fn start(seed: &str, id: u64, answer: impl FnOnce(Arc<PeerInfo>) -> Answer) -> Self {
        Self::start_with(seed, id, 1, None, answer)
    }

    /// [`start`](Self::start) with an incarnation and a bus key. Without a
    /// key, a survey's last 16 bytes are ignored if it does not decode
    /// whole (an outsider can read a keyed bus: it is not encrypted).
    pub fn start_with(
        seed: &str,
        id: u64,
        incarnation: u64,
        key: Option<&[u8]>,
        answer: impl FnOnce(Arc<PeerInfo>) -> Answer,
    ) -> Self {
        let key = key.map(<[u8]>::to_vec);
        let publisher = nng::Socket::new(nng::Protocol::Pub0).unwrap();
        publisher
            .set_opt::<nng::options::SendBufferSize>(1024)
            .unwrap();
        let l = nng::Listener::new(&publisher, "tcp://127.0.0.1:0").unwrap();
        let port = l
            .get_opt::<nng::options::transport::tcp::BoundPort>()
            .unwrap();
        let info = Arc::new(PeerInfo {
            id: PeerId(id),
            incarnation,
            name: "fake".into(),
            endpoints: Endpoints {
                // Nobody listens here: discovery must cope with a dead endpoint.
                survey: "tcp://127.0.0.1:1".into(),
                publish: format!("tcp://127.0.0.1:{port}"),
                repair: "tcp://127.0.0.1:1".into(),
            },
            heartbeat_interval_ms: 0,
            tool: false,
            stream: 0,
        });
        let respondent = nng::Socket::new(nng::Protocol::Respondent0).unwrap();
        respondent
            .set_opt::<nng::options::RecvTimeout>(Some(Duration::from_millis(20)))
            .unwrap();
        nng::Dialer::new(&respondent, seed, true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut answer = answer(info.clone());
        let (r, halt, k) = (respondent.clone(), stop.clone(), key.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok(msg) = r.recv() else { continue };
                let frame = match &k {
                    Some(k) => chorus::auth::open_frame(k, msg.as_slice()),
                    None => Some(msg.as_slice()),
                };
                let Some(frame) = frame else { continue };
                let survey = Survey::decode(frame, 1 << 20).or_else(|e| {
                    let untagged = frame.len().checked_sub(16).ok_or(e)?;
                    Survey::decode(&frame[..untagged], 1 << 20)
                });
                let Ok(survey) = survey else { continue };
                if let Some(reply) = answer(&survey) {
                    let reply = match &k {
                        Some(k) => chorus::auth::seal_frame(k, &reply),
                        None => reply,
                    };
                    let _ = r.send(nng::Message::from(&reply[..]));
                }
            }
        });
        FakeMember {
            info,
            publisher,
            key,
            respondent,
            stop,
            thread: Some(thread),
        }
    }

    /// A fake member that answers every survey truthfully.
    pub fn honest(seed: &str, id: u64) -> Self {
        Self::honest_with(seed, id, 1, None)
    }

    /// [`honest`](Self::honest) with an incarnation and a bus key.
    pub fn honest_with(seed: &str, id: u64, incarnation: u64, key: Option<&[u8]>) -> Self {
        Self::start_with(seed, id, incarnation, key, |info| {
            let mut heartbeat = 0;
            Box::new(move |_| {
                heartbeat += 1;
                Some(
                    Response {
                        from: info.clone(),
                        heartbeat,
                        last_seq: 0,
                        acks: vec![],
                        durable: vec![],
                        groups: vec![],
                        views: vec![],
                        gossip: vec![],
                    }
                    .encode(),
                )
            })
        })
    }

    /// Publishes raw bytes, sealed with the bus key if it has one.
    pub fn send(&self, bytes: &[u8]) {
        match &self.key {
            Some(k) => self.send_unsealed(&chorus::auth::seal_frame(k, bytes)),
            None => self.send_unsealed(bytes),
        }
    }

    /// Publishes raw bytes as they are.
    pub fn send_unsealed(&self, bytes: &[u8]) {
        self.publisher.send(nng::Message::from(bytes)).unwrap();
    }
}

impl Drop for FakeMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.respondent.close();
        self.publisher.close();
    }
}

/// Path of a built example (`cargo test` builds them next to the test
/// binaries, in `target/<profile>/examples/`).
pub fn built_example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} not built; run through `cargo test` (or `cargo build --examples` first)",
        path.display()
    );
    path
}
