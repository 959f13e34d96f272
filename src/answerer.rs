//! Sends the publisher's repair answers, off the publish path.
//!
//! Owns: the task that replies on the publisher's rep socket and its Aio.
//! The publish driver computes each answer (in memory, from its outbox) and
//! hands it here; while an answer is going out it takes no new NAK (rep0
//! answers one request at a time) but keeps publishing. A requester that
//! stops reading fills its socket buffers and the send waits; after the
//! timeout its link is closed (it redials if it is a real peer) so the
//! NAKs of the others are answered again.

use std::sync::Arc;
use std::time::Duration;

use nng::{Pipe, Socket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::gate::Gate;
use crate::transport::AioSend;

/// How long one answer may take to be handed to its requester's link.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The handle the publish driver keeps.
pub(crate) struct Answerer {
    jobs: mpsc::Sender<(nng::Message, Option<Pipe>)>,
    done: mpsc::Receiver<()>,
    task: JoinHandle<()>,
    busy: bool,
}

impl Answerer {
    /// Starts the task replying on `rep`.
    pub(crate) fn spawn(rep: Socket, gate: Arc<Gate>) -> Result<Self> {
        let mut aio = AioSend::new(ANSWER_TIMEOUT)?;
        let (jobs, mut rx) = mpsc::channel::<(nng::Message, Option<Pipe>)>(1);
        let (done_tx, done) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            while let Some((msg, asker)) = rx.recv().await {
                match aio.send(&rep, msg).await {
                    Ok(()) => {}
                    Err(nng::Error::TimedOut) => {
                        if let Some(pipe) = asker {
                            gate.close(pipe, "does not read its repair answers");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "repair answer not sent"),
                }
                if done_tx.send(()).await.is_err() {
                    break;
                }
            }
            drop(aio); // cancelled and waited for before the socket closes
        });
        Ok(Answerer {
            jobs,
            done,
            task,
            busy: false,
        })
    }

    /// Whether an answer is still going out (no new NAK may be taken).
    pub(crate) fn busy(&self) -> bool {
        self.busy
    }

    /// Hands one answer to the task; only when not [`busy`](Self::busy).
    pub(crate) fn send(&mut self, answer: nng::Message, asker: Option<Pipe>) {
        debug_assert!(!self.busy);
        if self.jobs.try_send((answer, asker)).is_ok() {
            self.busy = true;
        }
    }

    /// Resolves when the answer in flight went out (or timed out).
    pub(crate) async fn sent(&mut self) {
        if self.done.recv().await.is_some() {
            self.busy = false;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// Stops the task once the answer in flight is done; the rep socket may
    /// be closed after this.
    pub(crate) async fn stop(self) {
        drop(self.jobs);
        drop(self.done);
        let _ = self.task.await;
    }
}
