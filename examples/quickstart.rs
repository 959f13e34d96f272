//! Two peers in one process exchange a typed event.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct BidAccepted {
    bid: u64,
    customer: String,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    let bids = chorus::Peer::builder().name("bids").start().await?;
    let work = chorus::Peer::builder().name("work-orders").start().await?;
    println!(
        "bids        {} publishes on {}",
        bids.id(),
        bids.local_url()
    );
    println!(
        "work-orders {} publishes on {}",
        work.id(),
        work.local_url()
    );

    // Explicit wiring for now; heartbeat discovery will do this by itself.
    work.connect(bids.local_url()).await?;
    let mut accepted = work.subscribe::<BidAccepted>("bids.*")?;

    // Pub/sub does not replay to late joiners: wait until the link is up.
    while bids.stats().links_out == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let event = BidAccepted {
        bid: 1,
        customer: "acme".into(),
        amount_cents: 125_000,
    };
    bids.publish("bids.accepted", &event).await?;

    let delivery = tokio::time::timeout(Duration::from_secs(10), accepted.next())
        .await
        .map_err(|_| chorus::Error::Config("no delivery within 10 s".into()))?
        .expect("subscription open");
    println!(
        "work-orders received {:?} on {} (origin {}, seq {})",
        delivery.value,
        delivery.topic(),
        delivery.origin(),
        delivery.seq()
    );
    println!("stats of work-orders: {:?}", work.stats());

    bids.shutdown().await;
    work.shutdown().await;
    Ok(())
}
