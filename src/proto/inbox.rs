//! The receiver's reliability core: gaps, NAKs, ordering and explicit loss.
//!
//! Owns, per origin incarnation: the [`SeqWindow`] of what arrived, the
//! envelopes held back until the gap before them is repaired or declared
//! lost, the highest sequence number known to exist (from envelopes and
//! heartbeats, which is how tail loss is noticed: a heartbeat's "published
//! through" is trusted after `tail_grace`, since under a flood the data it
//! announces is still queued behind it), and when to NAK. Sans-IO:
//! time comes in as `now`, decisions go out as [`InboxEvent`]s.
//!
//! Guarantees: each `(origin, incarnation, seq)` is delivered at most once;
//! in ordered mode, in sequence order; a number that will never arrive (the
//! origin answered "gone", restarted, or left the bus) is reported as
//! [`InboxEvent::Lost`] before anything after it is delivered. Nothing is
//! ever skipped silently. Work and memory per origin are bounded
//! (`max_held` envelopes, a fixed window, `max_nak_ranges` per NAK), and the
//! number of origins by `max_origins`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::dedup::{Seen, SeqWindow, WINDOW};
use crate::wire::envelope::Envelope;
use crate::wire::id::PeerId;
use crate::wire::repair::Nak;

/// Tuning of an [`Inbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxConfig {
    /// This peer, named in its NAKs.
    pub me: PeerId,
    /// Deliver each origin's envelopes in sequence order (default), or as they arrive.
    pub ordered: bool,
    /// Envelopes held back per origin waiting for a gap (ordered mode).
    pub max_held: usize,
    /// Minimum time between two NAKs to one origin.
    pub nak_interval: Duration,
    /// How long a NAK waits for its answer before another is sent: while
    /// one is unanswered a new one would ask again for what the answer
    /// brings (duplicates that, under a flood, feed on themselves).
    pub nak_timeout: Duration,
    /// How long a heartbeat's "published through N" waits for the data it
    /// announces (still queued behind a flood, not lost) before what is
    /// missing up to N counts as tail loss and is asked for.
    pub tail_grace: Duration,
    /// Ranges per NAK.
    pub max_nak_ranges: usize,
    /// Origins tracked at once.
    pub max_origins: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            me: PeerId(0),
            ordered: true,
            max_held: 4096,
            nak_interval: Duration::from_millis(20),
            nak_timeout: Duration::from_millis(500),
            tail_grace: Duration::from_millis(500),
            max_nak_ranges: 32,
            max_origins: 1024,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEvent {
    /// Hand this envelope to the subscriptions.
    Deliver(Envelope),
    /// These sequence numbers of this origin will never be delivered.
    Lost {
        /// The origin.
        origin: PeerId,
        /// Its incarnation.
        incarnation: u64,
        /// First lost sequence number.
        first: u64,
        /// Last lost sequence number (inclusive).
        last: u64,
    },
    /// Ask the origin for these ranges.
    Nak(Nak),
}

/// What the inbox counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCounters {
    /// Envelopes already delivered (or held) that arrived again.
    pub duplicates: u64,
    /// Envelopes of an older incarnation than the one tracked.
    pub stale: u64,
    /// Envelopes too far ahead of the window to track yet (NAKed later).
    pub too_far_ahead: u64,
    /// Out-of-order envelopes dropped because the hold buffer was full (NAKed later).
    pub held_overflow: u64,
    /// Envelopes from a new origin refused because `max_origins` were tracked.
    pub origins_refused: u64,
    /// NAKs emitted.
    pub naks: u64,
    /// Sequence numbers declared lost.
    pub lost: u64,
    /// Sequence numbers skipped because the origin published them before it
    /// counted this peer as a member (not owed, so not lost).
    pub before_join: u64,
}

#[derive(Debug)]
struct Stream {
    incarnation: u64,
    window: SeqWindow,
    held: BTreeMap<u64, Envelope>,
    highest: u64,
    last_nak: Option<Instant>,
    /// The last NAK is not answered yet.
    nak_unanswered: bool,
    /// Heartbeats' "published through" not trusted yet: `(when, seq)`,
    /// ascending, at most [`MAX_CLAIMS`].
    claims: VecDeque<(Instant, u64)>,
    /// What the origin sends up to here may have reached an earlier life
    /// of this peer (0: nothing).
    redelivered_through: u64,
    /// A durable consumer here is owed this stream from this number on, by
    /// its own record (0: none); said in every NAK.
    resume_from: u64,
    /// Deliveries up to here are a replay for durable consumers only: the
    /// other subscriptions had them already, or were never owed them.
    replay_through: u64,
}

/// Heartbeat claims remembered per origin while their grace runs.
const MAX_CLAIMS: usize = 4;

impl Stream {
    fn new(incarnation: u64, base: u64) -> Self {
        Stream {
            incarnation,
            window: SeqWindow::new(base),
            held: BTreeMap::new(),
            highest: base,
            last_nak: None,
            nak_unanswered: false,
            claims: VecDeque::new(),
            redelivered_through: 0,
            resume_from: 0,
            replay_through: 0,
        }
    }

    /// The origin says it published through `seq`: trusted after `grace`
    /// (the oldest claim early, to stay bounded).
    fn claim(&mut self, seq: u64, now: Instant, grace: Duration) {
        let known = self.claims.back().map_or(self.highest, |c| c.1);
        if seq > known {
            self.claims.push_back((now, seq));
            if self.claims.len() > MAX_CLAIMS {
                let (_, oldest) = self.claims.pop_front().expect("more than max");
                self.highest = self.highest.max(oldest);
            }
        }
        self.trust(now, grace);
    }

    /// Claims older than `grace` raise `highest`: missing below it is asked for.
    fn trust(&mut self, now: Instant, grace: Duration) {
        while let Some(&(at, seq)) = self.claims.front() {
            if now.saturating_duration_since(at) < grace {
                break;
            }
            self.highest = self.highest.max(seq);
            self.claims.pop_front();
        }
    }

    /// Time between two NAKs: longer while the last one is unanswered.
    fn nak_wait(&self, cfg: &InboxConfig) -> Duration {
        if self.nak_unanswered {
            cfg.nak_timeout
        } else {
            cfg.nak_interval
        }
    }

    /// The highest sequence number held back (0: none).
    fn held_max(&self) -> u64 {
        self.held.keys().next_back().copied().unwrap_or(0)
    }

    /// Everything the origin has said it published.
    fn claimed(&self) -> u64 {
        self.claims
            .back()
            .map_or(self.highest, |c| c.1.max(self.highest))
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Inbox {
    cfg: InboxConfig,
    /// FNV-hashed: looked up per envelope; bounded by `max_origins`.
    streams: fnv::FnvHashMap<PeerId, Stream>,
    /// Members announced but not heard from by heartbeat yet: their
    /// envelopes wait here (bounded by `max_held`) until a heartbeat tells
    /// where their stream starts, so losing an origin's first messages can
    /// never pass for "published before we joined".
    pending: fnv::FnvHashMap<PeerId, Vec<Envelope>>,
    /// Origins forgotten (left or failed), with the incarnation and the
    /// sequence number through which their stream was settled (delivered or
    /// declared lost): an envelope of that incarnation arriving later is a
    /// duplicate up to there, and a member that comes back with the same
    /// incarnation (a healed partition) resumes after it. Bounded by
    /// `max_origins`, oldest dropped first.
    forgotten: HashMap<PeerId, (u64, u64)>,
    forgotten_order: VecDeque<PeerId>,
    events: VecDeque<InboxEvent>,
    counters: InboxCounters,
    /// Some origin marked redeliveries (the per-delivery check is skipped
    /// while none did).
    redelivering: bool,
    /// Where durable consumers want streams not tracked yet to start:
    /// origin → (stream epoch, first sequence number wanted).
    resumes: HashMap<PeerId, (u64, u64)>,
    /// Some stream is being replayed (the per-delivery check is skipped
    /// while none is).
    replaying: bool,
}

impl Inbox {
    /// An inbox tracking no origin yet.
    pub fn new(cfg: InboxConfig) -> Self {
        Inbox {
            cfg,
            ..Default::default()
        }
    }

    /// Counts so far.
    pub fn counters(&self) -> InboxCounters {
        self.counters
    }

    /// Envelopes held back, over all origins.
    pub fn held(&self) -> usize {
        self.streams.values().map(|s| s.held.len()).sum()
    }

    /// Next event for the driver.
    pub fn poll(&mut self) -> Option<InboxEvent> {
        self.events.pop_front()
    }

    /// `(origin, incarnation, received through)` for every origin: the ack
    /// watermarks carried in heartbeats.
    pub fn acks(&self) -> impl Iterator<Item = (PeerId, u64, u64)> + '_ {
        self.streams
            .iter()
            .map(|(id, s)| (*id, s.incarnation, s.window.contiguous()))
    }

    /// An envelope arrived (from pub/sub or a repair).
    pub fn handle_envelope(&mut self, env: Envelope, now: Instant) {
        if let Some(env) = self.accept(env, now) {
            self.events.push_back(InboxEvent::Deliver(env));
        }
    }

    /// [`handle_envelope`](Self::handle_envelope), except that an envelope
    /// to deliver with no event queued before it comes straight back: the
    /// caller delivers it now, as [`poll`](Self::poll) would have next.
    pub fn accept(&mut self, env: Envelope, now: Instant) -> Option<Envelope> {
        // Mostly empty: no hash per envelope then.
        let waiting = match self.pending.is_empty() {
            true => None,
            false => self.pending.get_mut(&env.origin),
        };
        if let Some(waiting) = waiting {
            if waiting.len() < self.cfg.max_held {
                waiting.push(env);
            } else {
                self.counters.held_overflow += 1; // asked for once the stream is known
            }
            return None;
        }
        let (origin, seq) = (env.origin, env.seq);
        // The common case, with one lookup: the next one of a known
        // stream, nothing held back and nothing missing (so no NAK).
        if let Some(st) = self.streams.get_mut(&origin) {
            let next = st.window.contiguous() + 1;
            if self.cfg.ordered
                && st.incarnation == env.incarnation
                && seq == next
                && st.highest < seq
                && st.held.is_empty()
                && st.window.insert(seq) == Seen::Fresh
            {
                st.highest = seq;
                if self.events.is_empty() {
                    return Some(env);
                }
                self.events.push_back(InboxEvent::Deliver(env));
                return None;
            }
        }
        if !self.open(origin, env.incarnation, seq.saturating_sub(1)) {
            return None;
        }
        let (cfg, st) = (self.cfg, self.streams.get_mut(&origin).expect("opened"));
        if st.window.contains(seq) {
            self.counters.duplicates += 1;
            return None;
        }
        st.highest = st.highest.max(seq);
        if seq > st.window.contiguous() + WINDOW {
            self.counters.too_far_ahead += 1;
        } else if cfg.ordered && seq > st.window.contiguous() + 1 && st.held.len() >= cfg.max_held {
            self.counters.held_overflow += 1;
        } else {
            match st.window.insert(seq) {
                // The common case: the next one, nothing held back.
                Seen::Fresh
                    if cfg.ordered && st.held.is_empty() && st.window.contiguous() == seq =>
                {
                    self.events.push_back(InboxEvent::Deliver(env));
                }
                Seen::Fresh if cfg.ordered => {
                    st.held.insert(seq, env);
                    Self::release(st, &mut self.events);
                }
                Seen::Fresh => self.events.push_back(InboxEvent::Deliver(env)),
                Seen::Duplicate => self.counters.duplicates += 1,
                Seen::TooFarAhead => self.counters.too_far_ahead += 1,
            }
        }
        self.nak(origin, now);
        None
    }

    /// A heartbeat from `origin` said it has published through `last_seq`:
    /// anything missing up to there is asked for (tail loss).
    pub fn handle_heartbeat(
        &mut self,
        origin: PeerId,
        incarnation: u64,
        last_seq: u64,
        now: Instant,
    ) {
        // A member's stream starts at 0: what it published before counting
        // us as a member, its repair answer says (`owed_from`), so a loss of
        // its first messages can never pass for "before we joined".
        let base = match self.pending.remove(&origin) {
            Some(waiting) => {
                if !self.open(origin, incarnation, 0) {
                    return;
                }
                for env in waiting {
                    self.handle_envelope(env, now);
                }
                0
            }
            None => last_seq,
        };
        if !self.open(origin, incarnation, base) {
            return;
        }
        let st = self.streams.get_mut(&origin).expect("opened");
        st.claim(last_seq, now, self.cfg.tail_grace);
        self.nak(origin, now);
    }

    /// The origin answered a NAK: `envelopes` (already checked to be its
    /// own) and ranges it no longer has, which are declared lost.
    pub fn handle_repair(
        &mut self,
        origin: PeerId,
        incarnation: u64,
        envelopes: Vec<Envelope>,
        gone: &[(u64, u64)],
        owed_from: u64,
        now: Instant,
    ) {
        match self.streams.get(&origin) {
            Some(st) if st.incarnation == incarnation => {}
            _ => {
                self.counters.stale += 1;
                return;
            }
        }
        // Still "unanswered" while the answer is applied: a NAK computed
        // halfway would ask again for the rest of this very answer.
        for env in envelopes {
            self.handle_envelope(env, now);
        }
        let st = self.streams.get_mut(&origin).expect("checked");
        st.nak_unanswered = false;
        // Published before the origin counted us as a member: not owed —
        // unless a durable consumer here is owed it by its own record (then
        // it is a replay for that consumer only).
        let owed_from = if st.resume_from > 0 {
            if owed_from > 1 {
                st.replay_through = st.replay_through.max(owed_from - 1);
                self.replaying = true;
            }
            owed_from.min(st.resume_from)
        } else {
            owed_from
        };
        if owed_from > st.window.contiguous() + 1 {
            let skipped = st.window.missing(owed_from - 1, usize::MAX);
            self.counters.before_join += skipped.iter().map(|(a, b)| b - a + 1).sum::<u64>();
            st.window.skip_through(owed_from - 1);
            st.highest = st.highest.max(owed_from - 1);
            Self::release(st, &mut self.events);
        }
        for &(_, last) in gone {
            let last = last.min(st.highest);
            for (first, end) in st.window.missing(last, usize::MAX) {
                self.counters.lost += end - first + 1;
                self.events.push_back(InboxEvent::Lost {
                    origin,
                    incarnation,
                    first,
                    last: end,
                });
            }
            st.window.skip_through(last);
            Self::release(st, &mut self.events);
        }
        self.nak(origin, now); // what is still missing, at once
    }

    /// The origin says that what it sends up to `through` may already have
    /// reached an earlier life of this peer (it restarted before acking):
    /// deliveries up to there are redeliveries ([`is_redelivery`](Self::is_redelivery)).
    /// Tell the inbox before the repair answer that carried it.
    pub fn handle_redelivery(&mut self, origin: PeerId, incarnation: u64, through: u64) {
        if let Some(st) = self.streams.get_mut(&origin) {
            if st.incarnation == incarnation && through > st.redelivered_through {
                st.redelivered_through = through;
                self.redelivering = true;
            }
        }
    }

    /// Whether delivering `env` may deliver it again (see
    /// [`handle_redelivery`](Self::handle_redelivery)).
    pub fn is_redelivery(&self, env: &Envelope) -> bool {
        self.redelivering
            && self.streams.get(&env.origin).is_some_and(|s| {
                s.incarnation == env.incarnation && env.seq <= s.redelivered_through
            })
    }

    /// A durable consumer here is owed `origin`'s stream `incarnation` from
    /// `from` on (its committed position + 1). A stream not tracked yet
    /// starts there when it opens; a tracked one that is past it is wound
    /// back to it: what it delivers again up to where it was is a replay,
    /// for durable consumers only ([`is_replay`](Self::is_replay)). Every
    /// NAK for the stream says `resume_from`, so the origin sends it even
    /// what it published before it counted this peer as a member.
    pub fn resume(&mut self, origin: PeerId, incarnation: u64, from: u64, now: Instant) {
        let from = from.max(1);
        let Some(st) = self.streams.get_mut(&origin) else {
            let entry = self.resumes.entry(origin).or_insert((incarnation, from));
            if entry.0 < incarnation || (entry.0 == incarnation && from < entry.1) {
                *entry = (incarnation, from);
            }
            return;
        };
        if st.incarnation != incarnation {
            return; // that stream is over; the new one is not this position's
        }
        st.resume_from = if st.resume_from == 0 {
            from
        } else {
            st.resume_from.min(from)
        };
        let contiguous = st.window.contiguous();
        if contiguous + 1 > from {
            st.replay_through = st.replay_through.max(contiguous).max(st.held_max());
            self.replaying = true;
            st.window = SeqWindow::new(from - 1);
            st.held.clear();
            st.last_nak = None;
            st.nak_unanswered = false;
            self.nak(origin, now);
        }
    }

    /// Whether delivering `env` is a replay for durable consumers only
    /// (see [`resume`](Self::resume)).
    pub fn is_replay(&self, env: &Envelope) -> bool {
        self.replaying
            && self
                .streams
                .get(&env.origin)
                .is_some_and(|s| s.incarnation == env.incarnation && env.seq <= s.replay_through)
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has a NAK to repeat: `None` while
    /// no origin has a gap (so an idle receiver needs no timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let repeat = self
            .streams
            .values()
            .filter(|s| s.highest > s.window.contiguous())
            .filter_map(|s| s.last_nak.map(|t| t + s.nak_wait(&self.cfg)));
        let trust = self
            .streams
            .values()
            .filter_map(|s| s.claims.front().map(|c| c.0 + self.cfg.tail_grace));
        repeat.chain(trust).min()
    }

    /// Re-sends NAKs whose answer did not close the gap.
    pub fn handle_timeout(&mut self, now: Instant) {
        let origins: Vec<PeerId> = self.streams.keys().copied().collect();
        for origin in origins {
            if let Some(st) = self.streams.get_mut(&origin) {
                st.trust(now, self.cfg.tail_grace);
            }
            self.nak(origin, now);
        }
    }

    /// `origin` became a member: hold its envelopes until its first
    /// heartbeat says where its stream starts (a no-op if already tracked).
    pub fn announce(&mut self, origin: PeerId) {
        if !self.streams.contains_key(&origin) {
            self.pending.entry(origin).or_default();
        }
    }

    /// The origin left or failed: what is still missing is lost, what is
    /// held is delivered, and the origin is no longer tracked.
    pub fn forget(&mut self, origin: PeerId) {
        self.pending.remove(&origin);
        let Some(mut st) = self.streams.remove(&origin) else {
            return;
        };
        st.highest = st.claimed(); // it will not send them now
        for (first, last) in st.window.missing(st.highest, usize::MAX) {
            self.counters.lost += last - first + 1;
            self.events.push_back(InboxEvent::Lost {
                origin,
                incarnation: st.incarnation,
                first,
                last,
            });
        }
        st.window.skip_through(st.highest);
        self.remember_forgotten(origin, st.incarnation, st.highest);
        Self::release(&mut st, &mut self.events);
        // Envelopes held beyond the window's reach go out in order too.
        for (_, env) in std::mem::take(&mut st.held) {
            self.events.push_back(InboxEvent::Deliver(env));
        }
    }

    /// Makes sure `origin` is tracked at `incarnation`; false if the input
    /// must be dropped (stale incarnation, or too many origins).
    fn open(&mut self, origin: PeerId, incarnation: u64, base: u64) -> bool {
        match self.streams.get(&origin).map(|s| s.incarnation) {
            Some(known) if incarnation < known => {
                self.counters.stale += 1;
                false
            }
            Some(known) if incarnation == known => true,
            Some(_) => {
                // A restart: the old incarnation's gaps are lost; we knew the
                // origin, so the new incarnation is wanted from its first seq.
                self.forget(origin);
                self.streams.insert(origin, Stream::new(incarnation, 0));
                true
            }
            None if self.streams.len() >= self.cfg.max_origins => {
                self.counters.origins_refused += 1;
                false
            }
            None => match self.forgotten.get(&origin).copied() {
                Some((known, _)) if incarnation < known => {
                    self.counters.stale += 1;
                    false
                }
                Some((known, through)) if incarnation == known => {
                    self.forgotten.remove(&origin);
                    self.streams
                        .insert(origin, Stream::new(incarnation, base.max(through)));
                    true
                }
                _ => {
                    self.forgotten.remove(&origin);
                    let mut st = Stream::new(incarnation, base);
                    if let Some((epoch, from)) = self.resumes.remove(&origin) {
                        if epoch == incarnation {
                            st = Stream::new(incarnation, base.min(from - 1));
                            st.resume_from = from;
                        }
                    }
                    self.streams.insert(origin, st);
                    true
                }
            },
        }
    }

    fn remember_forgotten(&mut self, origin: PeerId, incarnation: u64, through: u64) {
        if self
            .forgotten
            .insert(origin, (incarnation, through))
            .is_none()
        {
            self.forgotten_order.push_back(origin);
        }
        while self.forgotten.len() > self.cfg.max_origins {
            match self.forgotten_order.pop_front() {
                Some(old) => {
                    self.forgotten.remove(&old);
                }
                None => break,
            }
        }
        // Ids reopened since stay in the queue; keep it within bounds.
        if self.forgotten_order.len() > 2 * self.cfg.max_origins {
            let live = &self.forgotten;
            self.forgotten_order.retain(|id| live.contains_key(id));
        }
    }

    /// Delivers held envelopes the watermark has reached, in order.
    fn release(st: &mut Stream, events: &mut VecDeque<InboxEvent>) {
        while let Some(entry) = st.held.first_entry() {
            if *entry.key() > st.window.contiguous() {
                break;
            }
            events.push_back(InboxEvent::Deliver(entry.remove()));
        }
    }

    /// NAKs what is missing, at most once per `nak_interval` per origin.
    fn nak(&mut self, origin: PeerId, now: Instant) {
        let cfg = self.cfg;
        let Some(st) = self.streams.get_mut(&origin) else {
            return;
        };
        let wait = st.nak_wait(&cfg);
        if st
            .last_nak
            .is_some_and(|t| now.saturating_duration_since(t) < wait)
        {
            return;
        }
        let ranges = st.window.missing(st.highest, cfg.max_nak_ranges);
        if ranges.is_empty() {
            return;
        }
        st.last_nak = Some(now);
        st.nak_unanswered = true;
        self.counters.naks += 1;
        self.events.push_back(InboxEvent::Nak(Nak {
            origin,
            incarnation: st.incarnation,
            ranges,
            member: cfg.me,
            resume_from: st.resume_from,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn env(origin: u64, incarnation: u64, seq: u64) -> Envelope {
        Envelope {
            origin: PeerId(origin),
            incarnation,
            seq,
            topic: "t".into(),
            timestamp_us: 0,
            payload: Bytes::new(),
            meta: None,
        }
    }

    fn drain(i: &mut Inbox) -> Vec<String> {
        std::iter::from_fn(|| i.poll())
            .map(|e| match e {
                InboxEvent::Deliver(e) => format!("d{}", e.seq),
                InboxEvent::Lost { first, last, .. } => format!("lost{first}-{last}"),
                InboxEvent::Nak(n) => format!("nak{:?}", n.ranges),
            })
            .collect()
    }

    #[test]
    fn holds_behind_a_gap_naks_and_delivers_in_order_once_repaired() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_envelope(env(1, 1, 5), t); // first contact: starts here
        i.handle_envelope(env(1, 1, 7), t);
        i.handle_envelope(env(1, 1, 8), t);
        assert_eq!(drain(&mut i), ["d5", "nak[(6, 6)]"]);
        i.handle_envelope(env(1, 1, 8), t);
        assert_eq!(i.counters().duplicates, 1);
        i.handle_repair(PeerId(1), 1, vec![env(1, 1, 6)], &[], 1, t);
        assert_eq!(drain(&mut i), ["d6", "d7", "d8"]);
        assert_eq!(i.acks().collect::<Vec<_>>(), [(PeerId(1), 1, 8)]);
    }

    #[test]
    fn a_durable_position_starts_a_new_stream_and_is_owed_before_the_join() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.resume(PeerId(1), 5, 4, t); // processed through 3 in an earlier life
        i.resume(PeerId(1), 4, 2, t); // an older stream of it: ignored
        i.handle_heartbeat(PeerId(1), 5, 10, t); // it has published 10
        let t = t + InboxConfig::default().tail_grace;
        i.handle_timeout(t);
        let naks: Vec<InboxEvent> = std::iter::from_fn(|| i.poll()).collect();
        match naks.as_slice() {
            [InboxEvent::Nak(n)] => {
                assert_eq!((n.ranges.clone(), n.resume_from), (vec![(4, 10)], 4))
            }
            other => panic!("{other:?}"),
        }
        // It counted this peer as a member from 9 on: 4..8 is a replay.
        let envs: Vec<_> = (4..=10).map(|s| env(1, 5, s)).collect();
        i.handle_repair(PeerId(1), 5, envs, &[], 9, t);
        assert_eq!(drain(&mut i), ["d4", "d5", "d6", "d7", "d8", "d9", "d10"]);
        let replay: Vec<u64> = (4..=10).filter(|s| i.is_replay(&env(1, 5, *s))).collect();
        assert_eq!(replay, [4, 5, 6, 7, 8]);
        assert_eq!(i.counters().before_join, 0);
    }

    #[test]
    fn a_tracked_stream_is_wound_back_for_a_late_durable_consumer() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_heartbeat(PeerId(1), 1, 0, t);
        for s in 1..=6 {
            i.handle_envelope(env(1, 1, s), t);
        }
        i.handle_envelope(env(1, 1, 8), t); // held behind 7
        drain(&mut i);
        i.resume(PeerId(1), 1, 3, t + Duration::from_secs(1));
        assert_eq!(drain(&mut i), ["nak[(3, 8)]"]);
        assert_eq!(i.acks().collect::<Vec<_>>(), [(PeerId(1), 1, 2)]);
        let envs: Vec<_> = (3..=9).map(|s| env(1, 1, s)).collect();
        i.handle_repair(PeerId(1), 1, envs, &[], 1, t + Duration::from_secs(1));
        assert_eq!(drain(&mut i), ["d3", "d4", "d5", "d6", "d7", "d8", "d9"]);
        // What the others had (through 8, the held one included) is a replay.
        let replay: Vec<u64> = (3..=9).filter(|s| i.is_replay(&env(1, 1, *s))).collect();
        assert_eq!(replay, [3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn tail_loss_from_heartbeat_and_nak_pacing() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_heartbeat(PeerId(1), 1, 10, t); // joined when 10 were out: baseline
        i.handle_envelope(env(1, 1, 11), t);
        i.handle_heartbeat(PeerId(1), 1, 13, t);
        // 12 and 13 may still be queued behind the heartbeat: a grace first.
        assert_eq!(drain(&mut i), ["d11"]);
        let g = InboxConfig::default().tail_grace;
        assert_eq!(i.poll_timeout(), Some(t + g));
        i.handle_timeout(t + g);
        assert_eq!(drain(&mut i), ["nak[(12, 13)]"]);
        // Unanswered, it is not repeated before its timeout.
        let timeout = InboxConfig::default().nak_timeout;
        let t = t + g;
        i.handle_timeout(t + Duration::from_millis(25));
        assert!(drain(&mut i).is_empty(), "waits for its answer");
        assert_eq!(i.poll_timeout(), Some(t + timeout));
        i.handle_timeout(t + timeout);
        assert_eq!(drain(&mut i), ["nak[(12, 13)]"]);
        // Answered in part: the rest is asked for again after the interval.
        let t = t + timeout;
        i.handle_repair(PeerId(1), 1, vec![env(1, 1, 12)], &[], 1, t);
        assert_eq!(drain(&mut i), ["d12"]);
        i.handle_timeout(t + Duration::from_millis(5));
        assert!(drain(&mut i).is_empty(), "paced");
        assert_eq!(i.poll_timeout(), Some(t + Duration::from_millis(20)));
        i.handle_timeout(t + Duration::from_millis(25));
        assert_eq!(drain(&mut i), ["nak[(13, 13)]"]);
        i.handle_envelope(env(1, 1, 13), t);
        assert_eq!(i.poll_timeout(), None, "no gap, no timer");
        // Data that arrives within the grace is never asked for again.
        i.handle_heartbeat(PeerId(1), 1, 15, t);
        i.handle_envelope(env(1, 1, 14), t + g / 2);
        i.handle_envelope(env(1, 1, 15), t + g / 2);
        i.handle_timeout(t + g);
        assert_eq!(drain(&mut i), ["d13", "d14", "d15"]);
        // An origin that leaves with claims pending: those are lost.
        i.handle_heartbeat(PeerId(1), 1, 17, t + g);
        i.forget(PeerId(1));
        assert_eq!(drain(&mut i), ["lost16-17"]);
    }

    /// Regression: applying a repair answer asked again for the rest of
    /// that same answer (a NAK after its first envelope), so under a flood
    /// half of all repair traffic was duplicates.
    #[test]
    fn an_answer_being_applied_is_not_asked_for_again() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_envelope(env(1, 1, 1), t);
        i.handle_envelope(env(1, 1, 6), t);
        assert_eq!(drain(&mut i), ["d1", "nak[(2, 5)]"]);
        let later = t + Duration::from_millis(100);
        let answer = (2..=5).map(|s| env(1, 1, s)).collect();
        i.handle_repair(PeerId(1), 1, answer, &[], 1, later);
        assert_eq!(drain(&mut i), ["d2", "d3", "d4", "d5", "d6"]);
        // Part of an answer: the rest is asked for at once.
        i.handle_envelope(env(1, 1, 9), later);
        assert_eq!(drain(&mut i), ["nak[(7, 8)]"]);
        let later = later + Duration::from_millis(100);
        i.handle_repair(PeerId(1), 1, vec![env(1, 1, 7)], &[], 1, later);
        assert_eq!(drain(&mut i), ["d7", "nak[(8, 8)]"]);
        assert_eq!(i.counters().duplicates, 0);
    }

    #[test]
    fn gone_is_declared_lost_before_later_deliveries() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_envelope(env(1, 1, 1), t);
        i.handle_envelope(env(1, 1, 5), t);
        drain(&mut i);
        i.handle_repair(PeerId(1), 1, vec![env(1, 1, 4)], &[(2, 3)], 1, t);
        assert_eq!(drain(&mut i), ["lost2-3", "d4", "d5"]);
        assert_eq!(i.counters().lost, 2);
    }

    #[test]
    fn restart_and_departure_make_gaps_explicit() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_envelope(env(1, 1, 1), t);
        i.handle_envelope(env(1, 1, 3), t);
        drain(&mut i);
        i.handle_envelope(env(1, 2, 2), t); // restarted: incarnation 2
        assert_eq!(drain(&mut i), ["lost2-2", "d3", "nak[(1, 1)]"]);
        i.handle_envelope(env(1, 1, 9), t);
        assert_eq!(i.counters().stale, 1);
        i.forget(PeerId(1));
        assert_eq!(drain(&mut i), ["lost1-1", "d2"]);
        assert_eq!(i.acks().count(), 0);
    }

    /// Regression (found by `cargo fuzz run reliability`): an envelope of a
    /// forgotten origin arriving late was delivered a second time.
    #[test]
    fn a_forgotten_origin_is_never_delivered_twice_and_resumes_after_healing() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.handle_envelope(env(1, 1, 1), t);
        i.handle_envelope(env(1, 1, 2), t);
        i.forget(PeerId(1)); // failed or left
        assert_eq!(drain(&mut i), ["d1", "d2"]);
        i.handle_envelope(env(1, 1, 1), t); // late copies
        i.handle_envelope(env(1, 1, 2), t);
        assert!(drain(&mut i).is_empty());
        assert_eq!(i.counters().duplicates, 2);
        // A healed partition: same incarnation, it resumes after what was settled.
        i.forget(PeerId(1));
        i.announce(PeerId(1));
        i.handle_heartbeat(PeerId(1), 1, 4, t);
        i.handle_timeout(t + InboxConfig::default().tail_grace);
        assert_eq!(drain(&mut i), ["nak[(3, 4)]"]);
        i.handle_envelope(env(1, 1, 3), t);
        i.handle_envelope(env(1, 1, 4), t);
        assert_eq!(drain(&mut i), ["d3", "d4"]);
        // An older incarnation than the one forgotten is stale.
        i.forget(PeerId(1));
        i.handle_envelope(env(1, 2, 1), t);
        i.forget(PeerId(1));
        i.handle_envelope(env(1, 1, 9), t);
        assert_eq!(i.counters().stale, 1);
    }

    #[test]
    fn an_announced_member_s_first_messages_cannot_pass_for_pre_join() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig::default());
        i.announce(PeerId(1));
        // Its first batch (1..=3) was lost; 4 and 5 arrive before any heartbeat.
        i.handle_envelope(env(1, 1, 4), t);
        i.handle_envelope(env(1, 1, 5), t);
        assert!(drain(&mut i).is_empty(), "held until the baseline is known");
        i.handle_heartbeat(PeerId(1), 1, 0, t); // it had published nothing when we joined
        assert_eq!(drain(&mut i), ["nak[(1, 3)]"]);
        i.handle_repair(
            PeerId(1),
            1,
            vec![env(1, 1, 1), env(1, 1, 2), env(1, 1, 3)],
            &[],
            1,
            t,
        );
        assert_eq!(drain(&mut i), ["d1", "d2", "d3", "d4", "d5"]);
        // A member that had published 10 before it counted us: it says so.
        i.announce(PeerId(2));
        i.handle_envelope(env(2, 1, 12), t);
        i.handle_heartbeat(PeerId(2), 1, 12, t);
        assert_eq!(drain(&mut i), ["nak[(1, 11)]"]);
        i.handle_repair(PeerId(2), 1, vec![env(2, 1, 11)], &[], 11, t);
        assert_eq!(drain(&mut i), ["d11", "d12"]);
        assert_eq!(i.counters().before_join, 10);
        assert_eq!(i.counters().lost, 0);
    }

    #[test]
    fn unordered_mode_delivers_at_once_and_still_dedups() {
        let t = Instant::now();
        let mut i = Inbox::new(InboxConfig {
            ordered: false,
            ..Default::default()
        });
        for s in [1, 3, 2, 3, 1] {
            i.handle_envelope(env(1, 1, s), t);
        }
        assert_eq!(drain(&mut i), ["d1", "d3", "nak[(2, 2)]", "d2"]);
        assert_eq!(i.counters().duplicates, 2);
    }

    #[test]
    fn bounded_under_abuse() {
        let t = Instant::now();
        let cfg = InboxConfig {
            max_held: 4,
            max_origins: 2,
            ..Default::default()
        };
        let mut i = Inbox::new(cfg);
        i.handle_envelope(env(1, 1, 1), t);
        for s in 3..20 {
            i.handle_envelope(env(1, 1, s), t);
        }
        assert_eq!(i.held(), 4);
        assert_eq!(i.counters().held_overflow, 13);
        i.handle_envelope(env(1, 1, 5_000_000_000), t); // a jump by billions
        assert_eq!(i.counters().too_far_ahead, 1);
        let naks: Vec<_> = std::iter::from_fn(|| i.poll())
            .filter_map(|e| {
                if let InboxEvent::Nak(n) = e {
                    Some(n)
                } else {
                    None
                }
            })
            .collect();
        assert!(naks.iter().all(|n| n.ranges.len() <= 32));
        i.handle_envelope(env(2, 1, 1), t);
        i.handle_envelope(env(3, 1, 1), t);
        assert_eq!(i.counters().origins_refused, 1);
        // Repairs for an unknown origin or another incarnation do nothing.
        i.handle_repair(PeerId(9), 1, vec![], &[(1, u64::MAX)], 1, t);
        i.handle_repair(PeerId(1), 7, vec![], &[(1, u64::MAX)], 1, t);
        assert_eq!(i.counters().lost, 0);
    }

    proptest::proptest! {
        /// The receiver delivers what `accept` hands back at once, the rest
        /// through `poll`: the same events in the same order as
        /// `handle_envelope` followed by `poll`, whatever arrives (late,
        /// twice, out of order, from a restarted origin).
        #[test]
        fn accept_delivers_what_handle_and_poll_deliver(
            arrivals in proptest::collection::vec((1u64..3, 1u64..3, 1u64..40), 1..200),
            frame in 1usize..8,
            heartbeat_every in 1usize..20,
        ) {
            let t = Instant::now();
            let (mut queued, mut direct) = (Inbox::default(), Inbox::default());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            // As the receiver takes them: a frame's envelopes, then a drain.
            for (n, chunk) in arrivals.chunks(frame).enumerate() {
                for &(origin, incarnation, seq) in chunk {
                    queued.handle_envelope(env(origin, incarnation, seq), t);
                    if let Some(e) = direct.accept(env(origin, incarnation, seq), t) {
                        b.push(format!("d{}", e.seq));
                    }
                }
                a.extend(drain(&mut queued));
                b.extend(drain(&mut direct));
                if n % heartbeat_every == 0 {
                    let (origin, incarnation, seq) = chunk[0];
                    queued.handle_heartbeat(PeerId(origin), incarnation, seq + 2, t);
                    direct.handle_heartbeat(PeerId(origin), incarnation, seq + 2, t);
                    a.extend(drain(&mut queued));
                    b.extend(drain(&mut direct));
                }
            }
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert_eq!(queued.counters(), direct.counters());
        }
    }
}
