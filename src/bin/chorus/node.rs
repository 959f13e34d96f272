//! `chorus node`: one long-running member that prints membership events.
//!
//! Output lines start with a wall-clock time; event lines read
//! `<time> <self> event <Kind> <member> <id> inc=<incarnation>` (the
//! discovery demo parses them). Stops gracefully — announcing Left — on
//! Ctrl-C or SIGTERM.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use futures::StreamExt;

use crate::join::{stop_signal, BusArgs};

/// Arguments of `chorus node`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Service name of this peer.
    #[arg(long)]
    name: String,
    /// Public address (heartbeat surveyor), what others use as --seed; port 0 picks a free port.
    #[arg(long, value_name = "URL", default_value = "tcp://127.0.0.1:0")]
    listen: String,
    /// Surveyor URL of a member to join through (repeatable; none starts a new bus).
    #[arg(long, value_name = "URL")]
    seed: Vec<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Heartbeat round deadline in milliseconds (< interval).
    #[arg(long, default_value_t = 250)]
    deadline_ms: u64,
    /// Rounds without heartbeat progress before a member is Failed.
    #[arg(long, default_value_t = 4)]
    miss_limit: u32,
    /// Milliseconds between member tables; 0 prints none.
    #[arg(long, default_value_t = 0)]
    table_ms: u64,
    #[command(flatten)]
    bus: BusArgs,
}

/// Wall-clock time of day, UTC, to the millisecond.
pub fn clock() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_millis()
    )
}

pub async fn run(args: Args) -> Result<()> {
    let mut builder = chorus::Peer::builder()
        .name(&args.name)
        .listen(&args.listen)
        .heartbeat_interval(Duration::from_millis(args.interval_ms))
        .heartbeat_deadline(Duration::from_millis(args.deadline_ms))
        .miss_limit(args.miss_limit);
    for s in &args.seed {
        builder = builder.seed(s);
    }
    let peer = args.bus.apply(builder)?.start().await?;
    let mut events = peer.membership();
    println!(
        "{} {} ready id={} url={}",
        clock(),
        peer.name(),
        peer.id(),
        peer.local_url()
    );
    let mut table = tokio::time::interval(Duration::from_millis(args.table_ms.max(1)));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(e) = events.next() => println!(
                "{} {} event {:?} {} {} inc={}",
                clock(), peer.name(), e.kind, e.member.name(), e.member.id(), e.member.info.incarnation
            ),
            _ = table.tick(), if args.table_ms > 0 => {
                println!("{} {} table: {} members", clock(), peer.name(), peer.members().len());
                print!("{}", crate::members::table(&peer.members(), Instant::now()));
            }
            _ = &mut stop => break,
        }
    }
    peer.shutdown().await;
    println!("{} {} stopped", clock(), args.name);
    Ok(())
}
