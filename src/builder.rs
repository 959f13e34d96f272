//! Configuration of a peer and its start-up.
//!
//! Owns: [`PeerBuilder`], every setting's default and range check, and the
//! order in which a peer comes up (open sockets, listen, spawn drivers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::{Auth, MIN_BUS_KEY_LEN};
use crate::bad_input::BadInputLog;
use crate::dedup::KeyCache;
use crate::discovery::{Discovery, View};
use crate::envelope::{BatchWriter, PeerId};
use crate::error::{Error, Result};
use crate::events::EVENT_BUFFER;
use crate::faults::{FaultInjector, LinkFaults};
use crate::gate::Gate;
use crate::inbox::{Inbox, InboxConfig};
use crate::member::{Endpoints, PeerInfo, MAX_NAME_LEN};
use crate::membership::{Membership, MembershipConfig};
use crate::outbox::{Outbox, OutboxConfig};
use crate::peer::Peer;
use crate::publisher::{now_us, Publisher};
use crate::receiver::Receiver;
use crate::receiver::{AckView, LastSeqBoard};
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
/// | `listen` | `tcp://127.0.0.1:0` | public address (heartbeat surveyor); port 0 picks a free port |
/// | `publish_url` | derived | event publisher: same host, free port (tcp) or `<listen>.pub` |
/// | `seed` | none | surveyor URL of a member to join through (several allowed) |
/// | `heartbeat_interval` | 500 ms | time between heartbeat rounds |
/// | `heartbeat_deadline` | 250 ms | how long a round waits for responses (< interval) |
/// | `suspect_after` | 2 | rounds without heartbeat progress before Suspect |
/// | `miss_limit` | 4 | rounds without heartbeat progress before Failed |
/// | `max_members` | 1024 | members remembered; more are refused and counted |
/// | `send_buffer` | 1024 | messages NNG queues per subscriber link before dropping the oldest |
/// | `recv_buffer` | 1024 | messages NNG queues on receive before dropping the oldest |
/// | `subscription_buffer` | 1024 | deliveries queued per subscription before the receive path waits |
/// | `publish_queue` | 1024 | messages queued between `publish` and the socket before `publish` waits |
/// | `max_message_size` | 1 MiB | largest encoded frame sent or accepted |
/// | `retransmit_buffer` | 8192 | envelopes kept until every live member acknowledged them |
/// | `retransmit_bytes` | 16 MiB | bytes of those envelopes at most (whichever bound is reached first) |
/// | `backpressure` | `Wait` | `publish` waits while that buffer is full (`FailFast`: error) |
/// | `ordered_delivery` | true | per-origin sequence order, gaps held back until repaired or lost |
/// | `duplicate_window` | 65536 keys, 120 s | idempotency keys remembered to drop repeats |
/// | `batch_bytes` | 64 KiB | events already queued are sent together up to this size; above 50 k events/s a batch also gathers ~200 µs of events |
/// | `stall_limit` | 30 s | how long a full retransmit buffer waits for members that do not ack before cutting them off |
/// | `bus_key` / `bus_keys` | none | shared secret(s): every message authenticated (see [`bus_key`](Self::bus_key)) |
/// | `link_faults` | none | injected drop/duplicate/reorder/delay on receive (tests, demos) |
///
/// **Failure-detection bound.** A member that dies is reported Failed by
/// every other member within `(miss_limit + 2) × heartbeat_interval +
/// heartbeat_deadline` (3.25 s with the defaults): `miss_limit` full rounds
/// without progress, plus up to two rounds for the last heartbeat it sent to
/// reach everyone through gossip. A graceful [`Peer::shutdown`] is seen as
/// Left within one round trip instead.
///
/// ```
/// # #[tokio::main] async fn main() -> chorus::Result<()> {
/// use std::time::Duration;
/// let peer = chorus::Peer::builder()
///     .name("billing")
///     .listen("tcp://127.0.0.1:0")
///     .seed("tcp://127.0.0.1:7000") // retried until it answers
///     .heartbeat_interval(Duration::from_millis(200))
///     .heartbeat_deadline(Duration::from_millis(100))
///     .start()
///     .await?;
/// assert!(peer.local_url().starts_with("tcp://127.0.0.1:"));
/// println!("join me with --seed {}", peer.local_url());
/// peer.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PeerBuilder {
    pub(crate) name: String,
    pub(crate) id: Option<PeerId>,
    pub(crate) listen: String,
    pub(crate) publish_url: Option<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_deadline: Duration,
    pub(crate) membership: MembershipConfig,
    pub(crate) send_buffer: usize,
    pub(crate) recv_buffer: usize,
    pub(crate) subscription_buffer: usize,
    pub(crate) publish_queue: usize,
    pub(crate) max_message_size: usize,
    pub(crate) link_faults: LinkFaults,
    pub(crate) bus_keys: Vec<Secret>,
    pub(crate) stall_limit: Duration,
    pub(crate) retransmit_buffer: usize,
    pub(crate) retransmit_bytes: usize,
    pub(crate) backpressure: Backpressure,
    pub(crate) ordered: bool,
    pub(crate) dedup_keys: usize,
    pub(crate) dedup_window: Duration,
    pub(crate) batch_bytes: usize,
}

/// What `publish` does while the retransmit buffer is full of envelopes a
/// live member has not acknowledged yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until acknowledgements free room (or the lagging member fails).
    #[default]
    Wait,
    /// Return [`Error::BufferFull`] at once.
    FailFast,
}

impl Default for PeerBuilder {
    fn default() -> Self {
        PeerBuilder {
            name: "chorus".into(),
            id: None,
            listen: "tcp://127.0.0.1:0".into(),
            publish_url: None,
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_deadline: Duration::from_millis(250),
            membership: MembershipConfig::default(),
            send_buffer: 1024,
            recv_buffer: 1024,
            subscription_buffer: 1024,
            publish_queue: 1024,
            max_message_size: 1 << 20,
            link_faults: LinkFaults::default(),
            bus_keys: Vec::new(),
            stall_limit: Duration::from_secs(30),
            retransmit_buffer: 8192,
            retransmit_bytes: 16 << 20,
            backpressure: Backpressure::Wait,
            ordered: true,
            dedup_keys: 65536,
            dedup_window: Duration::from_secs(120),
            batch_bytes: 64 * 1024,
        }
    }
}

impl PeerBuilder {
    /// Service name of this peer (several peers may share one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Pins the peer id. By default it is derived from the name and the
    /// public URL, so a peer restarted at the same address keeps its id and
    /// is reported `Rejoined` (with a new incarnation).
    pub fn id(mut self, id: PeerId) -> Self {
        self.id = Some(id);
        self
    }

    /// Public address of this peer (its heartbeat surveyor), what others
    /// use as a seed: `tcp://host:port` (port 0 for any free port),
    /// `ipc:///path` or `inproc://name`.
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.listen = url.into();
        self
    }

    /// Where events are published, if not derived from `listen`.
    pub fn publish_url(mut self, url: impl Into<String>) -> Self {
        self.publish_url = Some(url.into());
        self
    }

    /// Joins the bus through the member listening at `url` (its public
    /// address). May be given several times. A seed that is down is redialed
    /// in the background; seeds are dialed for the peer's whole life, so a
    /// peer cut off from everyone finds its way back through them.
    pub fn seed(mut self, url: impl Into<String>) -> Self {
        self.seeds.push(url.into());
        self
    }

    /// Time between heartbeat rounds (≥ 10 ms).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long a heartbeat round waits for responses (shorter than the interval).
    pub fn heartbeat_deadline(mut self, deadline: Duration) -> Self {
        self.heartbeat_deadline = deadline;
        self
    }

    /// Rounds without heartbeat progress before a member is Suspect (≥ 1).
    pub fn suspect_after(mut self, rounds: u32) -> Self {
        self.membership.suspect_after = rounds;
        self
    }

    /// Rounds without heartbeat progress before a member is Failed
    /// (≥ `suspect_after`).
    pub fn miss_limit(mut self, rounds: u32) -> Self {
        self.membership.miss_limit = rounds;
        self
    }

    /// Most members remembered (1..=65536).
    pub fn max_members(mut self, members: usize) -> Self {
        self.membership.max_members = members;
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

    /// How long the retransmit buffer may stay full, waiting for members
    /// that do not acknowledge (a stuck handler, a subscriber that never
    /// reads, a malicious peer), before this peer stops waiting for them
    /// (default 30 s). Until then `publish` waits (backpressure); after,
    /// publishing goes on, those members are counted in
    /// `Stats::members_cut_off` and what they can no longer be sent is
    /// reported as lost on their side.
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// Makes the bus private to holders of `secret` (at least
    /// [`MIN_BUS_KEY_LEN`](crate::MIN_BUS_KEY_LEN) bytes, e.g. 32 random
    /// bytes): every message this peer sends carries a MAC (keyed BLAKE3)
    /// over its bytes, which name origin, incarnation and sequence number,
    /// and every message it receives must carry a valid one. A peer without
    /// the key never becomes a member, its messages are dropped and counted
    /// (`Stats::auth_failed`), its links are closed after
    /// 3 failures and its address is quarantined with doubling bans
    /// (1 s to 5 min); it cannot forge a member's identity. Messages are
    /// not encrypted: topics and payloads travel in clear.
    pub fn bus_key(self, secret: impl AsRef<[u8]>) -> Self {
        self.bus_keys([secret])
    }

    /// Several bus keys, for rotation: messages are signed with the first
    /// and accepted under any. Rotate by adding the new key second on every
    /// peer, then first, then removing the old one.
    pub fn bus_keys<K: AsRef<[u8]>>(mut self, secrets: impl IntoIterator<Item = K>) -> Self {
        self.bus_keys = secrets
            .into_iter()
            .map(|k| Secret(k.as_ref().to_vec()))
            .collect();
        self
    }

    /// Injects seeded link faults (drop, duplicate, reorder, delay) on this
    /// peer's event receive path. Off by default; for tests and demos.
    pub fn link_faults(mut self, faults: LinkFaults) -> Self {
        self.link_faults = faults;
        self
    }

    /// Envelopes kept for retransmission until every live member has
    /// acknowledged them (≥ 16). Full: see [`backpressure`](Self::backpressure).
    pub fn retransmit_buffer(mut self, envelopes: usize) -> Self {
        self.retransmit_buffer = envelopes;
        self
    }

    /// Bytes of encoded envelopes the retransmit buffer keeps at most (≥
    /// 1024; exceeded by one envelope at most). The
    /// buffer is full at this size or at
    /// [`retransmit_buffer`](Self::retransmit_buffer) envelopes, whichever
    /// comes first; this bounds a publisher's memory whatever the payloads.
    pub fn retransmit_bytes(mut self, bytes: usize) -> Self {
        self.retransmit_bytes = bytes;
        self
    }

    /// What `publish` does while the retransmit buffer is full.
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }

    /// Deliver each origin's events in sequence order, holding later ones
    /// back until a gap is repaired or declared lost (default `true`), or
    /// deliver them as they arrive (`false`). Both deliver each at most once.
    pub fn ordered_delivery(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Idempotency keys (`PublishOptions::id`) remembered to drop repeats:
    /// at most `keys` of them, each for `window`.
    pub fn duplicate_window(mut self, keys: usize, window: Duration) -> Self {
        self.dedup_keys = keys;
        self.dedup_window = window;
        self
    }

    /// Largest batch, in bytes of encoded events: events already queued are
    /// sent together up to this size (capped at half the maximum message
    /// size). 0 sends every event as its own message.
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
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
        range("max_members", self.membership.max_members, 1, 1 << 16)?;
        range("retransmit_buffer", self.retransmit_buffer, 16, 1 << 24)?;
        range("retransmit_bytes", self.retransmit_bytes, 1024, 1 << 40)?;
        range("duplicate_window keys", self.dedup_keys, 1, 1 << 24)?;
        let m = self.membership;
        if m.suspect_after == 0 || m.miss_limit < m.suspect_after {
            return Err(Error::Config(format!(
                "need 1 <= suspect_after ({}) <= miss_limit ({})",
                m.suspect_after, m.miss_limit
            )));
        }
        if self.heartbeat_interval < Duration::from_millis(10)
            || self.heartbeat_deadline.is_zero()
            || self.heartbeat_deadline >= self.heartbeat_interval
        {
            return Err(Error::Config(format!(
                "need heartbeat_interval ({:?}) >= 10ms and 0 < heartbeat_deadline ({:?}) < interval",
                self.heartbeat_interval, self.heartbeat_deadline
            )));
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(Error::Config(format!(
                "name longer than {MAX_NAME_LEN} bytes"
            )));
        }
        self.link_faults.check().map_err(Error::Config)?;
        if let Some(short) = self.bus_keys.iter().find(|k| k.0.len() < MIN_BUS_KEY_LEN) {
            return Err(Error::Config(format!(
                "bus key of {} bytes is too short: use at least {MIN_BUS_KEY_LEN} random bytes",
                short.0.len()
            )));
        }
        transport::validate_url(&self.listen)?;
        for url in self.seeds.iter().chain(&self.publish_url) {
            transport::validate_url(url)?;
        }
        Ok(())
    }

    /// Opens the sockets, listens, joins through the seeds and starts the
    /// driver tasks. Must be called inside a tokio runtime (multi-threaded
    /// preferred: heartbeats run on their own task).
    pub async fn start(self) -> Result<Peer> {
        self.check()?;
        let counters = Arc::new(Counters::default());
        let secrets: Vec<Vec<u8>> = self.bus_keys.iter().map(|k| k.0.clone()).collect();
        let auth = Auth::new(&secrets);
        let gate = Gate::new(auth.clone(), counters.clone());
        let sockets = SocketConfig {
            gate: gate.clone(),
            send_buffer: self.send_buffer as i32,
            recv_buffer: self.recv_buffer as i32,
            // Frames up to 2× the limit reach chorus and are counted as
            // oversized; beyond that NNG closes the link (memory bound).
            recv_max_size: self.max_message_size.saturating_mul(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        };
        let surveyor = transport::surveyor_socket(&sockets, self.heartbeat_deadline)?;
        let survey_url = transport::listen(&surveyor, &self.listen)?;
        let pub_socket = transport::pub_socket(&sockets)?;
        let pub_wanted = self
            .publish_url
            .clone()
            .unwrap_or_else(|| transport::derive_url(&survey_url, "pub"));
        let publish_url = transport::listen(&pub_socket, &pub_wanted)?;
        let sub_socket = transport::sub_socket(&sockets)?;
        let rep_socket = transport::rep_socket(&sockets)?;
        let repair_url =
            transport::listen(&rep_socket, &transport::derive_url(&survey_url, "repair"))?;
        let respondent = transport::respondent_socket(&sockets)?;

        let id = self
            .id
            .unwrap_or_else(|| stable_id(&self.name, &survey_url));
        let info = Arc::new(PeerInfo {
            id,
            incarnation: now_us(),
            name: self.name.clone(),
            endpoints: Endpoints {
                survey: survey_url,
                publish: publish_url,
                repair: repair_url,
            },
        });
        info.validate().map_err(Error::Config)?;
        let registry = Arc::new(Registry::default());
        let last_seq = Arc::new(AtomicU64::new(0));
        let view: View = Default::default();
        let (events, _) = broadcast::channel(EVENT_BUFFER);

        let (pub_tx, pub_rx) = mpsc::channel(self.publish_queue);
        let (pub_ctl, pub_ctl_rx) = mpsc::unbounded_channel();
        let full = Arc::new(AtomicBool::new(false));
        let outbox = OutboxConfig {
            capacity: self.retransmit_buffer,
            max_bytes: self.retransmit_bytes,
            max_reply_bytes: self.max_message_size / 2,
            ..OutboxConfig::default()
        };
        let publisher = Publisher {
            socket: pub_socket,
            rep: rep_socket,
            outbox: Outbox::new(id, info.incarnation, outbox),
            origin: id,
            max_message_size: self.max_message_size,
            counters: counters.clone(),
            last_seq: last_seq.clone(),
            full: full.clone(),
            batch: BatchWriter::default(),
            batch_bytes: self.batch_bytes.min(self.max_message_size / 2),
            gate: gate.clone(),
            stall_limit: self.stall_limit,
            linger: Default::default(),
        };
        let acks: AckView = Default::default();
        let last_seqs = Arc::new(LastSeqBoard::default());
        let (losses, _) = broadcast::channel(EVENT_BUFFER);
        let inbox = InboxConfig {
            me: id,
            ordered: self.ordered,
            ..InboxConfig::default()
        };
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (stopping, stopping_rx) = watch::channel(false);
        let receiver = Receiver {
            socket: sub_socket,
            sockets,
            registry: registry.clone(),
            counters: counters.clone(),
            max_message_size: self.max_message_size,
            bad: BadInputLog::default(),
            stopping: stopping_rx,
            faults: self
                .link_faults
                .is_active()
                .then(|| FaultInjector::new(self.link_faults)),
            inbox: Inbox::new(inbox),
            keys: KeyCache::new(self.dedup_keys, self.dedup_window),
            acks: acks.clone(),
            last_seqs: last_seqs.clone(),
            losses: losses.clone(),
            dialers: HashMap::new(),
            repairers: HashMap::new(),
            scratch: Vec::new(),
            topics: Default::default(),
            me: id,
            direct_acked: HashMap::new(),
        };
        let (disc_tx, disc_rx) = mpsc::channel(4);
        let discovery = Discovery {
            core: Membership::new(info.clone(), self.membership),
            surveyor,
            respondent,
            seeds: self.seeds.clone(),
            interval: self.heartbeat_interval,
            deadline: self.heartbeat_deadline,
            max_message_size: self.max_message_size,
            sub_tx: sub_tx.clone(),
            events: events.clone(),
            view: view.clone(),
            counters: counters.clone(),
            last_seq,
            acks,
            last_seqs,
            registry: registry.clone(),
            pub_ctl: pub_ctl.clone(),
            dialers: HashMap::new(),
            bad: BadInputLog::default(),
            gate,
        };
        let tasks = vec![
            tokio::spawn(discovery.run(disc_rx)),
            tokio::spawn(publisher.run(pub_rx, pub_ctl_rx)),
            tokio::spawn(receiver.run(sub_rx)),
        ];
        tracing::info!(%id, name = %self.name, url = %info.endpoints.survey, "peer started");
        Ok(Peer::new(crate::peer::Parts {
            info,
            config: self,
            counters,
            registry,
            view,
            events,
            pub_tx,
            pub_ctl,
            full,
            losses,
            sub_tx,
            disc_tx,
            stopping,
            tasks,
        }))
    }
}

/// A bus secret; never printed.
#[derive(Clone)]
pub(crate) struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The default peer id: a stable hash of name and public URL (never 0).
fn stable_id(name: &str, url: &str) -> PeerId {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    h.write(&[0]);
    h.write(url.as_bytes());
    PeerId(h.finish().max(1))
}
