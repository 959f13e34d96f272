//! Throughput and latency of reliable, deduplicated chorus delivery, side by
//! side with raw NNG pub/sub measured in the same run.
//!
//! The engine shared by `cargo bench --bench throughput` and `chorus bench`
//! (feature `bench`, off by default: a service embedding chorus compiles
//! none of it). Both parse the same flags ([`Args`]) and call [`main`].
//!
//! Each point (publishers × subscribers, payload, transport):
//! - **raw NNG**: one pub0 socket per publisher and one sub0 per subscriber,
//!   with chorus's default buffer sizes, paced at increasing rates; the
//!   highest rate with at most 0.1 % drops is its drop-free rate.
//! - **chorus flood**: every publisher (a tokio task, as in an application)
//!   publishes as fast as `publish` returns (backpressure included);
//!   delivered msg/s per subscriber and in aggregate, with retransmits,
//!   duplicates dropped and losses.
//! - **latency, paced**: both at 10 % of raw NNG's drop-free rate, in
//!   alternating rounds (raw, chorus, raw, chorus, …) so that a burst of CPU
//!   steal hits both alike. Latency runs from each message's *intended*
//!   send time on a fixed schedule (open loop), so a stall of the sender or
//!   of the system counts for every message it held up: the correction for
//!   coordinated omission. Percentiles from HdrHistogram.
//! - **subscriber in its own process** (tcp): a child process joins as the
//!   only subscriber of a flooding publisher; its delivered rate and its peak
//!   RSS against the memory its configured buffers allow.
//!
//! Everything but that child lives in this one process (2 cores): figures
//! compare chorus and raw NNG under the same conditions.

mod group_point;
mod options;
mod pacing;
mod raw_nng;
mod report;
mod scenario;
mod subscriber_process;
mod user_shaped;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub use group_point::group_child;
pub use options::{
    parse_modes, parse_payloads, parse_scenarios, parse_transports, Args, Mode, Options,
};
pub use subscriber_process::subscriber_child;
pub use user_shaped::rate_child;
pub use user_shaped::Durability;

use pacing::percentiles;
use raw_nng::raw_drop_free;
use report::{ladder, plot, print_tables, write_json};
use scenario::{chorus_flood, paced, PeerSettings, Point, ROUNDS};
use subscriber_process::{status_kib, subscriber_process};

/// Runs what `args` ask for: the subscriber-process child side if
/// `--subscriber-child` is given, else the benchmark in `mode` (`--quick`
/// turns `Full` into `Quick`). `child` restarts this program as the
/// subscriber process. Returns the JSON document of the run (`Null` for
/// the child side).
pub fn main(args: &Args, mode: Mode, child: Vec<String>) -> Result<serde_json::Value, String> {
    if let Some((seed, count)) = args.subscriber_child()? {
        subscriber_child(&seed, count);
        return Ok(serde_json::Value::Null);
    }
    if let Some((seed, warmup, secs)) = args.rate_child()? {
        rate_child(&seed, warmup, secs);
        return Ok(serde_json::Value::Null);
    }
    if let Some(seed) = &args.group_child {
        group_child(seed);
        return Ok(serde_json::Value::Null);
    }
    Ok(run(&args.options(mode, Some(child))?))
}

/// Measures every point of `o` with a progress bar, prints the summary
/// table, writes the JSON and the plot, and returns the JSON document.
pub fn run(o: &Options) -> serde_json::Value {
    let smoke = o.mode == Mode::Smoke;
    let quick = o.mode != Mode::Full;
    let (scenarios, sizes, transports) = (&o.scenarios, &o.payloads, &o.transports);
    let (json_path, svg_path) = (&o.json, &o.svg);
    // Raw runs must be long enough that NNG's and the kernel's buffers cannot
    // hide drops: a quarter second of 64 B messages fits in socket buffers.
    let raw_secs = if smoke { 0.25 } else { 1.0 };
    let peers = PeerSettings {
        batch_bytes: o.batch_bytes,
        bus_key: o.bus_key.clone(),
        retransmit_buffer: o.retransmit_buffer,
    };

    let mut points = Vec::new();
    for &(pubs, subs) in scenarios.iter().filter(|_| !o.user_only) {
        for &size in sizes {
            for &tcp in transports {
                points.push(Point {
                    pubs,
                    subs,
                    size,
                    tcp,
                });
            }
        }
    }
    let bar = ProgressBar::new(points.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut addr = 0;
    let mut results = Vec::new();
    let mut curves = Vec::new();
    let mut table = BTreeMap::new();
    let mut memory = Vec::new();
    for p in points {
        let (raw_rate, raw_delivered) = raw_drop_free(p, raw_secs, &mut addr, &bar);
        // Flood: a fixed byte budget per point, within a message-count range.
        let budget_bytes = if smoke {
            1 << 20
        } else if quick {
            256 << 20
        } else {
            1 << 30
        };
        let max_count = if smoke {
            10_000
        } else if quick {
            1_000_000
        } else {
            3_000_000
        };
        let count =
            ((budget_bytes / p.size.max(64)) as u64 / p.pubs as u64).clamp(2_000, max_count);
        bar.set_message(format!(
            "{} chorus flood, {count} msgs per publisher",
            p.name()
        ));
        let flood = rt.block_on(chorus_flood(p, &peers, count, &mut addr));
        let process = match &o.child {
            Some(child) if p.tcp && p.pubs == 1 && p.subs == 1 => {
                bar.set_message(format!("{} subscriber in its own process", p.name()));
                let f = subscriber_process(&rt, &peers, child, p.size, count, o.batch_bytes);
                let mib = |k: &serde_json::Value| k.as_f64().unwrap_or(0.0) / 1024.0;
                memory.push(format!(
                    "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    p.name(),
                    f["per_sec"].as_f64().unwrap_or(0.0),
                    mib(&f["idle_rss_kib"]),
                    mib(&f["joined_rss_kib"]),
                    mib(&f["peak_rss_kib"]),
                    mib(&f["buffers_bound_kib"]),
                ));
                f
            }
            _ => serde_json::Value::Null,
        };
        // Paced latency at 10 % of raw's drop-free rate, for both.
        let paced_rate = (raw_rate * 0.1).max(500.0);
        let paced_count =
            ((paced_rate * if quick { 1.0 } else { 3.0 }) as u64 / p.pubs as u64).max(200);
        bar.set_message(format!(
            "{} paced latency at {paced_rate:.0} msg/s",
            p.name()
        ));
        let (raw_paced, chorus_paced, round_ratio) =
            paced(&rt, p, &peers, paced_rate, paced_count, &mut addr);
        let chorus_rate = flood.per_sub.iter().sum::<f64>() / flood.per_sub.len() as f64;
        let mb = |rate: f64| rate * p.size as f64 / 1e6;
        let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99);
        let ratio = chorus_rate / raw_delivered.max(1.0);
        let lat_ratio = p99(&chorus_paced.latency) as f64 / p99(&raw_paced).max(1) as f64;
        table.insert(
            p.name(),
            format!(
                "| {} | {:.0} ({:.1} MB/s) | {:.0} ({:.1} MB/s) | {:.0} | **{:.1}×** | {} / {} µs | {} / {} µs | {:.2}× / {:.2}× | {} / {} / {} |",
                p.name(),
                raw_delivered,
                mb(raw_delivered),
                chorus_rate,
                mb(chorus_rate),
                chorus_rate * p.subs as f64,
                ratio,
                p99(&raw_paced),
                raw_paced.max(),
                p99(&chorus_paced.latency),
                chorus_paced.latency.max(),
                lat_ratio,
                round_ratio,
                flood.retransmits,
                flood.duplicates,
                flood.lost
            ),
        );
        curves.push((p.name(), ladder(&raw_paced), ladder(&chorus_paced.latency)));
        results.push(json!({
            "point": p.name(), "publishers": p.pubs, "subscribers": p.subs, "payload": p.size,
            "transport": if p.tcp { "tcp" } else { "inproc" },
            "raw_nng": { "drop_free_rate": raw_rate, "delivered_per_sub": raw_delivered,
                          "paced_rate": paced_rate, "paced_latency_us": percentiles(&raw_paced) },
            "chorus": { "messages_per_publisher": count, "delivered_per_sub": flood.per_sub,
                        "delivered_per_sub_mean": chorus_rate, "aggregate": chorus_rate * p.subs as f64,
                        "mb_per_sec_per_sub": mb(chorus_rate),
                        "flood_latency_us": percentiles(&flood.latency),
                        "paced_latency_us": percentiles(&chorus_paced.latency),
                        "retransmits": flood.retransmits, "duplicates_dropped": flood.duplicates,
                        "lost": flood.lost, "batches_sent": flood.batches },
            "ratio_throughput": ratio, "ratio_p99_paced": lat_ratio,
            "ratio_p99_paced_median_of_rounds": round_ratio, "paced_rounds": ROUNDS,
            "subscriber_process": process,
        }));
        bar.inc(1);
    }
    // The user-shaped publisher against a subscriber process, in memory
    // and durable (tcp, 1→1, the payloads asked for).
    let user = match &o.child {
        Some(child) if o.user_runs > 0 && transports.contains(&true) => {
            bar.set_message("user-shaped publisher, subscriber process, memory and durable");
            let sizes: Vec<usize> = if smoke { vec![64] } else { sizes.clone() };
            Some(user_shaped::measure(
                &rt,
                &peers,
                child,
                &sizes,
                &o.user_modes,
                o.user_runs,
                o.user_window,
            ))
        }
        _ => None,
    };
    // The consumer-group point (tcp, the payloads asked for).
    let group = match &o.child {
        Some(child) if o.group_runs > 0 && transports.contains(&true) => {
            bar.set_message("consumer group of member processes against 1→1");
            let sizes: Vec<usize> = if smoke { vec![64] } else { sizes.clone() };
            Some(group_point::measure(
                &rt,
                &peers,
                child,
                &sizes,
                o.group_runs,
                o.user_window,
            ))
        }
        _ => None,
    };
    bar.finish_and_clear();
    let rss = status_kib("VmHWM:");
    print_tables(&table, &memory, rss);
    if let Some((rows, _)) = &user {
        user_shaped::print_table(rows, o.user_runs, o.user_window);
    }
    if let Some((rows, _)) = &group {
        group_point::print_table(rows, o.group_runs, o.user_window);
    }
    let user_runs = user.map_or(serde_json::Value::Null, |(_, runs)| runs);
    let group_runs = group.map_or(serde_json::Value::Null, |(_, runs)| runs);
    let doc = json!({ "quick": quick, "bus_key": o.bus_key.is_some(), "peak_rss_kib": rss, "points": results,
                      "user_shaped": user_runs, "group": group_runs });
    write_json(json_path, &doc);
    plot(svg_path, &curves);
    println!("all figures: {json_path}; latency plot: {svg_path}");
    doc
}
