//! Crash safety of the data dir's log: a child process appends batches as
//! fast as it can and reports each batch the moment `append` returned; it
//! is killed with SIGKILL at a moment that varies per run. The reopened log
//! must hold every batch that was reported, each event intact, and nothing
//! torn or out of order (the log is a prefix of what was appended).
//!
//! Three runs in the normal suite (alternating the fsync policies);
//! `CHORUS_CRASH_RUNS=100` for the long loop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chorus::store::data_dir::Identity;
use chorus::store::{DataDir, Fsync, StreamLog};

const CHILD_DIR: &str = "CHORUS_STORE_CHILD_DIR";
const CHILD_FSYNC: &str = "CHORUS_STORE_CHILD_FSYNC";

/// The event with sequence number `seq`: its own bytes, of a length that
/// varies with it.
fn event(seq: u64) -> Vec<u8> {
    let mut e = format!("event {seq:010} ").into_bytes();
    e.resize(17 + (seq % 300) as usize, (seq % 251) as u8);
    e
}

fn open(path: &std::path::Path, fsync: Fsync) -> (DataDir, StreamLog) {
    let dir = DataDir::open(path, fsync, || Identity { id: 1, stream: 1 }).unwrap();
    let log = StreamLog::open(&dir).unwrap();
    (dir, log)
}

#[test]
#[ignore = "the child process of the crash test"]
fn child_appends_until_killed() {
    let path = std::env::var(CHILD_DIR).expect("run by the crash test");
    let fsync = match std::env::var(CHILD_FSYNC).as_deref() {
        Ok("every-batch") => Fsync::EveryBatch,
        _ => Fsync::OsBuffered,
    };
    let (dir, mut log) = open(std::path::Path::new(&path), fsync);
    let mut out = std::io::stdout().lock();
    for batch in 0u64.. {
        let first = log.last_seq() + 1;
        let n = 1 + batch % 97;
        let events: Vec<Vec<u8>> = (first..first + n).map(event).collect();
        log.append(&dir, events.iter().map(|e| e.as_slice()), batch)
            .unwrap();
        writeln!(out, "acked {}", log.last_seq()).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_log_killed_during_heavy_appends_keeps_every_acknowledged_batch() {
    let runs: u64 = std::env::var("CHORUS_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let fsync = if run % 2 == 0 {
            "os-buffered"
        } else {
            "every-batch"
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_appends_until_killed",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_FSYNC, fsync)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Killed once it has acknowledged a number of events that varies per run.
        let kill_at = 2_000 + (run * 7_919) % 20_000;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut acked = 0u64;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
            if acked >= kill_at || Instant::now() > deadline {
                break;
            }
        }
        child.kill().unwrap();
        // What it printed before it died was acknowledged too.
        for line in lines {
            if let Some(n) = line.unwrap().strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
        }
        child.wait().unwrap();
        assert!(
            acked >= kill_at,
            "run {run}: the child acknowledged only {acked}"
        );

        let (dir, log) = open(dir.path(), Fsync::OsBuffered);
        assert!(
            log.last_seq() >= acked,
            "run {run} ({fsync}): acknowledged through {acked}, the log ends at {}",
            log.last_seq()
        );
        let mut next = 1;
        while next <= log.last_seq() {
            let read = log.read(&dir, next, log.last_seq(), 1 << 20, 4096).unwrap();
            assert!(!read.is_empty(), "run {run}: nothing at {next}");
            for (seq, bytes) in read {
                assert_eq!(seq, next, "run {run}: out of order");
                assert_eq!(bytes, event(seq), "run {run}: event {seq} damaged");
                next += 1;
            }
        }
        println!(
            "run {run} ({fsync}): killed after {acked} acknowledged, the log holds {} intact",
            log.last_seq()
        );
    }
}
