//! What to measure: the run's options and the flags that set them, parsed
//! once (clap) for `chorus bench` and `cargo bench --bench throughput` alike.

use super::user_shaped::Durability;

/// How much to measure: `Smoke` is one tiny point for `cargo test`,
/// `Quick` under a minute, `Full` every point at full length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One tiny point; figures only checked for sanity.
    Smoke,
    /// Short runs of 1→1 tcp, 64 B and 1 KiB (under a minute).
    Quick,
    /// Every point, full length (several minutes).
    Full,
}

/// What to measure and where to write the figures.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run length.
    pub mode: Mode,
    /// (publishers, subscribers) pairs.
    pub scenarios: Vec<(usize, usize)>,
    /// Payload sizes in bytes.
    pub payloads: Vec<usize>,
    /// `true` for tcp loopback, `false` for inproc.
    pub transports: Vec<bool>,
    /// Where the JSON with every figure goes.
    pub json: String,
    /// Where the latency plot goes.
    pub svg: String,
    /// How to start this benchmark again as a subscriber in a child
    /// process (program and arguments, before `--subscriber-child SEED
    /// COUNT`); `None` skips that measurement.
    pub child: Option<Vec<String>>,
    /// chorus's batch size (0 = unbatched).
    pub batch_bytes: usize,
    /// A bus key for the chorus peers (every message authenticated).
    pub bus_key: Option<String>,
    /// The chorus peers' retransmit buffer (`None`: the default).
    pub retransmit_buffer: Option<usize>,
    /// Runs per mode of the user-shaped point across processes (0 skips it).
    pub user_runs: usize,
    /// Its warm-up and measured window, seconds.
    pub user_window: (f64, f64),
    /// Only the user-shaped point (no comparison with raw NNG).
    pub user_only: bool,
    /// The publisher's modes in the user-shaped point (in memory, data dir
    /// fsync per batch, data dir OS buffered; the first is the reference).
    pub user_modes: Vec<Durability>,
    /// Runs of the consumer-group point (1 origin → a group of member
    /// processes, against 1→1; 0 skips it). Its window is `user_window`.
    pub group_runs: usize,
}

impl Options {
    /// The defaults of `mode`.
    pub fn new(mode: Mode) -> Self {
        let (scenarios, payloads, transports, files) = match mode {
            Mode::Smoke => ("1x1", "64", "tcp", "target/throughput-smoke"),
            Mode::Quick => ("1x1", "64,1024", "tcp", "target/throughput"),
            Mode::Full => (
                "1x1,1x4,4x4",
                "64,1024,16384",
                "tcp,inproc",
                "target/throughput",
            ),
        };
        Options {
            mode,
            scenarios: parse_scenarios(scenarios).expect("valid default"),
            payloads: parse_payloads(payloads).expect("valid default"),
            transports: parse_transports(transports).expect("valid default"),
            json: format!("{files}.json"),
            svg: format!("{files}.svg"),
            child: None,
            batch_bytes: crate::api::builder::BATCH_BYTES,
            bus_key: None,
            retransmit_buffer: None,
            user_runs: match mode {
                Mode::Smoke => 1,
                Mode::Quick => 1,
                Mode::Full => 3,
            },
            user_window: match mode {
                Mode::Smoke => (0.2, 0.3),
                Mode::Quick => (1.0, 3.0),
                Mode::Full => (2.0, 10.0),
            },
            user_only: false,
            user_modes: match mode {
                Mode::Smoke => vec![Durability::Memory, Durability::EveryBatch],
                _ => Durability::ALL.to_vec(),
            },
            group_runs: match mode {
                Mode::Smoke | Mode::Quick => 1,
                Mode::Full => 3,
            },
        }
    }
}

/// `1x1,1x4,4x4` → publishers × subscribers pairs.
pub fn parse_scenarios(list: &str) -> Result<Vec<(usize, usize)>, String> {
    list.split(',')
        .map(|s| {
            s.split_once('x')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .filter(|&(a, b): &(usize, usize)| a > 0 && b > 0)
                .ok_or_else(|| format!("invalid scenario {s:?} (expected e.g. 1x4)"))
        })
        .collect()
}

/// `64,1024` → payload sizes (at least 8 bytes: the send time).
pub fn parse_payloads(list: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|s| {
            s.parse()
                .ok()
                .filter(|&n: &usize| (8..=1 << 20).contains(&n))
                .ok_or_else(|| format!("invalid payload size {s:?} (8 to 1048576 bytes)"))
        })
        .collect()
}

/// `memory,every-batch,os-buffered` → publisher modes.
pub fn parse_modes(list: &str) -> Result<Vec<Durability>, String> {
    list.split(',')
        .map(|m| match m {
            "memory" => Ok(Durability::Memory),
            "every-batch" => Ok(Durability::EveryBatch),
            "os-buffered" => Ok(Durability::OsBuffered),
            _ => Err(format!(
                "invalid mode {m:?} (memory, every-batch or os-buffered)"
            )),
        })
        .collect()
}

/// `tcp,inproc` → transports.
pub fn parse_transports(list: &str) -> Result<Vec<bool>, String> {
    list.split(',')
        .map(|t| match t {
            "tcp" => Ok(true),
            "inproc" => Ok(false),
            _ => Err(format!("invalid transport {t:?} (tcp or inproc)")),
        })
        .collect()
}

/// The flags of the throughput benchmark, shared by `chorus bench` and
/// `cargo bench --bench throughput` (flatten them into a clap parser).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Short runs of 1x1 tcp, 64 B and 1 KiB (under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Publishers x subscribers, comma-separated (default 1x1,1x4,4x4).
    #[arg(long, value_name = "LIST")]
    pub scenarios: Option<String>,
    /// Payload sizes in bytes (default 64,1024,16384).
    #[arg(long, value_name = "LIST")]
    pub payloads: Option<String>,
    /// tcp, inproc or both (default tcp,inproc).
    #[arg(long, value_name = "LIST")]
    pub transports: Option<String>,
    /// chorus's batch size in bytes; 0 turns batching off.
    #[arg(long, value_name = "BYTES", default_value_t = crate::api::builder::BATCH_BYTES)]
    pub batch_bytes: usize,
    /// Authenticate every chorus message with this bus key (what it costs).
    #[arg(long, value_name = "SECRET")]
    pub bus_key: Option<String>,
    /// The chorus peers' retransmit buffer in envelopes (default: the
    /// library's, 16384 or 65536 with a data dir).
    #[arg(long, value_name = "N")]
    pub retransmit_buffer: Option<usize>,
    /// Where to write every figure as JSON (default target/throughput.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Where to write the latency percentile plot (default target/throughput.svg).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<String>,
    /// Runs per mode (in memory, data dir fsync per batch, data dir OS
    /// buffered) of the user-shaped publisher against a subscriber process
    /// (default 3; 1 with --quick; 0 skips it).
    #[arg(long, value_name = "N")]
    pub user_runs: Option<usize>,
    /// Measured window of each of those runs, seconds (after a warm-up of
    /// a fifth of it; default 10).
    #[arg(long, value_name = "SECS")]
    pub user_secs: Option<f64>,
    /// Measure only the user-shaped point.
    #[arg(long)]
    pub user_only: bool,
    /// Publisher modes of the user-shaped point: memory, every-batch,
    /// os-buffered (default all three; the first is the reference).
    #[arg(long, value_name = "LIST")]
    pub user_modes: Option<String>,
    /// Runs of the consumer-group point: the user-shaped publisher → a
    /// group of 3 member processes, alternating with 1→1, then one member
    /// SIGKILLed (default 3; 1 with --quick; 0 skips it).
    #[arg(long, value_name = "N")]
    pub group_runs: Option<usize>,
    /// Internal: run as a member process of the consumer-group point.
    #[arg(long, value_name = "SEED", hide = true)]
    pub group_child: Option<String>,
    /// Internal: run as the subscriber process of the user-shaped point.
    #[arg(long, num_args = 3, value_names = ["SEED", "WARMUP", "SECS"], hide = true)]
    pub rate_child: Option<Vec<String>>,
    /// Internal: run as the subscriber process of the memory measurement.
    #[arg(long, num_args = 2, value_names = ["SEED", "COUNT"], hide = true)]
    pub subscriber_child: Option<Vec<String>>,
}

impl Args {
    /// The options these flags ask for, in `mode` unless `--quick` makes it
    /// [`Mode::Quick`]. `child` restarts this program as the subscriber
    /// process (program and arguments before `--subscriber-child`).
    pub fn options(&self, mode: Mode, child: Option<Vec<String>>) -> Result<Options, String> {
        let mode = if self.quick && mode == Mode::Full {
            Mode::Quick
        } else {
            mode
        };
        let mut o = Options::new(mode);
        if let Some(s) = &self.scenarios {
            o.scenarios = parse_scenarios(s)?;
        }
        if let Some(p) = &self.payloads {
            o.payloads = parse_payloads(p)?;
        }
        if let Some(t) = &self.transports {
            o.transports = parse_transports(t)?;
        }
        o.child = child;
        o.batch_bytes = self.batch_bytes;
        o.bus_key = self.bus_key.clone();
        o.retransmit_buffer = self.retransmit_buffer;
        o.user_only = self.user_only;
        if let Some(m) = &self.user_modes {
            o.user_modes = parse_modes(m)?;
        }
        if let Some(n) = self.user_runs {
            o.user_runs = n;
        }
        if let Some(n) = self.group_runs {
            o.group_runs = n;
        }
        if let Some(secs) = self.user_secs {
            if !(secs > 0.0 && secs <= 3600.0) {
                return Err(format!("invalid --user-secs {secs} (0 to 3600)"));
            }
            o.user_window = (secs / 5.0, secs);
        }
        if let Some(j) = &self.json {
            o.json = j.clone();
        }
        if let Some(s) = &self.svg {
            o.svg = s.clone();
        }
        Ok(o)
    }

    /// `--rate-child SEED WARMUP SECS`, checked: this run is the child
    /// side of the user-shaped point.
    pub fn rate_child(&self) -> Result<Option<(String, f64, f64)>, String> {
        match self.rate_child.as_deref() {
            None => Ok(None),
            Some([seed, warmup, secs]) => match (warmup.parse(), secs.parse()) {
                (Ok(w), Ok(s)) => Ok(Some((seed.clone(), w, s))),
                _ => Err(format!("invalid --rate-child window {warmup:?} {secs:?}")),
            },
            Some(_) => Err("--rate-child takes SEED WARMUP SECS".into()),
        }
    }

    /// `--subscriber-child SEED COUNT`, checked: this run is the child side.
    pub fn subscriber_child(&self) -> Result<Option<(String, u64)>, String> {
        match self.subscriber_child.as_deref() {
            None => Ok(None),
            Some([seed, count]) => count
                .parse()
                .map(|n| Some((seed.clone(), n)))
                .map_err(|_| format!("invalid --subscriber-child count {count:?}")),
            Some(_) => Err("--subscriber-child takes SEED COUNT".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_options() {
        let args = Args {
            quick: true,
            scenarios: Some("1x4,2x2".into()),
            payloads: Some("64".into()),
            transports: Some("inproc".into()),
            batch_bytes: 0,
            json: Some("x.json".into()),
            ..Args::default()
        };
        let o = args.options(Mode::Full, None).unwrap();
        assert_eq!(o.mode, Mode::Quick);
        assert_eq!(o.scenarios, vec![(1, 4), (2, 2)]);
        assert_eq!((o.payloads, o.transports), (vec![64], vec![false]));
        assert_eq!((o.batch_bytes, o.json.as_str()), (0, "x.json"));
        assert_eq!(o.svg, "target/throughput.svg");
        assert_eq!(args.options(Mode::Smoke, None).unwrap().mode, Mode::Smoke);
        for bad in ["0x1", "1x", "x"] {
            assert!(parse_scenarios(bad).is_err(), "{bad}");
        }
        assert!(parse_payloads("4").is_err());
        assert!(parse_transports("udp").is_err());
    }
}
