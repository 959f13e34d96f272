//! The publish driver: the tokio task that owns the pub0 socket.
//!
//! Owns: sequence numbering (so sequence order equals send order), stamping,
//! encoding and sending. `Peer::publish` validates and serializes in the
//! caller's task and hands an [`Outgoing`] over a bounded channel; a full
//! channel makes `publish` wait. Pub0 itself never blocks: NNG queues up to
//! `send_buffer` messages per subscriber pipe and drops the oldest beyond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nng::Socket;
use tokio::sync::{mpsc, oneshot};

use crate::envelope::{Envelope, Headers, PeerId};
use crate::stats::Counters;

/// An event accepted by `publish`, not yet numbered.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub id: Option<String>,
    pub correlation_id: Option<String>,
    pub headers: Headers,
}

/// Messages to the publish driver.
pub(crate) enum PubCmd {
    Event(Outgoing),
    /// Stop after everything queued before it was sent.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Publisher {
    pub socket: Socket,
    pub origin: PeerId,
    pub incarnation: u64,
    pub counters: Arc<Counters>,
    /// Last sequence number sent, advertised in heartbeats.
    pub last_seq: Arc<AtomicU64>,
}

impl Publisher {
    /// Runs until told to shut down or until every `Peer` handle is gone.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<PubCmd>) {
        let mut next_seq = 1u64;
        let mut buf = Vec::with_capacity(4096);
        let mut ack = None;
        while let Some(cmd) = rx.recv().await {
            match cmd {
                PubCmd::Event(out) => {
                    let env = Envelope {
                        origin: self.origin,
                        incarnation: self.incarnation,
                        seq: next_seq,
                        id: out.id,
                        topic: out.topic,
                        timestamp_us: now_us(),
                        correlation_id: out.correlation_id,
                        headers: out.headers,
                        payload: out.payload,
                    };
                    self.last_seq.store(next_seq, Ordering::Relaxed);
                    next_seq += 1;
                    buf.clear();
                    env.encode_into(&mut buf);
                    match self.socket.try_send(nng::Message::from(&buf[..])) {
                        Ok(()) => Counters::add(&self.counters.published, 1),
                        Err((_, e)) => {
                            tracing::error!(error = %e, seq = env.seq, "pub socket refused a message")
                        }
                    }
                }
                PubCmd::Shutdown(done) => {
                    ack = Some(done);
                    break;
                }
            }
        }
        self.socket.close();
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }
}

/// Microseconds since the Unix epoch by the system clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
