//! Configuration of a peer and its start-up.
//!
//! Owns: [`PeerBuilder`], every setting's default and range check, and the
//! order in which a peer comes up (open sockets, listen, spawn drivers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::bad_input::BadInputLog;
use crate::envelope::PeerId;
use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::publisher::{now_us, Publisher};
use crate::receiver::Receiver;
use crate::stats::Counters;
use crate::subscription::Registry;
use crate::transport::{self, SocketConfig};

/// Largest queue NNG accepts for `send_buffer` / `recv_buffer`.
pub const MAX_NNG_BUFFER: usize = 8192;

/// Builds and starts a [`Peer`]. Every setting has a default:
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `name` | `"chorus"` | service name, shown to other members |
/// | `listen` | `tcp://127.0.0.1:0` | where this peer publishes; port 0 picks a free port |
/// | `send_buffer` | 1024 | messages NNG queues per subscriber link before dropping the oldest |
/// | `recv_buffer` | 1024 | messages NNG queues on receive before dropping the oldest |
/// | `subscription_buffer` | 1024 | deliveries queued per subscription before the receive path waits |
/// | `publish_queue` | 1024 | messages queued between `publish` and the socket before `publish` waits |
/// | `max_message_size` | 1 MiB | largest encoded frame sent or accepted |
///
/// ```no_run
/// # async fn f() -> chorus::Result<()> {
/// let peer = chorus::Peer::builder()
///     .name("billing")
///     .listen("tcp://127.0.0.1:0")
///     .start()
///     .await?;
/// println!("publishing on {}", peer.local_url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PeerBuilder {
    pub(crate) name: String,
    pub(crate) id: Option<PeerId>,
    pub(crate) listen: String,
    pub(crate) send_buffer: usize,
    pub(crate) recv_buffer: usize,
    pub(crate) subscription_buffer: usize,
    pub(crate) publish_queue: usize,
    pub(crate) max_message_size: usize,
}

impl Default for PeerBuilder {
    fn default() -> Self {
        PeerBuilder {
            name: "chorus".into(),
            id: None,
            listen: "tcp://127.0.0.1:0".into(),
            send_buffer: 1024,
            recv_buffer: 1024,
            subscription_buffer: 1024,
            publish_queue: 1024,
            max_message_size: 1 << 20,
        }
    }
}

impl PeerBuilder {
    /// Service name of this peer (several peers may share one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Pins the peer id instead of drawing a random one.
    pub fn id(mut self, id: PeerId) -> Self {
        self.id = Some(id);
        self
    }

    /// URL this peer publishes on: `tcp://host:port` (port 0 for any free
    /// port), `ipc:///path` or `inproc://name`.
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.listen = url.into();
        self
    }

    /// Messages NNG queues per subscriber link (1..=8192).
    pub fn send_buffer(mut self, messages: usize) -> Self {
        self.send_buffer = messages;
        self
    }

    /// Messages NNG queues on the receive side (1..=8192).
    pub fn recv_buffer(mut self, messages: usize) -> Self {
        self.recv_buffer = messages;
        self
    }

    /// Deliveries queued per subscription before the receive path waits (≥ 1).
    pub fn subscription_buffer(mut self, deliveries: usize) -> Self {
        self.subscription_buffer = deliveries;
        self
    }

    /// Messages queued between `publish` and the socket before `publish` waits (≥ 1).
    pub fn publish_queue(mut self, messages: usize) -> Self {
        self.publish_queue = messages;
        self
    }

    /// Largest encoded frame, in bytes, that is sent or accepted (≥ 1 KiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    fn check(&self) -> Result<()> {
        let range = |what: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{what} is {v}, must be in {lo}..={hi}"
                )))
            }
        };
        range("send_buffer", self.send_buffer, 1, MAX_NNG_BUFFER)?;
        range("recv_buffer", self.recv_buffer, 1, MAX_NNG_BUFFER)?;
        range("subscription_buffer", self.subscription_buffer, 1, 1 << 20)?;
        range("publish_queue", self.publish_queue, 1, 1 << 20)?;
        range("max_message_size", self.max_message_size, 1024, 1 << 30)?;
        transport::validate_url(&self.listen)
    }

    /// Opens the sockets, listens and starts the driver tasks.
    /// Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<Peer> {
        self.check()?;
        let counters = Arc::new(Counters::default());
        let sockets = SocketConfig {
            send_buffer: self.send_buffer as i32,
            recv_buffer: self.recv_buffer as i32,
            // Frames up to 2× the limit reach chorus and are counted as
            // oversized; beyond that NNG closes the link (memory bound).
            recv_max_size: self.max_message_size.saturating_mul(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        };
        let pub_socket = transport::pub_socket(&sockets, counters.clone())?;
        let local_url = transport::listen(&pub_socket, &self.listen)?;
        let sub_socket = transport::sub_socket(&sockets, counters.clone())?;

        let id = self.id.unwrap_or_else(PeerId::random);
        let incarnation = now_us();
        let registry = Arc::new(Registry::default());

        let (pub_tx, pub_rx) = mpsc::channel(self.publish_queue);
        let publisher = Publisher {
            socket: pub_socket,
            origin: id,
            incarnation,
            counters: counters.clone(),
        };
        let (sub_tx, sub_rx) = mpsc::channel(16);
        let receiver = Receiver {
            socket: sub_socket,
            registry: registry.clone(),
            counters: counters.clone(),
            max_message_size: self.max_message_size,
            dialers: HashMap::new(),
            bad: BadInputLog::default(),
        };
        let tasks = vec![
            tokio::spawn(publisher.run(pub_rx)),
            tokio::spawn(receiver.run(sub_rx)),
        ];
        tracing::info!(%id, name = %self.name, url = %local_url, "peer started");
        Ok(Peer::new(crate::peer::Parts {
            id,
            incarnation,
            config: self,
            local_url,
            counters,
            registry,
            pub_tx,
            sub_tx,
            tasks,
        }))
    }
}
