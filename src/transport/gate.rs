//! The gate of a peer's sockets: checks every received message against the
//! bus key, disconnects pipes that keep failing, and refuses new pipes from
//! quarantined addresses.
//!
//! Owns: [`Gate`], shared by all sockets of one peer, and the NNG pipe
//! notification callback each socket gets (which also keeps the link
//! gauges). A pipe whose messages fail authentication
//! [`FAILURES_BEFORE_CLOSE`] times is closed and its remote IP address
//! quarantined with doubling bans (see `quarantine`); while banned, new
//! pipes from or to that address are closed as they are added (NNG's
//! `AddPre`). Only tcp pipes have an address; ipc and inproc pipes are
//! closed but not quarantined.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use nng::options::{Options, RemAddr};
use nng::{Pipe, PipeEvent, Socket};
use parking_lot::Mutex;

use crate::api::stats::Counters;
use crate::error::{Error, Result};
use crate::proto::quarantine::Quarantine;
use crate::wire::auth::{Auth, AuthError, TAG_LEN};

/// Failed messages on one pipe before it is closed.
pub(crate) const FAILURES_BEFORE_CLOSE: u32 = 3;

#[derive(Debug, Default)]
struct PipeState {
    addr: Option<IpAddr>,
    failures: u32,
}

/// Authentication and admission for one peer's sockets.
#[derive(Debug)]
pub(crate) struct Gate {
    auth: Auth,
    counters: Arc<Counters>,
    quarantine: Mutex<Quarantine<IpAddr>>,
    /// Every live pipe of every socket of the peer (bounded by NNG's pipes).
    pipes: Mutex<HashMap<Pipe, PipeState>>,
}

fn remote_ip(pipe: &Pipe) -> Option<IpAddr> {
    match pipe.get_opt::<RemAddr>().ok()? {
        nng::SocketAddr::Inet(a) => Some(IpAddr::V4(*a.ip())),
        nng::SocketAddr::Inet6(a) => Some(IpAddr::V6(*a.ip())),
        _ => None,
    }
}

impl Gate {
    pub(crate) fn new(auth: Auth, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Gate {
            auth,
            counters,
            quarantine: Mutex::default(),
            pipes: Mutex::default(),
        })
    }

    /// A sealed message holding `frame`.
    pub(crate) fn message(&self, frame: &[u8]) -> nng::Message {
        self.message_with(frame.len(), |out| out.copy_from_slice(frame))
    }

    /// A sealed message of `len` bytes of content, which `fill` writes in
    /// place (the only copy into the message).
    pub(crate) fn message_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> nng::Message {
        let tag = if self.auth.is_on() { TAG_LEN } else { 0 };
        // NNG allocates the body zeroed, at its full length: no regrowth.
        let mut msg = nng::Message::with_zeros(len + tag);
        let (content, seal) = msg.as_mut_slice().split_at_mut(len);
        fill(content);
        if let Some(t) = self.auth.tag(content) {
            seal.copy_from_slice(&t);
        }
        msg
    }

    /// Registers the pipe callback of `socket`: admission, pipe tracking,
    /// and the pipe-count gauge if given. Runs on an NNG thread with the
    /// socket lock held: it touches only the gate's tables and atomics.
    pub(crate) fn watch(
        self: &Arc<Self>,
        socket: &Socket,
        gauge: Option<fn(&Counters) -> &AtomicU64>,
    ) -> Result<()> {
        let gate = self.clone();
        let own = Mutex::new(HashSet::new());
        socket
            .pipe_notify(move |pipe, event| {
                match event {
                    PipeEvent::AddPre => {
                        let addr = remote_ip(&pipe);
                        let banned = addr
                            .is_some_and(|a| gate.quarantine.lock().is_banned(a, Instant::now()));
                        if banned {
                            Counters::add(&gate.counters.pipes_refused, 1);
                            pipe.close();
                            return;
                        }
                        gate.pipes
                            .lock()
                            .insert(pipe, PipeState { addr, failures: 0 });
                    }
                    PipeEvent::AddPost => {
                        own.lock().insert(pipe);
                    }
                    PipeEvent::RemovePost => {
                        gate.pipes.lock().remove(&pipe);
                        own.lock().remove(&pipe);
                    }
                    _ => return,
                }
                if let Some(gauge) = gauge {
                    Counters::set(gauge(&gate.counters), own.lock().len() as u64);
                }
            })
            .map_err(|e| Error::transport("register pipe notifications", e))
    }

    /// Checks a received message; returns the length of its frame (the
    /// message without its tag). A failure is counted, and the pipe it came
    /// on is closed and its address quarantined after repeated failures.
    pub(crate) fn check(&self, msg: &mut nng::Message) -> std::result::Result<usize, AuthError> {
        match self.auth.open(msg.as_slice()) {
            Ok(frame) => Ok(frame.len()),
            Err(e) => {
                Counters::add(&self.counters.auth_failed, 1);
                if let Some(pipe) = msg.pipe() {
                    self.failed(pipe);
                }
                Err(e)
            }
        }
    }

    fn failed(&self, pipe: Pipe) {
        {
            let mut pipes = self.pipes.lock();
            let Some(state) = pipes.get_mut(&pipe) else {
                return; // already closed
            };
            state.failures += 1;
            if state.failures < FAILURES_BEFORE_CLOSE {
                return;
            }
        }
        self.shut(pipe, "keeps failing authentication", true);
    }

    /// Closes `pipe` for misbehaving (`why`) and counts it in `pipes_closed`.
    /// A real peer redials.
    pub(crate) fn close(&self, pipe: Pipe, why: &str) {
        self.shut(pipe, why, false);
    }

    /// [`close`](Self::close), and with `quarantine` bans the address.
    fn shut(&self, pipe: Pipe, why: &str, quarantine: bool) {
        let Some(state) = self.pipes.lock().remove(&pipe) else {
            return; // already closed
        };
        Counters::add(&self.counters.pipes_closed, 1);
        match state.addr.filter(|_| quarantine) {
            Some(addr) => {
                let ban = self.quarantine.lock().offend(addr, Instant::now());
                tracing::warn!(%addr, ?ban, why, "closing a link; address quarantined");
            }
            None => tracing::warn!(why, "closing a link"),
        }
        pipe.close();
    }
}
