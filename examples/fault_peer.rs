//! One peer of a fault-injection run (the network-namespace suite in
//! `tests/netns.rs` starts one per host): joins the bus, publishes `--count`
//! messages at `--rate` per second, and prints, one line each, what it
//! processed and what happened, for a checker to read:
//!
//! ```text
//! ready <id> <incarnation>
//! event <Kind> <member name> <member id> <incarnation>
//! got <origin id> <incarnation> <seq> [redelivered]
//! lost <origin id> <incarnation> <first> <last>
//! published <count>
//! stats <Stats debug>            (on SIGTERM, before leaving)
//! ```
//!
//! Run by hand: `cargo run --example fault_peer -- --name a --listen tcp://127.0.0.1:7000`.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(about = "A chorus peer that publishes and reports everything it processes")]
struct Args {
    /// Service name.
    #[arg(long)]
    name: String,
    /// Public address.
    #[arg(long)]
    listen: String,
    /// Member to join through (repeatable).
    #[arg(long)]
    seed: Vec<String>,
    /// Messages to publish.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// The first value published (then one more per message).
    #[arg(long, default_value_t = 0)]
    first_value: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to wait before publishing (lets the bus form).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// Before publishing, wait (up to 60 s) until this many other members
    /// are live and linked both ways, so that every one of them is owed
    /// everything published.
    #[arg(long, default_value_t = 0)]
    members: u64,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Rounds without progress before a member is Failed.
    #[arg(long, default_value_t = 5)]
    miss_limit: u32,
    /// Bus key (optional).
    #[arg(long)]
    key: Option<String>,
    /// Data dir: the peer's stream is durable (continues across restarts).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The handler is a durable consumer of this name (needs --data-dir):
    /// it goes on where it stopped when the peer restarts.
    #[arg(long)]
    durable: Option<String>,
    /// The handler is a member of this consumer group: it handles its
    /// share of each origin's events.
    #[arg(long)]
    group: Option<String>,
}

/// Writes one line to stdout at once (the checker reads as we go).
fn line(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    // Logs to stderr as RUST_LOG says (the checker reads stdout only).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut builder = chorus::Peer::builder()
        .name(&args.name)
        .listen(&args.listen)
        .heartbeat_interval(Duration::from_millis(args.interval_ms))
        .heartbeat_deadline(Duration::from_millis(args.interval_ms / 2))
        .miss_limit(args.miss_limit)
        .suspect_after(2);
    for s in &args.seed {
        builder = builder.seed(s);
    }
    if let Some(k) = &args.key {
        builder = builder.bus_key(k);
    }
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir);
    }
    let peer = builder.start().await?;
    line(format!("ready {} {}", peer.id(), peer.incarnation()));

    let mut events = peer.membership();
    let mut losses = peer.losses();
    // A handler: a delivery is acknowledged only once it was processed
    // (printed), so a kill -9 loses nothing the origin still counts as owed.
    let mut opts = chorus::HandlerOptions::new();
    if let Some(name) = &args.durable {
        opts = opts.durable(name);
    }
    if let Some(name) = &args.group {
        opts = opts.group(name);
    }
    let _handler =
        peer.subscribe_with_options("soak.>", opts, |d: chorus::Delivery<u64>| async move {
            line(format!(
                "got {} {} {} v={}{}",
                d.origin(),
                d.incarnation(),
                d.seq(),
                d.value,
                if d.redelivered() { " redelivered" } else { "" }
            ));
            Ok::<(), std::convert::Infallible>(())
        })?;
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");

    let publisher = peer.clone();
    let (count, rate, delay, members) = (args.count, args.rate, args.delay, args.members);
    let first_value = args.first_value;
    let topic = format!("soak.{}", args.name);
    tokio::spawn(async move {
        // Publishes anyway after the wait; the checker reports what is missing.
        let _ = publisher
            .wait_for_members(members, Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        for n in 0..count {
            tick.tick().await;
            if publisher.publish(&topic, &(first_value + n)).await.is_err() {
                return;
            }
        }
        line(format!("published {count}"));
    });
    loop {
        tokio::select! {
            Some(e) = events.next() => line(format!(
                "event {:?} {} {} {}", e.kind, e.member.name(), e.member.id(), e.member.info.incarnation
            )),
            Some(l) = losses.next() => line(format!("lost {} {} {} {}", l.origin, l.incarnation, l.first, l.last)),
            _ = term.recv() => break,
        }
    }
    line(format!("stats {:?}", peer.stats()));
    peer.shutdown().await;
    Ok(())
}
