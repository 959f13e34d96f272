//! Two peers in one process discover each other and exchange a typed event.
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
    // work-orders joins the bus through bids; heartbeats do the rest.
    let work = chorus::Peer::builder()
        .name("work-orders")
        .seed(bids.local_url())
        .start()
        .await?;
    println!("bids        {} at {}", bids.id(), bids.local_url());
    println!("work-orders {} at {}", work.id(), work.local_url());
    let mut accepted = work.subscribe::<BidAccepted>("bids.*")?;

    // Pub/sub does not replay to late joiners: wait until bids has
    // discovered work-orders and its subscriber link is up.
    bids.wait_for_members(1, Duration::from_secs(10)).await?;
    for m in bids.members() {
        println!("bids sees {:?}: {} ({})", m.state, m.name(), m.id());
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

    bids.shutdown().await;
    work.shutdown().await;
    Ok(())
}
