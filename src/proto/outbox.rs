//! The publisher's reliability core: retained envelopes and ack watermarks.
//!
//! Owns: the bounded retransmit buffer of one origin incarnation, the
//! "received through" watermark each live member reported for it, freeing
//! what every live member has, and answering NAKs. Sans-IO: the publish
//! driver feeds it and sends what it returns.
//!
//! Policy: a member that joins is given a provisional watermark at the last
//! sequence number published when it joined (it is owed everything after),
//! confirmed by its first ack. A member whose heartbeats carry no ack for
//! [`NO_ACK_ROUNDS`] rounds (an implementation that does not ack) loses its
//! provisional watermark. When every live member has a watermark, what all
//! of them have is freed: marked at once, dropped a little per push (or
//! all at once by [`Outbox::drop_acked`]). Otherwise the buffer keeps the newest
//! `capacity` envelopes (and at most `max_bytes` of them) as a ring, so a
//! member without a watermark can still be repaired; it never holds the
//! buffer back, and what it asks for after eviction is "gone".
//! A member that restarts (same id, a higher incarnation), or comes back
//! after it was dropped as Failed, resumes from the watermark its earlier
//! life reported: what that life acknowledged is not owed again (no false
//! loss), what it had not is sent to the new life again, marked as a
//! possible redelivery (`Repair::redelivered_through`), and what was freed
//! meanwhile is "gone", so the new life reports it lost — never a silent
//! gap. A member that left gracefully starts afresh.
//! The buffer never drops an envelope a member with a known watermark has
//! not acknowledged: [`Outbox::is_full`] then tells the driver to stop
//! taking new messages (so `publish` waits, or fails fast if configured)
//! until acks arrive or the lagging member fails — or, if the buffer stays
//! full for longer than the stall limit, until the members holding it back
//! are cut off ([`Outbox::check_stall`]): their watermarks stop counting
//! (they are still what a durable peer records of them, so after its
//! restart they are owed what follows), the buffer turns into a ring for them, and what they ask for after it
//! was evicted is answered "gone", so they report it as lost. One stuck or
//! malicious member therefore cannot stop a publisher for longer than the
//! stall limit. A member that was cut off counts again once its ack reaches
//! what is still retained.
//! A durable peer's buffer is the same, in front of its log: what it
//! answers "gone" the driver reads from the log; it still holds the
//! publisher back while a live member lags (the log serves repairs, not
//! flow control: a publisher outrunning its receivers would only make them
//! repair from the log what pub/sub dropped), but for a shorter stall
//! limit by default: a member it cuts off loses nothing within retention.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::id::PeerId;
use crate::wire::repair::{Nak, Repair, MAX_RANGES};

/// Heartbeats without an ack after which a member's provisional watermark is dropped.
pub const NO_ACK_ROUNDS: u32 = 3;

/// Members that went away without leaving (Failed) whose watermark is kept
/// for when they come back; the oldest is forgotten beyond.
pub const MAX_DEPARTED: usize = 4096;

/// Frames every member has that one push frees (more than one, so what
/// an ack frees is gone before the next ack).
pub const EVICT_PER_PUSH: usize = 2;

/// Sizing of an [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Envelopes retained at most.
    pub capacity: usize,
    /// Bytes of retained frames at most (exceeded by one frame at most).
    pub max_bytes: usize,
    /// Largest repair answer, in bytes of retained frames.
    pub max_reply_bytes: usize,
    /// Most sequence numbers looked at for one NAK.
    pub max_nak_seqs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            capacity: 8192,
            max_bytes: 16 << 20,
            max_reply_bytes: 512 * 1024,
            max_nak_seqs: 4096,
        }
    }
}

/// Input the outbox ignored, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxRefused {
    /// Acks from peers that are not live members, or for another incarnation.
    pub acks: u64,
    /// NAKs for another origin or incarnation.
    pub naks: u64,
    /// NAK ranges reaching past the last sequence number published.
    pub unpublished: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    origin: PeerId,
    incarnation: u64,
    cfg: OutboxConfig,
    last_seq: u64,
    /// `(seq, frame)`, ascending and contiguous.
    retained: VecDeque<(u64, Bytes)>,
    retained_bytes: usize,
    /// Highest sequence number every member with a known watermark has
    /// (`u64::MAX`: none known), and what every live member has (0: some
    /// watermark is unknown); both kept up to date by [`free`](Self::free)
    /// at every change of the watermarks, so `is_full` and `push` are O(1).
    floor: u64,
    freeable: u64,
    /// The live members, with the incarnation each had when it became one.
    members: HashMap<PeerId, u64>,
    acks: HashMap<PeerId, u64>,
    /// Watermarks of members that stopped being live without leaving
    /// (id, incarnation, watermark), oldest first, for when they come back
    /// (bounded by `MAX_DEPARTED`).
    departed: VecDeque<(PeerId, u64, u64)>,
    /// Per member that came back: the last sequence number published when
    /// it did; what it is sent up to there may have reached its earlier life.
    redeliver_through: HashMap<PeerId, u64>,
    /// Members whose watermark was set at join and not yet confirmed, with
    /// the heartbeats seen since without an ack.
    provisional: HashMap<PeerId, u32>,
    /// The last sequence number published when each member joined.
    joined_at: HashMap<PeerId, u64>,
    /// Members cut off for holding the buffer full too long, with the
    /// watermark each has reached since: it no longer holds the buffer
    /// back, but is still what the member is owed after (kept across a
    /// restart like any other, see [`watermarks`](Self::watermarks)).
    cut_off: HashMap<PeerId, u64>,
    /// Since when the buffer has been full.
    full_since: Option<Instant>,
    refused: OutboxRefused,
}

impl Outbox {
    /// An empty outbox for this origin incarnation.
    pub fn new(origin: PeerId, incarnation: u64, cfg: OutboxConfig) -> Self {
        Outbox {
            origin,
            incarnation,
            cfg,
            last_seq: 0,
            retained: VecDeque::new(),
            retained_bytes: 0,
            floor: u64::MAX,
            freeable: u64::MAX,
            members: HashMap::new(),
            acks: HashMap::new(),
            departed: VecDeque::new(),
            redeliver_through: HashMap::new(),
            provisional: HashMap::new(),
            joined_at: HashMap::new(),
            cut_off: HashMap::new(),
            full_since: None,
            refused: OutboxRefused::default(),
        }
    }

    /// Called regularly (each heartbeat round) by the driver: if the buffer
    /// has been full for `limit`, the members whose watermark holds it back
    /// are cut off (returned). See the module documentation.
    pub fn check_stall(&mut self, now: Instant, limit: Duration) -> Vec<PeerId> {
        if !self.is_full() {
            self.full_since = None;
            return Vec::new();
        }
        let since = *self.full_since.get_or_insert(now);
        if now.saturating_duration_since(since) < limit {
            return Vec::new();
        }
        let floor = self.floor;
        let laggards: Vec<PeerId> = self
            .acks
            .iter()
            .filter(|(_, ack)| **ack == floor)
            .map(|(id, _)| *id)
            .collect();
        for id in &laggards {
            self.acks.remove(id);
            self.provisional.remove(id);
            self.cut_off.insert(*id, floor);
        }
        self.full_since = None;
        self.free();
        laggards
    }

    /// Its sizing.
    pub fn config(&self) -> OutboxConfig {
        self.cfg
    }

    /// Last sequence number pushed (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Envelopes retained now.
    pub fn len(&self) -> usize {
        self.retained.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.retained.is_empty()
    }

    /// Bytes of retained frames.
    pub fn bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Input ignored so far.
    pub fn refused(&self) -> OutboxRefused {
        self.refused
    }

    /// True when a new envelope cannot be retained without dropping one a
    /// live member has not acknowledged. At the bound, what every member
    /// has is dropped first, until it is below: judged with it still
    /// retained, a marked frame smaller than the bytes over the bound would
    /// make room that only an unacknowledged one can give.
    pub fn is_full(&mut self) -> bool {
        self.settle_at_bound();
        self.at_bound()
            && self
                .retained
                .front()
                .is_some_and(|(seq, _)| *seq > self.floor)
    }

    /// At the bound, drops what every member has until it is below it.
    fn settle_at_bound(&mut self) {
        while self.at_bound() && self.front_freeable() {
            self.drop_front_acked(1);
        }
    }

    /// Whether the buffer holds `capacity` envelopes or `max_bytes`.
    fn at_bound(&self) -> bool {
        self.retained.len() >= self.cfg.capacity || self.retained_bytes >= self.cfg.max_bytes
    }

    /// Retains the next envelope (sequence number `last_seq() + 1`). The
    /// caller checks [`is_full`](Self::is_full) first.
    pub fn push(&mut self, frame: Bytes) -> u64 {
        debug_assert!(!self.is_full(), "push into a full outbox");
        self.settle_at_bound();
        // Not full: the oldest is acknowledged by all, or this is a ring.
        while self.at_bound() {
            let (_, old) = self.retained.pop_front().expect("at the bound");
            self.retained_bytes -= old.len();
        }
        self.last_seq += 1;
        self.retained_bytes += frame.len();
        self.retained.push_back((self.last_seq, frame));
        self.evict_acked();
        self.last_seq
    }

    /// Retains the next envelope even though the buffer is full, beyond
    /// its bound, evicting nothing a member has not acknowledged: for what
    /// the publisher must put in the stream when it is full (a consumer
    /// group's control events, and the event taken with them). The buffer
    /// stays full, so nothing new is taken until acks free it.
    pub fn push_beyond(&mut self, frame: Bytes) -> u64 {
        if !self.is_full() {
            return self.push(frame);
        }
        self.last_seq += 1;
        self.retained_bytes += frame.len();
        self.retained.push_back((self.last_seq, frame));
        self.evict_acked();
        self.last_seq
    }

    /// The live members changed (each with its incarnation): only their
    /// acks count from now on. A new member is owed what is published from
    /// now on; one that restarted or came back after failing resumes from
    /// the watermark of its earlier life (see the module documentation).
    pub fn set_members(&mut self, live: impl IntoIterator<Item = (PeerId, u64)>) {
        let live: HashMap<PeerId, u64> = live.into_iter().collect();
        let departing: Vec<(PeerId, u64, u64)> = self
            .members
            .iter()
            .filter(|(id, _)| !live.contains_key(id))
            .filter_map(|(id, inc)| self.watermark(*id).map(|ack| (*id, *inc, ack)))
            .collect();
        for (gone, incarnation, ack) in departing {
            self.remember_departed(gone, incarnation, ack);
        }
        for (&id, &incarnation) in &live {
            let known = self.members.get(&id).copied();
            // What its earlier life acknowledged, and whether this is that
            // same life back (it kept what it received, so nothing it is
            // sent again can reach its handlers twice).
            let (earlier, same_life) = match known {
                Some(k) if k >= incarnation => continue, // the same life
                Some(_) => (self.watermark(id), false),  // restarted
                None => match self
                    .departed
                    .iter()
                    .position(|(d, _, _)| *d == id)
                    .and_then(|at| self.departed.remove(at))
                {
                    Some((_, inc, ack)) => (Some(ack), inc == incarnation),
                    None => (None, false),
                },
            };
            let from = earlier.unwrap_or(self.last_seq).min(self.last_seq);
            if from < self.last_seq && !same_life {
                self.redeliver_through.insert(id, self.last_seq);
            } else {
                self.redeliver_through.remove(&id);
            }
            self.acks.insert(id, from);
            self.provisional.insert(id, 0);
            self.joined_at.insert(id, from);
            self.cut_off.remove(&id);
        }
        self.members = live;
        self.cut_off.retain(|id, _| self.members.contains_key(id));
        self.joined_at.retain(|id, _| self.members.contains_key(id));
        self.acks.retain(|id, _| self.members.contains_key(id));
        self.provisional
            .retain(|id, _| self.members.contains_key(id));
        self.redeliver_through
            .retain(|id, _| self.members.contains_key(id));
        self.free();
    }

    /// `member` left gracefully: if it comes back it starts afresh.
    pub fn handle_left(&mut self, member: PeerId) {
        self.departed.retain(|(id, _, _)| *id != member);
    }

    fn remember_departed(&mut self, member: PeerId, incarnation: u64, ack: u64) {
        self.departed.retain(|(id, _, _)| *id != member);
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.departed.push_back((member, incarnation, ack));
    }

    /// Continues a stream that a log kept across a restart: the next
    /// envelope is `last_seq + 1`, and the members of the earlier run, with
    /// their incarnation and watermark, are owed what follows their
    /// watermark when they show up (as if they had failed and come back).
    /// Called on a new outbox, before anything else.
    pub fn resume(&mut self, last_seq: u64, earlier: impl IntoIterator<Item = (PeerId, u64, u64)>) {
        self.last_seq = last_seq;
        for (member, incarnation, ack) in earlier {
            self.remember_departed(member, incarnation, ack.min(last_seq));
        }
    }

    /// Every watermark known, of live (cut off or not) and of departed
    /// members: `(member, incarnation, acknowledged through)` (what a log
    /// keeps across a restart, see [`resume`](Self::resume)). A live
    /// member missing here would be taken for a new one after a restart,
    /// and skip what it had not received as "published before it joined".
    pub fn watermarks(&self) -> impl Iterator<Item = (PeerId, u64, u64)> + '_ {
        let live = self
            .acks
            .iter()
            .chain(&self.cut_off)
            .map(|(id, ack)| (*id, self.members[id], *ack));
        live.chain(self.departed.iter().copied())
    }

    /// What `member` acknowledged, whether or not it still counts.
    fn watermark(&self, member: PeerId) -> Option<u64> {
        self.acks
            .get(&member)
            .or(self.cut_off.get(&member))
            .copied()
    }

    /// `member` sent a heartbeat without an ack for this origin.
    pub fn handle_no_ack(&mut self, member: PeerId) {
        let Some(rounds) = self.provisional.get_mut(&member) else {
            return;
        };
        *rounds += 1;
        if *rounds >= NO_ACK_ROUNDS {
            self.provisional.remove(&member);
            self.acks.remove(&member);
            self.free();
        }
    }

    /// `member` reports it has received everything of `incarnation` through `seq`.
    pub fn handle_ack(&mut self, member: PeerId, incarnation: u64, seq: u64) {
        if incarnation != self.incarnation || !self.members.contains_key(&member) {
            self.refused.acks += 1;
            return;
        }
        let seq = seq.min(self.last_seq);
        if let Some(reached) = self.cut_off.get_mut(&member) {
            // Counts again only once it has caught up with what is retained.
            let oldest = self.retained.front().map_or(self.last_seq + 1, |(s, _)| *s);
            if seq + 1 < oldest {
                *reached = (*reached).max(seq);
                return;
            }
            self.cut_off.remove(&member);
        }
        self.provisional.remove(&member);
        let ack = self.acks.entry(member).or_insert(0);
        *ack = (*ack).max(seq);
        self.free();
    }

    /// Whether every live member acknowledged everything through `seq`.
    pub fn acked_by_all(&self, seq: u64) -> bool {
        self.members
            .keys()
            .all(|m| self.acks.get(m).is_some_and(|a| *a >= seq))
    }

    /// The live members that have not acknowledged everything through
    /// `seq`, with what they did acknowledge (`None`: nothing yet), by id.
    pub fn unacked(&self, seq: u64) -> Vec<(PeerId, Option<u64>)> {
        let mut out: Vec<_> = self
            .members
            .keys()
            .map(|m| (*m, self.acks.get(m).copied()))
            .filter(|(_, ack)| *ack < Some(seq))
            .collect();
        out.sort_unstable();
        out
    }

    /// Marks as freeable what every live member has received, once all
    /// their watermarks are known; [`drop_acked`](Self::drop_acked) frees it.
    fn free(&mut self) {
        self.floor = self.acks.values().copied().min().unwrap_or(u64::MAX);
        self.freeable = if self.members.keys().all(|m| self.acks.contains_key(m)) {
            self.floor
        } else {
            0
        };
    }

    /// Drops the retained frames every live member has. An ack only marks
    /// what it frees (it is applied under the lock `publish` takes per
    /// event, and moving an ack's 4096 frames took ~60 us): each
    /// [`push`](Self::push) then drops [`EVICT_PER_PUSH`] of them, and this
    /// drops what no push did (a publisher gone idle). Until then they are
    /// still retained, and still answer NAKs.
    pub fn drop_acked(&mut self) {
        self.drop_front_acked(usize::MAX);
    }

    /// Drops up to [`EVICT_PER_PUSH`] frames every live member has: the
    /// publishing thread frees what an ack freed a little per event.
    fn evict_acked(&mut self) {
        self.drop_front_acked(EVICT_PER_PUSH);
    }

    /// Drops up to `max` of the oldest frames, as long as every live
    /// member has them.
    fn drop_front_acked(&mut self, max: usize) {
        for _ in 0..max {
            if !self.front_freeable() {
                return;
            }
            let (_, frame) = self.retained.pop_front().expect("looked at");
            self.retained_bytes -= frame.len();
        }
    }

    /// Whether the oldest retained frame is one every live member has.
    fn front_freeable(&self) -> bool {
        self.retained
            .front()
            .is_some_and(|(seq, _)| *seq <= self.freeable)
    }

    /// Answers a NAK: retained frames (up to the reply size), ranges no
    /// longer retained as `gone`, never-published numbers ignored. The work
    /// is bounded by `max_nak_seqs` whatever the ranges say.
    /// Overlapping or repeated ranges are merged first, so one NAK never
    /// gets the same envelope twice (no amplification).
    pub fn handle_nak(&mut self, nak: &Nak) -> Repair {
        let mut repair = Repair {
            origin: self.origin,
            incarnation: self.incarnation,
            last_seq: self.last_seq,
            frames: Vec::new(),
            gone: Vec::new(),
            owed_from: 1,
            redelivered_through: 0,
        };
        if nak.origin != self.origin || nak.incarnation != self.incarnation {
            self.refused.naks += 1;
            return repair;
        }
        // What was published before the asker joined is not owed to it. A
        // non-member is owed what is still retained; the rest is "gone".
        if let Some(&joined) = self.joined_at.get(&nak.member) {
            repair.owed_from = joined + 1;
        }
        if let Some(&through) = self.redeliver_through.get(&nak.member) {
            repair.redelivered_through = through;
        }
        // A durable consumer is owed from its own record, even what was
        // published before it joined (the answer still says where its
        // membership began).
        let owed = match nak.resume_from {
            0 => repair.owed_from,
            from => repair.owed_from.min(from),
        };
        // Everything below this was freed (or never retained).
        let oldest = self.retained.front().map_or(self.last_seq + 1, |(s, _)| *s);
        let (mut budget, mut bytes) = (self.cfg.max_nak_seqs, 0usize);
        for (first, last) in merged(&nak.ranges[..nak.ranges.len().min(MAX_RANGES)]) {
            if budget == 0 || bytes >= self.cfg.max_reply_bytes {
                break;
            }
            let first = first.max(owed);
            if last > self.last_seq {
                self.refused.unpublished += 1;
            }
            let last = last.min(self.last_seq);
            if first > last {
                continue;
            }
            if first < oldest {
                repair.gone.push((first, last.min(oldest - 1)));
            }
            let mut seq = first.max(oldest);
            while seq <= last && budget > 0 && bytes < self.cfg.max_reply_bytes {
                let (_, frame) = &self.retained[(seq - oldest) as usize];
                bytes += frame.len();
                repair.frames.push(frame.clone());
                seq += 1;
                budget -= 1;
            }
        }
        repair
    }
}

/// `ranges` sorted, with overlapping and adjacent ones merged; inverted
/// ranges dropped.
fn merged(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|(a, b)| a <= b).collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (first, last) in sorted {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(capacity: usize) -> Outbox {
        Outbox::new(
            PeerId(1),
            9,
            OutboxConfig {
                capacity,
                max_bytes: usize::MAX,
                max_reply_bytes: 100,
                max_nak_seqs: 50,
            },
        )
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("frame-{seq:04}")) // 10 bytes
    }

    fn nak(ranges: &[(u64, u64)]) -> Nak {
        Nak {
            origin: PeerId(1),
            incarnation: 9,
            ranges: ranges.to_vec(),
            member: PeerId(2),
            resume_from: 0,
        }
    }

    #[test]
    fn a_push_beyond_a_full_buffer_evicts_nothing_unacknowledged() {
        let mut o = outbox(3);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=3 {
            o.push(frame(s));
        }
        assert!(o.is_full());
        for s in 4..=6 {
            assert_eq!(o.push_beyond(frame(s)), s);
        }
        assert_eq!(o.len(), 6, "all retained");
        assert!(o.is_full());
        let answer = o.handle_nak(&nak(&[(1, 6)]));
        assert_eq!(answer.frames.len(), 6);
        o.handle_ack(PeerId(2), 9, 6);
        o.drop_acked();
        assert!(!o.is_full());
        assert!(o.is_empty());
    }

    /// Regression (review of the change that made acks only mark what
    /// they free): at the byte bound, a marked frame smaller than the
    /// overshoot made `is_full` say "room", and the push then evicted a
    /// frame a member had not acknowledged.
    #[test]
    fn marked_frames_at_the_byte_bound_never_make_room_by_evicting_unacknowledged_ones() {
        let mut o = Outbox::new(
            PeerId(1),
            9,
            OutboxConfig {
                capacity: 1000,
                max_bytes: 35,
                max_reply_bytes: 100,
                max_nak_seqs: 50,
            },
        );
        o.set_members([(PeerId(2), 1)]);
        o.push(frame(1)); // 10 bytes
        o.push(frame(2)); // 10 bytes
        o.push(Bytes::from(vec![3; 30])); // 50 in all, past the bound
        o.handle_ack(PeerId(2), 9, 1); // marks 1: still 40 unacknowledged
        assert!(o.is_full(), "40 bytes unacknowledged, as if 1 were dropped");
        assert_eq!((o.len(), o.bytes()), (2, 40), "1 is dropped to judge it");
        o.handle_ack(PeerId(2), 9, 2);
        assert!(!o.is_full());
        o.push(frame(4));
        let r = o.handle_nak(&nak(&[(3, 4)]));
        assert_eq!(
            (r.frames.len(), r.gone.len()),
            (2, 0),
            "nothing unacknowledged evicted"
        );
    }

    #[test]
    fn the_byte_bound_fills_and_rings_like_the_count_bound() {
        let bounded = || {
            Outbox::new(
                PeerId(1),
                9,
                OutboxConfig {
                    capacity: 1000,
                    max_bytes: 35, // three 10-byte frames are below, four are not
                    max_reply_bytes: 100,
                    max_nak_seqs: 50,
                },
            )
        };
        let mut o = bounded();
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=4 {
            assert!(!o.is_full());
            o.push(frame(s));
        }
        assert!(o.is_full(), "40 bytes unacknowledged");
        o.handle_ack(PeerId(2), 9, 2);
        o.drop_acked();
        assert_eq!((o.len(), o.bytes()), (2, 20));
        assert!(!o.is_full());
        // A member that never acks: the buffer is a ring of ~35 bytes.
        let mut o = bounded();
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for _ in 0..NO_ACK_ROUNDS {
            o.handle_no_ack(PeerId(2));
            o.drop_acked();
        }
        for s in 1..=20 {
            assert!(!o.is_full());
            o.push(frame(s));
            assert!(o.bytes() <= 40, "bounded by max_bytes + one frame");
        }
        assert_eq!(o.len(), 4);
        let answer = o.handle_nak(&nak(&[(1, 20)]));
        assert_eq!(answer.frames.len(), 4);
        assert_eq!(answer.gone, vec![(1, 16)]);
    }

    /// Regression (found by `cargo fuzz run reliability`): overlapping
    /// ranges in one NAK made the origin send the same envelope repeatedly.
    #[test]
    fn a_durable_consumer_is_owed_from_its_own_record_and_no_further() {
        let mut o = outbox(16);
        for s in 1..=4 {
            o.push(frame(s));
        }
        o.set_members([(PeerId(2), 1)]); // joined after 4
        o.drop_acked();
        for s in 5..=6 {
            o.push(frame(s));
        }
        // Without a record, what came before the join is not owed.
        let r = o.handle_nak(&nak(&[(2, 6)]));
        assert_eq!((r.owed_from, r.frames.len()), (5, 2));
        // With one, from there on; past what was published nothing, counted.
        let mut asked = nak(&[(2, 100)]);
        asked.resume_from = 2;
        let r = o.handle_nak(&asked);
        // 1..=4 were freed when the member joined (it had them all, as far
        // as the outbox knew): owed by the record, so "gone", not skipped.
        assert_eq!(r.gone, [(2, 4)]);
        assert_eq!(r.frames, (5..=6).map(frame).collect::<Vec<_>>());
        assert_eq!(
            r.owed_from, 5,
            "the answer still says where membership began"
        );
        assert_eq!(o.refused().unpublished, 1);
        // A record below what the buffer holds: gone (the log, where there
        // is one, fills it in).
        let mut asked = nak(&[(1, 6)]);
        asked.resume_from = 1;
        let r = o.handle_nak(&asked);
        assert_eq!((r.gone.clone(), r.frames.len()), (vec![(1, 4)], 2));
    }

    #[test]
    fn overlapping_nak_ranges_never_repeat_an_envelope() {
        let mut o = outbox(8);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=4 {
            o.push(frame(s));
        }
        let r = o.handle_nak(&nak(&[(2, 3), (1, 2), (3, 3), (3, 4), (9, 1), (2, 3)]));
        assert_eq!(r.frames, (1..=4).map(frame).collect::<Vec<_>>());
        assert_eq!(
            merged(&[(5, 6), (1, 2), (3, 3), (8, 9)]),
            [(1, 3), (5, 6), (8, 9)]
        );
        assert_eq!(merged(&[(0, u64::MAX), (7, 8)]), [(0, u64::MAX)]);
    }

    #[test]
    fn a_member_holding_the_buffer_full_past_the_stall_limit_is_cut_off() {
        let (t0, limit) = (Instant::now(), Duration::from_secs(5));
        let mut o = outbox(4);
        o.set_members([(PeerId(2), 1), (PeerId(3), 1)]);
        o.drop_acked();
        for s in 1..=4 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 4); // keeps up
        o.drop_acked();
        o.handle_ack(PeerId(3), 9, 0); // stuck at 0
        o.drop_acked();
        assert!(o.is_full());
        assert!(o.check_stall(t0, limit).is_empty());
        assert!(o.check_stall(t0 + Duration::from_secs(4), limit).is_empty());
        assert_eq!(o.check_stall(t0 + limit, limit), [PeerId(3)]);
        assert!(!o.is_full(), "publishing goes on");
        assert_eq!(
            o.len(),
            4,
            "kept as a ring, for repairs of the cut-off member"
        );
        for s in 5..=9 {
            o.push(frame(s));
            o.handle_ack(PeerId(2), 9, s);
            o.drop_acked();
        }
        // The cut-off member's old acks do not count; its NAK gets "gone".
        o.handle_ack(PeerId(3), 9, 2);
        o.drop_acked();
        assert!(!o.is_full());
        let r = o.handle_nak(&Nak {
            member: PeerId(3),
            ..nak(&[(2, 9)])
        });
        assert_eq!(r.gone, [(2, 5)]);
        assert_eq!(r.frames, (6..=9).map(frame).collect::<Vec<_>>());
    }

    #[test]
    fn a_cut_off_member_counts_again_once_caught_up() {
        let (t0, limit) = (Instant::now(), Duration::from_secs(1));
        let mut o = outbox(2);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        o.push(frame(1));
        o.push(frame(2));
        assert_eq!(o.check_stall(t0, limit), []);
        assert_eq!(o.check_stall(t0 + limit, limit), [PeerId(2)]);
        o.push(frame(3)); // ring: 2, 3
        o.handle_ack(PeerId(2), 9, 0);
        o.drop_acked();
        assert_eq!(o.len(), 2, "an ack behind the ring does not count");
        o.handle_ack(PeerId(2), 9, 2);
        o.drop_acked();
        assert_eq!(o.len(), 1, "caught up: counts again, 1 and 2 freed");
    }

    #[test]
    fn a_cut_off_member_keeps_its_watermark_across_the_origins_restart() {
        let (t0, limit) = (Instant::now(), Duration::from_secs(1));
        let mut o = outbox(4);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=4 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 0);
        o.drop_acked();
        assert!(o.check_stall(t0, limit).is_empty());
        assert_eq!(o.check_stall(t0 + limit, limit), [PeerId(2)]);
        for s in 5..=20 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 3); // behind the ring: still cut off
        o.drop_acked();
        assert_eq!(o.watermarks().collect::<Vec<_>>(), [(PeerId(2), 1, 3)]);
        // A durable origin restarts with what it recorded: the member is
        // known, owed what follows its watermark, not taken for a new one.
        let mut restarted = outbox(4);
        restarted.resume(20, o.watermarks());
        restarted.set_members([(PeerId(2), 1)]);
        restarted.drop_acked();
        let r = restarted.handle_nak(&nak(&[(4, 20)]));
        assert_eq!(r.owed_from, 4, "not skipped as published before it joined");
        assert_eq!(r.gone, [(4, 20)], "the log has them, the buffer does not");
        // Failing instead, it is remembered as departed with that watermark.
        o.set_members([]);
        o.drop_acked();
        assert_eq!(o.watermarks().collect::<Vec<_>>(), [(PeerId(2), 1, 3)]);
    }

    #[test]
    fn frees_what_every_live_member_acked_and_fills_otherwise() {
        let mut o = outbox(4);
        o.set_members([(PeerId(2), 1), (PeerId(3), 1)]); // provisional watermarks: 0
        o.drop_acked();
        for s in 1..=4 {
            assert_eq!(o.push(frame(s)), s);
        }
        assert!(o.is_full());
        o.handle_ack(PeerId(2), 9, 3);
        o.drop_acked();
        o.handle_ack(PeerId(3), 9, 1);
        o.drop_acked();
        assert_eq!(o.len(), 3, "only what both have: seq 1");
        assert!(!o.is_full());
        // The lagging member fails: its watermark stops counting.
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        assert_eq!(o.len(), 1);
        assert_eq!(o.bytes(), 10);
    }

    #[test]
    fn an_ack_only_marks_what_it_frees_and_pushes_free_it_a_little_at_a_time() {
        assert_eq!(EVICT_PER_PUSH, 2, "the figures below");
        let mut o = outbox(16);
        o.set_members([(PeerId(2), 1)]);
        for s in 1..=8 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 5);
        // Marked, not moved: still retained, still repairs.
        assert!(!o.is_full());
        assert_eq!(o.len(), 8);
        assert_eq!(o.handle_nak(&nak(&[(4, 4)])).frames, vec![frame(4)]);
        // A push drops two of them (1 and 2)...
        o.push(frame(9));
        assert_eq!((o.len(), o.bytes()), (7, 70));
        // ...and `drop_acked` the rest.
        o.drop_acked();
        assert_eq!(o.len(), 4);
        assert_eq!(o.handle_nak(&nak(&[(5, 6)])).gone, vec![(5, 5)]);
        o.drop_acked();
        assert_eq!((o.len(), o.bytes()), (4, 40), "nothing past the watermark");
        // At the bound, whether it is full is judged without what is marked.
        let mut o = outbox(8);
        o.set_members([(PeerId(2), 1)]);
        for s in 1..=8 {
            o.push(frame(s));
        }
        assert!(o.is_full());
        o.handle_ack(PeerId(2), 9, 5);
        assert!(!o.is_full());
        assert_eq!(o.len(), 7, "only 1 dropped: enough to be below");
    }

    #[test]
    fn a_member_that_never_acks_stops_holding_the_buffer() {
        let mut o = outbox(4);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=4 {
            o.push(frame(s));
        }
        assert!(o.is_full(), "a new member is owed what follows its join");
        for _ in 0..NO_ACK_ROUNDS {
            o.handle_no_ack(PeerId(2));
            o.drop_acked();
        }
        assert!(!o.is_full(), "no acks: ring mode");
        for s in 5..=6 {
            o.push(frame(s));
        }
        assert_eq!(o.len(), 4);
        // An ack confirms a watermark, which never lapses afterwards.
        o.handle_ack(PeerId(2), 9, 5);
        o.drop_acked();
        assert_eq!(o.len(), 1);
        for _ in 0..10 {
            o.handle_no_ack(PeerId(2));
            o.drop_acked();
        }
        o.push(frame(7));
        o.push(frame(8));
        o.push(frame(9));
        assert!(o.is_full());
    }

    #[test]
    fn unknown_watermarks_and_strangers_do_not_hold_the_buffer() {
        let mut o = outbox(4);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for _ in 0..NO_ACK_ROUNDS {
            o.handle_no_ack(PeerId(2));
            o.drop_acked();
        }
        for s in 1..=6 {
            o.push(frame(s));
        }
        assert_eq!(o.len(), 4, "watermark unknown: kept as a ring, never full");
        assert!(!o.is_full());
        o.handle_ack(PeerId(99), 9, 0); // not a member
        o.drop_acked();
        o.handle_ack(PeerId(2), 8, 0); // wrong incarnation
        o.drop_acked();
        assert_eq!(o.refused().acks, 2);
        o.handle_ack(PeerId(2), 9, 5);
        o.drop_acked();
        assert_eq!(o.len(), 1, "known now: freed up to the watermark");
        o.set_members([]);
        o.drop_acked();
        assert_eq!(o.len(), 0, "nobody left to repair");
    }

    #[test]
    fn a_restarted_member_resumes_from_its_earlier_lifes_watermark() {
        let mut o = outbox(100);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=15 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 10); // the first life processed 1..=10
        o.drop_acked();
        // It restarts (a new incarnation) before acknowledging 11..=15.
        o.set_members([(PeerId(2), 2)]);
        o.drop_acked();
        let r = o.handle_nak(&nak(&[(1, 15)]));
        assert_eq!(r.owed_from, 11, "what the first life acked is not owed");
        assert!(r.gone.is_empty(), "no false loss");
        assert_eq!(r.frames, (11..=15).map(frame).collect::<Vec<_>>());
        assert_eq!(r.redelivered_through, 15, "11..=15 may have reached it");
        assert!(!o.acked_by_all(15));
        assert_eq!(o.unacked(15), vec![(PeerId(2), Some(10))]);
        o.handle_ack(PeerId(2), 9, 15);
        o.drop_acked();
        assert!(o.acked_by_all(15));
        assert_eq!(o.len(), 0);
        // The same life again changes nothing.
        o.set_members([(PeerId(2), 2)]);
        o.drop_acked();
        assert_eq!(o.handle_nak(&nak(&[(1, 15)])).owed_from, 11);
    }

    #[test]
    fn a_member_back_after_failing_is_told_what_was_freed_meanwhile() {
        let mut o = outbox(100);
        o.set_members([(PeerId(2), 1), (PeerId(3), 1)]);
        o.drop_acked();
        for s in 1..=10 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 4);
        o.drop_acked();
        o.handle_ack(PeerId(3), 9, 10);
        o.drop_acked();
        // 2 is declared Failed: 5..=10 are freed, 3 has them.
        o.set_members([(PeerId(3), 1)]);
        o.drop_acked();
        assert_eq!(o.len(), 0);
        o.push(frame(11));
        o.set_members([(PeerId(2), 2), (PeerId(3), 1)]);
        o.drop_acked();
        let r = o.handle_nak(&nak(&[(1, 11)]));
        assert_eq!(r.owed_from, 5);
        assert_eq!(
            r.gone,
            vec![(5, 10)],
            "freed while it was away: lost, not silent"
        );
        assert_eq!(r.frames, vec![frame(11)], "3 has not acked it yet");
        assert_eq!(r.redelivered_through, 11);
    }

    #[test]
    fn a_member_that_left_comes_back_afresh() {
        let mut o = outbox(100);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=5 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 3);
        o.drop_acked();
        o.set_members([]);
        o.drop_acked();
        o.handle_left(PeerId(2));
        o.drop_acked();
        o.set_members([(PeerId(2), 2)]);
        o.drop_acked();
        let r = o.handle_nak(&nak(&[(1, 5)]));
        assert_eq!(r.owed_from, 6, "owed what is published from now on");
        assert!(r.gone.is_empty() && r.frames.is_empty());
        assert_eq!(r.redelivered_through, 0);
    }

    #[test]
    fn answers_naks_with_frames_gone_and_bounds() {
        let mut o = outbox(100);
        o.set_members([(PeerId(2), 1)]);
        o.drop_acked();
        for s in 1..=30 {
            o.push(frame(s));
        }
        o.handle_ack(PeerId(2), 9, 10); // frees 1..=10
        o.drop_acked();
        let r = o.handle_nak(&nak(&[(5, 12), (40, 50)]));
        assert_eq!(r.gone, vec![(5, 10)]);
        assert_eq!(r.frames, vec![frame(11), frame(12)]);
        assert_eq!(r.last_seq, 30);
        assert_eq!(o.refused().unpublished, 1);
        // Reply size bound: 100 bytes = 10 frames.
        assert_eq!(o.handle_nak(&nak(&[(11, 30)])).frames.len(), 10);
        // A NAK for someone else, or an absurd range, is cheap.
        let wrong = Nak {
            incarnation: 8,
            ..nak(&[(1, 2)])
        };
        assert!(o.handle_nak(&wrong).frames.is_empty());
        let huge = o.handle_nak(&nak(&[(1, u64::MAX)]));
        assert_eq!(huge.gone, vec![(1, 10)]);
        assert!(huge.frames.len() <= 10);
    }
}
