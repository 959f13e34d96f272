//! The receive driver: the tokio task that owns the sub0 socket and the
//! receiving side of reliable delivery, with the NNG receive callback it
//! arms (see [`Receiver::run`]).
//!
//! Owns: dialing members' publishers and starting their repair clients,
//! reading frames without blocking the runtime (single frames in NNG's
//! receive callback, batches under load by the task; through the optional
//! fault layer), rejecting bad input (counted, logged once per source), feeding
//! the [`Inbox`] (gaps, NAKs, order, losses) and the idempotency-key cache,
//! dispatching what the inbox releases to the subscriptions, and publishing
//! the ack watermarks that heartbeats carry. A full subscription makes this
//! task wait, so NNG's bounded queue takes the overflow and repair fills the
//! gaps afterwards.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

use nng::options::{Options, RemAddr};
use nng::{Aio, AioResult, Dialer, Socket};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::api::delivery::Loss;
use crate::api::queue::Feed;
use crate::api::stats::Counters;
use crate::api::subscription::{Dispatched, Registry, Routed};
use crate::driver::clock;
use crate::driver::nak_sender::{self, Repaired};
use crate::proto::dedup::KeyCache;
use crate::proto::direct_acks::DirectAcks;
use crate::proto::faults::FaultInjector;
use crate::proto::inbox::{Inbox, InboxEvent};
use crate::transport::bad_input::BadInputLog;
use crate::transport::socket::{self, RecvReady, SocketConfig};
use crate::wire::envelope::Envelope;
use crate::wire::frame::DecodeError;
use crate::wire::heartbeat::Ack;
use crate::wire::id::PeerId;
use crate::wire::member::PeerInfo;
use crate::wire::repair::{DirectAck, RepairRequest};
use crate::wire::topic::Interner;

/// How many frames the task takes from NNG per wake-up while streaming.
const RECV_BATCH: usize = 64;
/// Frames up to this size are processed in the receive callback, on NNG's
/// thread (the latency case: one thread hand-off fewer). A larger one — a
/// batch, the throughput case — is handed to the task, which then reads
/// NNG's queue itself, a batch of frames per wake-up ("streaming"), until
/// nothing has come for [`STREAM_IDLE`]. Measured side by side (benches/
/// peers, 64 B): every frame through the callback or handed over one by
/// one costs ~10 % of the throughput (a cross-thread wake-up per frame and
/// a task moving between workers); streaming reads as fast as a task alone.
const INLINE_FRAME_BYTES: usize = 16 * 1024;
/// How long the task keeps streaming after the last frame it read.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_millis(5);
/// Messages to the receive driver.
pub(crate) enum ReceiverCmd {
    /// A member to receive from: dial its publisher, reach its repair endpoint.
    Connect(Arc<PeerInfo>),
    /// Stop receiving from this member; what is missing from it is lost
    /// (unless its stream is durable: then it is asked for when it is back).
    Disconnect(Arc<PeerInfo>),
    /// The member left: what is missing from it is lost, what is held is
    /// delivered (unless its stream is durable, as above).
    Left(Arc<PeerInfo>),
    /// A durable subscription resumes these streams `(origin, epoch,
    /// processed through)`; with `history`, streams it has no position in
    /// are replayed from their start (it filters them by time).
    Durable {
        positions: Vec<(PeerId, u64, u64)>,
        history: bool,
    },
    /// Stop, close the socket and end every subscription.
    Shutdown(oneshot::Sender<()>),
}

/// Members' last published sequence numbers from their heartbeats, for tail
/// loss. The heartbeat driver posts, the receive driver takes them when
/// woken. Coalesced per member, so it stays bounded by the member count even
/// while the receive path waits on a subscription nobody reads.
#[derive(Debug, Default)]
pub(crate) struct LastSeqBoard {
    table: Mutex<HashMap<PeerId, (u64, u64)>>,
    wake: Notify,
}

impl LastSeqBoard {
    /// Records `(incarnation, last_seq)` for `member` (the highest wins).
    pub(crate) fn post(&self, member: PeerId, incarnation: u64, last_seq: u64) {
        {
            let mut table = self.table.lock();
            let entry = table.entry(member).or_insert((incarnation, last_seq));
            *entry = (*entry).max((incarnation, last_seq));
        }
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<PeerId, (u64, u64)> {
        std::mem::take(&mut *self.table.lock())
    }
}

/// What the inbox has received from each origin, read by the heartbeat driver.
pub(crate) type AckView = Arc<RwLock<Arc<Vec<Ack>>>>;

/// The watermarks to advertise: received, and finished by every handler
/// here (a delivery still with a handler is not acknowledged yet). Computed
/// when a heartbeat is built, so handler progress needs no timer.
pub(crate) fn acks_to_send(view: &AckView, registry: &Registry) -> Vec<Ack> {
    let received = view.read().clone();
    received
        .iter()
        .map(|a| Ack {
            seq: registry.inflight.ack_floor(a.origin, a.incarnation, a.seq),
            ..*a
        })
        .collect()
}

pub(crate) struct Receiver {
    pub socket: Socket,
    pub sockets: SocketConfig,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub max_message_size: usize,
    pub bad: BadInputLog,
    /// Becomes true when the peer shuts down: ends a wait on a full subscription.
    pub stopping: watch::Receiver<bool>,
    /// Injected link faults (tests and demos), if configured.
    pub faults: Option<FaultInjector<nng::Message>>,
    pub inbox: Inbox,
    pub keys: KeyCache,
    pub acks: AckView,
    pub last_seqs: Arc<LastSeqBoard>,
    pub losses: broadcast::Sender<Loss>,
    pub dialers: HashMap<String, Dialer>,
    pub nak_senders: HashMap<PeerId, (String, mpsc::Sender<RepairRequest>)>,
    /// This peer's id, named in direct acks.
    pub me: PeerId,
    /// When each origin is acknowledged directly, between heartbeats.
    pub direct_acks: DirectAcks,
    /// Reused buffer of decoded envelopes.
    pub scratch: Vec<Envelope>,
    /// Received topics, validated once and shared.
    pub topics: Interner,
    /// The members connected, by id.
    pub members: HashMap<PeerId, Arc<PeerInfo>>,
    /// Per durable subscription that replays streams it has no position
    /// in: the streams it has one in.
    pub history: Vec<std::collections::HashSet<(PeerId, u64)>>,
    /// What full subscriptions could not take yet: nothing more is
    /// delivered until the task has waited for room for it.
    pub blocked: Vec<(Feed<Routed>, Routed)>,
    /// The task waits (without the lock) for room for what was blocked.
    pub awaiting_room: bool,
    /// A frame the receive callback took while blocked, or handed over
    /// for being larger than [`INLINE_FRAME_BYTES`].
    pub parked: Option<nng::Message>,
    /// The receive callback stopped receiving (it parked a frame): the task
    /// arms it again once it is done with it and is not streaming.
    pub rearm: bool,
    /// Members gone whose group views are forgotten once what is blocked
    /// (some of it theirs) is delivered.
    pub pending_forget: Vec<PeerId>,
    /// Reused buffer of frames.
    pub frames: Vec<nng::Message>,
}

impl Receiver {
    /// Runs until told to shut down or until every `Peer` handle is gone.
    ///
    /// Frames are received through an NNG `Aio` whose callback runs the
    /// receive path itself, on NNG's thread, and wakes the subscriptions'
    /// readers directly: one thread hand-off fewer per event than waking
    /// this task first (benches/peers, 64 B round trip: p50 165–168 →
    /// 107–120 µs, p99 243–262 → 191–215 µs). This task keeps the commands, timers,
    /// heartbeats' news and repairs, and the waits on a full subscription:
    /// while one is full the callback parks what it receives and stops
    /// receiving (NNG's queue and repair take the overflow), and this task
    /// receives again once there is room. Under load (a frame larger than
    /// [`INLINE_FRAME_BYTES`]) this task reads NNG's queue itself instead,
    /// until it stays empty for [`STREAM_IDLE`].
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<ReceiverCmd>) {
        let mut ack = None;
        let (repaired_tx, mut repaired) = mpsc::unbounded_channel();
        let socket = self.socket.clone();
        let registry = self.registry.clone();
        let stopping = self.stopping.clone();
        let last_seqs = self.last_seqs.clone();
        let core = Arc::new(Mutex::new(self));
        let wake = Arc::new(Notify::new());
        let aio = match Self::receive_aio(&core, &wake, &socket) {
            Ok(aio) => aio,
            Err(e) => {
                tracing::error!(error = %e, "cannot receive on the sub socket");
                socket.close();
                registry.close();
                return;
            }
        };
        let ready = match RecvReady::new(&socket) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "cannot poll the sub socket");
                socket.close();
                aio.cancel();
                aio.wait();
                registry.close();
                return;
            }
        };
        let mut batch = Vec::with_capacity(RECV_BATCH);
        // Whether this task reads NNG's queue (the callback is not armed).
        let mut streaming = false;
        let mut idle_at = tokio::time::Instant::now();
        loop {
            let [nak_due, due, ack_due] = core.lock().timers();
            tokio::select! {
                // Commands first: a member's Connect must reach the
                // inbox before its first heartbeat does, or its
                // stream would start at that heartbeat's last seq
                // and what came before would be skipped unseen.
                biased;
                cmd = rx.recv() => {
                    let mut r = core.lock();
                    match cmd {
                        Some(ReceiverCmd::Connect(info)) => {
                            r.inbox.announce(info.id);
                            r.connect(&info, &repaired_tx);
                            r.replay_history(&info);
                            r.members.insert(info.id, info);
                            r.drain();
                        }
                        Some(ReceiverCmd::Durable { positions, history }) => {
                            let now = clock::now();
                            for &(origin, epoch, through) in &positions {
                                r.inbox.resume(origin, epoch, through + 1, now);
                            }
                            if history {
                                let known = positions.iter().map(|&(o, e, _)| (o, e)).collect();
                                r.history.push(known);
                                let members: Vec<Arc<PeerInfo>> = r.members.values().cloned().collect();
                                for info in members {
                                    r.replay_history(&info);
                                }
                            }
                            r.drain();
                        }
                        Some(ReceiverCmd::Disconnect(info)) => {
                            if let Some(d) = r.dialers.remove(&info.endpoints.publish) {
                                d.close();
                            }
                            r.nak_senders.remove(&info.id);
                            r.members.remove(&info.id);
                            r.direct_acks.forget(info.id);
                            r.forget(&info);
                        }
                        Some(ReceiverCmd::Left(info)) => {
                            r.direct_acks.forget(info.id);
                            r.forget(&info);
                        }
                        Some(ReceiverCmd::Shutdown(done)) => {
                            ack = Some(done);
                            break;
                        }
                        None => break,
                    }
                }
                r = ready.recv_batch(&socket, &mut batch, RECV_BATCH), if streaming => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "sub socket stopped receiving");
                        break;
                    }
                    core.lock().take_frames(batch.drain(..));
                    idle_at = tokio::time::Instant::now() + STREAM_IDLE;
                }
                // Nothing came for a while: the callback receives again.
                _ = tokio::time::sleep_until(idle_at), if streaming => streaming = false,
                _ = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, Into::into)), if due.is_some() => {
                    let mut r = core.lock();
                    if let Some(f) = &mut r.faults {
                        f.handle_timeout(clock::now());
                    }
                    r.take_frames(std::iter::empty()); // what the fault layer released
                }
                _ = last_seqs.wake.notified() => {
                    let mut r = core.lock();
                    let now = clock::now();
                    for (id, (incarnation, last_seq)) in r.last_seqs.take() {
                        r.inbox.handle_heartbeat(id, incarnation, last_seq, now);
                    }
                    r.drain();
                }
                Some(rep) = repaired.recv() => {
                    let mut r = core.lock();
                    let Repaired { origin, incarnation, envelopes, gone, owed_from, redelivered_through } = rep;
                    r.inbox.handle_redelivery(origin, incarnation, redelivered_through);
                    r.inbox.handle_repair(origin, incarnation, envelopes, &gone, owed_from, clock::now());
                    r.drain();
                }
                _ = tokio::time::sleep_until(nak_due.map_or_else(tokio::time::Instant::now, Into::into)), if nak_due.is_some() => {
                    let mut r = core.lock();
                    r.inbox.handle_timeout(clock::now());
                    r.drain();
                }
                _ = tokio::time::sleep_until(ack_due.map_or_else(tokio::time::Instant::now, Into::into)), if ack_due.is_some() => {
                    let mut r = core.lock();
                    let acks = r.acks.read().clone();
                    r.send_direct_acks(&acks, true);
                }
                // The callback moved a timer, or parked a frame while blocked.
                _ = wake.notified() => {}
            }
            let was_streaming = streaming;
            if !Self::settle(&core, &aio, &socket, &registry, &stopping, &mut streaming).await {
                continue; // shutting down: the Shutdown command follows
            }
            if streaming && !was_streaming {
                idle_at = tokio::time::Instant::now() + STREAM_IDLE;
            }
        }
        // The poller goes before the socket closes (closing does not wake
        // it). Closing the socket ends a pending receive (and any the
        // callback starts after this) with `Closed`; then no callback runs
        // any more. NNG-NOTES: never drop an Aio whose callback may still run.
        drop(ready);
        socket.close();
        aio.cancel();
        aio.wait();
        let mut r = core.lock();
        r.nak_senders.clear();
        r.registry.close();
        drop(r);
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }

    /// The receive `Aio`, armed: its callback takes each frame through the
    /// receive path, unless a full subscription blocks it or the frame is
    /// larger than [`INLINE_FRAME_BYTES`]: then it parks the frame for this
    /// task and stops receiving.
    fn receive_aio(
        core: &Arc<Mutex<Receiver>>,
        wake: &Arc<Notify>,
        socket: &Socket,
    ) -> Result<Aio, nng::Error> {
        let (core, wake, sock) = (core.clone(), wake.clone(), socket.clone());
        // The callback runs on NNG's thread: in the runtime's context, so
        // it reads the task's clock (`clock::now`, paused in tests that
        // pause time) and can reach tokio.
        let runtime = tokio::runtime::Handle::current();
        let aio = Aio::new(move |aio, result| {
            let _context = runtime.enter();
            let msg = match result {
                AioResult::Recv(Ok(msg)) => msg,
                AioResult::Recv(Err(nng::Error::Closed | nng::Error::Canceled)) => return,
                AioResult::Recv(Err(e)) => {
                    tracing::warn!(error = %e, "receiving on the sub socket failed; receiving again");
                    let _ = sock.recv_async(&aio);
                    return;
                }
                _ => return,
            };
            let mut r = core.lock();
            if r.is_blocked() || msg.len() > INLINE_FRAME_BYTES {
                // At most one: it does not receive again until the task
                // has taken this frame (after what is blocked), and, if it
                // streams, what follows.
                r.parked = Some(msg);
                r.rearm = true;
                drop(r);
                wake.notify_one();
                return;
            }
            let timers = r.timers();
            r.take_frames(std::iter::once(msg));
            let (blocked, moved) = (r.is_blocked(), r.timers() != timers);
            if blocked {
                r.rearm = true;
            }
            drop(r);
            if blocked || moved {
                wake.notify_one();
            }
            if !blocked {
                let _ = sock.recv_async(&aio);
            }
        })?;
        socket.recv_async(&aio)?;
        Ok(aio)
    }

    /// Waits until the full subscriptions took what they were offered,
    /// delivering what followed, then what was parked meanwhile (a batch
    /// handed over starts `streaming`), and arms the callback again unless
    /// streaming; false if shutdown interrupted a wait.
    async fn settle(
        core: &Mutex<Receiver>,
        aio: &Aio,
        socket: &Socket,
        registry: &Registry,
        stopping: &watch::Receiver<bool>,
        streaming: &mut bool,
    ) -> bool {
        loop {
            let waiting = {
                let mut r = core.lock();
                let waiting = std::mem::take(&mut r.blocked);
                // Still blocked while the wait runs without the lock.
                r.awaiting_room = !waiting.is_empty();
                waiting
            };
            if !waiting.is_empty() {
                if !wait_for_room(registry, waiting, stopping.clone()).await {
                    return false;
                }
                let mut r = core.lock();
                r.awaiting_room = false;
                r.drain();
                continue;
            }
            let mut r = core.lock();
            if let Some(msg) = r.parked.take() {
                // A batch seldom comes alone: what follows it is read by
                // this task.
                *streaming |= msg.len() > INLINE_FRAME_BYTES;
                r.take_frames(std::iter::once(msg));
                continue;
            }
            for origin in std::mem::take(&mut r.pending_forget) {
                r.registry.forget_origin(origin);
            }
            if !*streaming && std::mem::take(&mut r.rearm) {
                if let Err(e) = socket.recv_async(aio) {
                    tracing::error!(error = %e, "cannot receive on the sub socket again");
                }
            }
            return true;
        }
    }

    /// Whether a full subscription holds deliveries back (or a frame is
    /// parked behind them).
    fn is_blocked(&self) -> bool {
        !self.blocked.is_empty() || self.awaiting_room || self.parked.is_some()
    }

    /// When the inbox, the fault layer and the direct acks next need this
    /// task, in that order.
    fn timers(&self) -> [Option<std::time::Instant>; 3] {
        [
            self.inbox.poll_timeout(),
            self.faults.as_ref().and_then(|f| f.poll_timeout()),
            self.direct_acks.poll_timeout(),
        ]
    }

    /// Received frames, through the fault layer if there is one (which may
    /// release earlier ones, or, given none, what is due by now).
    fn take_frames(&mut self, msgs: impl IntoIterator<Item = nng::Message>) {
        let mut frames = std::mem::take(&mut self.frames);
        match &mut self.faults {
            Some(f) => {
                let now = clock::now();
                for msg in msgs {
                    f.handle_frame(msg, now);
                }
                frames.extend(std::iter::from_fn(|| f.poll()));
            }
            None => frames.extend(msgs),
        }
        self.process(&mut frames);
        self.frames = frames;
    }

    /// Dials the member's publisher and (re)starts its repair client.
    /// Durable subscriptions that replay the streams they have no position
    /// in: `member`'s, from its start, if some has none for it.
    fn replay_history(&mut self, member: &PeerInfo) {
        let stream = (member.id, member.stream_epoch());
        if self.history.iter().any(|known| !known.contains(&stream)) {
            self.inbox.resume(stream.0, stream.1, 1, clock::now());
        }
    }

    /// A member is gone. A durable member's stream stays tracked as it is:
    /// what is missing of it is in its log, asked for when it is back (a
    /// restarted durable peer continues the same stream). Any other
    /// member's stream ends: what is missing is lost, what is held is
    /// delivered; its group views are forgotten once that is done.
    fn forget(&mut self, info: &PeerInfo) {
        if info.is_durable() {
            return;
        }
        self.inbox.forget(info.id);
        self.drain();
        match self.blocked.is_empty() {
            true => self.registry.forget_origin(info.id),
            false => self.pending_forget.push(info.id),
        }
    }

    fn connect(&mut self, info: &PeerInfo, results: &mpsc::UnboundedSender<Repaired>) {
        let url = &info.endpoints.publish;
        if !self.dialers.contains_key(url) {
            match socket::dial(&self.socket, url) {
                Ok(d) => {
                    tracing::debug!(%url, "dialing publisher");
                    self.dialers.insert(url.clone(), d);
                }
                Err(e) => tracing::warn!(%url, error = %e, "cannot dial a member's publisher"),
            }
        }
        let repair = &info.endpoints.repair;
        if self
            .nak_senders
            .get(&info.id)
            .is_none_or(|(u, _)| u != repair)
        {
            let tx = nak_sender::spawn(
                info.id,
                repair.clone(),
                self.sockets.clone(),
                self.max_message_size,
                self.counters.clone(),
                results.clone(),
            );
            self.nak_senders.insert(info.id, (repair.clone(), tx));
        }
    }

    /// Decodes `frames` (all taken) into the inbox, then delivers what it
    /// releases until a subscription is full (see [`blocked`](Self::blocked)).
    fn process(&mut self, frames: &mut Vec<nng::Message>) {
        let now = clock::now();
        let mut envelopes = std::mem::take(&mut self.scratch);
        for msg in frames.drain(..) {
            // Before any of its events is delivered, after what decoding
            // counted it as (malformed, oversized, …).
            let received = self.decode(msg, &mut envelopes);
            Counters::add(&self.counters.received, received);
            for env in envelopes.drain(..) {
                if !self.blocked.is_empty() {
                    // Behind a full subscription: queued in the inbox, in order.
                    self.inbox.handle_envelope(env, now);
                    continue;
                }
                // The next one in order, nothing queued before it: delivered
                // at once rather than through the inbox's queue.
                if let Some(env) = self.inbox.accept(env, now) {
                    self.blocked = self.deliver(env);
                }
            }
        }
        self.scratch = envelopes;
        if let Some(f) = &self.faults {
            let c = f.counts();
            Counters::set(&self.counters.faults_dropped, c.dropped);
            Counters::set(&self.counters.faults_duplicated, c.duplicated);
            Counters::set(&self.counters.faults_reordered, c.reordered);
            Counters::set(&self.counters.faults_delayed, c.delayed);
        }
        self.drain();
    }

    /// Acts on what the inbox decided, in order, until a subscription is
    /// full (what it could not take is then in `blocked`, the rest stays in
    /// the inbox).
    fn drain(&mut self) {
        while self.blocked.is_empty() {
            let Some(event) = self.inbox.poll() else {
                break;
            };
            match event {
                InboxEvent::Deliver(env) => self.blocked = self.deliver(env),
                InboxEvent::Lost {
                    origin,
                    incarnation,
                    first,
                    last,
                } => {
                    let loss = Loss {
                        origin,
                        incarnation,
                        first,
                        last,
                    };
                    // Counted before it is announced: a reader sees both agree.
                    Counters::add(&self.counters.lost, loss.count());
                    // A group view may have been among what is lost: each
                    // group handler learns the origin's views afresh.
                    self.registry.forget_origin(origin);
                    tracing::warn!(%origin, incarnation, first, last, "messages lost: they will never arrive");
                    let _ = self.losses.send(loss);
                }
                InboxEvent::Nak(nak) => match self.nak_senders.get(&nak.origin) {
                    Some((_, tx)) => {
                        let _ = tx.try_send(RepairRequest::Nak(nak)); // full: a newer one follows
                    }
                    None => Counters::add(&self.counters.naks_unroutable, 1),
                },
            }
        }
        self.registry.flush();
        let c = self.inbox.counters();
        let s = &self.counters;
        Counters::set(&s.duplicates, c.duplicates);
        Counters::set(&s.stale, c.stale);
        Counters::set(&s.before_join, c.before_join);
        Counters::set(
            &s.held_overflow,
            c.held_overflow + c.too_far_ahead + c.origins_refused,
        );
        Counters::set(&s.held, self.inbox.held() as u64);
        let r = &self.registry;
        Counters::set(
            &s.group_delivered,
            r.group_delivered.load(std::sync::atomic::Ordering::Relaxed),
        );
        Counters::set(
            &s.group_controls_malformed,
            r.bad_controls.load(std::sync::atomic::Ordering::Relaxed),
        );
        let acks: Vec<Ack> = self
            .inbox
            .acks()
            .map(|(origin, incarnation, seq)| Ack {
                origin,
                incarnation,
                seq,
            })
            .collect();
        self.send_direct_acks(&acks, false);
        *self.acks.write() = Arc::new(acks);
    }

    /// Acks what this peer received of each origin straight to its repair
    /// endpoint when [`DirectAcks`] says one is due (after receiving, or at
    /// its check: `check`), so a busy origin frees its buffer without
    /// waiting for a heartbeat (which also carries the watermark).
    fn send_direct_acks(&mut self, received: &[Ack], check: bool) {
        let (senders, inflight, me) = (&self.nak_senders, &self.registry.inflight, self.me);
        let watermarks = received
            .iter()
            .filter(|a| senders.contains_key(&a.origin))
            .map(|a| {
                let seq = inflight.ack_floor(a.origin, a.incarnation, a.seq);
                (a.origin, a.incarnation, seq)
            });
        let send = |origin, incarnation, seq| {
            let ack = DirectAck {
                member: me,
                origin,
                incarnation,
                seq,
            };
            senders
                .get(&origin)
                .is_some_and(|(_, tx)| tx.try_send(RepairRequest::Ack(ack)).is_ok())
        };
        let now = clock::now();
        match check {
            false => self.direct_acks.handle_watermarks(watermarks, now, send),
            true => self.direct_acks.handle_timeout(watermarks, now, send),
        }
    }

    /// One frame (an event or a batch) to envelopes appended to `out`; a
    /// bad frame is counted, logged and dropped whole. Returns how many it
    /// counts as received (its events, or 1 for a bad frame).
    fn decode(&mut self, mut msg: nng::Message, out: &mut Vec<Envelope>) -> u64 {
        let pipe = msg.pipe();
        let Ok(len) = self.sockets.gate.check(&mut msg) else {
            self.bad.reject(
                "unauthentic",
                &source_of(pipe),
                &"failed bus-key authentication",
            );
            return 1;
        };
        // The frame is the NNG message itself (without its tag): every
        // payload is a slice of it, nothing is copied.
        let frame = Bytes::from_owner(Received(msg)).slice(..len);
        let decoded =
            Envelope::decode_events_shared(&frame, self.max_message_size, &mut self.topics, out);
        match decoded {
            Ok(()) => out.len() as u64,
            Err(e) => {
                out.clear();
                let (counter, kind) = match e {
                    DecodeError::Oversized { .. } => (&self.counters.oversized, "oversized"),
                    DecodeError::Version(_) | DecodeError::UnknownKind(_) => {
                        (&self.counters.unsupported, "unsupported")
                    }
                    _ => (&self.counters.malformed, "malformed"),
                };
                Counters::add(counter, 1);
                self.bad.reject(kind, &source_of(pipe), &e);
                1
            }
        }
    }

    /// Drops a repeated idempotency key, else hands the envelope to every
    /// matching subscription without waiting; what full subscriptions
    /// could not take yet is returned for [`wait_for_room`](Self::wait_for_room).
    /// Synchronous, so the envelope is not moved into a future's state.
    fn deliver(&mut self, env: Envelope) -> Vec<(Feed<Routed>, Routed)> {
        self.direct_acks.handle_received(env.payload.len());
        // A replay is for durable subscriptions, which skip by position:
        // its key was seen when it was first delivered here, or belongs to
        // a stretch the others were never owed.
        let replay = self.inbox.is_replay(&env);
        let keyed = env.id().filter(|_| !replay);
        if let Some(key) = keyed {
            let now = clock::now();
            if self.keys.contains(&env.topic, key, now) {
                Counters::add(&self.counters.duplicate_keys, 1);
                tracing::debug!(topic = %env.topic, key, origin = %env.origin, seq = env.seq,
                    "duplicate idempotency key dropped");
                return Vec::new();
            }
            self.keys.record(&env.topic, key, now);
        }
        tracing::debug_span!("deliver", topic = %env.topic, origin = %env.origin, seq = env.seq,
            correlation_id = env.correlation_id())
        .in_scope(|| tracing::trace!("dispatching to subscriptions"));
        let redelivered = self.inbox.is_redelivery(&env);
        if redelivered {
            Counters::add(&self.counters.redelivered, 1);
        }
        if replay {
            Counters::add(&self.counters.replayed, 1);
        }
        let received = Routed {
            envelope: env,
            redelivered,
            replay,
        };
        match self.registry.dispatch(received) {
            Dispatched::Unmatched => Counters::add(&self.counters.unmatched, 1),
            Dispatched::Done => {}
            Dispatched::Full(waiting) => return waiting,
        }
        Vec::new()
    }
}

/// Waits until each full subscription took what it was offered; false if
/// shutdown interrupted the wait.
async fn wait_for_room(
    registry: &Registry,
    waiting: Vec<(Feed<Routed>, Routed)>,
    mut stopping: watch::Receiver<bool>,
) -> bool {
    // Wake every reader first: the one that is full may be read by a task
    // waiting on another.
    registry.flush();
    for (tx, routed) in waiting {
        // An error means the subscription was dropped meanwhile.
        tokio::select! {
            _ = tx.push(routed) => {}
            _ = stopping.wait_for(|stop| *stop) => return false,
        }
    }
    true
}

/// A received NNG message as the owner of the bytes sliced from it.
struct Received(nng::Message);

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// The remote address of the pipe a message came in on, for logs.
fn source_of(pipe: Option<nng::Pipe>) -> String {
    let Some(pipe) = pipe else {
        return "unknown".into();
    };
    match pipe.get_opt::<RemAddr>() {
        // nng 1.0.1 reports tcp ports byte-swapped (NNG-NOTES.md).
        Ok(nng::SocketAddr::Inet(a)) => format!("{}:{}", a.ip(), a.port().swap_bytes()),
        Ok(other) => format!("{other:?}"),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seq_board_coalesces_per_member() {
        let board = LastSeqBoard::default();
        for seq in 0..10_000 {
            board.post(PeerId(1), 1, seq);
            board.post(PeerId(2), 1, 5);
        }
        board.post(PeerId(1), 1, 3); // older news does not win
        let table = board.take();
        assert_eq!(table.len(), 2);
        assert_eq!(table[&PeerId(1)], (1, 9_999));
        board.post(PeerId(1), 2, 1); // a new incarnation does
        assert_eq!(board.take()[&PeerId(1)], (2, 1));
        assert!(board.take().is_empty());
    }
}
