//! The publish driver: the tokio task that owns the pub0 and rep0 sockets.
//!
//! Owns: sequence numbering (so sequence order equals send order), stamping,
//! sending, the [`Outbox`] (retransmit buffer and ack watermarks) and
//! answering NAKs on the repair endpoint. `Peer::publish` validates and
//! encodes in the caller's task and hands a [`Draft`] (a frame with seq and
//! timestamp left blank) over a bounded channel; this task fills them in.
//! While the outbox is full of unacknowledged envelopes this task stops
//! taking new ones, so `publish` waits (or fails fast if configured).
//! Events already queued when one is taken go out together as one batch
//! message (one NNG message and one syscall for many small events). While
//! the event rate is low an event goes out at once, so batching adds no
//! latency; under load ([`Linger`]) a batch gathers about 200 µs of events
//! first (at most until tokio's next timer tick). Pub0 itself never blocks:
//! NNG queues up to `send_buffer` messages per subscriber link and drops the
//! oldest beyond — the receivers repair that.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nng::Socket;
use tokio::sync::{mpsc, oneshot};

use crate::answerer::Answerer;
use crate::auth::TAG_LEN;
use crate::envelope::{BatchWriter, Draft, Envelope, PeerId};
use crate::gate::Gate;
use crate::linger::{Linger, LINGER};
use crate::outbox::Outbox;
use crate::repair::{Nak, RepairRequest};
use crate::stats::Counters;
use crate::transport::RecvReady;

/// Control messages to the publish driver (never held back by backpressure).
pub(crate) enum PubCtl {
    /// The live members changed.
    Members(Vec<PeerId>),
    /// A member's "received through" watermark for this peer's events.
    Ack(PeerId, u64, u64),
    /// A member's heartbeat carried no watermark for this peer's events.
    NoAck(PeerId),
    /// Send what is queued, then stop.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Publisher {
    pub socket: Socket,
    pub rep: Socket,
    pub outbox: Outbox,
    pub origin: PeerId,
    pub max_message_size: usize,
    pub counters: Arc<Counters>,
    /// Last sequence number sent, advertised in heartbeats.
    pub last_seq: Arc<AtomicU64>,
    /// True while the outbox is full (read by fail-fast `publish`).
    pub full: Arc<AtomicBool>,
    /// Envelopes staged for the next message.
    pub batch: BatchWriter,
    /// Bytes of envelopes after which a batch is sent.
    pub batch_bytes: usize,
    /// Seals outgoing messages and checks NAKs.
    pub gate: Arc<Gate>,
    /// How long the buffer may stay full before laggards are cut off.
    pub stall_limit: Duration,
    /// When a batch is sent: at once, or after gathering under load.
    pub linger: Linger,
}

/// Most envelopes in one batch.
const MAX_BATCH_COUNT: u32 = 4096;

impl Publisher {
    /// Runs until told to shut down or until every `Peer` handle is gone.
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<Draft>,
        mut ctl: mpsc::UnboundedReceiver<PubCtl>,
    ) {
        let mut ack = None;
        match (
            RecvReady::new(&self.rep),
            Answerer::spawn(self.rep.clone(), self.gate.clone()),
        ) {
            (Ok(rep_ready), Ok(mut answerer)) => {
                let mut naks = Vec::with_capacity(1);
                let mut linger_until = None;
                loop {
                    tokio::select! {
                        biased;
                        c = ctl.recv() => match c {
                            Some(PubCtl::Members(ids)) => self.outbox.set_members(ids),
                            Some(PubCtl::Ack(member, incarnation, seq)) => {
                                self.outbox.on_ack(member, incarnation, seq);
                                self.check_stall();
                            }
                            Some(PubCtl::NoAck(member)) => {
                                self.outbox.on_no_ack(member);
                                self.check_stall();
                            }
                            Some(PubCtl::Shutdown(done)) => {
                                ack = Some(done);
                                break;
                            }
                            None => break,
                        },
                        r = rep_ready.recv_batch(&self.rep, &mut naks, 1), if !answerer.busy() => {
                            if r.is_err() {
                                break;
                            }
                            for msg in naks.drain(..) {
                                if let Some((answer, asker)) = self.answer(msg) {
                                    answerer.send(answer, asker);
                                }
                            }
                        }
                        () = answerer.sent(), if answerer.busy() => {}
                        _ = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => {
                            linger_until = None;
                            self.flush();
                        }
                        e = events.recv(), if !self.outbox.is_full() => match e {
                            Some(out) => {
                                // Whatever else is already queued goes in the same
                                // message. One clock read per wake-up, not per event.
                                let stamp = now_us();
                                self.stage(out, true, stamp);
                                while !self.batch_full() {
                                    match events.try_recv() {
                                        Ok(out) => self.stage(out, true, stamp),
                                        Err(_) => break,
                                    }
                                }
                                // Alone when the rate is low; under load, once the
                                // batch holds a linger's worth (or at the deadline).
                                if self.batch_full() || self.linger.send_now(self.batch.len()) {
                                    linger_until = None;
                                    self.flush();
                                } else if linger_until.is_none() {
                                    linger_until = Some(tokio::time::Instant::now() + LINGER);
                                }
                            }
                            None => break,
                        },
                    }
                    self.update_gauges();
                }
                drop(rep_ready);
                answerer.stop().await; // before the sockets close
            }
            _ => tracing::error!("cannot drive the repair socket; publishing stopped"),
        }
        // Best effort for what was queued before the shutdown.
        events.close();
        let stamp = now_us();
        while let Ok(out) = events.try_recv() {
            let retain = !self.outbox.is_full();
            self.stage(out, retain, stamp);
            if self.batch_at_bound() {
                self.flush();
            }
        }
        self.flush();
        self.socket.close();
        self.rep.close();
        if let Some(done) = ack {
            let _ = done.send(());
        }
    }

    /// Numbers, retains (if `retain`) and stages one event for the next
    /// message, stamped with `stamp` (µs since the epoch).
    fn stage(&mut self, draft: Draft, retain: bool, stamp: u64) {
        let seq = self.outbox.last_seq() + 1;
        let frame = draft.number(seq, stamp);
        if tracing::enabled!(tracing::Level::DEBUG) {
            if let Ok(env) = Envelope::decode(&frame, usize::MAX) {
                tracing::debug_span!("publish", topic = %env.topic, origin = %env.origin, seq,
                    correlation_id = env.correlation_id.as_deref())
                .in_scope(|| tracing::trace!("numbered and staged"));
            }
        }
        self.batch.push(&frame);
        if retain {
            self.outbox.push(frame);
        } else {
            self.outbox.skip();
        }
        self.last_seq.store(seq, Ordering::Relaxed);
    }

    /// Whether the staged batch is at its size or count bound.
    fn batch_at_bound(&self) -> bool {
        self.batch.bytes() >= self.batch_bytes || self.batch.len() >= MAX_BATCH_COUNT
    }

    /// Whether the staged batch must go now: at its bound, or nothing more
    /// may be taken.
    fn batch_full(&self) -> bool {
        self.batch_at_bound() || self.outbox.is_full()
    }

    /// Sends what is staged as one NNG message.
    fn flush(&mut self) {
        let n = self.batch.len();
        if n > 0 {
            self.linger.sent(n, Instant::now());
        }
        let (socket, auth) = (&self.socket, self.gate.auth());
        let sent = self.batch.finish(|parts| {
            let size = parts.iter().map(|p| p.len()).sum::<usize>() + TAG_LEN;
            let mut msg = nng::Message::with_capacity(size);
            for part in parts {
                msg.push_back(part);
            }
            auth.seal(&mut msg);
            socket.try_send(msg)
        });
        let Some(sent) = sent else {
            return;
        };
        match sent {
            Ok(()) => {
                Counters::add(&self.counters.published, u64::from(n));
                if n > 1 {
                    Counters::add(&self.counters.batches_sent, 1);
                }
            }
            Err((_, e)) => {
                tracing::error!(error = %e, envelopes = n, "pub socket refused a message")
            }
        }
    }

    /// Cuts off the members that kept the retransmit buffer full for longer
    /// than the stall limit (checked at every heartbeat's ack).
    fn check_stall(&mut self) {
        for member in self.outbox.check_stall(Instant::now(), self.stall_limit) {
            Counters::add(&self.counters.members_cut_off, 1);
            tracing::warn!(%member, limit = ?self.stall_limit,
                "a member held the retransmit buffer full too long: no longer waiting for it (what it misses, it reports lost)");
        }
    }

    /// The answer to one request from the repair socket, and the pipe to
    /// blame if it is not read; none for a request that is dropped.
    fn answer(&mut self, mut msg: nng::Message) -> Option<(nng::Message, Option<nng::Pipe>)> {
        let Ok(len) = self.gate.check(&mut msg) else {
            return None; // counted by the gate
        };
        let asker = msg.pipe();
        let nak = match RepairRequest::decode(&msg.as_slice()[..len], self.max_message_size) {
            Ok(RepairRequest::Nak(n)) => {
                Counters::add(&self.counters.naks_received, 1);
                n
            }
            Ok(RepairRequest::Ack(a)) => {
                Counters::add(&self.counters.direct_acks_received, 1);
                if a.origin == self.origin {
                    self.outbox.on_ack(a.member, a.incarnation, a.seq);
                } else {
                    self.outbox.on_ack(a.member, 0, 0); // another origin's: counted as refused
                }
                // req/rep needs a reply: an empty repair answer.
                Nak {
                    origin: a.origin,
                    incarnation: a.incarnation,
                    ranges: Vec::new(),
                    member: a.member,
                }
            }
            Err(e) => {
                Counters::add(&self.counters.naks_malformed, 1);
                tracing::debug!(error = %e, "malformed repair request dropped");
                return None;
            }
        };
        let repair = self.outbox.answer(&nak);
        Counters::add(&self.counters.retransmits, repair.frames.len() as u64);
        self.update_gauges(); // counted before the answer can be seen
        Some((self.gate.auth().message(&repair.encode()), asker))
    }

    fn update_gauges(&self) {
        let c = &self.counters;
        Counters::set(&c.retransmit_buffer, self.outbox.len() as u64);
        Counters::set(&c.retransmit_bytes, self.outbox.bytes() as u64);
        let refused = self.outbox.refused();
        Counters::set(&c.acks_refused, refused.acks);
        Counters::set(&c.naks_refused, refused.naks + refused.unpublished);
        self.full.store(self.outbox.is_full(), Ordering::Relaxed);
    }
}

/// Microseconds since the Unix epoch by the system clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
