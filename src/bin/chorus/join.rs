//! Joining the bus from a command: the shared arguments, starting the peer,
//! waiting until the member table has settled, and stopping on a signal.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chorus::{Peer, PeerBuilder};

/// How to be a member of a bus: its key and its message size, shared by
/// every command that joins.
#[derive(clap::Args, Debug, Clone)]
pub struct BusArgs {
    /// File holding the bus key (its bytes as they are, less one trailing
    /// newline; at least 16). The CHORUS_BUS_KEY environment variable may
    /// hold it instead. Without either, the bus is open.
    #[arg(long, value_name = "PATH")]
    pub bus_key_file: Option<std::path::PathBuf>,
    /// Largest encoded message sent or accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_message_size: usize,
}

/// Where the bus key comes from when no file is given.
pub const BUS_KEY_ENV: &str = "CHORUS_BUS_KEY";

impl BusArgs {
    /// `builder` with the bus key (if any) and the message size.
    pub fn apply(&self, builder: PeerBuilder) -> Result<PeerBuilder> {
        let builder = builder.max_message_size(self.max_message_size);
        let key = match &self.bus_key_file {
            Some(path) => {
                let mut bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the bus key file {}", path.display()))?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                Some(bytes)
            }
            None => std::env::var_os(BUS_KEY_ENV).map(|v| v.into_encoded_bytes()),
        };
        Ok(match key {
            Some(k) => builder.bus_key(k),
            None => builder,
        })
    }
}

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
    /// Data dir: this peer's identity and stream (and a durable
    /// subscription's position) live there, across runs.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub bus: BusArgs,
}

impl JoinArgs {
    /// Starts a peer named `name` with these seeds, marked as a tool (so
    /// services waiting for the services they need do not count it).
    pub async fn start(&self, name: &str) -> Result<Peer> {
        let mut builder = Peer::builder().name(name).tool(true).listen(&self.listen);
        for s in &self.seed {
            builder = builder.seed(s);
        }
        if let Some(dir) = &self.data_dir {
            builder = builder.data_dir(dir);
        }
        let builder = self.bus.apply(builder)?;
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
