//! `chorus req`: send one request and print its reply.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chorus::{validate_topic, Error, PublishOptions};

use crate::join::JoinArgs;
use crate::payload;

/// Arguments of `chorus req`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topic of the request, e.g. quotes.get.
    topic: String,
    /// The request's payload.
    data: String,
    #[command(flatten)]
    join: JoinArgs,
    /// DATA is JSON, sent as MessagePack (what typed servers decode);
    /// without it DATA is sent as raw bytes.
    #[arg(long)]
    json: bool,
    /// Partition key: requests with one key go to the same server.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Seconds to wait for the reply (and, first, for a server to be known).
    #[arg(long = "reply-timeout", value_name = "SECS", default_value_t = 5.0)]
    reply_timeout: f64,
}

pub async fn run(args: Args) -> Result<()> {
    validate_topic(&args.topic)?;
    let (bytes, options) = payload::encode(&args.data, args.json, PublishOptions::new())?;
    let options = match &args.key {
        Some(k) => options.key(k),
        None => options,
    };
    let peer = args.join.start("chorus-req").await?;
    let result = ask(&args, &peer, bytes, options).await;
    peer.shutdown().await;
    result
}

async fn ask(
    args: &Args,
    peer: &chorus::Peer,
    bytes: Vec<u8>,
    options: PublishOptions,
) -> Result<()> {
    args.join.settle(peer).await?;
    let end = Instant::now() + Duration::from_secs_f64(args.reply_timeout.max(0.1));
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let asked = peer
            .request_bytes_with(&args.topic, bytes.clone(), options.clone(), left)
            .await;
        match asked {
            Ok(reply) => {
                println!("{}", payload::render(&reply, None));
                return Ok(());
            }
            // Servers are learned from their heartbeats: ask again a
            // little later until the time is up.
            Err(Error::NoResponder { .. }) if Instant::now() + Duration::from_millis(100) < end => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!(e),
        }
    }
}
