//! The publish path and its driver task, which owns the pub0 socket.
//!
//! Owns: sequence numbering (so sequence order equals send order), stamping,
//! sending, the [`Outbox`] (retransmit buffer and ack watermarks) and the
//! answers to repair requests, which the
//! [repair server](crate::driver::repair_server) (the owner of rep0)
//! receives and sends. `Peer::publish` validates and encodes in the
//! caller's task, then numbers, stamps and stages its [`Draft`] (a frame
//! with seq and timestamp left blank) itself, under the [`PublishPath`]'s
//! lock: no hop to the driver task and no wake-up per event (measured:
//! the hop and its wake-ups were 12–28 % of a 64 B publisher's CPU). While
//! the outbox is full of unacknowledged envelopes `publish` waits for room
//! (or fails fast if configured). Events staged while a batch gathers go
//! out together as one message (one NNG message and one syscall for many
//! small events). While the event rate is low an event goes out at once,
//! so batching adds no latency; under load ([`Linger`]) a batch gathers
//! about 1 ms of events first (the driver task keeps the timer, at most
//! until tokio's next tick). The driver task takes the acks, member
//! changes, repairs, flushes and upkeep. Pub0 itself never blocks:
//! NNG queues up to `send_buffer` messages per subscriber link and drops the
//! oldest beyond — the receivers repair that. A durable peer's batches go
//! to its [log writer](crate::driver::log_writer) instead, which appends
//! them to the log and then sends them, while this task numbers the next
//! ones. This task also assigns its events to consumer groups
//! ([`Assigner`]): a group's new view, and the reassignment of events a
//! member failed to process, go in the stream as control events before the
//! next event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nng::Socket;
use tokio::sync::{mpsc, oneshot};

use crate::api::stats::Counters;
use crate::driver::clock::{self, now_us};
use crate::driver::journal::Journal;
use crate::driver::log_writer::{Batch, LogWriter};
use crate::driver::repair_server::RepairJob;
use crate::proto::assign::{Announced, Assigner, Control, DurableGroup};
use crate::proto::group_view::{envelope_key, seq_hash};
use crate::proto::linger::{Linger, LINGER};
use crate::proto::outbox::Outbox;
use crate::transport::gate::Gate;
use crate::wire::batch::BatchWriter;
use crate::wire::envelope::{Draft, Envelope, Fields, Headers};
use crate::wire::group::{
    parse_patterns, ReassignBody, ViewInfo, REASSIGN_TOPIC, RESERVED_PREFIX, VIEW_TOPIC,
};
use crate::wire::id::PeerId;
use crate::wire::repair::{Nak, Repair, RepairRequest};
use crate::wire::topic::Interner;

/// What `Peer` queues for the publish driver, in publish order.
pub(crate) enum Queued {
    /// One event to number and send.
    Event(Draft),
    /// A request: an event, and whether a consumer group's member was
    /// given it (someone will answer).
    Request(Draft, oneshot::Sender<bool>),
    /// A flush: everything queued before it goes out now, and the request
    /// is answered once every live member acknowledged it.
    Flush(FlushRequest),
}

/// The two answers to a flush.
pub(crate) struct FlushRequest {
    /// The last sequence number queued before the flush, once it was sent.
    pub sent: oneshot::Sender<u64>,
    /// Fires once every live member acknowledged through that number.
    pub acked: oneshot::Sender<()>,
}

/// Live members that have not acknowledged everything through a sequence
/// number, with what they did acknowledge (`None`: nothing yet).
pub(crate) type Unacked = Vec<(PeerId, Option<u64>)>;

/// Control messages to the publish driver (never held back by backpressure).
pub(crate) enum PublisherCmd {
    /// The live members changed (ids and incarnations).
    Members(Vec<(PeerId, u64)>),
    /// A member left gracefully.
    Left(PeerId),
    /// A member's "received through" watermark for this peer's events.
    Ack(PeerId, u64, u64),
    /// A member's heartbeat carried no watermark for this peer's events.
    NoAck(PeerId),
    /// What a member's durable consumers processed of this peer's stream:
    /// `(name, stream epoch, through)`.
    Readers(PeerId, Vec<(String, u64, u64)>),
    /// A live member's consumer groups, as its heartbeat (of incarnation
    /// `.1`) announces them for this peer's stream.
    Groups(PeerId, u64, Vec<Announced>),
    /// Who has not acknowledged through this sequence number (all that was
    /// published if `None`), and the last sequence number sent.
    Unacked(Option<u64>, oneshot::Sender<(u64, Unacked)>),
    /// Send what is queued, then stop.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Publisher {
    pub socket: Socket,
    pub outbox: Outbox,
    pub origin: PeerId,
    pub counters: Arc<Counters>,
    /// Last sequence number sent, advertised in heartbeats.
    pub last_seq: Arc<AtomicU64>,
    /// Envelopes staged for the next message.
    pub batch: BatchWriter,
    /// Bytes of envelopes after which a batch is sent.
    pub batch_bytes: usize,
    /// Seals outgoing messages and checks NAKs.
    pub gate: Arc<Gate>,
    /// How long the buffer may stay full before laggards are cut off.
    pub stall_limit: Duration,
    /// When a batch is sent: at once, or after gathering under load.
    pub linger: Linger,
    /// Flushes waiting for acks: through which sequence number, and whom to tell.
    pub flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// The log of a durable peer (a data dir): repair reads and upkeep.
    pub journal: Option<Journal>,
    /// A durable peer's log writer, which appends each batch to the log
    /// and then sends it.
    pub writer: Option<LogWriter>,
    /// The frames of the batch being staged, for the log writer.
    pub frames: Vec<bytes::Bytes>,
    /// This peer's stream epoch (the incarnation its envelopes carry).
    pub stream: u64,
    /// Who handles which event in each consumer group.
    pub assigner: Assigner,
    /// The group members it knows, by incarnation (a new one, or one no
    /// longer live, failed).
    pub group_members: std::collections::HashMap<PeerId, u64>,
    /// The views as the stream has them, for heartbeats (updated before
    /// `last_seq` moves past them).
    pub views: Arc<parking_lot::Mutex<Vec<ViewInfo>>>,
    /// Topics of assigned events, shared.
    pub topics: Interner,
    /// How long a durable group with no member is kept (the retention age).
    pub group_max_age_us: u64,
    /// When the batch being gathered goes out at the latest.
    pub linger_until: Option<tokio::time::Instant>,
    /// Set once the driver stopped: nothing is staged any more.
    pub closed: bool,
}

/// The publish path, shared by `publish` and the publish driver task:
/// `publish` numbers and stages its event itself, under the lock (no hop
/// to the driver task, no wake-up per event), or waits for room in the
/// retransmit buffer; the driver task keeps the linger's timer, the acks,
/// repairs, upkeep and flushes.
pub(crate) struct PublishPath {
    pub core: parking_lot::Mutex<Publisher>,
    /// Flushes, for the driver task (events are never queued).
    pub tx: mpsc::Sender<Queued>,
    /// Rung when `publish` armed a linger (the driver keeps the timer).
    pub wake: tokio::sync::Notify,
    /// Rung when the retransmit buffer has room again.
    pub room: tokio::sync::Notify,
}

/// Why [`PublishPath::try_stage`] did not stage an event.
pub(crate) enum NotStaged {
    /// The retransmit buffer is full: wait for [`PublishPath::room`].
    Full(Queued),
    /// The publisher has stopped.
    Closed,
}

impl PublishPath {
    /// Stages `item` (an event or a request) at once, unless the buffer is
    /// full or the publisher stopped.
    pub(crate) fn try_stage(&self, item: Queued) -> std::result::Result<(), NotStaged> {
        let mut p = self.core.lock();
        if p.closed {
            return Err(NotStaged::Closed);
        }
        if p.outbox.is_full() {
            return Err(NotStaged::Full(item));
        }
        let flushed = p.take(item, now_us());
        if p.after_take(flushed) {
            self.wake.notify_one();
        }
        // Stats read right after a publish see the buffer it filled.
        p.update_buffer_gauges();
        Ok(())
    }

    /// Stages `item`, waiting for room in the buffer while it is full.
    pub(crate) async fn stage(&self, item: Queued) -> std::result::Result<(), ()> {
        let mut item = match self.try_stage(item) {
            Ok(()) => return Ok(()),
            Err(NotStaged::Closed) => return Err(()),
            Err(NotStaged::Full(back)) => back,
        };
        loop {
            // Registered before trying again: room made in between wakes it.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_stage(item) {
                Ok(()) => return Ok(()),
                Err(NotStaged::Closed) => return Err(()),
                Err(NotStaged::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Runs the driver task until told to shut down or until every `Peer`
    /// handle is gone.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Queued>,
        mut ctl: mpsc::UnboundedReceiver<PublisherCmd>,
        mut repairs: mpsc::Receiver<RepairJob>,
    ) {
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ack = loop {
            let (linger_until, writer_sent) = {
                let p = self.core.lock();
                let sent = p.writer.as_ref().filter(|_| !p.flushes.is_empty());
                (p.linger_until, sent.map(|w| w.sent.clone()))
            };
            let stop = tokio::select! {
                biased;
                c = ctl.recv() => self.core.lock().handle_cmd(c),
                Some(job) = repairs.recv() => {
                    let repair = self.core.lock().answer(job.request);
                    let _ = job.reply.send(repair);
                    None
                }
                _ = upkeep.tick() => {
                    self.core.lock().upkeep();
                    None
                }
                // The log writer sent a batch: flushes may be answered.
                _ = async { writer_sent.as_ref().expect("checked").notified().await },
                    if writer_sent.is_some() => None,
                _ = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => {
                    let mut p = self.core.lock();
                    if p.linger_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
                        p.linger_until = None;
                        p.send_batch();
                    }
                    None
                }
                // `publish` armed a linger: the timer above is armed anew.
                _ = self.wake.notified() => None,
                q = queue.recv() => match q {
                    Some(q) => {
                        let mut p = self.core.lock();
                        let flushed = p.take(q, now_us());
                        p.after_take(flushed);
                        None
                    }
                    None => Some(None),
                },
            };
            let mut p = self.core.lock();
            p.update_gauges();
            p.answer_flushes();
            let room = !p.outbox.is_full();
            drop(p);
            if room {
                self.room.notify_waiters();
            }
            if let Some(ack) = stop {
                break ack;
            }
        };
        drop(repairs); // stops the repair server
        self.core.lock().finish(&mut queue);
        self.room.notify_waiters();
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }
}

/// How often a durable peer records watermarks, trims its log and retries
/// a failed append.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Most envelopes in one batch.
const MAX_BATCH_COUNT: u32 = 4096;

impl Publisher {
    /// One command of the discovery and receive drivers; `Some` when the
    /// publisher is to stop (with whom to tell once it has).
    fn handle_cmd(&mut self, c: Option<PublisherCmd>) -> Option<Option<oneshot::Sender<()>>> {
        match c {
            Some(PublisherCmd::Members(live)) => {
                self.groups_lost(&live);
                self.outbox.set_members(live);
                if let Some(journal) = &mut self.journal {
                    journal.record_watermarks(&self.outbox);
                }
            }
            Some(PublisherCmd::Left(member)) => {
                self.outbox.handle_left(member);
                if self.group_members.remove(&member).is_some() {
                    self.assigner.handle_failed(member);
                    self.send_controls();
                }
            }
            Some(PublisherCmd::Groups(member, incarnation, groups)) => {
                match self.group_members.insert(member, incarnation) {
                    Some(known) if known != incarnation => self.assigner.handle_failed(member),
                    _ => {}
                }
                self.assigner.handle_groups(member, &groups);
                self.send_controls();
            }
            Some(PublisherCmd::Ack(member, incarnation, seq)) => {
                self.outbox.handle_ack(member, incarnation, seq);
                self.check_stall();
            }
            Some(PublisherCmd::NoAck(member)) => {
                self.outbox.handle_no_ack(member);
                self.check_stall();
            }
            Some(PublisherCmd::Readers(member, positions)) => {
                if let Some(journal) = &mut self.journal {
                    journal.note_readers(member, positions, now_us());
                }
            }
            Some(PublisherCmd::Unacked(through, reply)) => {
                let through = through.unwrap_or(self.outbox.last_seq());
                let _ = reply.send((self.outbox.last_seq(), self.outbox.unacked(through)));
            }
            Some(PublisherCmd::Shutdown(done)) => return Some(Some(done)),
            None => return Some(None),
        }
        None
    }

    /// After events were staged: the batch goes alone when the rate is
    /// low; under load once it holds a linger's worth (or at the deadline,
    /// armed here; returns whether it was).
    fn after_take(&mut self, flushed: bool) -> bool {
        if flushed {
            self.linger_until = None;
        } else if self.batch_full() || self.linger.send_now(self.batch.len()) {
            self.linger_until = None;
            self.send_batch();
        } else if self.linger_until.is_none() {
            self.linger_until = Some(tokio::time::Instant::now() + LINGER);
            return true;
        }
        false
    }

    /// At shutdown: what is staged goes out, the log writer finishes, the
    /// socket closes; nothing is staged any more. A flush still queued is
    /// answered by its sender being dropped.
    fn finish(&mut self, queue: &mut mpsc::Receiver<Queued>) {
        self.closed = true;
        queue.close();
        self.send_batch();
        if let Some(writer) = &mut self.writer {
            writer.finish(); // what was queued is written and sent
        }
        self.socket.close();
        self.upkeep();
        // The data dir is free once the driver is done (the publish path
        // itself lives on with the `Peer` handles).
        self.writer = None;
        self.journal = None;
    }

    /// Takes one queued item: an event is staged; a flush sends what is
    /// staged at once and waits for acks (returns true).
    fn take(&mut self, queued: Queued, stamp: u64) -> bool {
        match queued {
            Queued::Event(draft) => {
                self.stage(draft, true, stamp);
                false
            }
            Queued::Request(draft, assigned) => {
                // A request nobody can answer now is not kept for later.
                let _ = assigned.send(self.stage(draft, false, stamp));
                false
            }
            Queued::Flush(request) => {
                self.send_batch();
                let through = self.outbox.last_seq();
                let _ = request.sent.send(through);
                self.flushes.push((through, request.acked));
                true
            }
        }
    }

    /// Answers the flushes every live member has acknowledged (and drops
    /// those whose caller stopped waiting).
    fn answer_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.flushes);
        for (through, acked) in pending {
            if acked.is_closed() {
                continue;
            }
            // A durable peer's events are sent once they are in the log.
            let sent = self.writer.is_none() || self.last_seq.load(Ordering::Relaxed) >= through;
            if sent && self.outbox.acked_by_all(through) {
                let _ = acked.send(());
            } else {
                self.flushes.push((through, acked));
            }
        }
    }

    /// Group members no longer live (or live in a new incarnation) failed:
    /// what they owed goes to the others.
    fn groups_lost(&mut self, live: &[(PeerId, u64)]) {
        let gone: Vec<PeerId> = self
            .group_members
            .iter()
            .filter(|(id, inc)| !live.contains(&(**id, **inc)))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.group_members.remove(id);
            self.assigner.handle_failed(*id);
        }
        if !gone.is_empty() {
            self.send_controls();
        }
    }

    /// Puts the control events the assigner decided in the stream and
    /// sends them at once (they change who handles what).
    fn send_controls(&mut self) {
        if self.assigner.has_control() {
            self.stage_controls(now_us());
            self.send_batch();
        } else {
            self.update_group_gauges();
        }
    }

    /// Numbers and stages every control event the assigner has, and
    /// counts them before any can be sent: a member acting on one (e.g.
    /// answering a reassigned request) never comes before its counters.
    fn stage_controls(&mut self, stamp: u64) {
        loop {
            let seq = self.outbox.last_seq() + 1;
            let Some(control) = self.assigner.next_control(seq) else {
                break;
            };
            let (topic, payload) = match control {
                Control::View(view) => {
                    let info = view.to_info(0);
                    let payload = info.encode();
                    let mut views = self.views.lock();
                    views.retain(|v| v.group != info.group);
                    views.push(ViewInfo { since: seq, ..info });
                    (VIEW_TOPIC, payload)
                }
                Control::Reassign(r) => {
                    let body = ReassignBody {
                        group: r.group.to_string(),
                        seq: r.seq,
                        to: r.to,
                        redelivered: r.redelivered,
                        frame: r.frame,
                    };
                    (REASSIGN_TOPIC, body.encode())
                }
            };
            let headers = Headers::new();
            let fields = Fields {
                origin: self.origin,
                incarnation: self.stream,
                seq: 0,
                id: None,
                topic,
                timestamp_us: 0,
                correlation_id: None,
                headers: &headers,
                payload: &payload,
            };
            let size = crate::wire::envelope::encoded_len_bound(
                topic,
                None,
                None,
                &headers,
                payload.len(),
            );
            let frame = Draft::new(fields, size, None).number(seq, stamp);
            Counters::add(&self.counters.group_controls, 1);
            self.stage_frame(seq, frame);
            if self.batch_at_bound() {
                self.update_group_gauges();
                self.send_batch();
            }
        }
        self.update_group_gauges();
        // Groups the assigner forgot (no member, nothing tracked) leave the
        // heartbeats too: a group absent there reads as empty.
        self.views
            .lock()
            .retain(|v| self.assigner.views().any(|g| *g.group == *v.group));
    }

    fn update_group_gauges(&self) {
        let st = self.assigner.stats();
        let c = &self.counters;
        Counters::set(&c.group_assigned, st.assigned);
        Counters::set(&c.group_reassigned, st.reassigned);
        Counters::set(&c.group_failed_over, st.failed_over);
        Counters::set(&c.group_untracked, st.untracked);
        Counters::set(&c.group_kept, st.kept);
        Counters::set(&c.group_tracked, self.assigner.tracked() as u64);
        let members: usize = self.assigner.views().map(|v| v.members.len()).sum();
        Counters::set(&c.group_members, members as u64);
    }

    /// Numbers, retains and stages one event for the next
    /// message, stamped with `stamp` (µs since the epoch); a consumer
    /// group's control events go before it; a durable group with no live
    /// member for it keeps it if `keep`. Returns whether a live member of
    /// a consumer group was given it.
    fn stage(&mut self, draft: Draft, keep: bool, stamp: u64) -> bool {
        if self.assigner.has_control() {
            self.stage_controls(stamp);
        }
        let seq = self.outbox.last_seq() + 1;
        // chorus's own events (replies) are nobody's share.
        let grouped =
            match self.assigner.has_groups() && !draft.topic().starts_with(RESERVED_PREFIX) {
                true => self
                    .topics
                    .intern(draft.topic())
                    .ok()
                    .map(|t| (t, draft.key.unwrap_or_else(|| seq_hash(seq)))),
                false => None,
            };
        let frame = draft.number(seq, stamp);
        let assigned = match grouped {
            Some((topic, key)) => self.assigner.assign(seq, &topic, key, &frame, keep) > 0,
            None => false,
        };
        self.stage_frame(seq, frame);
        assigned
    }

    /// Stages a numbered frame for the next message and retains it.
    fn stage_frame(&mut self, seq: u64, frame: bytes::Bytes) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            if let Ok(env) = Envelope::decode(&frame, usize::MAX) {
                tracing::debug_span!("publish", topic = %env.topic, origin = %env.origin, seq,
                    correlation_id = env.correlation_id())
                .in_scope(|| tracing::trace!("numbered and staged"));
            }
        }
        self.batch.push(&frame);
        if self.writer.is_some() {
            self.frames.push(frame.clone());
        } else {
            // A durable peer's writer advertises it once it is in the log.
            // Release: a heartbeat that reads it sees the views before it.
            self.last_seq.store(seq, Ordering::Release);
        }
        // Control events (and the event they came before) may go beyond a
        // full buffer's bound: it stays full until acks free it.
        self.outbox.push_beyond(frame);
    }

    /// Whether the staged batch is at its size or count bound.
    fn batch_at_bound(&self) -> bool {
        self.batch.bytes() >= self.batch_bytes || self.batch.len() >= MAX_BATCH_COUNT
    }

    /// Whether the staged batch must go now: at its bound, or nothing more
    /// may be taken.
    fn batch_full(&mut self) -> bool {
        self.batch_at_bound() || self.outbox.is_full()
    }

    /// Sends what is staged as one NNG message; a durable peer's goes to
    /// its log writer, which appends it to the log first.
    fn send_batch(&mut self) {
        let n = self.batch.len();
        if n > 0 {
            self.linger.sent(n, clock::now());
        }
        let gate = &self.gate;
        let Some(msg) = self
            .batch
            .finish(|s| gate.message_with(s.len(), |out| s.write_to(out)))
        else {
            return;
        };
        match &self.writer {
            Some(writer) => writer.send(Batch {
                frames: std::mem::take(&mut self.frames),
                msg,
                events: n,
                last: self.outbox.last_seq(),
            }),
            None => self.send(msg, n),
        }
    }

    /// Forgets durable groups with no member for longer than the
    /// retention age; records watermarks, readers and durable groups, and
    /// trims the log (a durable peer).
    fn upkeep(&mut self) {
        // What acks freed that no publish dropped since (see `Outbox::push`).
        self.outbox.drop_acked();
        let now = now_us();
        let gone = self.assigner.expire(now, self.group_max_age_us);
        if let Some(journal) = &mut self.journal {
            journal.note_groups(self.assigner.durable(self.outbox.last_seq()), gone);
            journal.upkeep(&self.outbox, now);
            journal.set_gauges(&self.counters);
        }
    }

    /// Before it runs: the durable groups recorded in the data dir are
    /// kept again, with what its log holds after each one's watermark
    /// (handed to the next member, flagged: some may have been handled).
    pub(crate) fn restore_groups(&mut self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let log = journal.log.lock();
        for r in journal.groups() {
            let patterns = match parse_patterns(&r.patterns) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(group = %r.name, error = %e, "a recorded durable group has bad patterns; not restored");
                    continue;
                }
            };
            let record = DurableGroup {
                group: r.name.as_str().into(),
                through: r.through,
                patterns,
            };
            self.assigner.restore(&record);
            let (mut from, last) = (r.through + 1, log.last_seq());
            while from <= last {
                let read = match log.read(&journal.dir, from, last, 4 << 20, 4096) {
                    Ok(read) if !read.is_empty() => read,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(group = %r.name, error = %e, from, "cannot read the log to restore a durable group");
                        break;
                    }
                };
                for (seq, frame) in read {
                    from = seq + 1;
                    let Ok(env) = Envelope::decode(&frame, usize::MAX) else {
                        continue;
                    };
                    if env.topic.starts_with(RESERVED_PREFIX) {
                        continue;
                    }
                    let Ok(topic) = self.topics.intern(&env.topic) else {
                        continue;
                    };
                    self.assigner
                        .restore_event(&r.name, seq, &topic, envelope_key(&env), frame);
                }
            }
            tracing::info!(group = %r.name, through = r.through, last, "durable group restored");
        }
        drop(log);
        self.update_group_gauges();
    }

    /// The retransmit buffer's gauges (two relaxed stores: per publish).
    fn update_buffer_gauges(&self) {
        let c = &self.counters;
        Counters::set(&c.retransmit_buffer, self.outbox.len() as u64);
        Counters::set(&c.retransmit_bytes, self.outbox.bytes() as u64);
    }

    /// Hands one message of `n` events to pub0.
    fn send(&mut self, msg: nng::Message, n: u32) {
        match self.socket.try_send(msg) {
            Ok(()) => {
                Counters::add(&self.counters.published, u64::from(n));
                if n > 1 {
                    Counters::add(&self.counters.batches_sent, 1);
                }
            }
            Err((_, e)) => {
                tracing::error!(error = %e, envelopes = n, "pub socket refused a message")
            }
        }
    }

    /// Cuts off the members that kept the retransmit buffer full for longer
    /// than the stall limit (checked at every heartbeat's ack).
    fn check_stall(&mut self) {
        for member in self.outbox.check_stall(clock::now(), self.stall_limit) {
            Counters::add(&self.counters.members_cut_off, 1);
            let misses = if self.journal.is_some() {
                "repaired from the log"
            } else {
                "reported lost on its side"
            };
            tracing::warn!(%member, limit = ?self.stall_limit, misses,
                "a member held the retransmit buffer full too long: no longer waiting for it");
        }
    }

    /// The answer to one repair request: the retained envelopes a NAK asks
    /// for, or an empty answer to a direct ack (req/rep needs a reply).
    fn answer(&mut self, request: RepairRequest) -> Repair {
        let mut nak = match request {
            RepairRequest::Nak(n) => n,
            RepairRequest::Ack(a) => {
                if a.origin == self.origin {
                    self.outbox.handle_ack(a.member, a.incarnation, a.seq);
                } else {
                    self.outbox.handle_ack(a.member, 0, 0); // another origin's: counted as refused
                }
                Nak {
                    origin: a.origin,
                    incarnation: a.incarnation,
                    ranges: Vec::new(),
                    member: a.member,
                    resume_from: 0,
                }
            }
        };
        if self.writer.is_some() {
            // Only what is in the log (and sent) is published: a NAK can
            // only name more if it is forged or ahead of a crash.
            let logged = self.last_seq.load(Ordering::Relaxed);
            nak.ranges.retain_mut(|r| {
                r.1 = r.1.min(logged);
                r.0 <= r.1
            });
        }
        let mut repair = self.outbox.handle_nak(&nak);
        if self.writer.is_some() {
            repair.last_seq = repair.last_seq.min(self.last_seq.load(Ordering::Relaxed));
        }
        if let Some(journal) = &self.journal {
            let cfg = self.outbox.config();
            let read = journal.fill(&mut repair, cfg.max_reply_bytes, cfg.max_nak_seqs as usize);
            Counters::add(&self.counters.log_reads, read as u64);
        }
        Counters::add(&self.counters.retransmits, repair.frames.len() as u64);
        self.update_gauges(); // counted before the answer can be seen
        repair
    }

    fn update_gauges(&self) {
        if self.assigner.has_groups() {
            self.update_group_gauges();
        }
        self.update_buffer_gauges();
        let c = &self.counters;
        let refused = self.outbox.refused();
        Counters::set(&c.acks_refused, refused.acks);
        Counters::set(&c.naks_refused, refused.naks + refused.unpublished);
        if let Some(journal) = &self.journal {
            Counters::set(&c.durable_readers, journal.readers() as u64);
            Counters::set(&c.trimmed_unprocessed, journal.trimmed_unprocessed);
        }
    }
}
