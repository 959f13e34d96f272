//! One chorus peer in a terminal: joins the bus, prints every membership
//! change as it happens and, every second, its live member table.
//!
//! ```sh
//! cargo run --example heartbeat -- --name a --listen tcp://127.0.0.1:7000
//! cargo run --example heartbeat -- --name b --seed tcp://127.0.0.1:7000
//! ```
//!
//! Stops gracefully (announcing Left) on Ctrl-C or when stdin closes.
//! Output lines start with a wall-clock timestamp; event lines read
//! `<time> <self> event <Kind> <member> <id> inc=<incarnation>`, which is
//! what the discovery demo parses.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(about = "Run one chorus peer and watch the bus's membership")]
struct Args {
    /// Service name of this peer.
    #[arg(long)]
    name: String,
    /// Public address (heartbeat surveyor); port 0 picks a free port.
    #[arg(long, default_value = "tcp://127.0.0.1:0")]
    listen: String,
    /// Surveyor URL of a member to join through (repeatable).
    #[arg(long)]
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
    #[arg(long, default_value_t = 1000)]
    table_ms: u64,
}

fn clock() -> String {
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

fn print_table(peer: &chorus::Peer) {
    let now = Instant::now();
    println!(
        "{} {} table: {} members",
        clock(),
        peer.name(),
        peer.members().len()
    );
    for m in peer.members() {
        println!(
            "    {:<12} {}  {:<8} {:<24} seen {:>6} ms ago",
            m.name(),
            m.id(),
            format!("{:?}", m.state),
            m.info.endpoints.survey,
            now.saturating_duration_since(m.last_seen).as_millis()
        );
    }
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    let args = Args::parse();
    let mut builder = chorus::Peer::builder()
        .name(&args.name)
        .listen(&args.listen)
        .heartbeat_interval(Duration::from_millis(args.interval_ms))
        .heartbeat_deadline(Duration::from_millis(args.deadline_ms))
        .miss_limit(args.miss_limit);
    for s in &args.seed {
        builder = builder.seed(s);
    }
    let peer = builder.start().await?;
    let mut events = peer.membership();
    println!(
        "{} {} ready id={} url={}",
        clock(),
        peer.name(),
        peer.id(),
        peer.local_url()
    );

    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    let mut table = tokio::time::interval(Duration::from_millis(args.table_ms.max(1)));
    loop {
        tokio::select! {
            Some(e) = events.next() => println!(
                "{} {} event {:?} {} {} inc={}",
                clock(), peer.name(), e.kind, e.member.name(), e.member.id(), e.member.info.incarnation
            ),
            _ = table.tick(), if args.table_ms > 0 => print_table(&peer),
            _ = tokio::signal::ctrl_c() => break,
            n = stdin.read(&mut sink) => if matches!(n, Ok(0) | Err(_)) { break },
        }
    }
    peer.shutdown().await;
    println!("{} {} stopped", clock(), args.name);
    Ok(())
}
