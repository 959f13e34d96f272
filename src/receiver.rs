//! The receive driver: the tokio task that owns the sub0 socket.
//!
//! Owns: dialing publishers, reading frames without blocking the runtime,
//! rejecting bad input (counted, logged once per source) and dispatching
//! valid envelopes to the subscription registry. A full subscription makes
//! this task wait, so NNG's own bounded queue takes the overflow.

use std::collections::HashMap;
use std::sync::Arc;

use nng::options::{Options, RemAddr};
use nng::{Dialer, Socket};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bad_input::BadInputLog;
use crate::envelope::Envelope;
use crate::faults::FaultInjector;
use crate::frame::DecodeError;
use crate::stats::Counters;
use crate::subscription::{Dispatched, Registry};
use crate::topic::validate_topic;
use crate::transport::{self, RecvReady};

/// How many frames are taken from NNG per wake-up.
const RECV_BATCH: usize = 64;

/// Messages to the receive driver.
pub(crate) enum SubCmd {
    /// Dial a publisher (idempotent per URL).
    Dial(String),
    /// Stop dialing a publisher.
    Undial(String),
    /// Stop, close the socket and end every subscription.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Receiver {
    pub socket: Socket,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub max_message_size: usize,
    pub dialers: HashMap<String, Dialer>,
    pub bad: BadInputLog,
    /// Becomes true when the peer shuts down: ends a wait on a full subscription.
    pub stopping: watch::Receiver<bool>,
    /// Injected link faults (tests and demos), if configured.
    pub faults: Option<FaultInjector<nng::Message>>,
}

impl Receiver {
    /// Runs until told to shut down or until every `Peer` handle is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<SubCmd>) {
        let mut ack = None;
        match RecvReady::new(&self.socket) {
            Ok(ready) => {
                let mut batch = Vec::with_capacity(RECV_BATCH);
                let mut frames = Vec::with_capacity(RECV_BATCH);
                loop {
                    let due = self.faults.as_ref().and_then(|f| f.next_due());
                    tokio::select! {
                        r = ready.recv_batch(&self.socket, &mut batch, RECV_BATCH) => {
                            if let Err(e) = r {
                                tracing::error!(error = %e, "sub socket stopped receiving");
                                break;
                            }
                            match &mut self.faults {
                                Some(f) => {
                                    let now = std::time::Instant::now();
                                    for msg in batch.drain(..) {
                                        f.on_frame(msg, now, &mut frames);
                                    }
                                }
                                None => frames.append(&mut batch),
                            }
                            self.process(&mut frames).await;
                        }
                        _ = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, Into::into)), if due.is_some() => {
                            if let Some(f) = &mut self.faults {
                                f.release_due(std::time::Instant::now(), &mut frames);
                            }
                            self.process(&mut frames).await;
                        }
                        cmd = rx.recv() => match cmd {
                            Some(SubCmd::Dial(url)) => self.dial(url),
                            Some(SubCmd::Undial(url)) => {
                                if let Some(d) = self.dialers.remove(&url) {
                                    tracing::debug!(%url, "no longer dialing publisher");
                                    d.close();
                                }
                            }
                            Some(SubCmd::Shutdown(done)) => {
                                ack = Some(done);
                                break;
                            }
                            None => break,
                        }
                    }
                }
                drop(ready); // before close: closing does not wake a poller
            }
            Err(e) => tracing::error!(error = %e, "cannot poll the sub socket"),
        }
        self.socket.close();
        self.registry.close();
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }

    /// Handles `frames` in order (all of them are taken).
    async fn process(&mut self, frames: &mut Vec<nng::Message>) {
        for msg in frames.drain(..) {
            if !self.handle(msg).await {
                break;
            }
        }
        if let Some(f) = &self.faults {
            let c = f.counts();
            Counters::set(&self.counters.faults_dropped, c.dropped);
            Counters::set(&self.counters.faults_duplicated, c.duplicated);
            Counters::set(&self.counters.faults_reordered, c.reordered);
            Counters::set(&self.counters.faults_delayed, c.delayed);
        }
    }

    fn dial(&mut self, url: String) {
        if self.dialers.contains_key(&url) {
            return;
        }
        match transport::dial(&self.socket, &url) {
            Ok(dialer) => {
                tracing::debug!(%url, "dialing publisher");
                self.dialers.insert(url, dialer);
            }
            Err(e) => tracing::warn!(%url, error = %e, "cannot dial a member's publisher"),
        }
    }

    /// Decodes and dispatches one frame; false if the peer began shutting
    /// down while a full subscription was being waited for.
    async fn handle(&mut self, mut msg: nng::Message) -> bool {
        Counters::add(&self.counters.received, 1);
        let decoded = Envelope::decode(msg.as_slice(), self.max_message_size).and_then(|env| {
            validate_topic(&env.topic)
                .map(|()| env)
                .map_err(|e| DecodeError::Malformed(e.to_string()))
        });
        let env = match decoded {
            Ok(env) => Arc::new(env),
            Err(e) => {
                let (counter, kind) = match e {
                    DecodeError::Oversized { .. } => (&self.counters.oversized, "oversized"),
                    DecodeError::Version(_) | DecodeError::UnknownKind(_) => {
                        (&self.counters.unsupported, "unsupported")
                    }
                    _ => (&self.counters.malformed, "malformed"),
                };
                Counters::add(counter, 1);
                self.bad.reject(kind, &source_of(&mut msg), &e);
                return true;
            }
        };
        match self.registry.dispatch(&env) {
            Dispatched::Unmatched => Counters::add(&self.counters.unmatched, 1),
            Dispatched::Done => {}
            Dispatched::Full(waiting) => {
                for tx in waiting {
                    // A send error means the subscription was dropped meanwhile.
                    tokio::select! {
                        _ = tx.send(env.clone()) => {}
                        _ = self.stopping.wait_for(|stop| *stop) => return false,
                    }
                }
            }
        }
        true
    }
}

/// The remote address of the pipe a message came in on, for logs.
fn source_of(msg: &mut nng::Message) -> String {
    let Some(pipe) = msg.pipe() else {
        return "unknown".into();
    };
    match pipe.get_opt::<RemAddr>() {
        // nng 1.0.1 reports tcp ports byte-swapped (NNG-NOTES.md).
        Ok(nng::SocketAddr::Inet(a)) => format!("{}:{}", a.ip(), a.port().swap_bytes()),
        Ok(other) => format!("{other:?}"),
        Err(_) => "unknown".into(),
    }
}
