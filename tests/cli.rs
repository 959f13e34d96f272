//! The `chorus` command line driven as a user would: spawned processes on
//! loopback, output read line by line with deadlines.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn chorus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chorus"));
    c.env("RUST_LOG", "chorus=warn");
    c
}

/// A long-running child whose stdout lines arrive on a channel; killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first line satisfying `pred`, within the deadline.
    fn line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line for {what} within {DEADLINE:?}"),
            }
        }
    }

    /// Waits for the process to exit by itself, within the deadline.
    fn exits(&mut self, what: &str) -> std::process::ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "{what} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `chorus node` on a free loopback port, and its URL.
fn node(name: &str, seed: Option<&str>) -> (Running, String) {
    node_with(name, seed, &[])
}

/// [`node`] with more arguments.
fn node_with(name: &str, seed: Option<&str>, extra: &[&str]) -> (Running, String) {
    let mut cmd = chorus();
    cmd.args(["node", "--name", name, "--listen", "tcp://127.0.0.1:0"]);
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    cmd.args(extra);
    let n = Running::spawn(&mut cmd);
    let ready = n.line("node ready", |l| l.contains(" ready "));
    let url = ready.rsplit("url=").next().unwrap().to_owned();
    (n, url)
}

/// Runs a command to completion within the deadline.
fn finish(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let end = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{cmd:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn node_sub_and_pub_deliver_lines_end_to_end() {
    let (node, url) = node("hub", None);
    let mut sub =
        Running::spawn(chorus().args(["sub", "orders.>", "--seed", &url, "--count", "4"]));
    node.line("sub joined", |l| l.contains("event Joined chorus-sub"));

    let out = finish(
        chorus().args(["pub", "orders.created", "--seed", &url, "hello world"]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = sub.line("text delivery", |l| l.starts_with("orders.created"));
    assert!(
        line.contains("chorus-pub(") && line.contains("#1") && line.ends_with("hello world"),
        "{line}"
    );

    // One message per stdin line, JSON payloads.
    let out = finish(
        chorus().args([
            "pub",
            "orders.paid",
            "--json",
            "--id",
            "pay",
            "--seed",
            &url,
            "-",
        ]),
        "{\"order\": 1}\n{\"order\": 2}\n[3]\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in ["{\"order\":1}", "{\"order\":2}", "[3]"] {
        let l = sub.line(want, |l| l.starts_with("orders.paid"));
        assert!(l.ends_with(want), "{l}");
    }
    assert!(sub.exits("sub --count 4").success());
}

#[test]
fn pub_exits_only_once_every_member_has_what_it_published() {
    // Issue 16, case 1: `pub` used to exit 0 before its messages were even
    // sent, and a subscriber then got nothing in ~1 of 9 runs.
    let (node, url) = node("hub", None);
    for run in 0..5 {
        let mut sub =
            Running::spawn(chorus().args(["sub", "work.>", "--seed", &url, "--count", "5"]));
        // A sub that gets an earlier one's port is that peer back (its id
        // is its name and address): `Rejoined`.
        node.line("sub joined", |l| {
            l.contains("event Joined chorus-sub") || l.contains("event Rejoined chorus-sub")
        });
        let out = finish(
            chorus().args(["pub", "work.item", "--seed", &url, "-"]),
            "1\n2\n3\n4\n5\n",
        );
        assert!(out.status.success(), "run {run}: {}", text(&out.stderr));
        for want in ["1", "2", "3", "4", "5"] {
            let l = sub.line(want, |l| l.starts_with("work.item"));
            assert!(l.ends_with(want), "run {run}: {l}");
        }
        assert!(sub.exits("sub --count 5").success(), "run {run}");
        node.line("sub left", |l| l.contains("event Left chorus-sub"));
    }
}

#[test]
fn the_command_line_joins_a_keyed_bus_with_a_key_file_or_the_environment() {
    let dir = std::env::temp_dir().join(format!("chorus-cli-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("bus.key");
    std::fs::write(&key_file, "a bus secret of enough length\n").unwrap();
    let key_path = key_file.to_str().unwrap();
    let (node, url) = node_with("hub", None, &["--bus-key-file", key_path]);
    // The environment holds the same secret (the file's trailing newline is
    // not part of it).
    let mut sub = Running::spawn(
        chorus()
            .env("CHORUS_BUS_KEY", "a bus secret of enough length")
            .args(["sub", "k.>", "--seed", &url, "--count", "1"]),
    );
    node.line("sub joined", |l| l.contains("event Joined chorus-sub"));
    let out = finish(
        chorus().args([
            "pub",
            "k.x",
            "--bus-key-file",
            key_path,
            "--seed",
            &url,
            "keyed",
        ]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(sub
        .line("delivery", |l| l.starts_with("k.x"))
        .ends_with("keyed"));
    assert!(sub.exits("sub --count 1").success());
    // Without the key nobody answers.
    let out = finish(
        chorus().args(["members", "--seed", &url, "--timeout", "1"]),
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no member answered"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sub_json_lines_carry_the_metadata() {
    let (node, url) = node("hub", None);
    let sub =
        Running::spawn(chorus().args(["sub", "a.*", "--json", "--seed", &url, "--count", "1"]));
    node.line("sub joined", |l| l.contains("event Joined chorus-sub"));
    let out = finish(
        chorus().args([
            "pub",
            "a.b",
            "--id",
            "k1",
            "--correlation-id",
            "flow-9",
            "--seed",
            &url,
            "x",
        ]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = sub.line("json delivery", |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["topic"], "a.b");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["id"], "k1");
    assert_eq!(v["correlation_id"], "flow-9");
    assert_eq!(v["payload"], "x");
    assert_eq!(v["encoding"], "text");
    assert_eq!(v["origin_name"], "chorus-pub");
}

#[test]
fn members_lists_the_running_nodes() {
    let (node_a, url) = node("alpha", None);
    let (_b, _) = node("beta", Some(&url));
    node_a.line("beta joined", |l| l.contains("event Joined beta"));
    let out = finish(chorus().args(["members", "--seed", &url]), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("NAME") && rows[0].contains("LAST SEEN"),
        "{table}"
    );
    for name in ["alpha", "beta"] {
        let row = rows
            .iter()
            .find(|r| r.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {table}"));
        assert!(
            row.contains("Alive") && row.contains("tcp://127.0.0.1:"),
            "{row}"
        );
    }
    assert_eq!(rows.len(), 3, "{table}");
}

#[test]
fn members_shows_members_that_failed_or_left_recently() {
    // Issue 16, case 9: a fresh `members` only ever listed live members.
    let (a, url) = node("alpha", None);
    let (beta, _) = node("beta", Some(&url));
    let (mut gamma, _) = node("gamma", Some(&url));
    // Either may join first: wait for the second of the two.
    let mut joined = std::collections::HashSet::new();
    while joined.len() < 2 {
        let l = a.line("beta and gamma joined", |l| {
            l.contains("event Joined beta") || l.contains("event Joined gamma")
        });
        joined.insert(l.contains("beta"));
    }
    drop(beta); // SIGKILL
    let pid = gamma.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(gamma.exits("gamma after SIGTERM").success());
    a.line("beta failed", |l| l.contains("event Failed beta"));
    let out = finish(chorus().args(["members", "--seed", &url]), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|r| r.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {table}"))
            .to_owned()
    };
    assert!(row("alpha").contains("Alive"), "{table}");
    assert!(row("beta").contains("Failed"), "{table}");
    assert!(row("gamma").contains("Left"), "{table}");
}

#[test]
fn a_node_leaves_gracefully_on_sigterm() {
    let (a, url) = node("alpha", None);
    let (mut b, _) = node("beta", Some(&url));
    a.line("beta joined", |l| l.contains("event Joined beta"));
    let pid = b.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(b.exits("node after SIGTERM").success());
    a.line("beta left", |l| l.contains("event Left beta"));
}

#[test]
fn bad_arguments_exit_non_zero_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["pub", "bad..topic", "--seed", "tcp://127.0.0.1:1", "x"],
            "invalid topic",
        ),
        (
            &["sub", "a.>.b", "--seed", "tcp://127.0.0.1:1"],
            "invalid topic pattern",
        ),
        (&["pub", "t", "--seed", "nope://x", "x"], "invalid URL"),
        (
            &[
                "pub",
                "t",
                "--json",
                "--seed",
                "tcp://127.0.0.1:1",
                "--timeout",
                "0.5",
                "{x",
            ],
            "is not JSON",
        ),
        (&["pub"], "<TOPIC>"),
        (
            &["members", "--seed", "tcp://127.0.0.1:1", "--timeout", "0.5"],
            "no member answered",
        ),
        (&["members"], "no --seed"),
        (&["sub", "--bogus"], "unexpected argument"),
        (&["bench", "--scenarios", "1y1"], "invalid scenario"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, want) in cases {
        let out = finish(chorus().args(*args), "");
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("chorus: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
