//! The discovery demo: five peers as separate OS processes on loopback.
//!
//! It starts five `chorus node` processes (peer-1 is everyone's seed),
//! prints every membership change with a timestamp as it happens, kills
//! peer-3 with SIGKILL, shows every survivor report it Failed, restarts it at
//! the same address, shows it rejoin, stops peer-5 gracefully (the others see
//! it leave), stops the rest and prints a summary: time to converge, to
//! detect the failure, to rejoin, to see a graceful leave. Exits
//! non-zero if any step did not happen within its bound.
//!
//! Run: `./scripts/demo.sh` (or `cargo build --release --features cli --bins --examples`
//! and `target/release/examples/discovery_demo`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Five chorus peers discover each other, lose one, and get it back")]
struct Args {
    /// Heartbeat interval in milliseconds, for every peer.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Rounds without progress before Failed, for every peer.
    #[arg(long, default_value_t = 4)]
    miss_limit: u32,
}

const PEERS: usize = 5;
const VICTIM: &str = "peer-3";

/// One parsed line of a peer's output.
struct Line {
    at: Instant,
    observer: String,
    kind: String,
    member: String,
}

struct Peers {
    bin: PathBuf,
    args: Args,
    children: BTreeMap<String, Child>,
    tx: mpsc::Sender<(Instant, String, String)>,
}

impl Peers {
    fn spawn(&mut self, name: &str, listen: &str, seed: Option<&str>) {
        let deadline = self.args.interval_ms / 2;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["node", "--name", name, "--listen", listen])
            .args(["--interval-ms", &self.args.interval_ms.to_string()])
            .args(["--deadline-ms", &deadline.to_string()])
            .args(["--miss-limit", &self.args.miss_limit.to_string()])
            .stdout(Stdio::piped());
        if let Some(s) = seed {
            cmd.args(["--seed", s]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, who) = (self.tx.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send((Instant::now(), who.clone(), line)).is_err() {
                    break;
                }
            }
        });
        self.children.insert(name.to_owned(), child);
    }
}

/// Asks a peer process to stop gracefully (SIGTERM).
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

fn main() {
    let args = Args::parse();
    // The `chorus` binary sits one directory above the examples.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("chorus");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build --features cli --bins --examples)",
        bin.display()
    );
    let bound = Duration::from_millis(
        args.interval_ms * u64::from(args.miss_limit + 2) + args.interval_ms / 2,
    );
    let (tx, rx) = mpsc::channel();
    let mut peers = Peers {
        bin,
        args,
        children: BTreeMap::new(),
        tx,
    };
    let t0 = Instant::now();
    let mut out = Output {
        rx,
        t0,
        urls: BTreeMap::new(),
    };

    println!("== starting {PEERS} peers as separate processes (peer-1 is the seed); failure bound {bound:?}");
    peers.spawn("peer-1", "tcp://127.0.0.1:0", None);
    out.wait("peer-1 ready", Duration::from_secs(10), &mut |l| {
        l.kind == "ready"
    })
    .expect("peer-1 did not start");
    let seed = out.url("peer-1");
    for i in 2..=PEERS {
        peers.spawn(&format!("peer-{i}"), "tcp://127.0.0.1:0", Some(&seed));
    }
    let mut joined: BTreeSet<(String, String)> = BTreeSet::new();
    let converged = out.wait(
        "every peer to see the 4 others",
        Duration::from_secs(20),
        &mut |l| {
            if l.kind == "Joined" {
                joined.insert((l.observer.clone(), l.member.clone()));
            }
            joined.len() == PEERS * (PEERS - 1)
        },
    );
    let mut ok = converged.is_some();
    let t_converge = converged.map(|at| at - t0);

    println!("== SIGKILL {VICTIM}");
    let victim_url = out.url(VICTIM);
    let killed = Instant::now();
    peers.children.get_mut(VICTIM).unwrap().kill().unwrap();
    peers.children.remove(VICTIM).unwrap().wait().unwrap();
    let mut failed_by: BTreeMap<String, Instant> = BTreeMap::new();
    let detected = out.wait("every survivor to report it Failed", bound * 3, &mut |l| {
        if l.kind == "Failed" && l.member == VICTIM {
            failed_by.insert(l.observer.clone(), l.at);
        }
        failed_by.len() == PEERS - 1
    });
    ok &= detected.is_some();
    let t_detect = detected.map(|at| at - killed);
    ok &= t_detect.is_some_and(|t| t <= bound);

    println!("== restarting {VICTIM} at the same address {victim_url}");
    let restarted = Instant::now();
    peers.spawn(VICTIM, &victim_url, Some(&seed));
    let (mut rejoined_by, mut victim_sees) = (BTreeSet::new(), BTreeSet::new());
    let rejoined = out.wait(
        "every survivor to see it rejoin",
        Duration::from_secs(20),
        &mut |l| {
            if l.kind == "Rejoined" && l.member == VICTIM {
                rejoined_by.insert(l.observer.clone());
            }
            if l.kind == "Joined" && l.observer == VICTIM {
                victim_sees.insert(l.member.clone());
            }
            rejoined_by.len() == PEERS - 1 && victim_sees.len() == PEERS - 1
        },
    );
    ok &= rejoined.is_some();
    let t_rejoin = rejoined.map(|at| at - restarted);

    println!("== stopping peer-5 gracefully: the others see it leave");
    let stopping = Instant::now();
    terminate(&peers.children["peer-5"]); // SIGTERM: announce Left, exit
    let mut left_seen = BTreeSet::new();
    let left = out.wait(
        "every other peer to see peer-5 leave",
        Duration::from_secs(10),
        &mut |l| {
            if l.kind == "Left" && l.member == "peer-5" {
                left_seen.insert(l.observer.clone());
            }
            left_seen.len() == PEERS - 1
        },
    );
    ok &= left.is_some();
    let t_left = left.map(|at| at - stopping);

    println!("== stopping the others");
    for child in peers.children.values() {
        terminate(child); // the peer announces Left and exits
    }
    let mut stopped = BTreeSet::new();
    out.wait("every peer to stop", Duration::from_secs(20), &mut |l| {
        if l.kind == "stopped" {
            stopped.insert(l.observer.clone());
        }
        stopped.len() == PEERS
    });
    for (_, mut c) in std::mem::take(&mut peers.children) {
        let _ = c.kill();
        let _ = c.wait();
    }

    let show = |t: Option<Duration>| {
        t.map_or("not reached".into(), |t| {
            format!("{:.0} ms", t.as_secs_f64() * 1000.0)
        })
    };
    println!("== summary");
    println!(
        "   converge ({PEERS} peers, all see all) : {}",
        show(t_converge)
    );
    println!(
        "   detect SIGKILL (all 4 survivors)     : {} (bound {} ms)",
        show(t_detect),
        bound.as_millis()
    );
    for (who, at) in &failed_by {
        println!(
            "       {who} reported Failed after {:.0} ms",
            (*at - killed).as_secs_f64() * 1000.0
        );
    }
    println!(
        "   rejoin after restart (all see it)     : {}",
        show(t_rejoin)
    );
    println!(
        "   graceful leave seen by all others     : {}",
        show(t_left)
    );
    println!("   result: {}", if ok { "OK" } else { "FAILED" });
    std::process::exit(if ok { 0 } else { 1 });
}

/// The merged output of all peers.
struct Output {
    rx: mpsc::Receiver<(Instant, String, String)>,
    t0: Instant,
    urls: BTreeMap<String, String>,
}

impl Output {
    /// Prints every line (with the time since the demo started) until `done`
    /// accepts one; None after `limit`.
    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        done: &mut dyn FnMut(&Line) -> bool,
    ) -> Option<Instant> {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Ok((at, who, raw)) = self.rx.recv_timeout(left) else {
                break;
            };
            println!("{:>7.3}s  [{who:<6}] {raw}", (at - self.t0).as_secs_f64());
            let words: Vec<&str> = raw.split_whitespace().collect();
            if let (Some(&"ready"), Some(url)) = (words.get(2), words.get(4)) {
                self.urls
                    .insert(who.clone(), url.trim_start_matches("url=").to_owned());
            }
            let line = match words.as_slice() {
                [_, _, "event", kind, member, ..] => Line {
                    at,
                    observer: who,
                    kind: kind.to_string(),
                    member: member.to_string(),
                },
                [_, _, other, ..] => Line {
                    at,
                    observer: who,
                    kind: other.to_string(),
                    member: String::new(),
                },
                _ => continue,
            };
            if done(&line) {
                return Some(at);
            }
        }
        println!("!! timed out after {limit:?} waiting for {what}");
        None
    }

    fn url(&self, who: &str) -> String {
        self.urls
            .get(who)
            .cloned()
            .unwrap_or_else(|| panic!("{who} never printed its URL"))
    }
}
