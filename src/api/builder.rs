//! Configuration of a peer and its start-up.
//!
//! Owns: [`PeerBuilder`], every setting's default and range check. Starting
//! hands the checked settings to the drivers
//! ([`driver::spawn`](crate::driver::spawn)).

use std::time::Duration;

use crate::driver::spawn::{BusSecret, Config};
use crate::error::{Error, Result};
use crate::proto::faults::LinkFaults;
use crate::proto::membership::MembershipConfig;
use crate::store::log::Retention;
use crate::store::Fsync;
use crate::wire::auth::MIN_BUS_KEY_LEN;
use crate::wire::id::PeerId;
use crate::wire::member::{MAX_HEARTBEAT_INTERVAL_MS, MAX_NAME_LEN};
use crate::wire::url::validate_url;

/// Default largest batch: twice the default largest message (the most a
/// batch may be; receivers accept batch frames of up to
/// [`BATCH_FRAME_FACTOR`](crate::BATCH_FRAME_FACTOR) times it). NNG and
/// the allocator behind it cost about the same per message whatever its
/// size, so a larger batch costs less per event on both sides (benches/
/// peers, 1 KiB events: 64 KiB batches 674–741 k msg/s, 512 KiB
/// 1.10–1.18 M; 16 KiB events: 512 KiB 94–100 k, 2 MiB 124 k); batches
/// form only under load (and gather at most ~1 ms of events), so an event
/// published alone still goes out alone.
pub(crate) const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Default deliveries queued per subscription: a whole batch of small
/// events (a batch holds at most 4096), so a batch that arrives while the
/// reader is busy does not stop the receive path halfway (benches/peers,
/// against 1024: 1 KiB 1.14–1.21 M → 1.23–1.30 M msg/s, 64 B 2.89–3.06 M →
/// 3.07–3.26 M, 3 rounds; 2048 and 8192 no better; the side-by-side runs
/// before and after it agree at 64 B, at 1 KiB within their noise).
pub(crate) const SUBSCRIPTION_BUFFER: usize = 4096;

/// Default bound of a durable peer's log, in bytes.
pub const DEFAULT_RETENTION_BYTES: u64 = 1 << 30;
/// Default bound of a durable peer's log, in age.
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Largest queue NNG accepts for `send_buffer` / `recv_buffer`.
pub const MAX_NNG_BUFFER: usize = 8192;

/// Builds and starts a [`Peer`](crate::Peer). Every setting has a default:
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
/// | `subscription_buffer` | 4096 | deliveries queued per subscription before the receive path waits (its reader takes them all at once, so as many again may be in its hands) |
/// | `publish_queue` | 1024 | flushes queued for the publisher task (events do not queue: `publish` stages them itself and waits only for room in the retransmit buffer) |
/// | `max_message_size` | 1 MiB | largest encoded event sent or accepted (a batch of events may be 4× it) |
/// | `retransmit_buffer` | 16384 (65536 with a data dir) | envelopes kept until every live member acknowledged them |
/// | `retransmit_bytes` | 16 MiB | bytes of those envelopes at most (whichever bound is reached first) |
/// | `backpressure` | `Wait` | `publish` waits while that buffer is full (`FailFast`: error) |
/// | `ordered_delivery` | true | per-origin sequence order, gaps held back until repaired or lost |
/// | `duplicate_window` | 65536 keys, 120 s | idempotency keys remembered to drop repeats |
/// | `batch_bytes` | 2 MiB | events already queued are sent together up to this size; above 50 k events/s a batch also gathers ~1 ms of events |
/// | `shutdown_linger` | 2 s | how long `shutdown` waits for members to acknowledge what was published |
/// | `stall_limit` | 30 s (2 s with a data dir) | how long a full retransmit buffer waits for members that do not ack before cutting them off |
/// | `bus_key` / `bus_keys` | none | shared secret(s): every message authenticated (see [`bus_key`](Self::bus_key)) |
/// | `data_dir` | none | makes the peer durable: identity and the log of its stream live there |
/// | `fsync` | `EveryBatch` | with a data dir: fsync every batch (`OsBuffered`: hand it to the OS) |
/// | `retention` | 1 GiB, 7 days | with a data dir: how much of its stream the log keeps |
/// | `link_faults` | none | injected drop/duplicate/reorder/delay on receive (tests, demos) |
///
/// **Failure-detection bound.** A member that dies is reported Failed by
/// every other member within `(miss_limit + 2) × heartbeat_interval +
/// heartbeat_deadline` (3.25 s with the defaults): `miss_limit` full rounds
/// without progress, plus up to two rounds for the last heartbeat it sent to
/// reach everyone through gossip. A graceful [`Peer::shutdown`](crate::Peer::shutdown) is seen as
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
    /// What the drivers are started with.
    pub(crate) driver: Config,
    pub(crate) subscription_buffer: usize,
    pub(crate) backpressure: Backpressure,
    pub(crate) shutdown_linger: Duration,
}

/// The settings the public handle reads for its whole life (the rest go to
/// the drivers at start).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_message_size: usize,
    pub subscription_buffer: usize,
    pub backpressure: Backpressure,
    pub shutdown_linger: Duration,
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
        let driver = Config {
            name: "chorus".into(),
            tool: false,
            id: None,
            listen: "tcp://127.0.0.1:0".into(),
            publish_url: None,
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_deadline: Duration::from_millis(250),
            membership: MembershipConfig::default(),
            send_buffer: 1024,
            recv_buffer: 1024,
            publish_queue: 1024,
            max_message_size: 1 << 20,
            link_faults: LinkFaults::default(),
            bus_keys: Vec::new(),
            stall_limit: None,
            retransmit_buffer: None,
            retransmit_bytes: 16 << 20,
            ordered: true,
            dedup_keys: 65536,
            dedup_window: Duration::from_secs(120),
            batch_bytes: BATCH_BYTES,
            data_dir: None,
            fsync: Fsync::default(),
            retention: Retention {
                max_bytes: DEFAULT_RETENTION_BYTES,
                max_age_us: DEFAULT_RETENTION_AGE.as_micros() as u64,
            },
        };
        PeerBuilder {
            driver,
            subscription_buffer: SUBSCRIPTION_BUFFER,
            backpressure: Backpressure::Wait,
            shutdown_linger: Duration::from_secs(2),
        }
    }
}

impl PeerBuilder {
    /// Service name of this peer (several peers may share one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.driver.name = name.into();
        self
    }

    /// Marks this peer as a tool (a command-line client, a script, a test
    /// probe) rather than a service: it is a member like any other, but
    /// [`Peer::wait_for_services`](crate::Peer::wait_for_services) on other
    /// peers does not count it (default false).
    pub fn tool(mut self, tool: bool) -> Self {
        self.driver.tool = tool;
        self
    }

    /// Pins the peer id. By default it is derived from the name and the
    /// public URL, so a peer restarted at the same address keeps its id and
    /// is reported `Rejoined` (with a new incarnation).
    pub fn id(mut self, id: PeerId) -> Self {
        self.driver.id = Some(id);
        self
    }

    /// Public address of this peer (its heartbeat surveyor), what others
    /// use as a seed: `tcp://host:port` (port 0 for any free port),
    /// `ipc:///path` or `inproc://name`.
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.driver.listen = url.into();
        self
    }

    /// Where events are published, if not derived from `listen`.
    pub fn publish_url(mut self, url: impl Into<String>) -> Self {
        self.driver.publish_url = Some(url.into());
        self
    }

    /// Joins the bus through the member listening at `url` (its public
    /// address). May be given several times. A seed that is down is redialed
    /// in the background; seeds are dialed for the peer's whole life, so a
    /// peer cut off from everyone finds its way back through them.
    pub fn seed(mut self, url: impl Into<String>) -> Self {
        self.driver.seeds.push(url.into());
        self
    }

    /// Time between heartbeat rounds (10 ms to 60 s). Advertised to the
    /// other members, which judge this peer's heartbeats against it: members
    /// with different intervals may share a bus.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.driver.heartbeat_interval = interval;
        self
    }

    /// How long a heartbeat round waits for responses (shorter than the interval).
    pub fn heartbeat_deadline(mut self, deadline: Duration) -> Self {
        self.driver.heartbeat_deadline = deadline;
        self
    }

    /// Rounds without heartbeat progress before a member is Suspect (≥ 1).
    pub fn suspect_after(mut self, rounds: u32) -> Self {
        self.driver.membership.suspect_after = rounds;
        self
    }

    /// Rounds without heartbeat progress before a member is Failed
    /// (≥ `suspect_after`).
    pub fn miss_limit(mut self, rounds: u32) -> Self {
        self.driver.membership.miss_limit = rounds;
        self
    }

    /// Most members remembered (1..=65536).
    pub fn max_members(mut self, members: usize) -> Self {
        self.driver.membership.max_members = members;
        self
    }

    /// Messages NNG queues per subscriber link (1..=8192).
    pub fn send_buffer(mut self, messages: usize) -> Self {
        self.driver.send_buffer = messages;
        self
    }

    /// Messages NNG queues on the receive side (1..=8192).
    pub fn recv_buffer(mut self, messages: usize) -> Self {
        self.driver.recv_buffer = messages;
        self
    }

    /// Deliveries queued per subscription before the receive path waits (≥ 1).
    /// The subscription's reader takes what is queued in one go, so as many
    /// again may be in its hands.
    pub fn subscription_buffer(mut self, deliveries: usize) -> Self {
        self.subscription_buffer = deliveries;
        self
    }

    /// Flushes queued for the publisher task before `flush` waits (≥ 1).
    /// Events do not queue: `publish` numbers and stages them itself and
    /// waits only for room in the retransmit buffer.
    pub fn publish_queue(mut self, messages: usize) -> Self {
        self.driver.publish_queue = messages;
        self
    }

    /// Largest encoded event, in bytes, that is sent or accepted (≥ 1 KiB);
    /// a batch of events may be [`BATCH_FRAME_FACTOR`](crate::BATCH_FRAME_FACTOR)
    /// times it, and every other message (heartbeats, repair) at most it.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.driver.max_message_size = bytes;
        self
    }

    /// How long the retransmit buffer may stay full, waiting for members
    /// that do not acknowledge (a stuck handler, a subscriber that never
    /// reads, a malicious peer), before this peer stops waiting for them
    /// (default 30 s). Until then `publish` waits (backpressure); after,
    /// publishing goes on, those members are counted in
    /// `Stats::members_cut_off` and what they can no longer be sent is
    /// reported as lost on their side — except by a durable peer (a
    /// [`data_dir`](Self::data_dir)), which repairs it from its log: losing
    /// nothing within retention, it waits 2 s by default (at least four
    /// heartbeat intervals), so that one paused consumer does not hold its
    /// publishing back for long.
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.driver.stall_limit = Some(limit);
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
        self.driver.bus_keys = secrets
            .into_iter()
            .map(|k| BusSecret(k.as_ref().to_vec()))
            .collect();
        self
    }

    /// Injects seeded link faults (drop, duplicate, reorder, delay) on this
    /// peer's event receive path. Off by default; for tests and demos.
    pub fn link_faults(mut self, faults: LinkFaults) -> Self {
        self.driver.link_faults = faults;
        self
    }

    /// Envelopes kept for retransmission until every live member has
    /// acknowledged them (≥ 16; default 16384, or 65536 with a
    /// [`data_dir`](Self::data_dir), whose log lengthens the time from
    /// publish to ack). Full: see [`backpressure`](Self::backpressure).
    pub fn retransmit_buffer(mut self, envelopes: usize) -> Self {
        self.driver.retransmit_buffer = Some(envelopes);
        self
    }

    /// Bytes of encoded envelopes the retransmit buffer keeps at most (≥
    /// 1024; exceeded by one envelope at most). The
    /// buffer is full at this size or at
    /// [`retransmit_buffer`](Self::retransmit_buffer) envelopes, whichever
    /// comes first; this bounds a publisher's memory whatever the payloads.
    pub fn retransmit_bytes(mut self, bytes: usize) -> Self {
        self.driver.retransmit_bytes = bytes;
        self
    }

    /// How long [`Peer::shutdown`](crate::Peer::shutdown) waits for every
    /// live member to acknowledge what was published before it announces
    /// Left (default 2 s; zero: no wait). See [`Peer::flush`](crate::Peer::flush).
    pub fn shutdown_linger(mut self, linger: Duration) -> Self {
        self.shutdown_linger = linger;
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
        self.driver.ordered = ordered;
        self
    }

    /// Idempotency keys (`PublishOptions::id`) remembered to drop repeats:
    /// at most `keys` of them, each for `window`.
    pub fn duplicate_window(mut self, keys: usize, window: Duration) -> Self {
        self.driver.dedup_keys = keys;
        self.driver.dedup_window = window;
        self
    }

    /// Largest batch, in bytes of encoded events: events already queued are
    /// sent together up to this size (capped at twice the maximum message
    /// size). 0 sends every event as its own message.
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.driver.batch_bytes = bytes;
        self
    }

    /// The checked settings: what the drivers start with, and what the
    /// public handle keeps.
    /// Makes the peer durable: its identity (id) and the log of its own
    /// stream live in `path`, so a peer restarted with the same data dir
    /// continues the same stream — its sequence numbers go on where they
    /// stopped, members that missed events while it was down get them from
    /// the log, and repair reads from the log what the retransmit buffer no
    /// longer holds. Every event is in the log before it is sent (as durable
    /// as [`fsync`](Self::fsync) says); [`Peer::flush`](crate::Peer::flush)
    /// returns once everything published before it is. One process at a
    /// time: a data dir in use is refused with [`Error::Store`]; so is a
    /// directory that holds anything else. See README "Durability".
    pub fn data_dir(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.driver.data_dir = Some(path.into());
        self
    }

    /// When the log reaches the disk (with [`data_dir`](Self::data_dir)):
    /// [`Fsync::EveryBatch`] (default; survives power loss) or
    /// [`Fsync::OsBuffered`] (survives a process crash).
    pub fn fsync(mut self, policy: Fsync) -> Self {
        self.driver.fsync = policy;
        self
    }

    /// How much of its stream a durable peer keeps (default 1 GiB and 7
    /// days): beyond either bound the oldest events are trimmed, in whole
    /// segments of up to 65,536 events, whether or not every consumer had
    /// them (a member that asks for a trimmed event reports it as a
    /// [`Loss`](crate::Loss)).
    pub fn retention(mut self, max_bytes: u64, max_age: Duration) -> Self {
        self.driver.retention = Retention {
            max_bytes,
            max_age_us: u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX),
        };
        self
    }

    pub(crate) fn checked(self) -> Result<(Config, Limits)> {
        self.check()?;
        let limits = Limits {
            max_message_size: self.driver.max_message_size,
            subscription_buffer: self.subscription_buffer,
            backpressure: self.backpressure,
            shutdown_linger: self.shutdown_linger,
        };
        Ok((self.driver, limits))
    }

    fn check(&self) -> Result<()> {
        if self.driver.data_dir.is_some() && !self.driver.ordered {
            return Err(Error::Config(
                "a data dir needs ordered delivery: durable consumers keep their position in each stream in order (drop ordered_delivery(false))".into(),
            ));
        }
        let range = |what: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{what} is {v}, must be in {lo}..={hi}"
                )))
            }
        };
        range("send_buffer", self.driver.send_buffer, 1, MAX_NNG_BUFFER)?;
        range("recv_buffer", self.driver.recv_buffer, 1, MAX_NNG_BUFFER)?;
        range("subscription_buffer", self.subscription_buffer, 1, 1 << 20)?;
        range("publish_queue", self.driver.publish_queue, 1, 1 << 20)?;
        range(
            "max_message_size",
            self.driver.max_message_size,
            1024,
            1 << 30,
        )?;
        range(
            "max_members",
            self.driver.membership.max_members,
            1,
            1 << 16,
        )?;
        if let Some(n) = self.driver.retransmit_buffer {
            range("retransmit_buffer", n, 16, 1 << 24)?;
        }
        range(
            "retransmit_bytes",
            self.driver.retransmit_bytes,
            1024,
            1 << 40,
        )?;
        range("duplicate_window keys", self.driver.dedup_keys, 1, 1 << 24)?;
        let m = self.driver.membership;
        if m.suspect_after == 0 || m.miss_limit < m.suspect_after {
            return Err(Error::Config(format!(
                "need 1 <= suspect_after ({}) <= miss_limit ({})",
                m.suspect_after, m.miss_limit
            )));
        }
        if self.driver.heartbeat_interval < Duration::from_millis(10)
            || self.driver.heartbeat_interval
                > Duration::from_millis(u64::from(MAX_HEARTBEAT_INTERVAL_MS))
            || self.driver.heartbeat_deadline.is_zero()
            || self.driver.heartbeat_deadline >= self.driver.heartbeat_interval
        {
            return Err(Error::Config(format!(
                "need 10ms <= heartbeat_interval ({:?}) <= 60s and 0 < heartbeat_deadline ({:?}) < interval",
                self.driver.heartbeat_interval, self.driver.heartbeat_deadline
            )));
        }
        if self.driver.name.len() > MAX_NAME_LEN {
            return Err(Error::Config(format!(
                "name longer than {MAX_NAME_LEN} bytes"
            )));
        }
        self.driver.link_faults.check().map_err(Error::Config)?;
        if let Some(short) = self
            .driver
            .bus_keys
            .iter()
            .find(|k| k.0.len() < MIN_BUS_KEY_LEN)
        {
            return Err(Error::Config(format!(
                "bus key of {} bytes is too short: use at least {MIN_BUS_KEY_LEN} random bytes",
                short.0.len()
            )));
        }
        validate_url(&self.driver.listen)?;
        for url in self.driver.seeds.iter().chain(&self.driver.publish_url) {
            validate_url(url)?;
        }
        Ok(())
    }
}
