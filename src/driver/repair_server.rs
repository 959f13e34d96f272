//! The repair server: the task that owns the rep0 socket.
//!
//! Owns: receiving repair requests (NAKs and direct acks) on the peer's
//! repair endpoint, checking and decoding them, and sending the answers.
//! The answer itself comes from the publish driver, which owns the outbox:
//! each request goes to it as a [`RepairJob`] and its [`Repair`] comes back
//! on a oneshot (computed in memory, so publishing never waits on this
//! task). rep0 answers one request at a time; while an answer is going
//! out no new request is taken. A requester that stops reading fills its
//! socket buffers and the send waits; after [`ANSWER_TIMEOUT`] its link is
//! closed (it redials if it is a real peer) so the others are answered again.

use std::sync::Arc;
use std::time::Duration;

use nng::Socket;
use tokio::sync::{mpsc, oneshot};

use crate::api::stats::Counters;
use crate::transport::gate::Gate;
use crate::transport::socket::{AioSend, RecvReady};
use crate::wire::repair::{Repair, RepairRequest};

/// How long one answer may take to be handed to its requester's link.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// One decoded repair request for the publish driver to answer.
pub(crate) struct RepairJob {
    /// What was asked.
    pub request: RepairRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Repair>,
}

/// The task's state: the socket and what it needs to check requests.
pub(crate) struct RepairServer {
    pub socket: Socket,
    pub gate: Arc<Gate>,
    pub counters: Arc<Counters>,
    pub max_message_size: usize,
    /// To the publish driver; closed when it stops, which stops this task.
    pub jobs: mpsc::Sender<RepairJob>,
}

impl RepairServer {
    /// Runs until the publish driver stops or the socket closes; closes the
    /// socket on the way out.
    pub(crate) async fn run(self) {
        match (RecvReady::new(&self.socket), AioSend::new(ANSWER_TIMEOUT)) {
            (Ok(ready), Ok(mut aio)) => {
                let mut requests = Vec::with_capacity(1);
                'serve: loop {
                    tokio::select! {
                        r = ready.recv_batch(&self.socket, &mut requests, 1) => if r.is_err() {
                            break;
                        },
                        () = self.jobs.closed() => break,
                    }
                    for msg in requests.drain(..) {
                        if !self.serve(msg, &mut aio).await {
                            break 'serve;
                        }
                    }
                }
                drop(ready); // before the socket closes
                drop(aio); // cancelled and waited for before the socket closes
            }
            _ => tracing::error!("cannot drive the repair socket; NAKs go unanswered"),
        }
        self.socket.close();
    }

    /// Answers one request (or drops it if it fails its checks). False once
    /// the publish driver is gone.
    async fn serve(&self, mut msg: nng::Message, aio: &mut AioSend) -> bool {
        let Ok(len) = self.gate.check(&mut msg) else {
            return true; // counted by the gate
        };
        let asker = msg.pipe();
        let request = match RepairRequest::decode(&msg.as_slice()[..len], self.max_message_size) {
            Ok(request) => request,
            Err(e) => {
                Counters::add(&self.counters.naks_malformed, 1);
                tracing::debug!(error = %e, "malformed repair request dropped");
                return true;
            }
        };
        match &request {
            RepairRequest::Nak(_) => Counters::add(&self.counters.naks_received, 1),
            RepairRequest::Ack(_) => Counters::add(&self.counters.direct_acks_received, 1),
        }
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(RepairJob { request, reply }).await.is_err() {
            return false;
        }
        let Ok(repair) = answer.await else {
            return false;
        };
        match aio
            .send(&self.socket, self.gate.message(&repair.encode()))
            .await
        {
            Ok(()) => {}
            Err(nng::Error::TimedOut) => {
                if let Some(pipe) = asker {
                    self.gate.close(pipe, "does not read its repair answers");
                }
            }
            Err(e) => tracing::debug!(error = %e, "repair answer not sent"),
        }
        true
    }
}
