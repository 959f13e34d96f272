//! `chorus members`: the member table of the bus, once or live.

use std::time::{Duration, Instant};

use anyhow::Result;
use chorus::Member;
use futures::StreamExt;

use crate::join::{stop_signal, JoinArgs};

/// Arguments of `chorus members`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    join: JoinArgs,
    /// Keep the table on screen, refreshed on every change and every second.
    #[arg(long)]
    watch: bool,
}

/// The table: name, id, state, address, time since last heard of.
pub fn table(members: &[Member], now: Instant) -> String {
    let mut rows = members.to_vec();
    rows.sort_by(|a, b| (a.name(), a.id()).cmp(&(b.name(), b.id())));
    let mut out = format!(
        "{:<20} {:<16} {:<8} {:<28} {:>10}\n",
        "NAME", "ID", "STATE", "ADDRESS", "LAST SEEN"
    );
    for m in rows {
        let ago = now.saturating_duration_since(m.last_seen);
        out += &format!(
            "{:<20} {:<16} {:<8} {:<28} {:>8.1}s ago\n",
            m.name(),
            m.id().to_string(),
            format!("{:?}", m.state),
            m.info.endpoints.survey,
            ago.as_secs_f64()
        );
    }
    out
}

pub async fn run(args: Args) -> Result<()> {
    // This command is a member itself while it runs (named so), and leaves.
    let peer = args.join.start("chorus-members").await?;
    let settled = args.join.settle(&peer).await;
    if let Err(e) = settled {
        peer.shutdown().await;
        return Err(e);
    }
    if !args.watch {
        print!("{}", table(&peer.members(), Instant::now()));
        peer.shutdown().await;
        return Ok(());
    }
    let mut events = peer.membership();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        // Clear the screen, then draw the table.
        print!("\x1b[2J\x1b[H{}", table(&peer.members(), Instant::now()));
        tokio::select! {
            _ = events.next() => {}
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
    }
    peer.shutdown().await;
    Ok(())
}
