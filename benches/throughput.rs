//! Throughput and latency of reliable, deduplicated chorus delivery, side by
//! side with raw NNG pub/sub measured in the same run (the engine is
//! `chorus::bench`, feature `bench`, also run by `chorus bench`).
//!
//! Run: `cargo bench --features bench --bench throughput` (all points,
//! several minutes) or add `-- --quick` (under a minute). Options:
//! `--scenarios 1x1,1x4,4x4 --payloads 64,1024,16384 --transports tcp,inproc
//! --json target/throughput.json --svg target/throughput.svg --batch-bytes 0`
//! (0 turns chorus's batching off, to measure what it is worth)
//! `--bus-key SECRET` (authenticate every chorus message, to measure what it costs).
//! Under `cargo test` (no `--bench` argument) it runs one tiny point as a
//! smoke test and checks only that every figure is sane and non-zero.
//! `--user-runs N --user-secs S`: the user-shaped publisher against a
//! subscriber process, in memory and with a data dir (0 runs skips it).
//! `--subscriber-child SEED COUNT` and `--rate-child SEED WARMUP SECS` are
//! internal: the subscriber processes.

use chorus::bench::{Args, Mode};
use clap::Parser;
use serde_json::Value;

/// The engine's flags, and `--bench`, which `cargo bench` passes.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let cli = Cli::parse();
    // `cargo bench` passes `--bench`; `cargo test` runs this as a smoke test.
    let mode = if cli.bench { Mode::Full } else { Mode::Smoke };
    let exe = std::env::args().next().expect("program name");
    let doc = chorus::bench::main(&cli.args, mode, vec![exe]).unwrap_or_else(|e| {
        eprintln!("throughput: {e}");
        std::process::exit(2)
    });
    if mode == Mode::Smoke && !doc.is_null() {
        check_sane(&doc);
    }
}

/// The smoke run's only checks: every figure is present, sane and
/// non-zero, and nothing was lost (timings are not asserted).
fn check_sane(doc: &Value) {
    let points = doc["points"].as_array().expect("points");
    assert!(!points.is_empty());
    let positive = |v: &Value, what: &str| {
        assert!(v.as_f64().is_some_and(|x| x > 0.0), "{what} = {v}");
    };
    for p in points {
        positive(&p["raw_nng"]["drop_free_rate"], "raw drop-free rate");
        positive(&p["raw_nng"]["delivered_per_sub"], "raw delivered");
        positive(
            &p["raw_nng"]["paced_latency_us"]["count"],
            "raw latency count",
        );
        let c = &p["chorus"];
        for r in c["delivered_per_sub"].as_array().expect("per sub") {
            positive(r, "chorus throughput");
        }
        positive(&c["flood_latency_us"]["p50"], "flood latency");
        positive(&c["paced_latency_us"]["count"], "paced latency count");
        assert_eq!(c["lost"], 0, "nothing lost");
        let sp = &p["subscriber_process"];
        if p["transport"] == "tcp" {
            positive(&sp["per_sec"], "subscriber process rate");
            positive(&sp["idle_rss_kib"], "subscriber process idle RSS");
            let (peak, idle) = (sp["peak_rss_kib"].as_u64(), sp["idle_rss_kib"].as_u64());
            assert!(peak >= idle, "peak RSS {peak:?} below idle {idle:?}");
            assert_eq!(sp["lost"], 0, "nothing lost in the subscriber process");
        }
    }
    let group = doc["group"].as_array().expect("consumer-group runs");
    assert!(!group.is_empty());
    for run in group {
        positive(&run["per_sec"], "group rate");
        positive(&run["failover_ms"], "failover time");
    }
    let user = doc["user_shaped"].as_array().expect("user-shaped runs");
    assert!(!user.is_empty());
    for run in user {
        positive(&run["per_sec"], "user-shaped rate");
        positive(&run["publisher_cpu_us_per_event"], "publisher CPU");
        assert_eq!(run["lost"], 0, "nothing lost: {run}");
        assert_eq!(run["out_of_order"], 0, "in order: {run}");
    }
}
