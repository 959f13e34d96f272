//! `chorus pub`: publish one message, or one per line of stdin, and wait
//! until every live member has acknowledged them before leaving.

use std::time::Duration;

use anyhow::{Context, Result};
use chorus::{validate_topic, PublishOptions};
use tokio::io::AsyncBufReadExt;

use crate::join::JoinArgs;
use crate::payload;

/// Arguments of `chorus pub`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topic to publish on, e.g. orders.created.
    topic: String,
    /// The payload; `-` (or nothing) reads stdin, one message per line.
    data: Option<String>,
    #[command(flatten)]
    join: JoinArgs,
    /// Application id (idempotency key): receivers process a message with the
    /// same id once. With stdin, line N gets KEY-N.
    #[arg(long, value_name = "KEY")]
    id: Option<String>,
    /// Correlation id of the flow the message belongs to.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// DATA is JSON, sent as MessagePack (what typed subscribers decode);
    /// without it DATA is sent as raw bytes.
    #[arg(long)]
    json: bool,
    /// Seconds to wait, after the last message, until every live member
    /// acknowledged everything; past it, exit 1 naming those that did not.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    ack_timeout: f64,
}

pub async fn run(args: Args) -> Result<()> {
    validate_topic(&args.topic)?;
    // A bad payload on the command line fails before joining the bus.
    if let Some(data) = args.data.as_deref().filter(|d| *d != "-") {
        payload::encode(data, args.json, PublishOptions::new())?;
    }
    let peer = args.join.start("chorus-pub").await?;
    let result = publish(&args, &peer).await;
    peer.shutdown().await;
    result
}

async fn publish(args: &Args, peer: &chorus::Peer) -> Result<()> {
    args.join.settle(peer).await?;
    let options = |n: Option<u64>| {
        let mut o = PublishOptions::new();
        if let Some(id) = &args.id {
            o = o.id(n.map_or_else(|| id.clone(), |n| format!("{id}-{n}")));
        }
        if let Some(c) = &args.correlation_id {
            o = o.correlation_id(c);
        }
        o
    };
    match args.data.as_deref() {
        Some(data) if data != "-" => {
            let (bytes, o) = payload::encode(data, args.json, options(None))?;
            peer.publish_bytes_with(&args.topic, bytes, o).await?;
        }
        _ => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut n = 0;
            while let Some(line) = lines.next_line().await? {
                n += 1;
                let (bytes, o) = payload::encode(&line, args.json, options(Some(n)))?;
                peer.publish_bytes_with(&args.topic, bytes, o).await?;
            }
        }
    }
    let wait = Duration::from_secs_f64(args.ack_timeout.max(0.0));
    peer.flush(wait)
        .await
        .context("not every member acknowledged what was published")
}
