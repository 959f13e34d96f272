//! The log writer of a durable peer: a thread of its own that appends the
//! publish driver's batches to the log, then hands them to pub0.
//!
//! Owns: the append path (frames numbered and not written yet, kept and
//! written again after a failed append, so the log stays contiguous), the
//! send of what was written, the sequence number advertised as published
//! (only what is in the log: a receiver cannot learn of an event, nor ask
//! for it, before it is there) and [`StoreHealth`] updates. The publish
//! driver numbers and batches the next events while this thread waits for
//! the disk (a pipeline); batches queued meanwhile share the next append
//! (group commit across messages, up to [`LOG_GROUP_BYTES`]). The queue
//! between them is bounded: a disk slower than the publishers makes
//! `publish` wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use nng::Socket;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::api::stats::Counters;
use crate::driver::clock::now_us;
use crate::driver::journal::{set_log_gauges, StoreHealth};
use crate::store::{DataDir, StreamLog};

/// Bytes of batches appended in one write at most.
pub(crate) const LOG_GROUP_BYTES: usize = 1 << 20;

/// Batches queued for the writer at most.
const QUEUE: usize = 64;

/// How soon a failed append is tried again when nothing new comes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One NNG message of numbered events, for the log and then for pub0.
pub(crate) struct Batch {
    /// Its envelopes, for the log.
    pub frames: Vec<Bytes>,
    /// The message, sent once they are written.
    pub msg: nng::Message,
    /// How many events it carries.
    pub events: u32,
    /// The sequence number of its last event.
    pub last: u64,
}

/// The handle the publish driver keeps: see the module documentation.
pub(crate) struct LogWriter {
    tx: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    /// Notified whenever the writer has sent what it wrote.
    pub sent: Arc<Notify>,
}

/// What the writer thread works with.
pub(crate) struct WriterParts {
    pub dir: Arc<DataDir>,
    pub log: Arc<Mutex<StreamLog>>,
    pub socket: Socket,
    pub counters: Arc<Counters>,
    pub health: Arc<StoreHealth>,
    /// The last sequence number in the log and sent, advertised.
    pub last_seq: Arc<AtomicU64>,
}

/// The writer thread's own state.
struct Writer {
    parts: WriterParts,
    sent: Arc<Notify>,
}

impl LogWriter {
    /// Starts the writer thread.
    pub(crate) fn start(parts: WriterParts) -> std::io::Result<LogWriter> {
        let (tx, rx) = sync_channel(QUEUE);
        let sent = Arc::new(Notify::new());
        let w = Writer {
            parts,
            sent: sent.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("chorus-log".into())
            .spawn(move || write_loop(w, rx))?;
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
            sent,
        })
    }

    /// Queues a batch; waits (off the async worker) while the queue is full.
    pub(crate) fn send(&self, batch: Batch) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => {
                let _ = blocking(|| tx.send(batch));
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the log writer stopped; a batch is not sent");
            }
        }
    }

    /// Writes and sends what is queued, then stops the thread.
    pub(crate) fn finish(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = blocking(|| thread.join());
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.tx = None; // the thread ends once it has written what is queued
    }
}

/// Runs `f`, which blocks, without holding up the other tasks of this
/// worker thread (on a multi-threaded runtime).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn write_loop(w: Writer, rx: Receiver<Batch>) {
    let p = &w.parts;
    // Numbered, not appended yet (all of them after a failed append).
    let mut pending: Vec<Bytes> = Vec::new();
    let mut batches: Vec<Batch> = Vec::new();
    loop {
        match rx.recv_timeout(RETRY_EVERY) {
            Ok(first) => batches.push(first),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let mut bytes: usize = batches.iter().map(|b| b.msg.len()).sum();
        while bytes < LOG_GROUP_BYTES {
            match rx.try_recv() {
                Ok(b) => {
                    bytes += b.msg.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        for b in &mut batches {
            pending.append(&mut b.frames);
        }
        append(p, &mut pending);
        // Sent even if the append failed: the events were accepted and
        // numbered, and the retransmit buffer holds them; `publish` fails
        // until the log can be written.
        for b in batches.drain(..) {
            send(p, b);
        }
        w.sent.notify_one();
    }
    append(p, &mut pending);
}

/// Appends `pending` as one write; keeps it on failure (in [`StoreHealth`]).
fn append(p: &WriterParts, pending: &mut Vec<Bytes>) {
    if pending.is_empty() {
        return;
    }
    let mut log = p.log.lock();
    match log.append(&p.dir, pending.iter().map(|f| &f[..]), now_us()) {
        Ok(()) => {
            pending.clear();
            p.health.clear();
            set_log_gauges(&p.counters, &log);
        }
        Err(e) => {
            tracing::error!(error = %e, pending = pending.len(),
                "cannot append to the log; publish fails until it can");
            p.health.set(e);
            Counters::add(&p.counters.log_append_failures, 1);
        }
    }
}

/// Hands one message to pub0 and advertises its events as published.
fn send(p: &WriterParts, b: Batch) {
    match p.socket.try_send(b.msg) {
        Ok(()) => {
            Counters::add(&p.counters.published, u64::from(b.events));
            if b.events > 1 {
                Counters::add(&p.counters.batches_sent, 1);
            }
        }
        Err((_, e)) => {
            tracing::error!(error = %e, envelopes = b.events, "pub socket refused a message")
        }
    }
    // Release: a heartbeat that reads it sees the group views before it.
    p.last_seq.fetch_max(b.last, Ordering::Release);
}
