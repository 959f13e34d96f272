//! Durable streams in one minute: `bids` publishes bid events, `invoicing`
//! is a durable consumer. Invoicing is stopped while bids go on, then
//! started again with its data dir (on another address): it invoices what
//! it missed and nothing twice. Then bids itself is restarted with its data
//! dir: its stream continues where it stopped.
//!
//! Run: `cargo run --example durable_restart` (exits non-zero if a bid is
//! invoiced twice or not at all).

use std::sync::Arc;
use std::time::Duration;

use chorus::{Delivery, HandlerOptions, Peer, StartAt};
use parking_lot::Mutex;

type Invoiced = Arc<Mutex<Vec<(u32, u64, bool)>>>;

async fn invoicing(dir: &std::path::Path, seed: &str, book: &Invoiced) -> chorus::Result<Peer> {
    let peer = Peer::builder()
        .name("invoicing")
        .data_dir(dir)
        .seed(seed)
        .start()
        .await?;
    let book = book.clone();
    let opts = HandlerOptions::new()
        .durable("invoicing")
        .start_at(StartAt::New);
    peer.subscribe_with_options("bids.accepted", opts, move |d: Delivery<u32>| {
        let book = book.clone();
        async move {
            println!(
                "invoicing: bid {} (seq {}{})",
                d.value,
                d.seq(),
                if d.redelivered() { ", redelivered" } else { "" }
            );
            book.lock().push((d.value, d.seq(), d.redelivered()));
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    Ok(peer)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> chorus::Result<()> {
    let dirs = std::env::temp_dir().join(format!("chorus-durable-demo-{}", std::process::id()));
    let (bids_dir, inv_dir) = (dirs.join("bids"), dirs.join("invoicing"));
    let book: Invoiced = Default::default();

    let bids = Peer::builder()
        .name("bids")
        .data_dir(&bids_dir)
        .start()
        .await?;
    let inv = invoicing(&inv_dir, bids.local_url(), &book).await?;
    bids.wait_for_members(1, Duration::from_secs(10)).await?;
    for bid in 1..=5 {
        bids.publish("bids.accepted", &bid).await?;
    }
    wait_for("5 invoices", || book.lock().len() == 5).await;

    println!("-- invoicing stops; bids 6..=10 are accepted meanwhile");
    inv.shutdown().await;
    for bid in 6..=10 {
        bids.publish("bids.accepted", &bid).await?;
    }
    bids.flush(Duration::from_secs(5)).await?;

    println!("-- invoicing starts again with its data dir");
    let inv = invoicing(&inv_dir, bids.local_url(), &book).await?;
    wait_for("10 invoices", || book.lock().len() == 10).await;

    println!("-- bids restarts with its data dir; its stream goes on");
    let url = bids.local_url().to_owned();
    bids.shutdown().await;
    drop(bids);
    let bids = Peer::builder()
        .name("bids")
        .data_dir(&bids_dir)
        .seed(inv.local_url())
        .start()
        .await?;
    println!(
        "bids: same id {} (was at {url}), new address {}",
        bids.id(),
        bids.local_url()
    );
    bids.wait_for_members(1, Duration::from_secs(10)).await?;
    inv.wait_for_members(1, Duration::from_secs(10)).await?;
    for bid in 11..=12 {
        bids.publish("bids.accepted", &bid).await?;
    }
    wait_for("12 invoices", || book.lock().len() == 12).await;
    inv.shutdown().await;
    bids.shutdown().await;
    let _ = std::fs::remove_dir_all(&dirs);

    let got = book.lock().clone();
    let values: Vec<u32> = got.iter().map(|(v, _, _)| *v).collect();
    let seqs: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
    let ok = values == (1..=12).collect::<Vec<_>>() && seqs == (1..=12).collect::<Vec<_>>();
    println!(
        "result: {} — {} invoices for bids {:?}, seqs {:?}",
        if ok { "OK" } else { "FAILED" },
        got.len(),
        values,
        seqs
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
