//! The repair client of one origin: a tokio task that owns a req0 socket
//! dialed to that origin's repair endpoint.
//!
//! Owns: sending the NAKs the inbox decides on (only the newest waiting one:
//! it supersedes older ones), waiting for the answer with a deadline, and
//! checking it: the answer must come from that origin, and each retained
//! frame must decode to one of its envelopes. What passes goes back to the
//! receive driver; what does not is counted and dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::envelope::{Envelope, PeerId};
use crate::repair::{Nak, Repair};
use crate::stats::Counters;
use crate::topic::validate_topic;
use crate::transport::{self, AioSend, RecvReady, SocketConfig};

/// How long a NAK waits for its answer before the inbox may send it again.
const ANSWER_DEADLINE: Duration = Duration::from_millis(500);

/// A checked answer, handed to the receive driver.
#[derive(Debug)]
pub(crate) struct Repaired {
    pub origin: PeerId,
    pub incarnation: u64,
    pub envelopes: Vec<Arc<Envelope>>,
    pub gone: Vec<(u64, u64)>,
}

/// Starts the repair client of `origin` at `url`; NAKs go in through the
/// returned sender (dropping it stops the task).
pub(crate) fn spawn(
    origin: PeerId,
    url: String,
    sockets: SocketConfig,
    max_message_size: usize,
    counters: Arc<Counters>,
    results: mpsc::UnboundedSender<Repaired>,
) -> mpsc::Sender<Nak> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let socket = match transport::req_socket(&sockets)
            .and_then(|s| transport::dial(&s, &url).map(|_| s))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%origin, %url, error = %e, "cannot reach a member's repair endpoint");
                return;
            }
        };
        let client = Client {
            origin,
            socket,
            max_message_size,
            counters,
            results,
        };
        client.run(rx).await;
    });
    tx
}

struct Client {
    origin: PeerId,
    socket: nng::Socket,
    max_message_size: usize,
    counters: Arc<Counters>,
    results: mpsc::UnboundedSender<Repaired>,
}

impl Client {
    async fn run(self, mut rx: mpsc::Receiver<Nak>) {
        if let (Ok(ready), Ok(mut aio)) =
            (RecvReady::new(&self.socket), AioSend::new(ANSWER_DEADLINE))
        {
            let mut replies = Vec::with_capacity(1);
            while let Some(mut nak) = rx.recv().await {
                while let Ok(newer) = rx.try_recv() {
                    nak = newer;
                }
                Counters::add(&self.counters.naks_sent, 1);
                if aio
                    .send(&self.socket, nng::Message::from(&nak.encode()[..]))
                    .await
                    .is_err()
                {
                    continue; // not connected (yet): the inbox will NAK again
                }
                let answer = tokio::time::timeout(
                    ANSWER_DEADLINE,
                    ready.recv_batch(&self.socket, &mut replies, 1),
                )
                .await;
                match answer {
                    Ok(Ok(())) => {
                        for msg in replies.drain(..) {
                            self.check(&msg);
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => Counters::add(&self.counters.naks_unanswered, 1),
                }
            }
            drop((ready, aio)); // before the socket closes
        }
        self.socket.close();
    }

    fn check(&self, msg: &nng::Message) {
        let bad = |what: &str| {
            Counters::add(&self.counters.repairs_malformed, 1);
            tracing::debug!(origin = %self.origin, what, "repair answer dropped");
        };
        let repair = match Repair::decode(msg.as_slice(), self.max_message_size) {
            Ok(r) if r.origin == self.origin => r,
            Ok(_) => return bad("answer from another origin"),
            Err(_) => return bad("malformed answer"),
        };
        let mut envelopes = Vec::with_capacity(repair.frames.len());
        for frame in &repair.frames {
            match Envelope::decode(frame, self.max_message_size) {
                Ok(e)
                    if e.origin == repair.origin
                        && e.incarnation == repair.incarnation
                        && validate_topic(&e.topic).is_ok() =>
                {
                    envelopes.push(Arc::new(e))
                }
                _ => return bad("retained frame not from this origin"),
            }
        }
        Counters::add(&self.counters.repaired, envelopes.len() as u64);
        let _ = self.results.send(Repaired {
            origin: repair.origin,
            incarnation: repair.incarnation,
            envelopes,
            gone: repair.gone,
        });
    }
}
