//! The repair client of one origin: a tokio task that owns a req0 socket
//! dialed to that origin's repair endpoint.
//!
//! Owns: sending the NAKs the inbox decides on (only the newest waiting one:
//! it supersedes older ones) and the direct acks the receiver sends when it
//! has moved far ahead, waiting for each answer with a deadline, and
//! checking it: the answer must come from that origin, and each retained
//! frame must decode to one of its envelopes. What passes goes back to the
//! receive driver; what does not is counted and dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::stats::Counters;
use crate::transport::gate::Gate;
use crate::transport::socket::{self, AioSend, RecvReady, SocketConfig};
use crate::wire::envelope::Envelope;
use crate::wire::id::PeerId;
use crate::wire::repair::{Repair, RepairRequest};

/// How long a NAK waits for its answer before the inbox may send it again.
const ANSWER_DEADLINE: Duration = Duration::from_millis(500);

/// A checked answer, handed to the receive driver.
#[derive(Debug)]
pub(crate) struct Repaired {
    pub origin: PeerId,
    pub incarnation: u64,
    pub envelopes: Vec<Envelope>,
    pub gone: Vec<(u64, u64)>,
    pub owed_from: u64,
    pub redelivered_through: u64,
}

/// Starts the repair client of `origin` at `url`; NAKs and direct acks go
/// in through the returned sender (dropping it stops the task).
pub(crate) fn spawn(
    origin: PeerId,
    url: String,
    sockets: SocketConfig,
    max_message_size: usize,
    counters: Arc<Counters>,
    results: mpsc::UnboundedSender<Repaired>,
) -> mpsc::Sender<RepairRequest> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let socket = match socket::req_socket(&sockets)
            .and_then(|s| socket::dial(&s, &url).map(|_| s))
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
            gate: sockets.gate.clone(),
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
    gate: Arc<Gate>,
    max_message_size: usize,
    counters: Arc<Counters>,
    results: mpsc::UnboundedSender<Repaired>,
}

impl Client {
    async fn run(self, mut rx: mpsc::Receiver<RepairRequest>) {
        if let (Ok(ready), Ok(mut aio)) =
            (RecvReady::new(&self.socket), AioSend::new(ANSWER_DEADLINE))
        {
            let mut replies = Vec::with_capacity(1);
            while let Some(first) = rx.recv().await {
                // The newest NAK supersedes older ones; acks are cumulative.
                let (mut nak, mut ack) = (None, None);
                for req in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    match req {
                        RepairRequest::Nak(n) => nak = Some(n),
                        RepairRequest::Ack(a) => ack = Some(a),
                    }
                }
                if let Some(a) = ack {
                    Counters::add(&self.counters.direct_acks_sent, 1);
                    self.exchange(&RepairRequest::Ack(a), &ready, &mut aio, &mut replies)
                        .await;
                    replies.clear(); // an empty answer
                }
                let Some(nak) = nak else { continue };
                Counters::add(&self.counters.naks_sent, 1);
                match self
                    .exchange(&RepairRequest::Nak(nak), &ready, &mut aio, &mut replies)
                    .await
                {
                    Some(true) => {
                        for mut msg in replies.drain(..) {
                            self.check(&mut msg);
                        }
                    }
                    Some(false) => Counters::add(&self.counters.naks_unanswered, 1),
                    None => break,
                }
            }
            drop((ready, aio)); // before the socket closes
        }
        self.socket.close();
    }

    /// Sends one request and waits for its answer into `replies`: Some(true)
    /// answered, Some(false) not sent or not answered in time (asked again
    /// later), None when the socket is closed.
    async fn exchange(
        &self,
        req: &RepairRequest,
        ready: &RecvReady,
        aio: &mut AioSend,
        replies: &mut Vec<nng::Message>,
    ) -> Option<bool> {
        if aio
            .send(&self.socket, self.gate.message(&req.encode()))
            .await
            .is_err()
        {
            return Some(false); // not connected (yet)
        }
        match tokio::time::timeout(ANSWER_DEADLINE, ready.recv_batch(&self.socket, replies, 1))
            .await
        {
            Ok(Ok(())) => Some(true),
            Ok(Err(_)) => None,
            Err(_) => Some(false),
        }
    }

    fn check(&self, msg: &mut nng::Message) {
        let bad = |what: &str| {
            Counters::add(&self.counters.repairs_malformed, 1);
            tracing::debug!(origin = %self.origin, what, "repair answer dropped");
        };
        let Ok(len) = self.gate.check(msg) else {
            return bad("answer failed authentication");
        };
        let repair = match Repair::decode(&msg.as_slice()[..len], self.max_message_size) {
            Ok(r) if r.origin == self.origin => r,
            Ok(_) => return bad("answer from another origin"),
            Err(_) => return bad("malformed answer"),
        };
        let mut envelopes = Vec::with_capacity(repair.frames.len());
        for frame in &repair.frames {
            match Envelope::decode(frame, self.max_message_size) {
                // The decoder checks the topic.
                Ok(e) if e.origin == repair.origin && e.incarnation == repair.incarnation => {
                    envelopes.push(e)
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
            owed_from: repair.owed_from,
            redelivered_through: repair.redelivered_through,
        });
    }
}
