//! Choreography: bid → work order → invoice, as separate peer services that
//! only know topics, never each other. No service orchestrates the flow;
//! each reacts to events and emits its own.
//!
//! - **bids** accepts bids and emits `BidAccepted` (`bids.accepted`), the
//!   bid id as the message id, so it becomes the flow id of everything
//!   that follows;
//! - **work-orders** reacts with `WorkOrderCreated` (`work.created`) and,
//!   once the work is done, `WorkOrderCompleted` (`work.completed`) — it
//!   drops one bid on purpose (`--drop`) to show the observer at work;
//! - **invoicing** reacts to completed work with `InvoiceIssued`
//!   (`invoices.issued`);
//! - **dashboard** subscribes to everything, prints the flow rate per
//!   topic every second, and runs an [`Observer`] that flags every bid
//!   without a work order, every work order never completed and every
//!   completion never invoiced.
//!
//! Run: `cargo run --example choreography -- --bids 40 --drop 13`. Exits
//! non-zero unless the observer reported exactly the injected missing work
//! order and every other bid was invoiced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use chorus::{Delivery, Observation, Observer, Peer, PublishOptions};

#[derive(Parser, Debug)]
#[command(about = "Bid → work order → invoice as choreographed peer services")]
struct Args {
    /// Bids to accept.
    #[arg(long, default_value_t = 40)]
    bids: u64,
    /// Bids accepted per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// The bid the work-order service loses on purpose (0: none).
    #[arg(long, default_value_t = 13)]
    drop: u64,
    /// How long a step may take before the observer reports it missing (ms).
    #[arg(long, default_value_t = 1000)]
    within_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct BidAccepted {
    bid: u64,
    customer: String,
    amount_cents: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WorkOrderCreated {
    bid: u64,
    order: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct WorkOrderCompleted {
    order: String,
    amount_cents: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct InvoiceIssued {
    order: String,
    invoice: String,
    amount_cents: u64,
}

/// Every service's own peer, joined through `seed` (the first has none).
async fn join(name: &str, seed: Option<&str>) -> chorus::Result<Peer> {
    let mut b = Peer::builder()
        .name(name)
        .listen("tcp://127.0.0.1:0")
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_deadline(Duration::from_millis(100));
    if let Some(s) = seed {
        b = b.seed(s);
    }
    b.start().await
}

/// The bid processor: accepts `count` bids at `rate` per second.
async fn bids(peer: Peer, count: u64, rate: f64) -> chorus::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for bid in 1..=count {
        tick.tick().await;
        let event = BidAccepted {
            bid,
            customer: format!("customer-{}", bid % 7),
            amount_cents: 10_000 + bid * 125,
        };
        peer.publish_with_id(format!("bid-{bid}"), "bids.accepted", &event)
            .await?;
    }
    Ok(())
}

/// The work-order service. Publishing inside the handler joins the bid's
/// flow by itself; the completion, published later from another task,
/// joins it explicitly with `caused_by`.
fn work_orders(peer: Peer, drop: u64) -> chorus::Result<chorus::Handler> {
    let publisher = peer.clone();
    peer.subscribe_with("bids.accepted", move |d: Delivery<BidAccepted>| {
        let peer = publisher.clone();
        async move {
            let bid = &d.value;
            if bid.bid == drop {
                println!("work-orders: (losing bid {} on purpose)", bid.bid);
                return Ok(());
            }
            let order = format!("wo-{}", bid.bid);
            let created = WorkOrderCreated {
                bid: bid.bid,
                order: order.clone(),
            };
            peer.publish("work.created", &created).await?;
            let done = WorkOrderCompleted {
                order,
                amount_cents: bid.amount_cents,
            };
            let options = PublishOptions::new().caused_by(&d);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Err(e) = peer.publish_with("work.completed", &done, options).await {
                    eprintln!("work-orders: cannot complete {}: {e}", done.order);
                }
            });
            Ok::<(), chorus::Error>(())
        }
    })
}

/// The invoicing service.
fn invoicing(peer: Peer) -> chorus::Result<chorus::Handler> {
    let publisher = peer.clone();
    peer.subscribe_with("work.completed", move |d: Delivery<WorkOrderCompleted>| {
        let peer = publisher.clone();
        async move {
            let invoice = InvoiceIssued {
                invoice: format!("inv-{}", d.value.order),
                order: d.value.order.clone(),
                amount_cents: d.value.amount_cents,
            };
            peer.publish("invoices.issued", &invoice).await
        }
    })
}

/// What the dashboard saw.
#[derive(Default, Debug)]
struct Seen {
    per_topic: BTreeMap<String, u64>,
    observations: Vec<Observation>,
}

/// The dashboard: flow rate per topic every second, and the observer.
fn dashboard(peer: Peer, within: Duration, seen: Arc<Mutex<Seen>>) -> chorus::Result<()> {
    let mut everything = peer.subscribe_bytes(">")?;
    let mut observer = Observer::builder()
        .expect(
            "a work order for every accepted bid",
            "bids.accepted",
            "work.created",
            within,
        )
        .expect(
            "every work order completed",
            "work.created",
            "work.completed",
            within,
        )
        .expect(
            "an invoice for all completed work",
            "work.completed",
            "invoices.issued",
            within,
        )
        .start(&peer)?;
    let counts = seen.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = BTreeMap::new();
        loop {
            tokio::select! {
                d = everything.next() => match d {
                    Some(d) => *counts.lock().per_topic.entry(d.topic().to_owned()).or_default() += 1,
                    None => break,
                },
                _ = tick.tick() => {
                    let now = counts.lock().per_topic.clone();
                    let rates: Vec<String> = now
                        .iter()
                        .map(|(t, n)| format!("{t} {}/s", n - last.get(t).copied().unwrap_or(0)))
                        .collect();
                    println!("dashboard: {}", rates.join(", "));
                    last = now;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(o) = observer.next().await {
            match &o {
                Observation::Missing {
                    expectation,
                    key,
                    waited_for,
                    waited,
                    ..
                } => println!(
                    "dashboard: MISSING {waited_for} for {key} after {waited:?} ({expectation})"
                ),
                other => println!("dashboard: {other:?}"),
            }
            seen.lock().observations.push(o);
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    let args = Args::parse();
    let within = Duration::from_millis(args.within_ms);

    // Four services, each its own peer; they meet through the first's address.
    let board = join("dashboard", None).await?;
    let seed = board.local_url().to_owned();
    let bid_peer = join("bids", Some(&seed)).await?;
    let work_peer = join("work-orders", Some(&seed)).await?;
    let invoice_peer = join("invoicing", Some(&seed)).await?;
    let all = [&board, &bid_peer, &work_peer, &invoice_peer];
    for p in all {
        p.wait_for_members(3, Duration::from_secs(30)).await?;
    }
    println!("bus formed: dashboard, bids, work-orders, invoicing");

    let seen = Arc::new(Mutex::new(Seen::default()));
    dashboard(board.clone(), within, seen.clone())?;
    let _work = work_orders(work_peer.clone(), args.drop)?;
    let _invoices = invoicing(invoice_peer.clone())?;
    bids(bid_peer.clone(), args.bids, args.rate).await?;

    // Wait until every flow either reached its invoice or was reported.
    let expected_invoices = args.bids - u64::from(args.drop >= 1 && args.drop <= args.bids);
    let settle = tokio::time::Instant::now() + 3 * within + Duration::from_secs(5);
    loop {
        let done = {
            let s = seen.lock();
            s.per_topic.get("invoices.issued").copied().unwrap_or(0) >= expected_invoices
                && s.observations.len() as u64 >= args.bids - expected_invoices
        };
        if done || tokio::time::Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a late or wrong observation the chance to show up.
    tokio::time::sleep(within + Duration::from_millis(200)).await;

    let ok = summary(&seen.lock(), &args, expected_invoices);
    for p in all {
        p.shutdown().await;
    }
    println!("result: {}", if ok { "OK" } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Prints what the dashboard saw; true if it is what the run should show.
fn summary(s: &Seen, args: &Args, expected_invoices: u64) -> bool {
    println!("summary:");
    for (topic, n) in &s.per_topic {
        println!("  {topic:<16} {n}");
    }
    let missing: Vec<&str> = s
        .observations
        .iter()
        .filter(|o| matches!(o, Observation::Missing { .. }))
        .map(|o| o.key())
        .collect();
    println!(
        "  observer: {} observation(s), missing: {missing:?}",
        s.observations.len()
    );
    let injected = format!("bid-{}", args.drop);
    s.per_topic.get("invoices.issued").copied().unwrap_or(0) == expected_invoices
        && s.observations.len() == missing.len()
        && if expected_invoices < args.bids {
            missing == [injected.as_str()]
        } else {
            missing.is_empty()
        }
}
