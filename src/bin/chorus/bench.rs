//! `chorus bench`: the throughput benchmark (`benches/throughput.rs`'s
//! engine) from the command line.

use anyhow::{anyhow, Result};

#[path = "../../../benches/support/throughput.rs"]
mod throughput;

/// Arguments of `chorus bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Short runs of 1x1 tcp, 64 B and 1 KiB (under a minute).
    #[arg(long)]
    quick: bool,
    /// Publishers x subscribers, comma-separated (default 1x1,1x4,4x4).
    #[arg(long, value_name = "LIST")]
    scenarios: Option<String>,
    /// Payload sizes in bytes (default 64,1024,16384).
    #[arg(long, value_name = "LIST")]
    payloads: Option<String>,
    /// tcp, inproc or both (default tcp,inproc).
    #[arg(long, value_name = "LIST")]
    transports: Option<String>,
    /// chorus's batch size in bytes; 0 turns batching off.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    batch_bytes: usize,
    /// Authenticate every chorus message with this bus key (what it costs).
    #[arg(long, value_name = "SECRET")]
    bus_key: Option<String>,
    /// Where to write every figure as JSON.
    #[arg(long, value_name = "FILE", default_value = "throughput.json")]
    json: String,
    /// Where to write the latency percentile plot.
    #[arg(long, value_name = "FILE", default_value = "throughput.svg")]
    svg: String,
    /// Internal: run as the subscriber process of the memory measurement.
    #[arg(long, num_args = 2, value_names = ["SEED", "COUNT"], hide = true)]
    subscriber_child: Option<Vec<String>>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(child) = &args.subscriber_child {
        throughput::subscriber_child(&child[0], &child[1]);
        return Ok(());
    }
    let mode = if args.quick {
        throughput::Mode::Quick
    } else {
        throughput::Mode::Full
    };
    let mut o = throughput::Options::new(mode);
    if let Some(s) = &args.scenarios {
        o.scenarios = throughput::parse_scenarios(s).map_err(|e| anyhow!(e))?;
    }
    if let Some(p) = &args.payloads {
        o.payloads = throughput::parse_payloads(p).map_err(|e| anyhow!(e))?;
    }
    if let Some(t) = &args.transports {
        o.transports = throughput::parse_transports(t).map_err(|e| anyhow!(e))?;
    }
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    o.child = Some(vec![exe, "bench".into()]);
    o.batch_bytes = args.batch_bytes;
    o.bus_key = args.bus_key;
    o.json = args.json;
    o.svg = args.svg;
    throughput::run(&o);
    Ok(())
}
