//! `chorus sub`: print every delivery matching a pattern, as text lines or
//! JSON lines.

use anyhow::Result;
use bytes::Bytes;
use std::collections::HashMap;

use chorus::{Delivery, HandlerOptions, Pattern, Peer, PeerId, StartAt};
use futures::StreamExt;
use serde_json::json;

use crate::join::{stop_signal, JoinArgs};
use crate::payload::{self, CONTENT_TYPE};

/// Arguments of `chorus sub`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topic pattern: `orders.created`, `orders.*` (one token), `orders.>` (the rest).
    pattern: String,
    #[command(flatten)]
    join: JoinArgs,
    /// One JSON object per delivery (topic, origin, seq, payload, ...).
    #[arg(long)]
    json: bool,
    /// Exit after this many deliveries.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// A durable subscription of this name (needs --data-dir): a later
    /// `chorus sub` with the same name and data dir goes on where this one
    /// stopped, getting what was published meanwhile.
    #[arg(long, value_name = "NAME", requires = "data_dir")]
    durable: Option<String>,
    /// Where a new durable subscription starts: `new` (what is published
    /// from now on) or `beginning` (everything the origins keep).
    #[arg(
        long,
        value_name = "WHERE",
        default_value = "new",
        requires = "durable"
    )]
    start_at: StartFrom,
    /// Join the consumer group of this name: all `chorus sub` (and
    /// handlers) of that group on the bus share the events, each handled by
    /// one of them.
    #[arg(long, value_name = "NAME", conflicts_with = "durable")]
    group: Option<String>,
    /// With --group: the group is durable. Each origin keeps what the
    /// group's subscriptions match while none of them runs, and hands it
    /// to the next one that joins (no data dir needed here).
    #[arg(long, requires = "group")]
    durable_group: bool,
}

/// `--start-at` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum StartFrom {
    New,
    Beginning,
}

pub async fn run(args: Args) -> Result<()> {
    Pattern::parse(&args.pattern)?;
    let peer = args.join.start("chorus-sub").await?;
    let result = print(&args, &peer).await;
    peer.shutdown().await;
    result
}

async fn print(args: &Args, peer: &Peer) -> Result<()> {
    let mut deliveries = match (&args.durable, &args.group) {
        (Some(name), _) => {
            let start = match args.start_at {
                StartFrom::New => StartAt::New,
                StartFrom::Beginning => StartAt::Beginning,
            };
            let opts = HandlerOptions::new().durable(name).start_at(start);
            handled(peer, &args.pattern, opts)?
        }
        (None, Some(group)) => {
            let mut opts = HandlerOptions::new().group(group);
            if args.durable_group {
                opts = opts.durable(group);
            }
            handled(peer, &args.pattern, opts)?
        }
        (None, None) => peer.subscribe_bytes(&args.pattern)?.boxed(),
    };
    args.join.settle(peer).await?;
    eprintln!(
        "chorus: subscribed to {} as {}",
        args.pattern,
        peer.local_url()
    );
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut seen = 0;
    let mut names = HashMap::new();
    let mut stopping = None;
    while args.count.is_none_or(|n| seen < n) {
        tokio::select! {
            d = deliveries.next() => match d {
                Some(d) => println!("{}", line(&mut names, peer, &d, args.json)),
                None => break,
            },
            // Asked to stop: the peer shuts down while what it hands over
            // is still printed (a group member finishes the delivery it
            // runs, then hands the rest to the others), until the
            // subscription ends.
            _ = &mut stop, if stopping.is_none() => {
                let peer = peer.clone();
                stopping = Some(tokio::spawn(async move { peer.shutdown().await }));
                continue;
            }
        }
        seen += 1;
    }
    if let Some(stopping) = stopping {
        let _ = stopping.await;
    }
    Ok(())
}

/// A durable or group subscription as a stream: a handler that hands each
/// delivery over and returns once it is printed (so it counts as processed
/// — a durable position committed, a group's share done — only past what
/// was printed).
fn handled(
    peer: &Peer,
    pattern: &str,
    opts: HandlerOptions,
) -> Result<futures::stream::BoxStream<'static, Delivery<Bytes>>> {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<(Delivery<Bytes>, tokio::sync::oneshot::Sender<()>)>(1);
    peer.subscribe_bytes_with_options(pattern, opts, move |d: Delivery<Bytes>| {
        let tx = tx.clone();
        async move {
            let (printed, wait) = tokio::sync::oneshot::channel();
            tx.send((d, printed)).await.map_err(|_| "stopped")?;
            wait.await.map_err(|_| "stopped")
        }
    })?;
    // A delivery is done once the caller asks for the next one: it has
    // printed this one.
    let none: Option<tokio::sync::oneshot::Sender<()>> = None;
    let stream = futures::stream::unfold((rx, none), |(mut rx, printed)| async move {
        if let Some(printed) = printed {
            let _ = printed.send(());
        }
        let (d, printed) = rx.recv().await?;
        Some((d, (rx, Some(printed))))
    });
    Ok(stream.boxed())
}

/// Origin names by id, refreshed from the member table only when an
/// origin is not known yet (not once per delivery).
fn origin_name(names: &mut HashMap<PeerId, String>, peer: &Peer, id: PeerId) -> String {
    if !names.contains_key(&id) {
        names.extend(peer.members().iter().map(|m| (m.id(), m.name().to_owned())));
    }
    names.get(&id).cloned().unwrap_or_default()
}

fn line(
    names: &mut HashMap<PeerId, String>,
    peer: &Peer,
    d: &Delivery<Bytes>,
    json: bool,
) -> String {
    let origin = origin_name(names, peer, d.origin());
    let content_type = d.headers().get(CONTENT_TYPE).map(String::as_str);
    let rendered = payload::render(&d.value, content_type);
    if !json {
        return format!(
            "{} {}({}) #{} {}{}",
            d.topic(),
            origin,
            d.origin(),
            d.seq(),
            rendered,
            if d.redelivered() {
                " (redelivered)"
            } else {
                ""
            }
        );
    }
    json!({
        "topic": d.topic(),
        "origin": d.origin().to_string(),
        "origin_name": origin,
        "incarnation": d.incarnation(),
        "seq": d.seq(),
        "redelivered": d.redelivered(),
        "id": d.id(),
        "correlation_id": d.correlation_id(),
        "timestamp_us": d.envelope().timestamp_us,
        "headers": d.headers(),
        "encoding": rendered.encoding(),
        "payload": rendered.to_json(),
    })
    .to_string()
}
