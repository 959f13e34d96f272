//! Three replicas of one service sharing the work, one of them killed
//! mid-flow: every bid still becomes exactly one work order.
//!
//! - **bids** (this process) accepts bids and publishes `bids.accepted`,
//!   the customer as the partition key;
//! - **work-orders** runs as three replica processes (this program with
//!   `--replica`), one consumer group: each bid is handled by one of them,
//!   which publishes `work.created` with the message id `wo-<bid>`;
//! - after a third of the bids, replica 1 is killed with SIGKILL: the bids
//!   it had not processed go to the other two (flagged `redelivered`); a
//!   work order it may have published just before dying is the same message
//!   id, which receivers drop as a duplicate;
//! - **dashboard** (this process) counts the work orders per bid.
//!
//! Run: `cargo run --example work_order_replicas -- --bids 60`. Exits
//! non-zero unless every bid became exactly one work order.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use chorus::{Delivery, HandlerOptions, Peer, PublishOptions};

#[derive(Parser, Debug)]
#[command(about = "Work-order replicas in a consumer group, one killed mid-flow")]
struct Args {
    /// Bids to accept.
    #[arg(long, default_value_t = 60)]
    bids: u64,
    /// Bids accepted per second.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Run as a work-order replica joining through this seed (internal).
    #[arg(long, value_name = "SEED", hide = true)]
    replica: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct BidAccepted {
    bid: u64,
    customer: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WorkOrderCreated {
    bid: u64,
    order: String,
    replica: u32,
}

fn builder(name: &str) -> chorus::PeerBuilder {
    Peer::builder()
        .name(name)
        .listen("tcp://127.0.0.1:0")
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_deadline(Duration::from_millis(50))
}

/// One work-order replica: handles its share of the bids until killed.
async fn replica(seed: &str) -> chorus::Result<()> {
    let peer = builder("work-orders").seed(seed).start().await?;
    let me = std::process::id();
    let p = peer.clone();
    peer.subscribe_with_options(
        "bids.accepted",
        HandlerOptions::new().group("work-orders"),
        move |d: Delivery<BidAccepted>| {
            let p = p.clone();
            async move {
                let bid = d.value.bid;
                let order = WorkOrderCreated {
                    bid,
                    order: format!("wo-{bid}"),
                    replica: me,
                };
                if d.redelivered() {
                    eprintln!("replica {me}: bid {bid} handed over from a failed replica");
                }
                // The same id whoever creates it: a duplicate is dropped.
                p.publish_with(
                    "work.created",
                    &order,
                    PublishOptions::new().id(order.order.clone()),
                )
                .await
                .map_err(|e| e.to_string())
            }
        },
    )?;
    std::future::pending::<()>().await;
    Ok(())
}

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    let args = Args::parse();
    if let Some(seed) = &args.replica {
        return replica(seed).await;
    }
    let bids = builder("bids").start().await?;
    let seed = bids.local_url().to_string();
    let dashboard = builder("dashboard").seed(&seed).start().await?;
    let orders: Arc<Mutex<BTreeMap<u64, Vec<u32>>>> = Default::default();
    let mut created = dashboard.subscribe::<WorkOrderCreated>("work.created")?;
    let seen = orders.clone();
    tokio::spawn(async move {
        while let Some(d) = created.next().await {
            seen.lock()
                .entry(d.value.bid)
                .or_default()
                .push(d.value.replica);
        }
    });
    let exe = std::env::current_exe().expect("this program");
    let mut replicas: Vec<Option<Replica>> = (0..3)
        .map(|_| {
            let child = Command::new(&exe)
                .args(["--replica", &seed])
                .stdin(Stdio::null())
                .spawn()
                .expect("a replica process");
            Some(Replica(child))
        })
        .collect();
    let start = Instant::now();
    while bids.stats().group_members < 3 {
        if start.elapsed() > Duration::from_secs(30) {
            eprintln!("the replicas did not join within 30 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The dashboard linked to every replica, so it gets every work order.
    dashboard
        .wait_for_members(4, Duration::from_secs(30))
        .await?;
    println!(
        "bids: 3 work-order replicas in the group; accepting {} bids",
        args.bids
    );
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let kill_at = args.bids / 3;
    for bid in 1..=args.bids {
        let accepted = BidAccepted {
            bid,
            customer: format!("customer-{}", bid % 7),
        };
        bids.publish_with(
            "bids.accepted",
            &accepted,
            PublishOptions::new().key(accepted.customer.clone()),
        )
        .await?;
        if bid == kill_at {
            if let Some(r) = replicas[1].take() {
                println!("bids: SIGKILL of replica {} after bid {bid}", r.0.id());
                drop(r); // kill -9
            }
        }
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while orders.lock().len() < args.bids as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orders = orders.lock().clone();
    let mut per_replica: BTreeMap<u32, u64> = BTreeMap::new();
    for replicas in orders.values() {
        *per_replica.entry(replicas[0]).or_default() += 1;
    }
    let once = orders.values().filter(|r| r.len() == 1).count();
    let s = bids.stats();
    println!(
        "dashboard: {} bids, {} with a work order, {} exactly once; work orders per replica {:?}",
        args.bids,
        orders.len(),
        once,
        per_replica.values().collect::<Vec<_>>()
    );
    println!(
        "bids: {} handed to another replica after the kill ({} flagged redelivered)",
        s.group_reassigned, s.group_failed_over
    );
    drop(replicas);
    dashboard.shutdown().await;
    bids.shutdown().await;
    let missing: Vec<u64> = (1..=args.bids)
        .filter(|b| !orders.contains_key(b))
        .collect();
    if !missing.is_empty() {
        eprintln!("bids without a work order: {missing:?}");
    }
    if orders.len() as u64 != args.bids || once != orders.len() {
        eprintln!("FAILED: not every bid became exactly one work order");
        std::process::exit(1);
    }
    println!("every bid became exactly one work order");
    Ok(())
}
