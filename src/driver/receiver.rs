//! The receive driver: the tokio task that owns the sub0 socket and the
//! receiving side of reliable delivery.
//!
//! Owns: dialing members' publishers and starting their repair clients,
//! reading frames without blocking the runtime (through the optional fault
//! layer), rejecting bad input (counted, logged once per source), feeding
//! the [`Inbox`] (gaps, NAKs, order, losses) and the idempotency-key cache,
//! dispatching what the inbox releases to the subscriptions, and publishing
//! the ack watermarks that heartbeats carry. A full subscription makes this
//! task wait, so NNG's bounded queue takes the overflow and repair fills the
//! gaps afterwards.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

use nng::options::{Options, RemAddr};
use nng::{Dialer, Socket};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::api::delivery::Loss;
use crate::api::queue::Feed;
use crate::api::stats::Counters;
use crate::api::subscription::{Dispatched, Registry, Routed};
use crate::driver::clock;
use crate::driver::nak_sender::{self, Repaired};
use crate::proto::dedup::KeyCache;
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

/// How many frames are taken from NNG per wake-up.
const RECV_BATCH: usize = 64;
/// Progress (in events of one origin) that triggers a direct ack: a
/// sixteenth of the default retransmit buffer, so acks come well before it
/// fills, and about one per 1 ms at 1 M events/s.
const DIRECT_ACK_EVERY: u64 = 1024;
/// Payload bytes delivered (all origins) after which every origin this
/// peer moved on in gets a direct ack, however few events that was: large
/// events fill an origin's byte bound (16 MiB by default) long before
/// [`DIRECT_ACK_EVERY`] of them arrive.
const DIRECT_ACK_BYTES: u64 = 1 << 20;

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
    /// The last watermark sent as a direct ack, per origin incarnation.
    pub direct_acked: HashMap<(PeerId, u64), u64>,
    /// Payload bytes delivered since direct acks last went out by bytes.
    pub delivered_bytes: u64,
    /// Reused buffer of decoded envelopes.
    pub scratch: Vec<Envelope>,
    /// Received topics, validated once and shared.
    pub topics: Interner,
    /// The members connected, by id.
    pub members: HashMap<PeerId, Arc<PeerInfo>>,
    /// Per durable subscription that replays streams it has no position
    /// in: the streams it has one in.
    pub history: Vec<std::collections::HashSet<(PeerId, u64)>>,
}

impl Receiver {
    /// Runs until told to shut down or until every `Peer` handle is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ReceiverCmd>) {
        let mut ack = None;
        let (repaired_tx, mut repaired) = mpsc::unbounded_channel();
        match RecvReady::new(&self.socket) {
            Ok(ready) => {
                let mut batch = Vec::with_capacity(RECV_BATCH);
                let mut frames = Vec::with_capacity(RECV_BATCH);
                loop {
                    let due = self.faults.as_ref().and_then(|f| f.poll_timeout());
                    let nak_due = self.inbox.poll_timeout();
                    let go_on = tokio::select! {
                        // Commands first: a member's Connect must reach the
                        // inbox before its first heartbeat does, or its
                        // stream would start at that heartbeat's last seq
                        // and what came before would be skipped unseen.
                        biased;
                        cmd = rx.recv() => match cmd {
                            Some(ReceiverCmd::Connect(info)) => {
                                self.inbox.announce(info.id);
                                self.connect(&info, &repaired_tx);
                                self.replay_history(&info);
                                self.members.insert(info.id, info);
                                self.drain().await
                            }
                            Some(ReceiverCmd::Durable { positions, history }) => {
                                let now = clock::now();
                                for &(origin, epoch, through) in &positions {
                                    self.inbox.resume(origin, epoch, through + 1, now);
                                }
                                if history {
                                    let known = positions.iter().map(|&(o, e, _)| (o, e)).collect();
                                    self.history.push(known);
                                    let members: Vec<Arc<PeerInfo>> = self.members.values().cloned().collect();
                                    for info in members {
                                        self.replay_history(&info);
                                    }
                                }
                                self.drain().await
                            }
                            Some(ReceiverCmd::Disconnect(info)) => {
                                if let Some(d) = self.dialers.remove(&info.endpoints.publish) {
                                    d.close();
                                }
                                self.nak_senders.remove(&info.id);
                                self.members.remove(&info.id);
                                self.direct_acked.retain(|(o, _), _| *o != info.id);
                                self.forget(&info).await
                            }
                            Some(ReceiverCmd::Left(info)) => {
                                self.direct_acked.retain(|(o, _), _| *o != info.id);
                                self.forget(&info).await
                            }
                            Some(ReceiverCmd::Shutdown(done)) => {
                                ack = Some(done);
                                break;
                            }
                            None => break,
                        },
                        r = ready.recv_batch(&self.socket, &mut batch, RECV_BATCH) => {
                            if let Err(e) = r {
                                tracing::error!(error = %e, "sub socket stopped receiving");
                                break;
                            }
                            match &mut self.faults {
                                Some(f) => {
                                    let now = clock::now();
                                    for msg in batch.drain(..) {
                                        f.handle_frame(msg, now);
                                    }
                                    frames.extend(std::iter::from_fn(|| f.poll()));
                                }
                                None => frames.append(&mut batch),
                            }
                            self.process(&mut frames).await
                        }
                        _ = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, Into::into)), if due.is_some() => {
                            if let Some(f) = &mut self.faults {
                                f.handle_timeout(clock::now());
                                frames.extend(std::iter::from_fn(|| f.poll()));
                            }
                            self.process(&mut frames).await
                        }
                        _ = self.last_seqs.wake.notified() => {
                            let now = clock::now();
                            for (id, (incarnation, last_seq)) in self.last_seqs.take() {
                                self.inbox.handle_heartbeat(id, incarnation, last_seq, now);
                            }
                            self.drain().await
                        }
                        Some(r) = repaired.recv() => {
                            let Repaired { origin, incarnation, envelopes, gone, owed_from, redelivered_through } = r;
                            self.inbox.handle_redelivery(origin, incarnation, redelivered_through);
                            self.inbox.handle_repair(origin, incarnation, envelopes, &gone, owed_from, clock::now());
                            self.drain().await
                        }
                        _ = tokio::time::sleep_until(nak_due.map_or_else(tokio::time::Instant::now, Into::into)), if nak_due.is_some() => {
                            self.inbox.handle_timeout(clock::now());
                            self.drain().await
                        }
                    };
                    if !go_on && *self.stopping.borrow() {
                        continue; // shutting down: the Shutdown command follows
                    }
                }
                drop(ready); // before close: closing does not wake a poller
            }
            Err(e) => tracing::error!(error = %e, "cannot poll the sub socket"),
        }
        self.nak_senders.clear();
        self.socket.close();
        self.registry.close();
        if let Some(done) = ack {
            let _ = done.send(());
        }
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
    /// delivered. False if shutdown interrupted a wait.
    async fn forget(&mut self, info: &PeerInfo) -> bool {
        if info.is_durable() {
            return true;
        }
        self.inbox.forget(info.id);
        let go_on = self.drain().await;
        self.registry.forget_origin(info.id);
        go_on
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
    /// releases; false if shutdown interrupted a wait.
    async fn process(&mut self, frames: &mut Vec<nng::Message>) -> bool {
        let now = clock::now();
        let mut envelopes = std::mem::take(&mut self.scratch);
        let mut go_on = true;
        for msg in frames.drain(..) {
            self.decode(msg, &mut envelopes);
            for env in envelopes.drain(..) {
                // The next one in order, nothing queued before it: delivered
                // at once rather than through the inbox's queue.
                let Some(env) = self.inbox.accept(env, now) else {
                    continue;
                };
                if go_on {
                    let waiting = self.deliver(env);
                    if !waiting.is_empty() {
                        go_on = self.wait_for_room(waiting).await;
                    }
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
        self.drain().await && go_on
    }

    /// Acts on everything the inbox decided; false if shutdown interrupted
    /// a wait on a full subscription.
    async fn drain(&mut self) -> bool {
        let mut go_on = true;
        while let Some(event) = self.inbox.poll() {
            match event {
                InboxEvent::Deliver(env) if go_on => {
                    let waiting = self.deliver(env);
                    if !waiting.is_empty() {
                        go_on = self.wait_for_room(waiting).await;
                    }
                }
                InboxEvent::Deliver(_) => {}
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
        self.send_direct_acks(&acks);
        *self.acks.write() = Arc::new(acks);
        go_on
    }

    /// Tells an origin at once when this peer has moved [`DIRECT_ACK_EVERY`]
    /// past the watermark it last sent it, so a busy origin frees its buffer
    /// without waiting for a heartbeat (which also carries the watermark).
    fn send_direct_acks(&mut self, received: &[Ack]) {
        let every = match self.delivered_bytes >= DIRECT_ACK_BYTES {
            true => {
                self.delivered_bytes = 0;
                1
            }
            false => DIRECT_ACK_EVERY,
        };
        for a in received {
            let Some((_, tx)) = self.nak_senders.get(&a.origin) else {
                continue;
            };
            let seq = self
                .registry
                .inflight
                .ack_floor(a.origin, a.incarnation, a.seq);
            let last = self
                .direct_acked
                .entry((a.origin, a.incarnation))
                .or_insert(0);
            if seq >= *last + every {
                let ack = DirectAck {
                    member: self.me,
                    origin: a.origin,
                    incarnation: a.incarnation,
                    seq,
                };
                if tx.try_send(RepairRequest::Ack(ack)).is_ok() {
                    *last = seq;
                }
            }
        }
    }

    /// One frame (an event or a batch) to envelopes appended to `out`; a
    /// bad frame is counted, logged and dropped whole.
    fn decode(&mut self, mut msg: nng::Message, out: &mut Vec<Envelope>) {
        let pipe = msg.pipe();
        let Ok(len) = self.sockets.gate.check(&mut msg) else {
            Counters::add(&self.counters.received, 1);
            self.bad.reject(
                "unauthentic",
                &source_of(pipe),
                &"failed bus-key authentication",
            );
            return;
        };
        // The frame is the NNG message itself (without its tag): every
        // payload is a slice of it, nothing is copied.
        let frame = Bytes::from_owner(Received(msg)).slice(..len);
        let decoded =
            Envelope::decode_events_shared(&frame, self.max_message_size, &mut self.topics, out);
        match decoded {
            Ok(()) => Counters::add(&self.counters.received, out.len() as u64),
            Err(e) => {
                out.clear();
                Counters::add(&self.counters.received, 1);
                let (counter, kind) = match e {
                    DecodeError::Oversized { .. } => (&self.counters.oversized, "oversized"),
                    DecodeError::Version(_) | DecodeError::UnknownKind(_) => {
                        (&self.counters.unsupported, "unsupported")
                    }
                    _ => (&self.counters.malformed, "malformed"),
                };
                Counters::add(counter, 1);
                self.bad.reject(kind, &source_of(pipe), &e);
            }
        }
    }

    /// Drops a repeated idempotency key, else hands the envelope to every
    /// matching subscription without waiting; what full subscriptions
    /// could not take yet is returned for [`wait_for_room`](Self::wait_for_room).
    /// Synchronous, so the envelope is not moved into a future's state.
    fn deliver(&mut self, env: Envelope) -> Vec<(Feed<Routed>, Routed)> {
        self.delivered_bytes += env.payload.len() as u64;
        // A replay is for durable subscriptions, which skip by position:
        // its key was seen when it was first delivered here, or belongs to
        // a stretch the others were never owed.
        let replay = self.inbox.is_replay(&env);
        let keyed = env.id.as_ref().filter(|_| !replay);
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
            correlation_id = env.correlation_id.as_deref())
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

    /// Waits until each full subscription took what it was offered; false
    /// if shutdown interrupted the wait.
    async fn wait_for_room(&mut self, waiting: Vec<(Feed<Routed>, Routed)>) -> bool {
        // Wake every reader first: the one that is full may be read by a
        // task waiting on another.
        self.registry.flush();
        for (tx, routed) in waiting {
            // An error means the subscription was dropped meanwhile.
            tokio::select! {
                _ = tx.push(routed) => {}
                _ = self.stopping.wait_for(|stop| *stop) => return false,
            }
        }
        true
    }
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
