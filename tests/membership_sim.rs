//! Deterministic simulation of the membership core: 200 peers join through
//! random seeds while 10 % of heartbeat messages are lost, then 10 % of them
//! are killed. No sockets, no clock: one loop iteration is one heartbeat round.
//!
//! Stated bounds, checked here:
//! - every live peer's live-member set equals the set of other live peers
//!   within JOIN_BOUND rounds after the last join;
//! - killed peers are gone from every survivor's live set within
//!   FAIL_BOUND rounds after the kill (miss_limit + 2);
//! - no live peer is ever declared Failed by anyone at this loss rate with
//!   the default miss limit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chorus::membership::{Action, Membership, MembershipConfig};
use chorus::{Endpoints, MemberEventKind, PeerId, PeerInfo};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const PEERS: usize = 200;
const JOIN_PER_ROUND: usize = 20;
const LOSS: f64 = 0.10;
const KILLED: usize = PEERS / 10;
const JOIN_BOUND: u64 = 8;

struct Sim {
    rng: StdRng,
    cores: Vec<Membership>,
    started: Vec<bool>,
    alive: Vec<bool>,
    /// dialed[x]: peers whose surveyor x's respondent is connected to.
    dialed: Vec<BTreeSet<usize>>,
    seeds: Vec<Option<usize>>,
    round: u64,
    false_failures: Vec<(usize, usize, u64)>,
    failed_seen: Vec<BTreeSet<usize>>,
}

fn info(i: usize) -> Arc<PeerInfo> {
    Arc::new(PeerInfo {
        id: PeerId(i as u64 + 1),
        incarnation: 1,
        name: format!("peer-{i}"),
        endpoints: Endpoints {
            survey: format!("inproc://s{i}"),
            publish: format!("inproc://p{i}"),
            repair: format!("inproc://r{i}"),
        },
        heartbeat_interval_ms: 0,
        tool: false,
        stream: 0,
    })
}

fn index(id: PeerId) -> usize {
    id.0 as usize - 1
}

impl Sim {
    fn new(seed: u64) -> Self {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            cores: (0..PEERS)
                .map(|i| Membership::new(info(i), MembershipConfig::default()))
                .collect(),
            started: vec![false; PEERS],
            alive: vec![false; PEERS],
            dialed: vec![BTreeSet::new(); PEERS],
            seeds: vec![None; PEERS],
            round: 0,
            false_failures: Vec::new(),
            failed_seen: vec![BTreeSet::new(); PEERS],
        }
    }

    fn start(&mut self, i: usize) {
        let running: Vec<usize> = (0..PEERS).filter(|&j| self.alive[j]).collect();
        self.seeds[i] = running.choose(&mut self.rng).copied();
        self.dialed[i].extend(self.seeds[i]);
        self.started[i] = true;
        self.alive[i] = true;
    }

    fn lost(&mut self) -> bool {
        self.rng.gen_bool(LOSS)
    }

    fn apply_actions(&mut self, x: usize) {
        while let Some(a) = self.cores[x].poll() {
            match a {
                Action::Connect(info) => {
                    self.dialed[x].insert(index(info.id));
                }
                Action::Disconnect(info) => {
                    let y = index(info.id);
                    if self.seeds[x] != Some(y) {
                        self.dialed[x].remove(&y);
                    }
                }
                Action::Event(e) => {
                    let y = index(e.member.id());
                    if e.kind == MemberEventKind::Failed {
                        self.failed_seen[x].insert(y);
                        if self.alive[y] {
                            self.false_failures.push((x, y, self.round));
                        }
                    }
                }
            }
        }
    }

    fn round(&mut self) {
        self.round += 1;
        let now = Instant::now();
        let mut order: Vec<usize> = (0..PEERS).filter(|&i| self.alive[i]).collect();
        order.shuffle(&mut self.rng);
        for &y in &order {
            let survey = self.cores[y].start_round();
            let respondents: Vec<usize> = (0..PEERS)
                .filter(|&x| self.alive[x] && self.dialed[x].contains(&y))
                .collect();
            for x in respondents {
                if self.lost() {
                    continue;
                }
                let response = self.cores[x].handle_survey(&survey, now);
                self.apply_actions(x);
                if self.lost() {
                    continue;
                }
                self.cores[y].handle_response(&response, now);
            }
            self.apply_actions(y);
        }
        for &y in &order {
            self.cores[y].end_round();
            self.apply_actions(y);
        }
    }

    /// Peers whose live set differs from the set of other live peers.
    fn unconverged(&self) -> Vec<usize> {
        let live: BTreeSet<PeerId> = (0..PEERS)
            .filter(|&i| self.alive[i])
            .map(|i| info(i).id)
            .collect();
        (0..PEERS)
            .filter(|&i| self.alive[i])
            .filter(|&i| {
                let mut want = live.clone();
                want.remove(&info(i).id);
                self.cores[i].live_ids().collect::<BTreeSet<_>>() != want
            })
            .collect()
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    let cfg = MembershipConfig::default();
    let fail_bound = u64::from(cfg.miss_limit) + 2;

    // Joins: JOIN_PER_ROUND new peers per round, each through a random running seed.
    sim.start(0);
    let mut next = 1;
    while next < PEERS {
        for _ in 0..JOIN_PER_ROUND.min(PEERS - next) {
            sim.start(next);
            next += 1;
        }
        sim.round();
    }
    let last_join = sim.round;
    while !sim.unconverged().is_empty() {
        assert!(
            sim.round - last_join < JOIN_BOUND,
            "seed {seed}: {} peers not converged {JOIN_BOUND} rounds after the last join",
            sim.unconverged().len()
        );
        sim.round();
    }
    let joined_in = sim.round - last_join;
    // Stable for a while under loss.
    for _ in 0..20 {
        sim.round();
        assert!(
            sim.unconverged().is_empty(),
            "seed {seed}: view diverged at round {}",
            sim.round
        );
    }

    // Kill 10 %.
    let mut victims: Vec<usize> = (0..PEERS).collect();
    victims.shuffle(&mut sim.rng);
    victims.truncate(KILLED);
    for &v in &victims {
        sim.alive[v] = false;
    }
    let kill_round = sim.round;
    while !sim.unconverged().is_empty() {
        assert!(
            sim.round - kill_round < fail_bound,
            "seed {seed}: {} peers still list dead members {fail_bound} rounds after the kill",
            sim.unconverged().len()
        );
        sim.round();
    }
    let failed_in = sim.round - kill_round;
    for _ in 0..10 {
        sim.round();
        assert!(
            sim.unconverged().is_empty(),
            "seed {seed}: view diverged after the kill"
        );
    }
    for x in (0..PEERS).filter(|&x| sim.alive[x]) {
        for &v in &victims {
            assert!(
                sim.failed_seen[x].contains(&v),
                "seed {seed}: {x} never reported {v} Failed"
            );
        }
    }
    assert!(
        sim.false_failures.is_empty(),
        "seed {seed}: live peers declared Failed (observer, member, round): {:?}",
        &sim.false_failures[..sim.false_failures.len().min(10)]
    );
    eprintln!(
        "seed {seed}: {PEERS} peers converged {joined_in} rounds after the last join; \
         {KILLED} killed peers removed everywhere in {failed_in} rounds; 0 false failures"
    );
}

#[test]
fn two_hundred_peers_converge_and_detect_failures_under_ten_percent_loss() {
    let started = Instant::now();
    for seed in [1, 2] {
        run(seed);
    }
    eprintln!("simulation took {:?}", started.elapsed());
}
