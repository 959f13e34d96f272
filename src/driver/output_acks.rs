//! Holding a handler's deliveries until what it published is acknowledged.
//!
//! Owns: the deliveries a handler finished whose handler run published
//! events (the next step of a flow), and asking the publisher, one flush
//! at a time, to tell when every live member has acknowledged those
//! events; only then is each delivery done (its ack lets the origin forget
//! it). So a service killed between handling an event and sending what it
//! published is given that event again (a consumer group member's share
//! goes to another member, flagged), never lost between the two steps; the
//! repeated output is the same message if the handler gives it a stable id,
//! and receivers drop it. The handler does not wait: it goes on with the
//! next delivery while the flush is under way (deliveries finished
//! meanwhile share the next flush).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::driver::publisher::{FlushRequest, Queued};
use crate::wire::envelope::Envelope;

/// See the module documentation.
pub(crate) struct OutputAcks {
    publish: mpsc::Sender<Queued>,
    done_tx: mpsc::UnboundedSender<Vec<Arc<Envelope>>>,
    /// Batches whose outputs were acknowledged (or the peer stopped).
    pub done: mpsc::UnboundedReceiver<Vec<Arc<Envelope>>>,
    waiting: Vec<Arc<Envelope>>,
    busy: bool,
}

impl OutputAcks {
    pub(crate) fn new(publish: mpsc::Sender<Queued>) -> Self {
        let (done_tx, done) = mpsc::unbounded_channel();
        OutputAcks {
            publish,
            done_tx,
            done,
            waiting: Vec::new(),
            busy: false,
        }
    }

    /// `env` is done once what its handler run published is acknowledged.
    pub(crate) fn hold(&mut self, env: Arc<Envelope>) {
        self.waiting.push(env);
        self.kick();
    }

    /// A batch came back on [`done`](Self::done): the next one may go.
    pub(crate) fn finished(&mut self) {
        self.busy = false;
        self.kick();
    }

    fn kick(&mut self) {
        if self.busy || self.waiting.is_empty() {
            return;
        }
        self.busy = true;
        let batch = std::mem::take(&mut self.waiting);
        let publish = self.publish.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let (sent, _) = oneshot::channel();
            let (acked, on_acked) = oneshot::channel();
            if publish
                .send(Queued::Flush(FlushRequest { sent, acked }))
                .await
                .is_ok()
            {
                // Dropped unanswered: the peer stops (nothing to wait for).
                let _ = on_acked.await;
            }
            let _ = done.send(batch);
        });
    }
}
