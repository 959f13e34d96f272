//! The discovery driver: the tokio task that owns the heartbeat sockets.
//!
//! Owns: the surveyor (listening on the peer's public URL) and the respondent
//! (dialing seeds and members' surveyors), the round timer and deadline, and
//! carrying out what the [membership core](crate::proto::membership) decides:
//! dialing and undialing members (their publishers through the receive
//! driver), publishing events and the member snapshot. All membership logic
//! lives in the core; this task only moves bytes and time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nng::{Dialer, Socket};
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::api::stats::Counters;
use crate::api::subscription::Registry;
use crate::driver::clock;
use crate::driver::publisher::PublisherCmd;
use crate::driver::receiver::{acks_to_send, AckView, LastSeqBoard, ReceiverCmd};
use crate::proto::assign::Announced;
use crate::proto::group_view::GroupView;
use crate::proto::membership::{Action, Membership};
use crate::store::positions::Positions;
use crate::transport::bad_input::BadInputLog;
use crate::transport::gate::Gate;
use crate::transport::socket::{self, AioSend, RecvReady};
use crate::wire::frame::DecodeError;
use crate::wire::group::{parse_patterns, GroupStatus, ViewInfo};
use crate::wire::heartbeat::{Ack, DurablePosition, Response, Survey, MAX_POSITIONS};
use crate::wire::id::PeerId;
use crate::wire::member::{Member, MemberEvent, MemberEventKind, PeerInfo};

/// How many times a graceful exit is announced to members that did not answer.
const LEAVE_ATTEMPTS: usize = 3;

/// Rounds with seeds but no member before a warning says so.
const ALONE_WARN_ROUNDS: u32 = 10;

/// Messages to the discovery driver.
pub(crate) enum DiscoveryCmd {
    /// Announce Left, then stop and close the sockets.
    Leave(oneshot::Sender<()>),
}

/// The current member table, readable without asking the driver.
pub(crate) type View = Arc<RwLock<Arc<Vec<Member>>>>;

pub(crate) struct Discovery {
    pub core: Membership,
    pub surveyor: Socket,
    pub respondent: Socket,
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub deadline: Duration,
    pub max_message_size: usize,
    pub receiver: mpsc::UnboundedSender<ReceiverCmd>,
    pub events: broadcast::Sender<MemberEvent>,
    pub view: View,
    pub counters: Arc<Counters>,
    pub last_seq: Arc<AtomicU64>,
    /// What this peer has received from each origin (kept by the receiver).
    pub acks: AckView,
    /// Members' last published sequence numbers, for the receiver.
    pub last_seqs: Arc<LastSeqBoard>,
    /// Subscriptions, for what handlers have not finished yet.
    pub registry: Arc<Registry>,
    /// The durable consumers' positions (a peer with a data dir), announced
    /// to the durable origins they read.
    pub positions: Option<Arc<Positions>>,
    /// Acks and membership for the publisher's retransmit buffer.
    pub publisher: mpsc::UnboundedSender<PublisherCmd>,
    pub dialers: HashMap<String, Dialer>,
    pub bad: BadInputLog,
    /// Seals heartbeats and checks received ones.
    pub gate: Arc<Gate>,
    /// Rounds in a row with seeds configured and no live member.
    pub alone_rounds: u32,
    /// The views of the groups this peer's stream is assigned to (kept by
    /// the publisher), announced in heartbeats.
    pub views: Arc<parking_lot::Mutex<Vec<ViewInfo>>>,
    /// Members whose last heartbeat announced consumer groups.
    pub grouped: HashSet<PeerId>,
}

impl Discovery {
    /// Runs until told to leave or until every `Peer` handle is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<DiscoveryCmd>) {
        let ack = match self.rounds(&mut rx).await {
            Ok(ack) => ack,
            Err(e) => {
                tracing::error!(error = %e, "heartbeat driver failed; this peer is no longer discoverable");
                None
            }
        };
        for (_, d) in self.dialers.drain() {
            d.close();
        }
        self.surveyor.close();
        self.respondent.close();
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }

    async fn rounds(
        &mut self,
        rx: &mut mpsc::Receiver<DiscoveryCmd>,
    ) -> crate::Result<Option<oneshot::Sender<()>>> {
        let survey_ready = RecvReady::new(&self.surveyor)?;
        let respond_ready = RecvReady::new(&self.respondent)?;
        let mut aio = AioSend::new(self.deadline)?;
        for seed in self.seeds.clone() {
            self.dial(&seed);
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut round_end: Option<Instant> = None;
        let (mut responses, mut surveys) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let ack = match cmd {
                        Some(DiscoveryCmd::Leave(ack)) => {
                            self.leave(&survey_ready).await;
                            Some(ack)
                        }
                        None => None,
                    };
                    drop((survey_ready, respond_ready, aio)); // before the sockets close
                    return Ok(ack);
                }
                _ = ticker.tick() => {
                    if round_end.is_some() {
                        // Defensive: the deadline is shorter than the interval.
                        self.end_round();
                    }
                    self.start_round();
                    round_end = Some(Instant::now() + self.deadline);
                }
                _ = sleep_until(round_end.unwrap_or_else(Instant::now)), if round_end.is_some() => {
                    round_end = None;
                    self.end_round();
                }
                r = survey_ready.recv_batch(&self.surveyor, &mut responses, 64) => {
                    r.map_err(|e| crate::Error::transport("receive heartbeat responses", e))?;
                    for msg in responses.drain(..) {
                        self.handle_response(msg);
                    }
                }
                // One at a time: a cooked respondent replies to the last survey received.
                r = respond_ready.recv_batch(&self.respondent, &mut surveys, 1) => {
                    r.map_err(|e| crate::Error::transport("receive surveys", e))?;
                    for msg in surveys.drain(..) {
                        self.handle_survey(msg, &mut aio).await;
                    }
                }
            }
        }
    }

    fn start_round(&mut self) {
        let mut survey = self.core.start_round();
        survey.last_seq = self.last_seq.load(Ordering::Acquire);
        survey.views = self.views.lock().clone(); // after last_seq: as recent
        survey.acks = acks_to_send(&self.acks, &self.registry);
        survey.durable = self.durable_positions();
        survey.groups = self.registry.group_statuses();
        Counters::add(&self.counters.heartbeat_rounds, 1);
        if let Err((_, e)) = self.surveyor.try_send(self.gate.message(&survey.encode())) {
            tracing::debug!(error = %e, "survey not sent");
        }
    }

    fn end_round(&mut self) {
        self.core.end_round();
        self.apply();
        self.publish_view();
        self.warn_if_alone();
    }

    /// Warns once when the seeds have not brought a single member for
    /// [`ALONE_WARN_ROUNDS`] rounds (nothing runs there, a wrong address or
    /// bus key); again if it happens again after members were seen.
    fn warn_if_alone(&mut self) {
        if self.seeds.is_empty() || self.core.live_ids().next().is_some() {
            self.alone_rounds = 0;
            return;
        }
        self.alone_rounds += 1;
        if self.alone_rounds == ALONE_WARN_ROUNDS {
            tracing::warn!(
                seeds = ?self.seeds,
                waited = ?self.interval * ALONE_WARN_ROUNDS,
                "no member answered from the seeds (is a peer running there, with the same bus key?); still trying"
            );
        }
    }

    fn handle_response(&mut self, mut msg: nng::Message) {
        let Ok(len) = self.gate.check(&mut msg) else {
            return self.reject_unauthentic("response", &mut msg);
        };
        match Response::decode(&msg.as_slice()[..len], self.max_message_size) {
            Ok(r) => {
                Counters::add(&self.counters.heartbeat_responses, 1);
                self.core.handle_response(&r, clock::now());
                self.apply();
                self.forward_groups(&r.from, &r.groups);
                self.forward_views(&r.from, r.last_seq, &r.views);
                self.forward(&r.from, r.last_seq, &r.acks, r.durable);
            }
            Err(e) => self.reject("response", &mut msg, e),
        }
    }

    async fn handle_survey(&mut self, mut msg: nng::Message, aio: &mut AioSend) {
        let Ok(len) = self.gate.check(&mut msg) else {
            return self.reject_unauthentic("survey", &mut msg);
        };
        let survey = match Survey::decode(&msg.as_slice()[..len], self.max_message_size) {
            Ok(s) => s,
            Err(e) => return self.reject("survey", &mut msg, e),
        };
        if survey.leaving {
            // Its groups' final positions, while it is still a member.
            self.forward_groups(&survey.from, &survey.groups);
        }
        let mut response = self.core.handle_survey(&survey, clock::now());
        response.last_seq = self.last_seq.load(Ordering::Acquire);
        response.views = self.views.lock().clone(); // after last_seq: as recent
        response.acks = acks_to_send(&self.acks, &self.registry);
        response.durable = self.durable_positions();
        response.groups = self.registry.group_statuses();
        match aio
            .send(&self.respondent, self.gate.message(&response.encode()))
            .await
        {
            Ok(()) => Counters::add(&self.counters.surveys_answered, 1),
            Err(e) => tracing::debug!(error = %e, "survey response not sent"),
        }
        self.apply();
        if !survey.leaving {
            self.forward_groups(&survey.from, &survey.groups);
            self.forward_views(&survey.from, survey.last_seq, &survey.views);
            self.forward(&survey.from, survey.last_seq, &survey.acks, survey.durable);
        }
    }

    /// Whether `from` is a live member in the incarnation it speaks for.
    fn is_live(&self, from: &PeerInfo) -> bool {
        self.core
            .member(from.id)
            .is_some_and(|m| m.state.is_live() && m.info.incarnation == from.incarnation)
    }

    /// Passes a live member's consumer groups on to the publisher, as they
    /// stand in our stream (also once it announces none any more).
    fn forward_groups(&mut self, from: &PeerInfo, groups: &[GroupStatus]) {
        if groups.is_empty() && !self.grouped.remove(&from.id) {
            return;
        }
        if !self.is_live(from) {
            return;
        }
        let me = self.core.me();
        let (id, epoch) = (me.id, me.stream_epoch());
        let announced: Vec<Announced> = groups
            .iter()
            .filter_map(|g| {
                let patterns = parse_patterns(&g.patterns).ok()?; // checked at decode
                let (start, position) = g
                    .positions
                    .iter()
                    .find(|p| p.origin == id && p.incarnation == epoch)
                    .map_or((0, 0), |p| (p.start, p.seq));
                Some(Announced {
                    group: g.group.as_str().into(),
                    patterns,
                    active: g.active,
                    durable: g.durable,
                    start,
                    position,
                })
            })
            .collect();
        if !groups.is_empty() {
            self.grouped.insert(from.id);
        }
        let _ = self
            .publisher
            .send(PublisherCmd::Groups(from.id, from.incarnation, announced));
    }

    /// Passes a live member's group views (of its own stream) on to this
    /// peer's group handlers.
    fn forward_views(&self, from: &PeerInfo, last_seq: u64, views: &[ViewInfo]) {
        if !self.registry.has_groups() || !self.is_live(from) {
            return;
        }
        let views: Vec<(u64, GroupView)> = views
            .iter()
            .filter_map(|v| Some((v.since, GroupView::from_info(v).ok()?)))
            .collect();
        self.registry
            .handle_views(from.id, from.stream_epoch(), last_seq, &views);
    }

    /// Where this peer's durable consumers stand in the streams of the
    /// live durable members (the only ones that keep a log for them).
    fn durable_positions(&self) -> Vec<DurablePosition> {
        let Some(positions) = &self.positions else {
            return Vec::new();
        };
        let streams: HashSet<(u64, u64)> = self
            .core
            .live_ids()
            .filter_map(|id| self.core.member(id))
            .filter(|m| m.info.is_durable())
            .map(|m| (m.info.id.0, m.info.stream))
            .collect();
        if streams.is_empty() {
            return Vec::new();
        }
        positions
            .announced(|o, e| streams.contains(&(o, e)), MAX_POSITIONS)
            .into_iter()
            .map(|(name, origin, incarnation, seq)| DurablePosition {
                origin: PeerId(origin),
                incarnation,
                name,
                seq,
            })
            .collect()
    }

    /// Passes a live member's heartbeat on: its last published sequence
    /// number to the receiver (tail loss), its ack of our events and its
    /// durable consumers' positions in our stream to the publisher
    /// (retransmit buffer, log). Heartbeats of non-members are ignored.
    fn forward(&self, from: &PeerInfo, last_seq: u64, acks: &[Ack], durable: Vec<DurablePosition>) {
        let member = self.core.member(from.id);
        if !member.is_some_and(|m| m.state.is_live() && m.info.incarnation == from.incarnation) {
            return;
        }
        self.last_seqs.post(from.id, from.stream_epoch(), last_seq);
        let me = self.core.me();
        let ack = match acks.iter().find(|a| a.origin == me.id) {
            Some(a) => PublisherCmd::Ack(from.id, a.incarnation, a.seq),
            None => PublisherCmd::NoAck(from.id),
        };
        let _ = self.publisher.send(ack);
        if me.is_durable() {
            let ours: Vec<(String, u64, u64)> = durable
                .into_iter()
                .filter(|p| p.origin == me.id)
                .map(|p| (p.name, p.incarnation, p.seq))
                .collect();
            if !ours.is_empty() {
                let _ = self.publisher.send(PublisherCmd::Readers(from.id, ours));
            }
        }
    }

    /// Logs a heartbeat that failed authentication (the gate counted it).
    fn reject_unauthentic(&mut self, what: &'static str, msg: &mut nng::Message) {
        let source = msg
            .pipe()
            .map_or_else(|| "unknown".to_owned(), |p| format!("{what} pipe {p:?}"));
        self.bad
            .reject("unauthentic", &source, &"failed bus-key authentication");
    }

    fn reject(&mut self, what: &'static str, msg: &mut nng::Message, e: DecodeError) {
        Counters::add(&self.counters.heartbeat_malformed, 1);
        let source = msg
            .pipe()
            .map_or_else(|| "unknown".to_owned(), |p| format!("{what} pipe {p:?}"));
        self.bad.reject("heartbeat", &source, &e);
    }

    /// Carries out the core's actions and mirrors its refusal counters.
    /// The member snapshot is updated before events go out, so a reader
    /// reacting to an event sees at least that change in `members()`.
    fn apply(&mut self) {
        let mut changed = false;
        let mut events = Vec::new();
        let mut left = Vec::new();
        while let Some(action) = self.core.poll() {
            changed = true;
            match action {
                Action::Connect(info) => {
                    self.dial(&info.endpoints.survey);
                    let _ = self.receiver.send(ReceiverCmd::Connect(info));
                }
                Action::Disconnect(info) => {
                    if !self.seeds.contains(&info.endpoints.survey) {
                        if let Some(d) = self.dialers.remove(&info.endpoints.survey) {
                            d.close();
                        }
                    }
                    let _ = self.receiver.send(ReceiverCmd::Disconnect(info));
                }
                Action::Event(e) => {
                    let m = &e.member;
                    let level_warn =
                        matches!(e.kind, MemberEventKind::Failed | MemberEventKind::Suspect);
                    if level_warn {
                        tracing::warn!(event = ?e.kind, id = %m.id(), name = m.name(), incarnation = m.info.incarnation, "membership");
                    } else {
                        tracing::info!(event = ?e.kind, id = %m.id(), name = m.name(), incarnation = m.info.incarnation, "membership");
                    }
                    if e.kind == MemberEventKind::Left {
                        let _ = self.receiver.send(ReceiverCmd::Left(m.info.clone()));
                        left.push(m.id());
                    }
                    events.push(e);
                }
            }
        }
        let refused = self.core.refused();
        Counters::set(&self.counters.heartbeat_stale, refused.stale);
        Counters::set(&self.counters.heartbeat_conflicts, refused.conflicts);
        Counters::set(&self.counters.members_refused, refused.over_capacity);
        if changed {
            self.publish_view();
            let _ = self.publisher.send(PublisherCmd::Members(
                self.core.live_incarnations().collect(),
            ));
        }
        // After the member list: the publisher forgets a member that left
        // only once it is no longer live there.
        for id in left {
            let _ = self.publisher.send(PublisherCmd::Left(id));
        }
        for e in events {
            let _ = self.events.send(e);
        }
    }

    fn publish_view(&self) {
        let members: Vec<Member> = self.core.members().collect();
        let live = members.iter().filter(|m| m.state.is_live()).count();
        Counters::set(&self.counters.members, live as u64);
        *self.view.write() = Arc::new(members);
    }

    /// Dials a surveyor with the respondent (idempotent per URL). NNG keeps
    /// redialing a surveyor that is down, so a seed that is down is retried.
    fn dial(&mut self, url: &str) {
        if url == self.core.me().endpoints.survey || self.dialers.contains_key(url) {
            return;
        }
        match socket::dial(&self.respondent, url) {
            Ok(d) => {
                tracing::debug!(%url, "dialing surveyor");
                self.dialers.insert(url.to_owned(), d);
            }
            Err(e) => tracing::warn!(%url, error = %e, "cannot dial a member's surveyor"),
        }
    }

    /// Announces Left until every live member answered or the attempts ran out.
    async fn leave(&mut self, ready: &RecvReady) {
        let mut leave = self.core.leave();
        leave.groups = self.registry.group_statuses(); // final, inactive
        let bye = self.gate.message(&leave.encode());
        let mut waiting: HashSet<_> = self.core.live_ids().collect();
        let mut batch = Vec::new();
        for _ in 0..LEAVE_ATTEMPTS {
            if waiting.is_empty() {
                break;
            }
            if self.surveyor.try_send(bye.clone()).is_err() {
                break;
            }
            let deadline = Instant::now() + self.deadline;
            while !waiting.is_empty() {
                let got = tokio::time::timeout_at(
                    deadline,
                    ready.recv_batch(&self.surveyor, &mut batch, 64),
                )
                .await;
                match got {
                    Ok(Ok(())) => {
                        for mut msg in batch.drain(..) {
                            let Ok(len) = self.gate.check(&mut msg) else {
                                continue;
                            };
                            if let Ok(r) =
                                Response::decode(&msg.as_slice()[..len], self.max_message_size)
                            {
                                waiting.remove(&r.from.id);
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
        tracing::info!(unanswered = waiting.len(), "announced leaving the bus");
    }
}
