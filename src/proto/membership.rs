//! The membership core: a sans-IO state machine for heartbeat discovery.
//!
//! Owns: the member table, heartbeat counters, state transitions
//! (Alive → Suspect → Failed, Left, Rejoined), gossip selection and the
//! connect/disconnect decisions. It never reads a clock, sleeps, spawns or
//! touches a socket: the driver (the discovery task) passes `now` in, calls
//! it once per heartbeat round, feeds it the messages that arrive, and
//! carries out the [`Action`]s it queues.
//!
//! Failure detection is the gossip-style detector of van Renesse et al.:
//! every peer increments its heartbeat counter once per round and every
//! message carries the highest counter seen for some members. A member
//! whose counter has not progressed, directly or through anyone's gossip, for
//! `suspect_after` of its rounds is Suspect, for `miss_limit` rounds Failed.
//! A member's rounds are counted in its advertised heartbeat interval
//! ([`PeerInfo::heartbeat_interval_ms`]) when that is longer than ours: a
//! peer at 500 ms rounds is given 2 × 500 ms before Suspect by a peer at
//! 200 ms rounds, not 2 × 200 ms (our own rounds are the clock, so a member
//! faster than us is judged at our pace).
//! Losing a few heartbeat messages therefore does not fail anyone: the
//! counter also arrives by other members' responses.
//!
//! Rules that keep the view safe from stale or foreign input:
//! - per member, a higher incarnation replaces a lower one (a restart:
//!   `Rejoined`); traffic of a lower incarnation is stale and ignored;
//! - within one incarnation the advertised [`PeerInfo`] is immutable: a
//!   message that contradicts it is a conflict, counted and ignored;
//! - only the member itself can bring a Failed member of the same
//!   incarnation back (direct heartbeat, e.g. after a partition heals);
//!   gossip cannot resurrect it; a Left member stays left;
//! - failure is decided locally, never taken from gossip, so nobody else's
//!   message can remove a live member; only the member itself can say Left.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::Instant;

use crate::wire::heartbeat::{Gossip, Response, Survey, GOSSIP_FAILED, GOSSIP_LEFT, GOSSIP_LIVE};
use crate::wire::id::PeerId;
use crate::wire::member::{Member, MemberEvent, MemberEventKind, MemberState, PeerInfo};

/// Tuning of the membership core, in heartbeat rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Rounds without heartbeat progress before a member is Suspect.
    pub suspect_after: u32,
    /// Rounds without heartbeat progress before a member is Failed.
    pub miss_limit: u32,
    /// Most members (live or remembered) kept; others are refused and counted.
    pub max_members: usize,
    /// Gossip entries per response.
    pub gossip_entries: usize,
    /// Rounds a Failed or Left member is remembered (and a Failed one still
    /// dialed, so it can come back by itself) before it is forgotten.
    pub tombstone_rounds: u32,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            suspect_after: 2,
            miss_limit: 4,
            max_members: 1024,
            gossip_entries: 16,
            tombstone_rounds: 120,
        }
    }
}

/// What the driver must do after feeding the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Report a membership change.
    Event(MemberEvent),
    /// Dial this member's surveyor (respondent) and publisher (sub).
    Connect(Arc<PeerInfo>),
    /// Stop dialing this member's endpoints.
    Disconnect(Arc<PeerInfo>),
}

/// Input the core refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Traffic of an older incarnation than the one known.
    pub stale: u64,
    /// Messages contradicting a member's advertised info, or claiming our id.
    pub conflicts: u64,
    /// New members refused because the table was full.
    pub over_capacity: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    info: Arc<PeerInfo>,
    state: MemberState,
    /// Highest heartbeat counter seen (frozen while Failed).
    heartbeat: u64,
    /// Our round in which the counter last progressed.
    progress_round: u64,
    /// Our round of the last state change.
    changed_round: u64,
    last_seen: Instant,
    /// Known only from gossip as Failed or Left, never heard of live here:
    /// any live evidence of it makes it a new member (Joined).
    hearsay: bool,
}

impl Entry {
    fn snapshot(&self) -> Member {
        Member {
            info: self.info.clone(),
            state: self.state,
            last_seen: self.last_seen,
        }
    }
}

/// One peer's view of the bus. See the module documentation.
#[derive(Debug)]
pub struct Membership {
    me: Arc<PeerInfo>,
    cfg: MembershipConfig,
    heartbeat: u64,
    round: u64,
    /// Ordered so that iteration (and so the whole core) is deterministic.
    members: BTreeMap<PeerId, Entry>,
    gossip_cursor: Option<PeerId>,
    actions: VecDeque<Action>,
    refused: Refused,
}

impl Membership {
    /// A view containing only ourselves.
    pub fn new(me: Arc<PeerInfo>, cfg: MembershipConfig) -> Self {
        Membership {
            me,
            cfg,
            heartbeat: 0,
            round: 0,
            members: BTreeMap::new(),
            gossip_cursor: None,
            actions: VecDeque::new(),
            refused: Refused::default(),
        }
    }

    /// What we advertise.
    pub fn me(&self) -> &Arc<PeerInfo> {
        &self.me
    }

    /// Input refused so far.
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// Next action for the driver, in the order they arose.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every member known, including remembered Failed and Left ones.
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.values().map(Entry::snapshot)
    }

    /// One member by id.
    pub fn member(&self, id: PeerId) -> Option<Member> {
        self.members.get(&id).map(Entry::snapshot)
    }

    /// The live (Alive or Suspect) members' ids with their incarnations.
    pub fn live_incarnations(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.members
            .iter()
            .filter(|(_, e)| e.state.is_live())
            .map(|(id, e)| (*id, e.info.incarnation))
    }

    /// Ids of the live (Alive or Suspect) members.
    pub fn live_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.members
            .iter()
            .filter(|(_, e)| e.state.is_live())
            .map(|(id, _)| *id)
    }

    /// Starts a heartbeat round: our counter goes up by one; the returned
    /// survey goes to every connected respondent.
    pub fn start_round(&mut self) -> Survey {
        self.round += 1;
        self.heartbeat += 1;
        Survey {
            from: self.me.clone(),
            heartbeat: self.heartbeat,
            leaving: false,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
        }
    }

    /// The survey announcing our graceful exit.
    pub fn leave(&self) -> Survey {
        Survey {
            from: self.me.clone(),
            heartbeat: self.heartbeat,
            leaving: true,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
        }
    }

    /// A survey arrived on our respondent: it is the surveyor's own
    /// heartbeat (or its goodbye). Returns our answer.
    pub fn handle_survey(&mut self, survey: &Survey, now: Instant) -> Response {
        if survey.leaving {
            self.on_leave(&survey.from);
        } else {
            self.observe(&survey.from, survey.heartbeat, true, now);
        }
        Response {
            from: self.me.clone(),
            heartbeat: self.heartbeat,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
            gossip: self.gossip_sample(),
        }
    }

    /// A response to our survey arrived.
    pub fn handle_response(&mut self, response: &Response, now: Instant) {
        self.observe(&response.from, response.heartbeat, true, now);
        for g in &response.gossip {
            match g.state {
                GOSSIP_LIVE => self.observe(&g.info, g.heartbeat, false, now),
                gone => self.observe_gone(&g.info, g.heartbeat, gone == GOSSIP_LEFT, now),
            }
        }
    }

    /// The round's deadline passed: members without progress for long
    /// enough become Suspect or Failed; old tombstones are forgotten.
    pub fn end_round(&mut self) {
        let round = self.round;
        let cfg = self.cfg;
        let ours = u64::from(self.me.heartbeat_interval_ms);
        let mut forget = Vec::new();
        for (id, e) in self.members.iter_mut() {
            let misses = round.saturating_sub(e.progress_round);
            let since_change = round.saturating_sub(e.changed_round);
            // `limit` of the member's rounds, in ours (rounded up).
            let theirs = u64::from(e.info.heartbeat_interval_ms);
            let in_our_rounds = |limit: u32| {
                let limit = u64::from(limit);
                if ours == 0 || theirs <= ours {
                    limit
                } else {
                    (limit * theirs).div_ceil(ours)
                }
            };
            let kind = match e.state {
                MemberState::Alive | MemberState::Suspect
                    if misses >= in_our_rounds(cfg.miss_limit) =>
                {
                    e.state = MemberState::Failed;
                    MemberEventKind::Failed
                }
                MemberState::Alive if misses >= in_our_rounds(cfg.suspect_after) => {
                    e.state = MemberState::Suspect;
                    MemberEventKind::Suspect
                }
                MemberState::Failed | MemberState::Left
                    if since_change >= u64::from(cfg.tombstone_rounds) =>
                {
                    forget.push(*id);
                    continue;
                }
                _ => continue,
            };
            e.changed_round = round;
            self.actions.push_back(Action::Event(MemberEvent {
                kind,
                member: e.snapshot(),
            }));
        }
        for id in forget {
            self.forget(id);
        }
    }

    /// Removes a tombstone; a Failed member was still being dialed.
    fn forget(&mut self, id: PeerId) {
        if let Some(e) = self.members.remove(&id) {
            // A Failed member was still dialed; one known by hearsay never was.
            if e.state == MemberState::Failed && !e.hearsay {
                self.actions.push_back(Action::Disconnect(e.info));
            }
        }
    }

    /// Gossip says a member we do not know failed or left: remembered as
    /// such (shown in the member table, not dialed, no event) so a peer
    /// that just joined sees recent departures. A known member is left as
    /// it is: gossip never removes a member.
    fn observe_gone(&mut self, info: &Arc<PeerInfo>, heartbeat: u64, left: bool, now: Instant) {
        if info.id == self.me.id || self.members.contains_key(&info.id) {
            return;
        }
        if !self.make_room() {
            self.refused.over_capacity += 1;
            return;
        }
        let round = self.round;
        self.members.insert(
            info.id,
            Entry {
                info: info.clone(),
                state: if left {
                    MemberState::Left
                } else {
                    MemberState::Failed
                },
                heartbeat,
                progress_round: round,
                changed_round: round,
                last_seen: now,
                hearsay: true,
            },
        );
    }

    fn on_leave(&mut self, from: &Arc<PeerInfo>) {
        let Some(e) = self.members.get_mut(&from.id) else {
            return;
        };
        if from.incarnation < e.info.incarnation {
            self.refused.stale += 1;
            return;
        }
        if from.incarnation > e.info.incarnation {
            // Leaving before we heard of this incarnation: it is gone either way.
            e.info = from.clone();
        } else if *e.info != **from {
            self.refused.conflicts += 1;
            return;
        }
        if e.state == MemberState::Left {
            return;
        }
        e.state = MemberState::Left;
        e.changed_round = self.round;
        let member = e.snapshot();
        self.actions
            .push_back(Action::Disconnect(member.info.clone()));
        self.actions.push_back(Action::Event(MemberEvent {
            kind: MemberEventKind::Left,
            member,
        }));
    }

    /// Evidence that `info` had heartbeat counter `heartbeat`; `direct` when
    /// it comes from the member itself rather than someone's gossip.
    fn observe(&mut self, info: &Arc<PeerInfo>, heartbeat: u64, direct: bool, now: Instant) {
        if info.id == self.me.id {
            if info.incarnation > self.me.incarnation
                || (info.incarnation == self.me.incarnation && **info != *self.me)
            {
                self.refused.conflicts += 1;
            }
            return;
        }
        let round = self.round;
        if let Some(e) = self.members.get(&info.id).filter(|e| e.hearsay) {
            if info.incarnation < e.info.incarnation {
                self.refused.stale += 1;
                return;
            }
            self.members.remove(&info.id); // heard of live: a new member
        }
        let Some(e) = self.members.get_mut(&info.id) else {
            if !self.make_room() {
                self.refused.over_capacity += 1;
                return;
            }
            let e = Entry {
                info: info.clone(),
                state: MemberState::Alive,
                heartbeat,
                progress_round: round,
                changed_round: round,
                last_seen: now,
                hearsay: false,
            };
            self.actions.push_back(Action::Connect(info.clone()));
            self.actions.push_back(Action::Event(MemberEvent {
                kind: MemberEventKind::Joined,
                member: e.snapshot(),
            }));
            self.members.insert(info.id, e);
            return;
        };
        if info.incarnation < e.info.incarnation {
            self.refused.stale += 1;
            return;
        }
        if info.incarnation > e.info.incarnation {
            // A restart. A Failed member is still dialed; a Left one is not.
            let old = std::mem::replace(&mut e.info, info.clone());
            let dialed = e.state != MemberState::Left;
            let moved = old.endpoints != info.endpoints;
            e.state = MemberState::Alive;
            e.heartbeat = heartbeat;
            e.progress_round = round;
            e.changed_round = round;
            e.last_seen = now;
            let member = e.snapshot();
            if dialed && moved {
                self.actions.push_back(Action::Disconnect(old));
            }
            if !dialed || moved {
                self.actions.push_back(Action::Connect(info.clone()));
            }
            self.actions.push_back(Action::Event(MemberEvent {
                kind: MemberEventKind::Rejoined,
                member,
            }));
            return;
        }
        if *e.info != **info {
            self.refused.conflicts += 1;
            return;
        }
        if heartbeat <= e.heartbeat {
            return;
        }
        let kind = match e.state {
            MemberState::Alive => None,
            MemberState::Suspect => Some(MemberEventKind::Recovered),
            MemberState::Failed if direct => Some(MemberEventKind::Rejoined),
            MemberState::Failed | MemberState::Left => return,
        };
        e.heartbeat = heartbeat;
        e.progress_round = round;
        e.last_seen = now;
        if let Some(kind) = kind {
            e.state = MemberState::Alive;
            e.changed_round = round;
            self.actions.push_back(Action::Event(MemberEvent {
                kind,
                member: e.snapshot(),
            }));
        }
    }

    /// Makes room for one more member by forgetting the oldest tombstone if
    /// the table is full. False if every entry is live.
    fn make_room(&mut self) -> bool {
        if self.members.len() < self.cfg.max_members {
            return true;
        }
        let oldest = self
            .members
            .iter()
            .filter(|(_, e)| !e.state.is_live())
            .min_by_key(|(_, e)| e.changed_round)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                self.forget(id);
                true
            }
            None => false,
        }
    }

    /// The next `gossip_entries` members in rotation (live ones, and the
    /// Failed and Left ones remembered, marked so), so that every member is
    /// gossiped about evenly across responses.
    fn gossip_sample(&mut self) -> Vec<Gossip> {
        let want = self.cfg.gossip_entries;
        let mut out = Vec::with_capacity(want.min(self.members.len()));
        let after = match self.gossip_cursor {
            Some(c) => self.members.range((Excluded(c), Unbounded)),
            None => self.members.range(..),
        };
        let before = match self.gossip_cursor {
            Some(c) => self.members.range(..=c),
            None => self.members.range(..PeerId(0)),
        };
        for (id, e) in after.chain(before) {
            if out.len() == want {
                break;
            }
            let state = match e.state {
                MemberState::Alive | MemberState::Suspect => GOSSIP_LIVE,
                MemberState::Failed => GOSSIP_FAILED,
                MemberState::Left => GOSSIP_LEFT,
            };
            out.push(Gossip {
                info: e.info.clone(),
                heartbeat: e.heartbeat,
                state,
            });
            self.gossip_cursor = Some(*id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::member::Endpoints;
    use MemberEventKind::*;

    fn info(id: u64, incarnation: u64) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            id: PeerId(id),
            incarnation,
            name: format!("p{id}"),
            endpoints: Endpoints {
                survey: format!("inproc://s{id}"),
                publish: format!("inproc://p{id}"),
                repair: format!("inproc://r{id}"),
            },
            heartbeat_interval_ms: 0,
            tool: false,
            stream: 0,
        })
    }

    fn core(cfg: MembershipConfig) -> Membership {
        Membership::new(info(1, 1), cfg)
    }

    fn actions(m: &mut Membership) -> Vec<Action> {
        std::iter::from_fn(|| m.poll()).collect()
    }

    fn events(m: &mut Membership) -> Vec<(MemberEventKind, u64)> {
        actions(m)
            .into_iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some((e.kind, e.member.id().0)),
                _ => None,
            })
            .collect()
    }

    fn survey(from: &Arc<PeerInfo>, heartbeat: u64) -> Survey {
        Survey {
            from: from.clone(),
            heartbeat,
            leaving: false,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
        }
    }

    fn response(
        from: &Arc<PeerInfo>,
        heartbeat: u64,
        gossip: &[(&Arc<PeerInfo>, u64)],
    ) -> Response {
        Response {
            from: from.clone(),
            heartbeat,
            last_seq: 0,
            acks: vec![],
            durable: vec![],
            groups: vec![],
            views: vec![],
            gossip: gossip
                .iter()
                .map(|(i, h)| Gossip {
                    info: (*i).clone(),
                    heartbeat: *h,
                    state: GOSSIP_LIVE,
                })
                .collect(),
        }
    }

    /// Runs `n` rounds in which nothing is heard.
    fn silent_rounds(m: &mut Membership, n: u32) {
        for _ in 0..n {
            m.start_round();
            m.end_round();
        }
    }

    fn state(m: &Membership, id: u64) -> MemberState {
        m.member(PeerId(id)).unwrap().state
    }

    fn with_interval(info: Arc<PeerInfo>, ms: u32) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            heartbeat_interval_ms: ms,
            ..(*info).clone()
        })
    }

    #[test]
    fn departures_known_from_gossip_are_shown_not_dialed_and_can_come_back() {
        let mut m = core(MembershipConfig::default());
        let (b, c, d) = (info(2, 1), info(3, 1), info(4, 1));
        let t0 = Instant::now();
        let mut resp = response(&b, 1, &[(&c, 7)]);
        resp.gossip[0].state = GOSSIP_FAILED;
        resp.gossip.push(Gossip {
            info: d.clone(),
            heartbeat: 3,
            state: GOSSIP_LEFT,
        });
        m.handle_response(&resp, t0);
        let acts = actions(&mut m);
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::Connect(i) if i.id != PeerId(2)))
                .count(),
            0,
            "departed members are not dialed: {acts:?}"
        );
        assert_eq!(state(&m, 3), MemberState::Failed);
        assert_eq!(state(&m, 4), MemberState::Left);
        assert_eq!(m.live_ids().collect::<Vec<_>>(), [PeerId(2)]);
        // Gossip about a known member changes nothing.
        let mut again = response(&b, 2, &[(&b, 2)]);
        again.gossip[0].state = GOSSIP_FAILED;
        m.handle_response(&again, t0);
        assert_eq!(state(&m, 2), MemberState::Alive);
        // The Failed one heard from directly: back, and dialed now.
        m.handle_survey(&survey(&c, 8), t0);
        let acts = actions(&mut m);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Connect(i) if i.id == PeerId(3))),
            "{acts:?}"
        );
        assert_eq!(state(&m, 3), MemberState::Alive);
        // What we gossip marks the departed.
        let out = m.handle_survey(&survey(&b, 3), t0);
        let d_state = out
            .gossip
            .iter()
            .find(|g| g.info.id == PeerId(4))
            .map(|g| g.state);
        assert_eq!(d_state, Some(GOSSIP_LEFT));
    }

    #[test]
    fn a_slower_member_is_judged_by_its_own_interval() {
        // We run 200 ms rounds; member 2 runs 500 ms rounds, so its counter
        // goes up once every 2.5 of ours.
        let mut m = Membership::new(with_interval(info(1, 1), 200), MembershipConfig::default());
        let b = with_interval(info(2, 1), 500);
        let t0 = Instant::now();
        let mut heartbeat = 0;
        for round in 0..25u64 {
            m.start_round();
            let theirs = round * 200 / 500 + 1;
            if theirs > heartbeat {
                heartbeat = theirs;
                m.handle_survey(&survey(&b, heartbeat), t0);
            }
            m.end_round();
            let evs = events(&mut m);
            assert!(
                evs.iter().all(|(k, _)| *k == Joined),
                "round {round}: {evs:?}"
            );
        }
        // Silent from now on: Suspect after 2 of its rounds (5 of ours),
        // Failed after 4 (10 of ours), counted from its last progress.
        let mut seen = Vec::new();
        for round in 1..=12u32 {
            m.start_round();
            m.end_round();
            seen.extend(events(&mut m).into_iter().map(|(k, _)| (k, round)));
        }
        assert_eq!(seen, [(Suspect, 4), (Failed, 9)], "{seen:?}");
    }

    #[test]
    fn a_survey_introduces_the_surveyor() {
        let mut m = core(MembershipConfig::default());
        let b = info(2, 1);
        let resp = m.handle_survey(&survey(&b, 1), Instant::now());
        assert_eq!(resp.from.id, PeerId(1));
        assert_eq!(
            actions(&mut m),
            vec![
                Action::Connect(b.clone()),
                Action::Event(MemberEvent {
                    kind: Joined,
                    member: m.member(PeerId(2)).unwrap()
                }),
            ]
        );
        assert_eq!(state(&m, 2), MemberState::Alive);
    }

    #[test]
    fn a_response_introduces_the_responder_and_its_gossip() {
        let mut m = core(MembershipConfig::default());
        let (b, c) = (info(2, 1), info(3, 1));
        m.start_round();
        m.handle_response(
            &response(&b, 1, &[(&c, 5), (&info(1, 1), 1)]),
            Instant::now(),
        );
        assert_eq!(events(&mut m), vec![(Joined, 2), (Joined, 3)]);
        assert_eq!(m.live_ids().collect::<Vec<_>>(), [PeerId(2), PeerId(3)]);
    }

    #[test]
    fn silence_makes_suspect_then_failed_then_forgotten() {
        let cfg = MembershipConfig {
            tombstone_rounds: 5,
            ..Default::default()
        };
        let mut m = core(cfg);
        let b = info(2, 1);
        m.start_round();
        m.handle_survey(&survey(&b, 1), Instant::now());
        m.end_round();
        actions(&mut m);
        silent_rounds(&mut m, 1);
        assert_eq!(
            state(&m, 2),
            MemberState::Alive,
            "one quiet round is normal jitter"
        );
        silent_rounds(&mut m, 1);
        assert_eq!(events(&mut m), vec![(Suspect, 2)]);
        silent_rounds(&mut m, 1);
        assert!(events(&mut m).is_empty());
        silent_rounds(&mut m, 1);
        assert_eq!(events(&mut m), vec![(Failed, 2)]);
        assert_eq!(m.live_ids().count(), 0);
        silent_rounds(&mut m, 4);
        assert!(actions(&mut m).is_empty(), "tombstone still dialed");
        silent_rounds(&mut m, 1);
        assert_eq!(actions(&mut m), vec![Action::Disconnect(b)]);
        assert!(m.member(PeerId(2)).is_none());
    }

    #[test]
    fn suspect_recovers_on_progress() {
        let mut m = core(MembershipConfig::default());
        let b = info(2, 1);
        m.start_round();
        m.handle_survey(&survey(&b, 1), Instant::now());
        silent_rounds(&mut m, 2);
        actions(&mut m);
        assert_eq!(state(&m, 2), MemberState::Suspect);
        m.start_round();
        m.handle_survey(&survey(&b, 1), Instant::now()); // no progress: same counter
        m.end_round();
        assert_eq!(state(&m, 2), MemberState::Suspect);
        m.handle_survey(&survey(&b, 2), Instant::now());
        assert_eq!(events(&mut m), vec![(Recovered, 2)]);
    }

    #[test]
    fn gossip_progress_alone_keeps_a_member_alive() {
        let mut m = core(MembershipConfig::default());
        let (b, c) = (info(2, 1), info(3, 1));
        for round in 1..=20 {
            m.start_round();
            // b's own messages never arrive; c reports b's counter going up.
            m.handle_response(&response(&c, round, &[(&b, round)]), Instant::now());
            m.end_round();
        }
        assert_eq!(state(&m, 2), MemberState::Alive);
        assert_eq!(events(&mut m), vec![(Joined, 3), (Joined, 2)]);
    }

    fn failed_member(m: &mut Membership, b: &Arc<PeerInfo>) {
        m.start_round();
        m.handle_survey(&survey(b, 10), Instant::now());
        silent_rounds(m, 4);
        assert_eq!(state(m, 2), MemberState::Failed);
        actions(m);
    }

    #[test]
    fn gossip_cannot_resurrect_a_failed_member_but_the_member_itself_can() {
        let mut m = core(MembershipConfig::default());
        let (b, c) = (info(2, 1), info(3, 1));
        failed_member(&mut m, &b);
        m.start_round();
        m.handle_response(&response(&c, 1, &[(&b, 11), (&b, 99)]), Instant::now());
        assert_eq!(events(&mut m), vec![(Joined, 3)]);
        assert_eq!(state(&m, 2), MemberState::Failed);
        // b heard directly again (partition healed): same incarnation rejoins.
        m.handle_survey(&survey(&b, 12), Instant::now());
        assert_eq!(
            actions(&mut m),
            vec![Action::Event(MemberEvent {
                kind: Rejoined,
                member: m.member(PeerId(2)).unwrap(),
            })]
        );
        assert_eq!(state(&m, 2), MemberState::Alive);
    }

    #[test]
    fn a_new_incarnation_rejoins_and_redials_only_if_it_moved() {
        let mut m = core(MembershipConfig::default());
        let b = info(2, 1);
        failed_member(&mut m, &b);
        // Restarted at the same address: still dialed, so no new dial.
        let b2 = info(2, 2);
        m.handle_response(&response(&info(3, 1), 1, &[(&b2, 1)]), Instant::now());
        assert_eq!(events(&mut m), vec![(Joined, 3), (Rejoined, 2)]);
        assert_eq!(m.member(PeerId(2)).unwrap().info, b2);
        // Restarted elsewhere while alive: redial the new endpoints.
        let mut moved = (*info(2, 3)).clone();
        moved.endpoints.survey = "inproc://elsewhere".into();
        let b3 = Arc::new(moved);
        m.handle_survey(&survey(&b3, 1), Instant::now());
        let acts = actions(&mut m);
        assert_eq!(acts[0], Action::Disconnect(b2));
        assert_eq!(acts[1], Action::Connect(b3));
        assert!(matches!(&acts[2], Action::Event(e) if e.kind == Rejoined));
    }

    #[test]
    fn stale_incarnations_are_ignored_and_counted() {
        let mut m = core(MembershipConfig::default());
        m.handle_survey(&survey(&info(2, 5), 1), Instant::now());
        actions(&mut m);
        m.handle_survey(&survey(&info(2, 4), 100), Instant::now());
        m.handle_response(
            &response(&info(3, 1), 1, &[(&info(2, 3), 100)]),
            Instant::now(),
        );
        assert_eq!(events(&mut m), vec![(Joined, 3)]);
        assert_eq!(m.member(PeerId(2)).unwrap().info.incarnation, 5);
        assert_eq!(m.refused().stale, 2);
    }

    #[test]
    fn leaving_is_final_for_that_incarnation() {
        let mut m = core(MembershipConfig::default());
        let b = info(2, 1);
        m.handle_survey(&survey(&b, 1), Instant::now());
        actions(&mut m);
        let mut bye = survey(&b, 2);
        bye.leaving = true;
        m.handle_survey(&bye, Instant::now());
        assert_eq!(
            actions(&mut m),
            vec![
                Action::Disconnect(b.clone()),
                Action::Event(MemberEvent {
                    kind: Left,
                    member: m.member(PeerId(2)).unwrap()
                }),
            ]
        );
        m.handle_survey(&bye, Instant::now());
        m.handle_survey(&survey(&b, 50), Instant::now());
        m.handle_response(&response(&info(3, 1), 1, &[(&b, 60)]), Instant::now());
        assert_eq!(events(&mut m), vec![(Joined, 3)]);
        assert_eq!(state(&m, 2), MemberState::Left);
        // It starts again: a new incarnation, dialed again.
        let b2 = info(2, 2);
        m.handle_survey(&survey(&b2, 1), Instant::now());
        let acts = actions(&mut m);
        assert_eq!(acts[0], Action::Connect(b2));
        assert!(matches!(&acts[1], Action::Event(e) if e.kind == Rejoined));
    }

    #[test]
    fn conflicting_claims_do_not_change_or_remove_a_member() {
        let mut m = core(MembershipConfig::default());
        let b = info(2, 1);
        m.handle_survey(&survey(&b, 1), Instant::now());
        actions(&mut m);
        // Someone answers with b's id and incarnation but other endpoints.
        let mut fake = (*b).clone();
        fake.endpoints.publish = "inproc://impostor".into();
        let fake = Arc::new(fake);
        m.handle_response(&response(&fake, 100, &[]), Instant::now());
        let mut bye = survey(&fake, 101);
        bye.leaving = true;
        m.handle_survey(&bye, Instant::now());
        // Or with our own id.
        let mut me = (*info(1, 1)).clone();
        me.name = "not me".into();
        m.handle_response(&response(&Arc::new(me), 1, &[]), Instant::now());
        assert!(actions(&mut m).is_empty());
        assert_eq!(m.member(PeerId(2)).unwrap().info, b);
        assert_eq!(state(&m, 2), MemberState::Alive);
        assert_eq!(m.refused().conflicts, 3);
    }

    #[test]
    fn the_table_is_bounded_and_tombstones_make_room() {
        let cfg = MembershipConfig {
            max_members: 3,
            ..Default::default()
        };
        let mut m = core(cfg);
        for id in 2..=4 {
            m.handle_survey(&survey(&info(id, 1), 1), Instant::now());
        }
        m.handle_survey(&survey(&info(5, 1), 1), Instant::now());
        assert_eq!(m.refused().over_capacity, 1);
        assert!(m.member(PeerId(5)).is_none());
        let mut bye = survey(&info(2, 1), 2);
        bye.leaving = true;
        m.handle_survey(&bye, Instant::now());
        actions(&mut m);
        m.handle_survey(&survey(&info(5, 1), 1), Instant::now());
        assert!(m.member(PeerId(2)).is_none(), "oldest tombstone forgotten");
        assert_eq!(events(&mut m), vec![(Joined, 5)]);
    }

    #[test]
    fn gossip_rotates_over_all_members_marking_the_departed() {
        let cfg = MembershipConfig {
            gossip_entries: 16,
            ..Default::default()
        };
        let mut m = core(cfg);
        for id in 2..42 {
            m.handle_survey(&survey(&info(id, 1), 1), Instant::now());
        }
        let mut bye = survey(&info(7, 1), 2);
        bye.leaving = true;
        m.handle_survey(&bye, Instant::now());
        let mut seen = std::collections::BTreeMap::<u64, u32>::new();
        for _ in 0..3 {
            let r = m.handle_survey(&survey(&info(2, 1), 1), Instant::now());
            assert!(r.gossip.len() <= 16);
            for g in r.gossip {
                assert_eq!(g.state == GOSSIP_LEFT, g.info.id.0 == 7, "{g:?}");
                *seen.entry(g.info.id.0).or_default() += 1;
            }
        }
        // 40 members (one of them left, marked so), 48 slots: everyone at
        // least once, nobody left out.
        assert_eq!(seen.len(), 40);
        assert!(seen.values().all(|&n| (1..=2).contains(&n)));
    }
}
