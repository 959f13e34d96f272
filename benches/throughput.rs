//! Throughput and latency of reliable, deduplicated chorus delivery, side by
//! side with raw NNG pub/sub measured in the same run (the engine is
//! `support/throughput.rs`, also run by `chorus bench`).
//!
//! Run: `cargo bench --bench throughput` (all points, several minutes) or
//! `cargo bench --bench throughput -- --quick` (under a minute). Options:
//! `--scenarios 1x1,1x4,4x4 --payloads 64,1024,16384 --transports tcp,inproc
//! --json target/throughput.json --svg target/throughput.svg --batch-bytes 0`
//! (0 turns chorus's batching off, to measure what it is worth)
//! `--bus-key SECRET` (authenticate every chorus message, to measure what it costs).
//! Under `cargo test` (no `--bench` argument) it runs one tiny point as a
//! smoke test and checks only that every figure is sane and non-zero.
//! `--subscriber-child SEED COUNT` is internal: the subscriber process of
//! the memory measurement.

#[path = "support/throughput.rs"]
mod throughput;

use serde_json::Value;
use throughput::{Mode, Options};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--subscriber-child") {
        let arg = |k: usize| args.get(i + k).map_or("", String::as_str);
        return throughput::subscriber_child(arg(1), arg(2));
    }
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    // `cargo bench` passes `--bench`; `cargo test` runs this as a smoke test.
    let mode = if !args.iter().any(|a| a == "--bench") {
        Mode::Smoke
    } else if args.iter().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    let mut o = Options::new(mode);
    o.child = Some(vec![args[0].clone()]);
    let invalid = |e: String| -> ! {
        eprintln!("throughput: {e}");
        std::process::exit(2)
    };
    if let Some(v) = opt("--scenarios") {
        o.scenarios = throughput::parse_scenarios(&v).unwrap_or_else(|e| invalid(e));
    }
    if let Some(v) = opt("--payloads") {
        o.payloads = throughput::parse_payloads(&v).unwrap_or_else(|e| invalid(e));
    }
    if let Some(v) = opt("--transports") {
        o.transports = throughput::parse_transports(&v).unwrap_or_else(|e| invalid(e));
    }
    if let Some(v) = opt("--batch-bytes") {
        o.batch_bytes = v
            .parse()
            .unwrap_or_else(|_| invalid(format!("invalid --batch-bytes {v:?}")));
    }
    o.bus_key = opt("--bus-key");
    o.json = opt("--json").unwrap_or(o.json);
    o.svg = opt("--svg").unwrap_or(o.svg);
    let doc = throughput::run(&o);
    if mode == Mode::Smoke {
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
}
