//! The start-up of one peer's drivers.
//!
//! Owns: the order in which a peer comes up (open the sockets, listen,
//! derive its identity, spawn the driver tasks) and [`Drivers`], the handles
//! the public API keeps to talk to them. Settings arrive checked, as a
//! [`Config`] (the builder validates them).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::delivery::{Loss, Undecodable};
use crate::api::events::EVENT_BUFFER;
use crate::api::stats::Counters;
use crate::api::subscription::Registry;
use crate::driver::clock::now_us;
use crate::driver::discovery::{Discovery, DiscoveryCmd, View};
use crate::driver::journal::{Journal, StoreHealth};
use crate::driver::log_writer::{LogWriter, WriterParts};
use crate::driver::publisher::{PublishPath, Publisher, PublisherCmd};
use crate::driver::receiver::{AckView, LastSeqBoard, Receiver, ReceiverCmd};
use crate::driver::repair_server::RepairServer;
use crate::error::{Error, Result};
use crate::proto::assign::{AssignConfig, Assigner};
use crate::proto::dedup::KeyCache;
use crate::proto::faults::{FaultInjector, LinkFaults};
use crate::proto::inbox::{Inbox, InboxConfig};
use crate::proto::membership::{Membership, MembershipConfig};
use crate::proto::outbox::{Outbox, OutboxConfig};
use crate::store::data_dir::Identity;
use crate::store::groups::{GroupRecord, Groups};
use crate::store::log::{Retention, StreamLog};
use crate::store::positions::Positions;
use crate::store::readers::{Reader, Readers};
use crate::store::watermarks::{Watermark, Watermarks};
use crate::store::{DataDir, Fsync, StoreError};
use crate::transport::bad_input::BadInputLog;
use crate::transport::gate::Gate;
use crate::transport::socket::{self, SocketConfig};
use crate::wire::auth::Auth;
use crate::wire::batch::BatchWriter;
use crate::wire::envelope::BATCH_FRAME_FACTOR;
use crate::wire::id::PeerId;
use crate::wire::member::{Endpoints, MemberEvent, PeerInfo};
use crate::wire::topic::Interner;
use crate::wire::url::derive_url;

/// What the drivers of one peer are started with (checked by the builder;
/// defaults and meanings in [`PeerBuilder`](crate::PeerBuilder)).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub name: String,
    pub tool: bool,
    pub id: Option<PeerId>,
    pub listen: String,
    pub publish_url: Option<String>,
    pub seeds: Vec<String>,
    pub heartbeat_interval: Duration,
    pub heartbeat_deadline: Duration,
    pub membership: MembershipConfig,
    pub send_buffer: usize,
    pub recv_buffer: usize,
    pub publish_queue: usize,
    pub max_message_size: usize,
    pub link_faults: LinkFaults,
    pub bus_keys: Vec<BusSecret>,
    /// `None`: [`STALL_LIMIT`], or [`DURABLE_STALL_LIMIT`] with a data dir.
    pub stall_limit: Option<Duration>,
    /// `None`: [`RETRANSMIT_BUFFER`], or [`DURABLE_RETRANSMIT_BUFFER`] with
    /// a data dir.
    pub retransmit_buffer: Option<usize>,
    pub retransmit_bytes: usize,
    pub ordered: bool,
    pub dedup_keys: usize,
    pub dedup_window: Duration,
    pub batch_bytes: usize,
    pub data_dir: Option<std::path::PathBuf>,
    pub fsync: Fsync,
    pub retention: Retention,
}

/// How long a full retransmit buffer waits for the members holding it back
/// before cutting them off (they report what they miss as lost).
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(30);

/// The same for a durable peer: a member it cuts off loses nothing within
/// retention (its repairs are read from the log), so one paused consumer
/// holds publishing back for this long at most, or four heartbeat
/// intervals if that is longer (what an ack can take to arrive).
pub(crate) const DURABLE_STALL_LIMIT: Duration = Duration::from_secs(2);

/// Envelopes a retransmit buffer keeps at most: four full batches of
/// small events (a batch holds at most 4096), so the publisher numbers the
/// next ones while the receiver acknowledges the earlier (benches/peers,
/// 64 B, 3 alternating rounds: 8192 2.37–2.67 M msg/s, 16384 2.81–2.98 M,
/// 32768 2.62–2.97 M, subscriber RSS 13, 16, 19 MiB).
pub(crate) const RETRANSMIT_BUFFER: usize = 16384;

/// The same for a durable peer: its events go through the log before they
/// are sent, which lengthens the time from publish to ack, and an 8192
/// window then bounds the rate (64 B, OS buffered: 63–65 % of in-memory
/// at 8192, 77–80 % at 65536; `chorus bench --user-only --retransmit-buffer
/// N`). `retransmit_bytes` still bounds its memory.
pub(crate) const DURABLE_RETRANSMIT_BUFFER: usize = 65536;

impl Config {
    /// The retransmit buffer's envelopes set, or the default for this kind of peer.
    fn retransmit_buffer(&self) -> usize {
        match (self.retransmit_buffer, &self.data_dir) {
            (Some(n), _) => n,
            (None, Some(_)) => DURABLE_RETRANSMIT_BUFFER,
            (None, None) => RETRANSMIT_BUFFER,
        }
    }

    /// The stall limit set, or the default for this kind of peer.
    fn stall_limit(&self) -> Duration {
        match (self.stall_limit, &self.data_dir) {
            (Some(limit), _) => limit,
            (None, Some(_)) => DURABLE_STALL_LIMIT.max(self.heartbeat_interval * 4),
            (None, None) => STALL_LIMIT,
        }
    }
}

/// A bus secret; never printed.
#[derive(Clone)]
pub(crate) struct BusSecret(pub Vec<u8>);

impl std::fmt::Debug for BusSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusSecret(..)")
    }
}

/// The handles of a running peer's drivers, kept by [`Peer`](crate::Peer).
pub(crate) struct Drivers {
    pub info: Arc<PeerInfo>,
    pub counters: Arc<Counters>,
    pub registry: Arc<Registry>,
    pub view: View,
    pub events: broadcast::Sender<MemberEvent>,
    /// Events and flushes to the publish driver (bounded: `publish` waits
    /// when full).
    /// Where `publish` stages its events.
    pub publish: Arc<PublishPath>,
    pub publisher: mpsc::UnboundedSender<PublisherCmd>,
    pub losses: broadcast::Sender<Loss>,
    /// Events that did not decode for a subscription.
    pub undecodable: broadcast::Sender<Undecodable>,
    pub receiver: mpsc::UnboundedSender<ReceiverCmd>,
    pub discovery: mpsc::Sender<DiscoveryCmd>,
    /// Set when the peer shuts down.
    pub stopping: watch::Sender<bool>,
    /// Whether the log of a durable peer can be written.
    pub store: Arc<StoreHealth>,
    /// The data dir and its consumer positions (a durable peer).
    /// Taken at shutdown, so that the data dir is free once it is done.
    pub durable_store: parking_lot::Mutex<Option<(Arc<DataDir>, Arc<Positions>)>>,
    /// What the receiver has received of each stream.
    pub received: AckView,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens the sockets, listens, joins through the seeds and spawns the
/// driver tasks. Must be called inside a tokio runtime.
pub(crate) fn spawn(config: Config) -> Result<Drivers> {
    let counters = Arc::new(Counters::default());
    let secrets: Vec<Vec<u8>> = config.bus_keys.iter().map(|k| k.0.clone()).collect();
    let gate = Gate::new(Auth::new(&secrets), counters.clone());
    let sockets = SocketConfig {
        gate: gate.clone(),
        send_buffer: config.send_buffer as i32,
        recv_buffer: config.recv_buffer as i32,
        // Frames up to 2× the limit (a batch's limit on the event socket)
        // reach chorus and are counted as oversized; beyond that NNG
        // closes the link (memory bound).
        recv_max_size: config.max_message_size.saturating_mul(2),
        recv_max_batch: config
            .max_message_size
            .saturating_mul(2 * BATCH_FRAME_FACTOR),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(2),
    };
    let surveyor = socket::surveyor_socket(&sockets, config.heartbeat_deadline)?;
    let survey_url = socket::listen(&surveyor, &config.listen)?;
    let pub_socket = socket::pub_socket(&sockets)?;
    let pub_wanted = config
        .publish_url
        .clone()
        .unwrap_or_else(|| derive_url(&survey_url, "pub"));
    let publish_url = socket::listen(&pub_socket, &pub_wanted)?;
    let sub_socket = socket::sub_socket(&sockets)?;
    let rep_socket = socket::rep_socket(&sockets)?;
    let repair_url = socket::listen(&rep_socket, &derive_url(&survey_url, "repair"))?;
    let respondent = socket::respondent_socket(&sockets)?;

    let incarnation = now_us();
    let store = match &config.data_dir {
        Some(path) => Some(open_store(&config, path, incarnation)?),
        None => None,
    };
    let id = match &store {
        Some(s) => PeerId(s.dir.identity().id),
        None => config
            .id
            .unwrap_or_else(|| stable_id(&config.name, &survey_url)),
    };
    let info = Arc::new(PeerInfo {
        id,
        incarnation,
        name: config.name.clone(),
        endpoints: Endpoints {
            survey: survey_url,
            publish: publish_url,
            repair: repair_url,
        },
        heartbeat_interval_ms: u32::try_from(config.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
        tool: config.tool,
        stream: store.as_ref().map_or(0, |s| s.dir.identity().stream),
    });
    info.validate().map_err(Error::Config)?;
    let registry = Arc::new(Registry::default());
    let _ = registry
        .reply_topic
        .set(crate::wire::reply::reply_topic(id));
    registry.max_message_size.store(
        config.max_message_size as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    // The publisher's group views, announced in heartbeats.
    let views = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let last_seq = Arc::new(AtomicU64::new(0));
    let view: View = Default::default();
    let (events, _) = broadcast::channel(EVENT_BUFFER);

    let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue);
    let (publisher_tx, publisher_rx) = mpsc::unbounded_channel();
    let (repair_tx, repair_rx) = mpsc::channel(1);
    let outbox = OutboxConfig {
        capacity: config.retransmit_buffer(),
        max_bytes: config.retransmit_bytes,
        max_reply_bytes: config.max_message_size / 2,
        ..OutboxConfig::default()
    };
    let mut outbox = Outbox::new(id, info.stream_epoch(), outbox);
    let store_health = Arc::new(StoreHealth::default());
    let durable_store = store.as_ref().map(|s| (s.dir.clone(), s.positions.clone()));
    let mut writer = None;
    let journal = match store {
        None => None,
        Some(s) => {
            outbox.resume(
                s.log.last_seq(),
                s.earlier
                    .iter()
                    .map(|w| (PeerId(w.member), w.incarnation, w.seq)),
            );
            last_seq.store(s.log.last_seq(), std::sync::atomic::Ordering::Relaxed);
            let log = Arc::new(parking_lot::Mutex::new(s.log));
            writer = Some(
                LogWriter::start(WriterParts {
                    dir: s.dir.clone(),
                    log: log.clone(),
                    socket: pub_socket.clone(),
                    counters: counters.clone(),
                    health: store_health.clone(),
                    last_seq: last_seq.clone(),
                })
                .map_err(|e| Error::Config(format!("cannot start the log writer thread: {e}")))?,
            );
            Some(Journal::new(
                s.dir,
                log,
                s.watermarks,
                &s.earlier,
                config.retention,
                s.readers,
                s.groups,
            ))
        }
    };
    let mut publisher = Publisher {
        socket: pub_socket,
        outbox,
        origin: id,
        counters: counters.clone(),
        last_seq: last_seq.clone(),
        batch: BatchWriter::default(),
        // A batch reaches its bound with one event of at most the limit:
        // up to 3× the limit, under what receivers accept of a batch.
        batch_bytes: config
            .batch_bytes
            .min(config.max_message_size.saturating_mul(2)),
        gate: gate.clone(),
        stall_limit: config.stall_limit(),
        linger: Default::default(),
        flushes: Vec::new(),
        journal,
        writer,
        frames: Vec::new(),
        stream: info.stream_epoch(),
        assigner: Assigner::new(AssignConfig::default()),
        group_members: HashMap::new(),
        views: views.clone(),
        topics: Interner::default(),
        group_max_age_us: config.retention.max_age_us,
        linger_until: None,
        closed: false,
    };
    publisher.restore_groups();
    let publish = Arc::new(PublishPath {
        core: parking_lot::Mutex::new(publisher),
        tx: publish_tx,
        wake: tokio::sync::Notify::new(),
        room: tokio::sync::Notify::new(),
    });
    let repair_server = RepairServer {
        socket: rep_socket,
        gate: gate.clone(),
        counters: counters.clone(),
        max_message_size: config.max_message_size,
        jobs: repair_tx,
    };
    let acks: AckView = Default::default();
    let received = acks.clone();
    let last_seqs = Arc::new(LastSeqBoard::default());
    let (losses, _) = broadcast::channel(EVENT_BUFFER);
    let (undecodable, _) = broadcast::channel(EVENT_BUFFER);
    let inbox = InboxConfig {
        me: id,
        ordered: config.ordered,
        ..InboxConfig::default()
    };
    let (receiver_tx, receiver_rx) = mpsc::unbounded_channel();
    let (stopping, stopping_rx) = watch::channel(false);
    let receiver = Receiver {
        socket: sub_socket,
        sockets,
        registry: registry.clone(),
        counters: counters.clone(),
        max_message_size: config.max_message_size,
        bad: BadInputLog::default(),
        stopping: stopping_rx,
        faults: config
            .link_faults
            .is_active()
            .then(|| FaultInjector::new(config.link_faults)),
        inbox: Inbox::new(inbox),
        keys: KeyCache::new(config.dedup_keys, config.dedup_window),
        acks: acks.clone(),
        last_seqs: last_seqs.clone(),
        losses: losses.clone(),
        dialers: HashMap::new(),
        nak_senders: HashMap::new(),
        scratch: Vec::new(),
        topics: Default::default(),
        me: id,
        direct_acks: Default::default(),
        members: HashMap::new(),
        history: Vec::new(),
        blocked: Vec::new(),
        awaiting_room: false,
        parked: None,
        rearm: false,
        pending_forget: Vec::new(),
        frames: Vec::new(),
    };
    let (discovery_tx, discovery_rx) = mpsc::channel(4);
    let discovery = Discovery {
        core: Membership::new(info.clone(), config.membership),
        surveyor,
        respondent,
        seeds: config.seeds.clone(),
        interval: config.heartbeat_interval,
        deadline: config.heartbeat_deadline,
        max_message_size: config.max_message_size,
        receiver: receiver_tx.clone(),
        events: events.clone(),
        view: view.clone(),
        counters: counters.clone(),
        last_seq,
        acks,
        last_seqs,
        registry: registry.clone(),
        positions: durable_store.as_ref().map(|(_, p)| p.clone()),
        publisher: publisher_tx.clone(),
        dialers: HashMap::new(),
        bad: BadInputLog::default(),
        gate,
        alone_rounds: 0,
        views,
        grouped: std::collections::HashSet::new(),
    };
    let tasks = vec![
        tokio::spawn(discovery.run(discovery_rx)),
        tokio::spawn(publish.clone().run(publish_rx, publisher_rx, repair_rx)),
        tokio::spawn(repair_server.run()),
        tokio::spawn(receiver.run(receiver_rx)),
    ];
    tracing::info!(%id, name = %config.name, url = %info.endpoints.survey, "peer started");
    Ok(Drivers {
        info,
        counters,
        registry,
        view,
        events,
        publish,
        publisher: publisher_tx,
        losses,
        undecodable,
        receiver: receiver_tx,
        discovery: discovery_tx,
        stopping,
        store: store_health,
        durable_store: parking_lot::Mutex::new(durable_store),
        received,
        tasks,
    })
}

/// What a durable peer's data dir holds when it starts.
struct OpenStore {
    dir: Arc<DataDir>,
    positions: Arc<Positions>,
    log: StreamLog,
    watermarks: Watermarks,
    earlier: Vec<Watermark>,
    readers: (Readers, Vec<Reader>),
    groups: (Groups, Vec<GroupRecord>),
}

/// Opens the data dir: a new one takes the configured id (or a random
/// one) and a new stream epoch; an existing one keeps its own, and must
/// not contradict a configured id.
fn open_store(config: &Config, path: &std::path::Path, incarnation: u64) -> Result<OpenStore> {
    let store_error = |e: StoreError| Error::Store(Arc::new(e));
    let wanted = config.id;
    let dir = DataDir::open(path, config.fsync, || Identity {
        id: wanted.map_or_else(|| rand::random::<u64>().max(1), |id| id.0),
        stream: incarnation,
    })
    .map_err(store_error)?;
    if let Some(id) = wanted {
        if id.0 != dir.identity().id {
            return Err(Error::Config(format!(
                "the data dir {} belongs to peer {}, not {id}: give each peer its own data dir, or drop PeerBuilder::id",
                path.display(),
                PeerId(dir.identity().id)
            )));
        }
    }
    let log = StreamLog::open(&dir).map_err(store_error)?;
    let (watermarks, earlier) = Watermarks::open(&dir).map_err(store_error)?;
    let positions = Arc::new(Positions::open(&dir).map_err(store_error)?);
    let readers = Readers::open(&dir).map_err(store_error)?;
    let groups = Groups::open(&dir).map_err(store_error)?;
    tracing::info!(dir = %path.display(), id = %PeerId(dir.identity().id), stream = dir.identity().stream,
        first = log.first_seq(), last = log.last_seq(), "data dir opened");
    Ok(OpenStore {
        dir: Arc::new(dir),
        positions,
        log,
        watermarks,
        earlier,
        readers,
        groups,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_peer_defaults_to_a_larger_window_and_a_shorter_stall_limit() {
        let plain = crate::Peer::builder().checked().unwrap().0;
        assert_eq!(plain.retransmit_buffer(), RETRANSMIT_BUFFER);
        assert_eq!(plain.stall_limit(), STALL_LIMIT);
        let durable = crate::Peer::builder().data_dir("/nonexistent");
        let (config, _) = durable.clone().checked().unwrap();
        assert_eq!(config.retransmit_buffer(), DURABLE_RETRANSMIT_BUFFER);
        assert_eq!(config.stall_limit(), DURABLE_STALL_LIMIT);
        // Four heartbeat intervals if that is longer; what is set wins.
        let slow = durable.clone().heartbeat_interval(Duration::from_secs(1));
        assert_eq!(
            slow.checked().unwrap().0.stall_limit(),
            Duration::from_secs(4)
        );
        let set = durable
            .retransmit_buffer(100)
            .stall_limit(Duration::from_secs(9));
        let (config, _) = set.checked().unwrap();
        assert_eq!(config.retransmit_buffer(), 100);
        assert_eq!(config.stall_limit(), Duration::from_secs(9));
    }
}
