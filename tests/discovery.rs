//! Heartbeat discovery between real peers over tcp loopback.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chorus::heartbeat::Response;
use chorus::{MemberEventKind, MemberState, Peer, PeerId};
use common::*;
use futures::StreamExt;

const INTERVAL: Duration = Duration::from_millis(100);
const DEADLINE_: Duration = Duration::from_millis(50);
const MISS_LIMIT: u32 = 4;

/// The documented failure-detection bound for the test heartbeat settings.
fn failure_bound() -> Duration {
    INTERVAL * (MISS_LIMIT + 2) + DEADLINE_
}

async fn start(name: &str, seed: Option<&str>) -> Peer {
    let mut b = fast(name, "tcp://127.0.0.1:0");
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.start().await.unwrap()
}

fn live_ids(p: &Peer) -> BTreeSet<PeerId> {
    p.members()
        .iter()
        .filter(|m| m.state.is_live())
        .map(|m| m.id())
        .collect()
}

/// Waits until `watcher` reports `kind` for `id`, returning when it did.
async fn wait_event(
    watcher: &mut chorus::MembershipEvents,
    kind: MemberEventKind,
    id: PeerId,
) -> Instant {
    within(&format!("{kind:?} of {id}"), async {
        loop {
            let e = watcher.next().await.expect("membership stream ended");
            if e.kind == kind && e.member.id() == id {
                return Instant::now();
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_peers_converge_through_one_seed() {
    let seed = start("seed", None).await;
    let mut peers = vec![seed.clone()];
    let started = Instant::now();
    for i in 1..8 {
        peers.push(start(&format!("p{i}"), Some(seed.local_url())).await);
    }
    let refs: Vec<&Peer> = peers.iter().collect();
    wait_mesh(&refs).await;
    eprintln!("8 peers converged in {:?}", started.elapsed());
    let all: BTreeSet<PeerId> = peers.iter().map(|p| p.id()).collect();
    for p in &peers {
        let mut want = all.clone();
        want.remove(&p.id());
        assert_eq!(live_ids(p), want);
        let me = p.members();
        let seed_entry = me.iter().find(|m| m.id() == seed.id());
        if let Some(m) = seed_entry {
            assert_eq!(m.name(), "seed");
            assert_eq!(m.info.endpoints, seed.info().endpoints);
        }
    }
    for p in &peers {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dropped_without_goodbye_is_failed_by_all_within_the_bound() {
    let a = start("a", None).await;
    let b = start("b", Some(a.local_url())).await;
    let c = start("c", Some(a.local_url())).await;
    let victim = start("victim", Some(a.local_url())).await;
    wait_mesh(&[&a, &b, &c, &victim]).await;
    let id = victim.id();
    let mut watchers = [a.membership(), b.membership(), c.membership()];
    let killed = Instant::now();
    drop(victim); // no shutdown: its sockets close without a Left
    let mut worst = Duration::ZERO;
    for w in &mut watchers {
        let at = wait_event(w, MemberEventKind::Failed, id).await;
        worst = worst.max(at - killed);
    }
    eprintln!(
        "failure detected by all 3 in {worst:?} (bound {:?})",
        failure_bound()
    );
    // Twice the bound: a margin for a loaded CI machine, still far below
    // anything a broken detector would produce.
    assert!(
        worst <= failure_bound() * 2,
        "{worst:?} > 2 x {:?}",
        failure_bound()
    );
    for p in [&a, &b, &c] {
        assert_eq!(
            p.members().iter().find(|m| m.id() == id).unwrap().state,
            MemberState::Failed
        );
        assert_eq!(p.stats().members, 2);
    }
    for p in [a, b, c] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_is_seen_as_left_not_failed() {
    let a = start("a", None).await;
    let b = start("b", Some(a.local_url())).await;
    let leaver = start("leaver", Some(a.local_url())).await;
    wait_mesh(&[&a, &b, &leaver]).await;
    let id = leaver.id();
    let (mut wa, mut wb) = (a.membership(), b.membership());
    within("shutdown", leaver.shutdown()).await;
    for w in [&mut wa, &mut wb] {
        wait_event(w, MemberEventKind::Left, id).await;
    }
    // And it stays Left: no Failed follows once the miss limit has passed.
    tokio::time::sleep(failure_bound()).await;
    for p in [&a, &b] {
        assert_eq!(
            p.members().iter().find(|m| m.id() == id).unwrap().state,
            MemberState::Left
        );
    }
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_at_the_same_address_rejoins() {
    let a = start("a", None).await;
    let b = start("b", Some(a.local_url())).await;
    let first = start("phoenix", Some(a.local_url())).await;
    wait_mesh(&[&a, &b, &first]).await;
    let (id, url, incarnation) = (
        first.id(),
        first.local_url().to_owned(),
        first.incarnation(),
    );
    let (mut wa, mut wb) = (a.membership(), b.membership());
    drop(first);
    wait_event(&mut wa, MemberEventKind::Failed, id).await;
    wait_event(&mut wb, MemberEventKind::Failed, id).await;

    let again = fast("phoenix", &url)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    assert_eq!(again.id(), id, "same name and address keep the id");
    assert!(again.incarnation() > incarnation);
    wait_event(&mut wa, MemberEventKind::Rejoined, id).await;
    wait_event(&mut wb, MemberEventKind::Rejoined, id).await;
    wait_mesh(&[&a, &b, &again]).await;
    for p in [&a, &b] {
        let m = p.members().into_iter().find(|m| m.id() == id).unwrap();
        assert_eq!(m.info.incarnation, again.incarnation());
        assert_eq!(m.state, MemberState::Alive);
    }
    // Events still flow to and from the new incarnation.
    let mut sub = a.subscribe::<u32>("phoenix.>").unwrap();
    again.publish("phoenix.up", &1u32).await.unwrap();
    let d = next("event from the rejoined peer", &mut sub).await;
    assert_eq!(d.incarnation(), again.incarnation());
    for p in [a, b, again] {
        within("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_down_is_retried() {
    // Reserve a free port, then release it for the seed to use later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seed_url = format!("tcp://127.0.0.1:{port}");
    let b = start("early", Some(&seed_url)).await;
    tokio::time::sleep(INTERVAL * 3).await; // b dials a seed that is not there yet
    assert_eq!(b.stats().members, 0);
    let a = fast("late-seed", &seed_url).start().await.unwrap();
    wait_mesh(&[&a, &b]).await;
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_answering_with_a_members_id_changes_nothing() {
    let a = start("a", None).await;
    let c = start("c", Some(a.local_url())).await;
    wait_mesh(&[&a, &c]).await;
    // The impostor answers a's surveys claiming to be c, with its own publisher.
    let real = c.info().clone();
    let impostor = FakeMember::start(a.local_url(), 999, move |mine| {
        let mut fake = (*real).clone();
        fake.endpoints.publish = mine.endpoints.publish.clone();
        let fake = std::sync::Arc::new(fake);
        Box::new(move |_| {
            Some(
                Response {
                    from: fake.clone(),
                    heartbeat: 1 << 40,
                    last_seq: 0,
                    acks: vec![],
                    durable: vec![],
                    groups: vec![],
                    views: vec![],
                    gossip: vec![],
                }
                .encode(),
            )
        })
    });
    wait_for("conflicts counted", || a.stats().heartbeat_conflicts >= 3).await;
    // c is untouched and stays alive through the failure bound.
    let mut watch = a.membership();
    tokio::time::sleep(failure_bound()).await;
    let m = a.members().into_iter().find(|m| m.id() == c.id()).unwrap();
    assert_eq!(m.info, *c.info());
    assert_eq!(m.state, MemberState::Alive);
    assert!(
        futures::FutureExt::now_or_never(watch.next()).is_none(),
        "no membership change"
    );
    drop(impostor);
    within("shutdown", a.shutdown()).await;
    within("shutdown", c.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heartbeats_are_counted_and_harmless() {
    let a = start("a", None).await;
    let c = start("c", Some(a.local_url())).await;
    wait_mesh(&[&a, &c]).await;
    let garbage = FakeMember::start(a.local_url(), 998, |_| {
        let mut n = 0u8;
        Box::new(move |_| {
            n = n.wrapping_add(1);
            Some(match n % 3 {
                0 => b"\x93\x01\x02\xc0 truncated".to_vec(),
                1 => vec![n; 64],
                _ => Vec::new(),
            })
        })
    });
    wait_for("malformed heartbeats counted", || {
        a.stats().heartbeat_malformed >= 6
    })
    .await;
    tokio::time::sleep(failure_bound()).await;
    assert_eq!(live_ids(&a), BTreeSet::from([c.id()]));
    assert_eq!(a.members().len(), 1, "garbage never became a member");
    drop(garbage);
    within("shutdown", a.shutdown()).await;
    within("shutdown", c.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_table_is_bounded() {
    let small = fast("small", "tcp://127.0.0.1:0")
        .max_members(2)
        .start()
        .await
        .unwrap();
    let others: Vec<FakeMember> = (0..4)
        .map(|i| FakeMember::honest(small.local_url(), 500 + i))
        .collect();
    wait_for("refusals counted", || small.stats().members_refused >= 2).await;
    assert_eq!(small.members().len(), 2);
    assert_eq!(small.stats().members, 2);
    drop(others);
    within("shutdown", small.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_different_heartbeat_intervals_do_not_suspect_each_other() {
    // Issue 16, case 7: a 200 ms peer marked a 500 ms peer Suspect/Recovered
    // 10-12 times in 5 s.
    let interval = |ms: u64| (Duration::from_millis(ms), Duration::from_millis(ms / 2));
    let (i, d) = interval(200);
    let fast_peer = Peer::builder()
        .name("fast")
        .heartbeat_interval(i)
        .heartbeat_deadline(d)
        .start()
        .await
        .unwrap();
    let (i, d) = interval(500);
    let slow_peer = Peer::builder()
        .name("slow")
        .heartbeat_interval(i)
        .heartbeat_deadline(d)
        .seed(fast_peer.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&fast_peer, &slow_peer]).await;
    let mut on_fast = fast_peer.membership();
    let mut on_slow = slow_peer.membership();
    let watch = Instant::now() + Duration::from_secs(5);
    let mut suspicions = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(
        watch.into(),
        futures::stream::select(&mut on_fast, &mut on_slow).next(),
    )
    .await
    {
        if e.kind != MemberEventKind::Joined {
            suspicions.push((e.kind, e.member.name().to_owned()));
        }
    }
    assert!(suspicions.is_empty(), "{suspicions:?}");
    assert_eq!(slow_peer.stats().members, 1);
    assert_eq!(fast_peer.stats().members, 1);
    // A graceful leave still reaches the other at once.
    let slow_id = slow_peer.id();
    drop(on_fast);
    let mut on_fast = fast_peer.membership();
    slow_peer.shutdown().await;
    wait_event(&mut on_fast, MemberEventKind::Left, slow_id).await;
    fast_peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_the_services_it_needs_by_name_and_tools_do_not_count() {
    // Issue 16, case 5: `wait_for_members` counted CLI tools as services.
    let bids = start("bids", None).await;
    let tool = fast("invoicing", "tcp://127.0.0.1:0")
        .tool(true)
        .seed(bids.local_url())
        .start()
        .await
        .unwrap();
    bids.wait_for_members(1, Duration::from_secs(10))
        .await
        .unwrap();
    let e = bids
        .wait_for_services(&["invoicing"], Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no live member of service invoicing"),
        "{e}"
    );
    let invoicing = start("invoicing", Some(bids.local_url())).await;
    within(
        "the service",
        bids.wait_for_services(&["invoicing"], Duration::from_secs(10)),
    )
    .await
    .unwrap();
    for p in [&bids, &tool, &invoicing] {
        p.shutdown().await;
    }
}
