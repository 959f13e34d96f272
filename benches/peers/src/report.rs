//! The markdown tables of a run: medians with min–max, the first system
//! (chorus) ÷ each other one, paired run by run (run i of one against run
//! i of the other).

use serde_json::Value;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn k(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `field` of every run of `system` at `payload` (throughput) or of
/// every run of `system` (round trip, `payload` None), by run.
fn values(runs: &[Value], system: &str, payload: Option<u64>, field: &str) -> Vec<f64> {
    runs.iter()
        .filter(|r| r["system"] == system && payload.is_none_or(|p| r["payload"] == p))
        .filter_map(|r| r[field].as_f64())
        .collect()
}

fn spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}–{})", fmt(median(v.to_vec())), fmt(min), fmt(max))
}

fn ratios(a: &[f64], b: &[f64]) -> String {
    a.iter()
        .zip(b)
        .map(|(a, b)| format!("{:.2}", a / b))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn markdown(all: &Value, systems: &[String]) -> String {
    let mut out = String::new();
    let thr = all["throughput"].as_array().cloned().unwrap_or_default();
    let mut payloads: Vec<u64> = thr.iter().filter_map(|r| r["payload"].as_u64()).collect();
    payloads.dedup();
    let base = &systems[0];
    if !thr.is_empty() {
        out.push_str("| payload | system | delivered msg/s, median (min–max) | ");
        out.push_str(base);
        out.push_str(" ÷ this, paired | publisher CPU µs/event | subscriber CPU µs/event | subscriber peak RSS MiB | lost / reordered | steal % |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for &p in &payloads {
            let reference = values(&thr, base, Some(p), "msgs_per_s");
            for s in systems {
                let rate = values(&thr, s, Some(p), "msgs_per_s");
                let sum = |f: &str| values(&thr, s, Some(p), f).iter().sum::<f64>();
                let rss = values(&thr, s, Some(p), "peak_rss_kib")
                    .into_iter()
                    .fold(0.0, f64::max);
                out.push_str(&format!(
                    "| {p} B | {s} | {} | {} | {:.2} | {:.2} | {:.0} | {} / {} | {:.1} |\n",
                    spread(&rate, k),
                    if s == base {
                        "—".to_owned()
                    } else {
                        ratios(&reference, &rate)
                    },
                    median(values(&thr, s, Some(p), "pub_cpu_us_per_event")),
                    median(values(&thr, s, Some(p), "cpu_us_per_event")),
                    rss / 1024.0,
                    sum("lost"),
                    sum("reordered"),
                    median(values(&thr, s, Some(p), "steal_pct")),
                ));
            }
        }
    }
    let rtt = all["round_trip"].as_array().cloned().unwrap_or_default();
    if !rtt.is_empty() {
        let mut names: Vec<String> = systems.to_vec();
        names.push("nng".into());
        out.push_str("\n64 B round trip, µs, median of runs (min–max):\n\n");
        out.push_str("| system | p50 | p90 | p99 | p99.9 | max | CPU µs per round trip (ping side) | steal % |\n");
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        let us = |v: f64| format!("{v:.0}");
        for s in &names {
            let f = |field: &str| values(&rtt, s, None, field);
            out.push_str(&format!(
                "| {s} | {} | {} | {} | {} | {} | {:.1} | {:.1} |\n",
                spread(&f("p50_us"), us),
                spread(&f("p90_us"), us),
                spread(&f("p99_us"), us),
                spread(&f("p999_us"), us),
                spread(&f("max_us"), us),
                median(f("cpu_us_per_round_trip")),
                median(f("steal_pct")),
            ));
        }
    }
    out
}
