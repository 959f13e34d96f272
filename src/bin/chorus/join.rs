//! Joining the bus from a command: the shared arguments, starting the peer,
//! waiting until the member table has settled, and stopping on a signal.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chorus::Peer;

/// Where to join and how long to wait for the bus.
#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// Surveyor URL of a running member to join through (repeatable).
    #[arg(long, value_name = "URL")]
    pub seed: Vec<String>,
    /// This peer's own address; port 0 picks a free port.
    #[arg(long, value_name = "URL", default_value = "tcp://127.0.0.1:0")]
    pub listen: String,
    /// Seconds to wait for the seed to answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub timeout: f64,
}

impl JoinArgs {
    /// Starts a peer named `name` with these seeds.
    pub async fn start(&self, name: &str) -> Result<Peer> {
        let mut builder = Peer::builder().name(name).listen(&self.listen);
        for s in &self.seed {
            builder = builder.seed(s);
        }
        builder.start().await.context("cannot start a peer")
    }

    /// Waits until the bus answered and this peer's member table stopped
    /// changing for two heartbeat rounds (gossip brings the members the
    /// seed knows), with every live member linked to this peer's publisher.
    pub async fn settle(&self, peer: &Peer) -> Result<()> {
        if self.seed.is_empty() {
            bail!("no --seed given: name a running member's URL");
        }
        let round = Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs_f64(self.timeout.max(0.1));
        let mut last = (u64::MAX, Instant::now());
        loop {
            let s = peer.stats();
            let live = s.members;
            if live != last.0 {
                last = (live, Instant::now());
            }
            if live > 0 && s.links_out >= live && last.1.elapsed() >= 2 * round {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if live == 0 {
                    bail!(
                        "no member answered from {} within {:.1} s (is a node running there?)",
                        self.seed.join(", "),
                        self.timeout
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
