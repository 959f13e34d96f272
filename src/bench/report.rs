//! The report of a run: the summary tables, the JSON with every figure and
//! the latency percentile plot (SVG).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// The markdown summary tables: one row per point, and the subscriber
/// processes' memory if measured.
pub(crate) fn print_tables(table: &BTreeMap<String, String>, memory: &[String], peak_rss_kib: u64) {
    println!("| point | raw NNG drop-free msg/s per sub | chorus msg/s per sub | chorus aggregate | chorus ÷ raw | raw paced p99 / max | chorus paced p99 / max | p99 ratio: all / median of rounds | retransmits / dups dropped / lost |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in table.values() {
        println!("{row}");
    }
    if !memory.is_empty() {
        println!();
        println!("| point, subscriber in its own process | delivered msg/s | RSS idle MiB | RSS linked MiB | peak RSS MiB | its buffers hold at most MiB |");
        println!("|---|---|---|---|---|---|");
        for row in memory {
            println!("{row}");
        }
    }
    println!(
        "peak RSS of the whole bench process: {} MiB",
        peak_rss_kib / 1024
    );
}

/// Writes `doc` to `path` as pretty JSON (creating its folder).
pub(crate) fn write_json(path: &str, doc: &serde_json::Value) {
    if let Some(dir) = std::path::Path::new(path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
}

/// Latency at the percentile ladder drawn in the plot.
const LADDER: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

pub(crate) fn ladder(h: &Histogram<u64>) -> Vec<u64> {
    LADDER
        .iter()
        .map(|(q, _)| {
            if *q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(*q)
            }
        })
        .collect()
}

/// Paced latency percentile distributions, chorus (solid) against raw NNG
/// (dashed) for every point, as an SVG.
pub(crate) fn plot(path: &str, curves: &[(String, Vec<u64>, Vec<u64>)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let top = curves
        .iter()
        .flat_map(|(_, r, c)| r.iter().chain(c))
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "paced latency at 10 % of raw NNG's drop-free rate (µs, log)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..(LADDER.len() - 1) as f64,
            (1f64..top.max(10.0)).log_scale(),
        )
        .unwrap();
    chart
        .configure_mesh()
        .x_labels(LADDER.len())
        .x_label_formatter(&|x| {
            LADDER
                .get(x.round() as usize)
                .map_or(String::new(), |l| l.1.to_string())
        })
        .y_desc("µs")
        .draw()
        .unwrap();
    for (i, (name, raw, chorus)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = |v: &Vec<u64>| {
            v.iter()
                .enumerate()
                .map(|(x, y)| (x as f64, (*y).max(1) as f64))
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(pts(chorus), color.stroke_width(2)))
            .unwrap()
            .label(format!("chorus {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(pts(raw), 6, 4, color.stroke_width(1)))
            .unwrap()
            .label(format!("raw NNG {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
