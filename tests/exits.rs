//! Processes that join, publish and exit must exit cleanly every time
//! (issue 16, case 6: one of ~70 exits died with SIGABRT inside
//! `shutdown()`). Separate `chorus pub` processes, several at once, publish
//! into a hub that a `chorus sub` also reads from (load on both ends), and
//! every one must exit 0 — not by a signal; a failed exit's stderr is shown.
//!
//! 12 exits in the normal suite; `CHORUS_EXIT_RUNS=1000` for the long loop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chorus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chorus"));
    c.env("RUST_LOG", "chorus=error");
    c
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn processes_that_publish_and_exit_always_exit_cleanly() {
    let runs: usize = std::env::var("CHORUS_EXIT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    const AT_ONCE: usize = 3;
    let mut hub = chorus()
        .args(["node", "--name", "hub", "--listen", "tcp://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(hub.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains(" ready "))
        .expect("hub ready");
    let url = ready.rsplit("url=").next().unwrap().to_owned();
    let _hub = Guard(hub);
    std::thread::spawn(move || lines.for_each(drop)); // keep the pipe drained
    let _sub = Guard(
        chorus()
            .args(["sub", "load.>", "--seed", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let payload: String = (0..200).map(|i| format!("event {i}\n")).collect();
    let started = Instant::now();
    let (mut done, mut failures) = (0, Vec::new());
    while done < runs {
        let batch: Vec<Child> = (0..AT_ONCE.min(runs - done))
            .map(|_| {
                let mut c = chorus()
                    .args(["pub", "load.item", "--seed", &url, "--timeout", "10", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(payload.as_bytes())
                    .unwrap();
                c
            })
            .collect();
        for child in batch {
            let out = child.wait_with_output().unwrap();
            done += 1;
            if !out.status.success() {
                failures.push(format!(
                    "exit {done}: status {:?} signal {:?}: {}",
                    out.status.code(),
                    out.status.signal(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60 + 2 * runs as u64),
            "too slow"
        );
    }
    println!(
        "{runs} publish-and-exit processes in {:.0} s: {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
