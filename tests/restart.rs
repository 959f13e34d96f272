//! A service killed with SIGKILL and restarted at once at the same address
//! (issue 16, case 2), as separate processes: an origin (`work`) publishes
//! a steady stream; the consumer (`invoicing`) is killed mid-stream and
//! started again on the same port, so it keeps its id and gets a new
//! incarnation. A checker over what both lives processed and what the new
//! life reported lost demands:
//!
//! - no silent gap: every event is processed by a life or reported lost;
//! - no false loss: nothing the first life processed is reported lost;
//! - no unmarked duplicate: an event both lives processed is marked
//!   `redelivered` in the second.
//!
//! Three runs in the normal suite; `CHORUS_RESTART_RUNS=50` for the long
//! loop (its figures go to stdout with `--nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::built_example;

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(built_example("fault_peer"))
            .args(args)
            .env("RUST_LOG", "chorus=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// Lines until `until` holds for one (returned), within `deadline`.
    fn read_until(
        &self,
        deadline: Instant,
        seen: &mut Vec<String>,
        until: impl Fn(&str) -> bool,
    ) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    seen.push(l.clone());
                    if until(&l) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Every line already printed.
    fn drain(&self, seen: &mut Vec<String>) {
        while let Ok(l) = self.lines.try_recv() {
            seen.push(l);
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one life of the consumer processed and reported, for `origin`.
#[derive(Default, Debug)]
struct Life {
    got: BTreeMap<u64, bool>, // seq -> marked redelivered
    lost: BTreeSet<u64>,
}

fn parse(lines: &[String], origin: &str) -> Life {
    let mut life = Life::default();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["got", o, _, seq, rest @ ..] if *o == origin => {
                let seq: u64 = seq.parse().unwrap();
                let marked = rest.contains(&"redelivered");
                assert!(
                    life.got.insert(seq, marked).is_none(),
                    "seq {seq} processed twice by one life"
                );
            }
            ["lost", o, _, first, last] if *o == origin => {
                let (a, b): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
                life.lost.extend(a..=b);
            }
            _ => {}
        }
    }
    life
}

#[derive(Debug, Default)]
struct Tally {
    silent_gaps: usize,
    false_losses: usize,
    unmarked_duplicates: usize,
    marked_redeliveries: usize,
    lost: usize,
    first_life: usize,
}

/// One run: returns what the checker counted.
fn run(kill_after: u64) -> Tally {
    const COUNT: u64 = 300;
    let work_url = format!("tcp://127.0.0.1:{}", free_port());
    let inv_url = format!("tcp://127.0.0.1:{}", free_port());
    let deadline = Instant::now() + Duration::from_secs(60);
    let common = ["--interval-ms", "100", "--miss-limit", "5"];
    let count = COUNT.to_string();
    let mut work_args = vec!["--name", "work", "--listen", &work_url, "--count", &count];
    work_args.extend(["--rate", "100", "--members", "1"]);
    work_args.extend(common);
    let work = Proc::start(&work_args);
    let mut work_lines = Vec::new();
    let ready = work
        .read_until(deadline, &mut work_lines, |l| l.starts_with("ready "))
        .expect("work ready");
    let work_id = ready.split_whitespace().nth(1).unwrap().to_owned();

    let mut inv_args = vec![
        "--name",
        "invoicing",
        "--listen",
        &inv_url,
        "--seed",
        &work_url,
    ];
    inv_args.extend(common);
    let first = Proc::start(&inv_args);
    let mut first_lines = Vec::new();
    let reached = format!("got {work_id} ");
    first
        .read_until(deadline, &mut first_lines, |l| {
            l.starts_with(&reached)
                && l.split_whitespace().nth(3).and_then(|s| s.parse().ok()) >= Some(kill_after)
        })
        .expect("the first life got its share");
    first.signal("-KILL");
    let mut first = first;
    let _ = first.child.wait();
    first.drain(&mut first_lines);

    let second = Proc::start(&inv_args);
    let mut second_lines = Vec::new();
    work.read_until(deadline, &mut work_lines, |l| l.starts_with("published"))
        .expect("work published everything");
    // Until the second life has settled every seq (processed or lost).
    let settled = |lines: &[String]| {
        let a = parse(&first_lines, &work_id);
        let b = parse(lines, &work_id);
        (1..=COUNT).all(|s| a.got.contains_key(&s) || b.got.contains_key(&s) || b.lost.contains(&s))
    };
    while !settled(&second_lines) && Instant::now() < deadline {
        second.read_until(
            (Instant::now() + Duration::from_millis(200)).min(deadline),
            &mut second_lines,
            |_| false,
        );
    }
    second.signal("-TERM");
    work.signal("-TERM");

    let a = parse(&first_lines, &work_id);
    let b = parse(&second_lines, &work_id);
    let mut t = Tally {
        first_life: a.got.len(),
        lost: b.lost.len(),
        ..Tally::default()
    };
    for seq in 1..=COUNT {
        let (in_a, in_b, lost) = (
            a.got.contains_key(&seq),
            b.got.get(&seq),
            b.lost.contains(&seq),
        );
        if !in_a && in_b.is_none() && !lost {
            t.silent_gaps += 1;
            if t.silent_gaps == 1 {
                eprintln!(
                    "first silent gap at {seq}; second life: {:?}",
                    &second_lines[..second_lines.len().min(12)]
                );
                eprintln!("work: {:?}", &work_lines[..work_lines.len().min(12)]);
            }
        }
        if in_a && lost {
            t.false_losses += 1;
        }
        match (in_a, in_b) {
            (true, Some(false)) => {
                t.unmarked_duplicates += 1;
                if t.unmarked_duplicates == 1 {
                    eprintln!(
                        "first unmarked duplicate {seq}; first life: {:?}",
                        &first_lines[first_lines.len().saturating_sub(6)..]
                    );
                    eprintln!(
                        "second life: {:?}",
                        &second_lines[..second_lines.len().min(16)]
                    );
                }
            }
            (_, Some(true)) => t.marked_redeliveries += 1,
            _ => {}
        }
    }
    t
}

#[test]
fn a_service_killed_and_restarted_at_the_same_address_misses_nothing_silently() {
    let runs: u64 = std::env::var("CHORUS_RESTART_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut totals = Tally::default();
    for i in 0..runs {
        let t = run(20 + (i * 37) % 200);
        println!("run {i}: {t:?}");
        assert_eq!(
            (t.silent_gaps, t.false_losses, t.unmarked_duplicates),
            (0, 0, 0),
            "run {i}: {t:?}"
        );
        totals.marked_redeliveries += t.marked_redeliveries;
        totals.lost += t.lost;
        totals.first_life += t.first_life;
    }
    println!("{runs} runs: 0 silent gaps, 0 false losses, 0 unmarked duplicates; {} marked redeliveries, {} reported lost in all", totals.marked_redeliveries, totals.lost);
}

/// Every "got" of `origin`: seq → value, and the seqs marked redelivered.
fn values(lines: &[String], origin: &str) -> (BTreeMap<u64, u64>, usize) {
    let (mut got, mut marked) = (BTreeMap::new(), 0);
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["got", o, _, seq, v, rest @ ..] = f.as_slice() {
            if *o == origin {
                let v = v.strip_prefix("v=").unwrap().parse().unwrap();
                assert!(
                    got.insert(seq.parse::<u64>().unwrap(), v).is_none(),
                    "seq {seq} processed twice"
                );
                marked += usize::from(rest.contains(&"redelivered"));
            }
        }
    }
    (got, marked)
}

/// One run of the durable publisher's restart: `work` (with a data dir)
/// is killed with SIGKILL once `invoicing` processed `kill_after` of its
/// events, and started again with the same data dir on a new port. Returns
/// the length of the stream `invoicing` processed.
fn run_durable_publisher(kill_after: u64) -> u64 {
    const SECOND_LIFE: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("work");
    let data_dir = data_dir.to_str().unwrap();
    let inv_url = format!("tcp://127.0.0.1:{}", free_port());
    let deadline = Instant::now() + Duration::from_secs(60);
    let common = ["--interval-ms", "100", "--miss-limit", "5"];
    let mut inv_args = vec!["--name", "invoicing", "--listen", &inv_url];
    inv_args.extend(common);
    let inv = Proc::start(&inv_args);
    let mut inv_lines = Vec::new();
    inv.read_until(deadline, &mut inv_lines, |l| l.starts_with("ready "))
        .expect("invoicing ready");

    let work_url = format!("tcp://127.0.0.1:{}", free_port());
    let mut work_args = vec!["--name", "work", "--listen", &work_url, "--seed", &inv_url];
    work_args.extend(["--count", "100000", "--rate", "400", "--members", "1"]);
    work_args.extend(["--data-dir", data_dir]);
    work_args.extend(common);
    let first = Proc::start(&work_args);
    let mut work_lines = Vec::new();
    let ready = first
        .read_until(deadline, &mut work_lines, |l| l.starts_with("ready "))
        .expect("work ready");
    let work_id = ready.split_whitespace().nth(1).unwrap().to_owned();
    let reached = format!("got {work_id} ");
    inv.read_until(deadline, &mut inv_lines, |l| {
        l.starts_with(&reached)
            && l.split_whitespace().nth(3).and_then(|s| s.parse().ok()) >= Some(kill_after)
    })
    .expect("invoicing got the first life's share");
    first.signal("-KILL");
    drop(first);

    let second_url = format!("tcp://127.0.0.1:{}", free_port());
    let count = SECOND_LIFE.to_string();
    let mut args = vec![
        "--name",
        "work",
        "--listen",
        &second_url,
        "--seed",
        &inv_url,
    ];
    // Values the first life never published, so its end is found by value.
    args.extend(["--count", &count, "--rate", "400", "--members", "1"]);
    args.extend(["--first-value", "1000000", "--data-dir", data_dir]);
    args.extend(common);
    let second = Proc::start(&args);
    let ready = second
        .read_until(deadline, &mut work_lines, |l| l.starts_with("ready "))
        .expect("work ready again");
    assert_eq!(
        ready.split_whitespace().nth(1),
        Some(work_id.as_str()),
        "same id"
    );
    second
        .read_until(deadline, &mut work_lines, |l| l.starts_with("published"))
        .expect("the second life published");
    // Until invoicing processed the second life's last event and all before.
    let last = 1_000_000 + SECOND_LIFE - 1;
    let done = |lines: &[String]| {
        let (got, _) = values(lines, &work_id);
        got.iter()
            .find(|(_, v)| **v == last)
            .is_some_and(|(end, _)| got.len() as u64 == *end)
    };
    while !done(&inv_lines) && Instant::now() < deadline {
        inv.read_until(
            (Instant::now() + Duration::from_millis(200)).min(deadline),
            &mut inv_lines,
            |_| false,
        );
    }
    second.signal("-TERM");
    inv.signal("-TERM");
    let (got, marked) = values(&inv_lines, &work_id);
    let lost: Vec<&String> = inv_lines
        .iter()
        .filter(|l| l.starts_with("lost "))
        .collect();
    assert!(lost.is_empty(), "losses reported: {lost:?}");
    let end = got.len() as u64;
    assert!(
        done(&inv_lines),
        "invoicing has {end} events, not the whole stream; last: {:?}",
        got.iter().next_back()
    );
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=end).collect::<Vec<_>>()
    );
    assert_eq!(
        marked, 0,
        "invoicing was up all along: nothing is a redelivery"
    );
    // The second life's events follow the first life's on the same stream.
    let tail: Vec<u64> = got
        .values()
        .rev()
        .take(SECOND_LIFE as usize)
        .copied()
        .collect();
    assert_eq!(
        tail,
        (1_000_000..1_000_000 + SECOND_LIFE)
            .rev()
            .collect::<Vec<_>>()
    );
    end
}

#[test]
fn a_durable_publisher_killed_and_restarted_continues_its_stream() {
    let runs: u64 = std::env::var("CHORUS_RESTART_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for i in 0..runs {
        let end = run_durable_publisher(30 + (i * 53) % 300);
        println!("durable run {i}: a stream of {end} events, each processed once, none lost");
    }
}

/// What one life of a durable consumer processed of `origin`: seq →
/// (value, marked redelivered).
fn life(lines: &[String], origin: &str) -> BTreeMap<u64, (u64, bool)> {
    let mut got = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["got", o, _, seq, v, rest @ ..] = f.as_slice() {
            if *o == origin {
                let v = v.strip_prefix("v=").unwrap().parse().unwrap();
                let marked = rest.contains(&"redelivered");
                assert!(
                    got.insert(seq.parse::<u64>().unwrap(), (v, marked))
                        .is_none(),
                    "seq {seq} processed twice by one life"
                );
            }
        }
    }
    got
}

/// How a durable consumer is stopped mid-stream.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: a graceful stop, with a final commit.
    Term,
    /// SIGKILL of the consumer.
    Kill,
    /// SIGKILL of the consumer and of the (durable) publisher at once.
    KillBoth,
}

/// What the checker counted over both lives of the consumer.
#[derive(Default)]
struct DurableTally {
    stream: u64,
    first_life: usize,
    twice_flagged: usize,
}

/// One run: `work` (a data dir) publishes; `invoicing` (a data dir, a
/// durable handler) is stopped with `stop` once it processed `kill_after`,
/// and started again on another port while `work` goes on (or, with
/// `KillBoth`, both are started again). Demands: every event of the stream
/// processed, none reported lost, an event processed by both lives only if
/// the second flagged it redelivered.
fn run_durable_consumer(stop: Stop, kill_after: u64) -> DurableTally {
    const FIRST: u64 = 900;
    const SECOND: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let work_dir = dir.path().join("work");
    let inv_dir = dir.path().join("inv");
    let (work_dir, inv_dir) = (work_dir.to_str().unwrap(), inv_dir.to_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(90);
    let common = ["--interval-ms", "100", "--miss-limit", "5"];
    let url = || format!("tcp://127.0.0.1:{}", free_port());
    let (w1, w2, i1, i2) = (url(), url(), url(), url());
    let kill_both = matches!(stop, Stop::KillBoth);
    let work_count = if kill_both { 100_000 } else { FIRST };
    let work_count = work_count.to_string();
    let start_work = |listen: &str, count: &str, first_value: &str| {
        let mut a = vec!["--name", "work", "--listen", listen, "--count", count];
        a.extend(["--first-value", first_value]);
        a.extend(["--rate", "300", "--members", "1", "--data-dir", work_dir]);
        a.extend(common);
        Proc::start(&a)
    };
    let start_inv = |listen: &str, seed: &str| {
        let mut a = vec!["--name", "invoicing", "--listen", listen, "--seed", seed];
        a.extend(["--data-dir", inv_dir, "--durable", "invoicing"]);
        a.extend(common);
        Proc::start(&a)
    };
    let work = start_work(&w1, &work_count, "0");
    let mut work_lines = Vec::new();
    let ready = work
        .read_until(deadline, &mut work_lines, |l| l.starts_with("ready "))
        .expect("work ready");
    let work_id = ready.split_whitespace().nth(1).unwrap().to_owned();
    let first = start_inv(&i1, &w1);
    let mut first_lines = Vec::new();
    let reached = format!("got {work_id} ");
    first
        .read_until(deadline, &mut first_lines, |l| {
            l.starts_with(&reached)
                && l.split_whitespace().nth(3).and_then(|s| s.parse().ok()) >= Some(kill_after)
        })
        .expect("the first life got its share");
    let mut first = first;
    match stop {
        Stop::Term => first.signal("-TERM"),
        Stop::Kill | Stop::KillBoth => first.signal("-KILL"),
    }
    let _ = first.child.wait();
    first.drain(&mut first_lines);
    let mut work = Some(work);
    if kill_both {
        let w = work.take().unwrap();
        w.signal("-KILL");
        drop(w);
    }
    // Down for a while: the stream goes on without it.
    std::thread::sleep(Duration::from_millis(500));
    let second_count = SECOND.to_string();
    let (work, seed) = match work {
        Some(w) => (w, w1.clone()),
        None => (start_work(&w2, &second_count, "1000000"), w2.clone()),
    };
    let second = start_inv(&i2, &seed);
    let mut second_lines = Vec::new();
    // The stream ends with the last value of the last life of `work`.
    let last_value = if kill_both {
        1_000_000 + SECOND - 1
    } else {
        FIRST - 1
    };
    let covered = |second_lines: &[String]| {
        let (a, b) = (life(&first_lines, &work_id), life(second_lines, &work_id));
        let end = b
            .iter()
            .find(|(_, (v, _))| *v == last_value)
            .map(|(s, _)| *s);
        end.filter(|end| (1..=*end).all(|s| a.contains_key(&s) || b.contains_key(&s)))
    };
    while covered(&second_lines).is_none() && Instant::now() < deadline {
        second.read_until(
            (Instant::now() + Duration::from_millis(200)).min(deadline),
            &mut second_lines,
            |_| false,
        );
    }
    second.signal("-TERM");
    work.signal("-TERM");
    let lost: Vec<&String> = first_lines
        .iter()
        .chain(&second_lines)
        .filter(|l| l.starts_with("lost "))
        .collect();
    assert!(lost.is_empty(), "{stop:?}: losses reported: {lost:?}");
    let (a, b) = (life(&first_lines, &work_id), life(&second_lines, &work_id));
    let end = covered(&second_lines).unwrap_or_else(|| {
        panic!(
            "{stop:?}: not every event was processed; first life {} events (last {:?}), second {} (first {:?}, last {:?})",
            a.len(),
            a.iter().next_back(),
            b.len(),
            b.iter().next(),
            b.iter().next_back()
        )
    });
    let mut t = DurableTally {
        stream: end,
        first_life: a.len(),
        ..Default::default()
    };
    for (seq, (_, marked)) in &b {
        if a.contains_key(seq) {
            assert!(
                marked,
                "{stop:?}: seq {seq} processed by both lives, not flagged redelivered"
            );
            t.twice_flagged += 1;
        }
    }
    if matches!(stop, Stop::Term) {
        assert_eq!(
            t.twice_flagged, 0,
            "a graceful stop commits everything it handled"
        );
    }
    assert!(
        t.twice_flagged as u64 <= chorus::DURABLE_TAIL,
        "{stop:?}: {} handled twice, more than the tail bound",
        t.twice_flagged
    );
    t
}

#[test]
fn a_durable_consumer_stopped_or_killed_mid_stream_processes_everything() {
    let runs: u64 = std::env::var("CHORUS_RESTART_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..runs {
        for stop in [Stop::Term, Stop::Kill, Stop::KillBoth] {
            let t = run_durable_consumer(stop, 100 + (i * 61) % 400);
            println!(
                "{stop:?} run {i}: a stream of {} events, {} processed by the first life, {} by both (flagged redelivered)",
                t.stream, t.first_life, t.twice_flagged
            );
        }
    }
}
