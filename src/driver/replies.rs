//! Requests of this peer waiting for their reply.
//!
//! Owns: the table of pending requests by request id, and handing a reply
//! that arrives to its waiter (the first one wins; a late or repeated reply
//! finds nobody and is counted). Bounded by the requests in progress: each
//! waiter removes its entry when it gets its reply or gives up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::wire::envelope::Envelope;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    pending: Mutex<HashMap<String, oneshot::Sender<Arc<Envelope>>>>,
    next: AtomicU64,
    /// Replies that found no waiting request (late, repeated, or forged).
    pub(crate) unclaimed: AtomicU64,
}

impl Replies {
    /// A new request id, unique in this peer's life, and where its reply
    /// will arrive.
    pub(crate) fn open(&self, prefix: &str) -> (String, oneshot::Receiver<Arc<Envelope>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{prefix}-{n}");
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        (id, rx)
    }

    /// The request `id` is no longer waiting.
    pub(crate) fn close(&self, id: &str) {
        self.pending.lock().remove(id);
    }

    /// A reply to the request `id` arrived.
    pub(crate) fn deliver(&self, id: &str, reply: Arc<Envelope>) {
        let waiter = self.pending.lock().remove(id);
        let claimed = waiter.is_some_and(|tx| tx.send(reply).is_ok());
        if !claimed {
            self.unclaimed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
