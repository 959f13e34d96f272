//! `chorus pub`: publish one message, or one per line of stdin, and wait
//! until every live member has acknowledged them before leaving.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
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
}

pub async fn run(args: Args) -> Result<()> {
    validate_topic(&args.topic)?;
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
    acknowledged(peer, Duration::from_secs_f64(args.join.timeout.max(0.1))).await
}

/// Waits until no published message is retained for retransmission any
/// more: every live member acknowledged everything.
async fn acknowledged(peer: &chorus::Peer, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while peer.stats().retransmit_buffer > 0 {
        if Instant::now() >= deadline {
            bail!(
                "{} message(s) not acknowledged by every member within {:.1} s",
                peer.stats().retransmit_buffer,
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
