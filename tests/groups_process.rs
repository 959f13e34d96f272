//! Consumer groups across processes: three `chorus sub --group` members,
//! two origins in this process. Each event is handled once by the group,
//! fairly spread, per key in order; a member stopped with SIGTERM hands
//! over without doubles; one killed with SIGKILL is failed over (its
//! unprocessed share handled by the others, the doubles flagged); a
//! durable group whose members are all killed at once gets what was
//! published meanwhile when new members start.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chorus::{Peer, PublishOptions};
use common::{fast, unique_url, wait_for, within};
use parking_lot::Mutex;

/// (member, key, index, redelivered) per handled event.
type Log = Arc<Mutex<Vec<(usize, String, u64, bool)>>>;

/// A `chorus sub --group` process; killed on drop.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn member(i: usize, seed: &str, log: &Log) -> Member {
    spawn_member(i, seed, &[], log)
}

fn spawn_member(i: usize, seed: &str, extra: &[&str], log: &Log) -> Member {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["sub", "bids.>", "--group", "work", "--json", "--seed", seed])
        .args(extra)
        .env("RUST_LOG", "chorus=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let log = log.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let key = v["payload"][0].as_str().unwrap().to_owned();
            let n = v["payload"][1].as_u64().unwrap();
            let redelivered = v["redelivered"].as_bool().unwrap();
            log.lock().push((i, key, n, redelivered));
        }
    });
    Member(child)
}

fn signal(m: &Member, sig: &str) {
    let pid = m.0.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

async fn publish(origin: &Peer, o: u64, from: u64, to: u64) {
    for n in from..to {
        let key = format!("bid-{}", n % 300);
        origin
            .publish_with(
                "bids.accepted",
                &(key.clone(), o * 100_000 + n),
                PublishOptions::new().key(key),
            )
            .await
            .unwrap();
    }
}

fn handled(log: &Log) -> HashMap<u64, usize> {
    let mut by = HashMap::new();
    for e in log.lock().iter() {
        *by.entry(e.2).or_default() += 1;
    }
    by
}

/// How many handlings were beyond the first, asserting that each of those
/// was flagged redelivered.
fn flagged_doubles(log: &Log) -> usize {
    let log_now = log.lock().clone();
    let mut doubles = 0;
    for (n, c) in handled(log) {
        if c > 1 {
            let flagged = log_now.iter().filter(|e| e.2 == n && e.3).count();
            assert!(
                flagged >= c - 1,
                "event {n} handled {c} times, {flagged} flagged"
            );
            doubles += c - 1;
        }
    }
    doubles
}

async fn origins() -> (Peer, Peer) {
    let a = fast("origin-a", &unique_url("tcp", "a"))
        .start()
        .await
        .unwrap();
    let b = fast("origin-b", &unique_url("tcp", "b"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    (a, b)
}

async fn both(a: &Peer, b: &Peer, from: u64, to: u64) {
    tokio::join!(publish(a, 0, from, to), publish(b, 1, from, to));
}

async fn members_counted(a: &Peer, b: &Peer, n: u64) {
    wait_for("both origins count the group's members", || {
        a.stats().group_members == n && b.stats().group_members == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_member_processes_share_3000_events_from_two_origins() {
    let (a, b) = origins().await;
    let log: Log = Default::default();
    let _members: Vec<Member> = (0..3).map(|i| member(i, a.local_url(), &log)).collect();
    members_counted(&a, &b, 3).await;
    both(&a, &b, 0, 1500).await;
    wait_for("3000 events handled", || handled(&log).len() == 3000).await;
    within("acks", async {
        a.flush(Duration::from_secs(10)).await.unwrap();
        b.flush(Duration::from_secs(10)).await.unwrap();
    })
    .await;
    let log = log.lock().clone();
    assert_eq!(log.len(), 3000, "an event handled twice");
    let mut share = [0usize; 3];
    let mut owner: HashMap<(u64, String), usize> = HashMap::new();
    let mut last: HashMap<(u64, String), u64> = HashMap::new();
    for (m, key, n, redelivered) in log.iter() {
        assert!(!redelivered);
        share[*m] += 1;
        let k = (n / 100_000, key.clone());
        assert_eq!(*owner.entry(k.clone()).or_insert(*m), *m, "{k:?} moved");
        if let Some(prev) = last.insert(k.clone(), *n) {
            assert!(prev < *n, "{k:?}: {n} after {prev}");
        }
    }
    assert!(share.iter().all(|&c| c >= 500), "unfair: {share:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_hands_over_cleanly_and_a_sigkill_is_failed_over() {
    let (a, b) = origins().await;
    let log: Log = Default::default();
    let mut members: Vec<Member> = (0..3).map(|i| member(i, a.local_url(), &log)).collect();
    members_counted(&a, &b, 3).await;
    // SIGTERM of member 0 while both origins publish.
    let publishing = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move { both(&a, &b, 0, 1500).await })
    };
    wait_for("some events handled", || handled(&log).len() > 300).await;
    signal(&members[0], "-TERM");
    publishing.await.unwrap();
    members_counted(&a, &b, 2).await;
    wait_for("3000 events handled", || handled(&log).len() == 3000).await;
    assert!(
        handled(&log).values().all(|&c| c == 1),
        "a graceful leave made an event handled twice"
    );
    // SIGKILL of member 1 while both origins publish.
    let publishing = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move { both(&a, &b, 1500, 3000).await })
    };
    wait_for("more events handled", || handled(&log).len() > 3600).await;
    signal(&members[1], "-KILL");
    publishing.await.unwrap();
    wait_for("6000 events handled after the failover", || {
        handled(&log).len() == 6000
    })
    .await;
    members_counted(&a, &b, 1).await;
    let doubles = flagged_doubles(&log);
    let s = (a.stats(), b.stats());
    assert!(s.0.group_failed_over + s.1.group_failed_over >= doubles as u64);
    assert!(
        doubles <= 3000,
        "{doubles} doubles: more than was in flight"
    );
    members.clear();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_group_killed_whole_gets_what_was_published_meanwhile() {
    let (a, b) = origins().await;
    let log: Log = Default::default();
    let durable = |i| spawn_member(i, a.local_url(), &["--durable-group"], &log);
    let mut members: Vec<Member> = (0..3).map(durable).collect();
    members_counted(&a, &b, 3).await;
    let publishing = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move { both(&a, &b, 0, 1500).await })
    };
    wait_for("some events handled", || handled(&log).len() > 600).await;
    for m in &members {
        signal(m, "-KILL");
    }
    publishing.await.unwrap();
    members_counted(&a, &b, 0).await;
    both(&a, &b, 1500, 2000).await;
    members.clear();
    let mut members: Vec<Member> = (3..5).map(durable).collect();
    members_counted(&a, &b, 2).await;
    wait_for("4000 events handled", || handled(&log).len() == 4000).await;
    let log_now = log.lock().clone();
    let doubles = flagged_doubles(&log);
    // What was published while the group was empty went to the new
    // members, each once and unflagged.
    for (m, _, n, redelivered) in &log_now {
        if n % 100_000 >= 1500 {
            assert!(
                *m >= 3 && !redelivered,
                "event {n}: member {m}, {redelivered}"
            );
        }
    }
    let s = (a.stats(), b.stats());
    assert!(s.0.group_kept + s.1.group_kept >= 1000);
    assert!(doubles <= 3000, "{doubles} doubles");
    members.clear();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chorus_req_prints_the_reply_or_says_there_is_no_responder() {
    let server = fast("server", &unique_url("tcp", "s"))
        .start()
        .await
        .unwrap();
    server
        .serve_bytes(
            "quotes.get",
            "quotes",
            |d: chorus::Delivery<bytes::Bytes>| async move {
                let what = String::from_utf8_lossy(&d.value).to_string();
                Ok::<_, String>(bytes::Bytes::from(format!("{what} costs 7")))
            },
        )
        .unwrap();
    let url = server.local_url().to_string();
    let run = |topic: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_chorus"))
                .args([
                    "req",
                    topic,
                    "apples",
                    "--seed",
                    &url,
                    "--reply-timeout",
                    "3",
                ])
                .env("RUST_LOG", "chorus=error")
                .output()
                .unwrap()
        })
    };
    let out = within("chorus req", run("quotes.get")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "apples costs 7"
    );
    let out = within("chorus req", run("weather.get")).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no responder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}
