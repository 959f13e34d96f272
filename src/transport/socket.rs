//! NNG sockets bridged to tokio.
//!
//! Owns: URL validation, socket creation with explicit buffer sizes, listening
//! (advertising the real port when bound to port 0), non-blocking dialing,
//! pipe counting and [`RecvReady`], the readiness source that lets a tokio task
//! receive without blocking the runtime. It knows nothing about envelopes.
//!
//! NNG facts this relies on (see NNG-NOTES.md): pub0 and sub0 drop the oldest
//! message when their queues are full, so both sizes are set explicitly;
//! `LocalAddr` reports tcp ports byte-swapped, so the bound port is read with
//! `BoundPort`; the receive fd does not wake a waiter when the socket closes,
//! so the owner drops [`RecvReady`] before closing the socket.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvFd, RecvMaxSize};
use nng::{Aio, AioResult, Dialer, Listener, Protocol, Socket};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};
use crate::transport::gate::Gate;
use crate::wire::url::validate_url;

/// Socket settings shared by the sockets of one peer.
#[derive(Debug, Clone)]
pub(crate) struct SocketConfig {
    /// Authentication and admission of every socket's pipes.
    pub gate: Arc<Gate>,
    /// Messages queued per subscriber pipe on pub0 (NNG drops the oldest beyond).
    pub send_buffer: i32,
    /// Messages queued on sub0 (NNG drops the oldest beyond).
    pub recv_buffer: i32,
    /// Largest message NNG accepts on receive; larger ones close the pipe.
    pub recv_max_size: usize,
    /// The same for the sub0 socket, which receives batches of events.
    pub recv_max_batch: usize,
    /// Reconnect backoff of dialers.
    pub reconnect_min: Duration,
    /// Reconnect backoff cap of dialers.
    pub reconnect_max: Duration,
}

/// Opens a pub0 socket with the configured per-pipe send queue.
pub(crate) fn pub_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(Protocol::Pub0).map_err(|e| Error::transport("open pub socket", e))?;
    s.set_opt::<nng::options::SendBufferSize>(cfg.send_buffer)
        .map_err(|e| Error::transport("set pub send buffer", e))?;
    cfg.gate.watch(&s, Some(|c| &c.links_out))?;
    Ok(s)
}

/// Opens a sub0 socket subscribed to everything (topic matching is done by
/// chorus so that receivers see every sequence number of every origin).
pub(crate) fn sub_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(Protocol::Sub0).map_err(|e| Error::transport("open sub socket", e))?;
    let opt = |e| Error::transport("set sub socket options", e);
    s.set_opt::<nng::options::RecvBufferSize>(cfg.recv_buffer)
        .map_err(opt)?;
    s.set_opt::<RecvMaxSize>(cfg.recv_max_batch).map_err(opt)?;
    s.set_opt::<ReconnectMinTime>(Some(cfg.reconnect_min))
        .map_err(opt)?;
    s.set_opt::<ReconnectMaxTime>(Some(cfg.reconnect_max))
        .map_err(opt)?;
    s.set_opt::<nng::options::protocol::pubsub::Subscribe>(Vec::new())
        .map_err(opt)?;
    cfg.gate.watch(&s, Some(|c| &c.links_in))?;
    Ok(s)
}

/// Opens the heartbeat surveyor; responses after `deadline` are discarded.
pub(crate) fn surveyor_socket(cfg: &SocketConfig, deadline: Duration) -> Result<Socket> {
    let s = Socket::new(Protocol::Surveyor0)
        .map_err(|e| Error::transport("open surveyor socket", e))?;
    let opt = |e| Error::transport("set surveyor socket options", e);
    s.set_opt::<nng::options::protocol::survey::SurveyTime>(Some(deadline))
        .map_err(opt)?;
    s.set_opt::<RecvMaxSize>(cfg.recv_max_size).map_err(opt)?;
    s.set_opt::<nng::options::RecvBufferSize>(cfg.recv_buffer)
        .map_err(opt)?;
    cfg.gate.watch(&s, None)?;
    Ok(s)
}

/// Opens the heartbeat respondent, which dials other members' surveyors.
pub(crate) fn respondent_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(Protocol::Respondent0)
        .map_err(|e| Error::transport("open respondent socket", e))?;
    let opt = |e| Error::transport("set respondent socket options", e);
    s.set_opt::<RecvMaxSize>(cfg.recv_max_size).map_err(opt)?;
    s.set_opt::<ReconnectMinTime>(Some(cfg.reconnect_min))
        .map_err(opt)?;
    s.set_opt::<ReconnectMaxTime>(Some(cfg.reconnect_max))
        .map_err(opt)?;
    cfg.gate.watch(&s, None)?;
    Ok(s)
}

/// Opens the repair server socket (rep0), answering NAKs.
pub(crate) fn rep_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(Protocol::Rep0).map_err(|e| Error::transport("open repair socket", e))?;
    s.set_opt::<RecvMaxSize>(cfg.recv_max_size)
        .map_err(|e| Error::transport("set repair socket options", e))?;
    cfg.gate.watch(&s, None)?;
    Ok(s)
}

/// Opens a repair client socket (req0) for one origin.
pub(crate) fn req_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(Protocol::Req0).map_err(|e| Error::transport("open NAK socket", e))?;
    let opt = |e| Error::transport("set NAK socket options", e);
    s.set_opt::<RecvMaxSize>(cfg.recv_max_size).map_err(opt)?;
    s.set_opt::<ReconnectMinTime>(Some(cfg.reconnect_min))
        .map_err(opt)?;
    s.set_opt::<ReconnectMaxTime>(Some(cfg.reconnect_max))
        .map_err(opt)?;
    // chorus re-NAKs by itself; NNG must not resend stale requests.
    s.set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
        .map_err(opt)?;
    cfg.gate.watch(&s, None)?;
    Ok(s)
}

/// Listens on `url` and returns the URL others should dial: the same URL,
/// with the real port when a tcp URL asked for port 0.
pub(crate) fn listen(socket: &Socket, url: &str) -> Result<String> {
    validate_url(url)?;
    let listener =
        Listener::new(socket, url).map_err(|e| Error::transport(format!("listen on {url}"), e))?;
    match url.strip_prefix("tcp://").and_then(|r| r.rsplit_once(':')) {
        Some((host, "0")) => {
            let port = listener
                .get_opt::<nng::options::transport::tcp::BoundPort>()
                .map_err(|e| Error::transport(format!("read the port bound for {url}"), e))?;
            Ok(format!("tcp://{host}:{port}"))
        }
        _ => Ok(url.to_owned()),
    }
}

/// Dials `url` without waiting: NNG connects in the background and keeps
/// reconnecting with the socket's backoff if the remote side is down.
pub(crate) fn dial(socket: &Socket, url: &str) -> Result<Dialer> {
    validate_url(url)?;
    Dialer::new(socket, url, true).map_err(|e| Error::transport(format!("dial {url}"), e))
}

/// Sends through an [`Aio`] and awaits completion: the way to reply on
/// respondent and rep sockets, whose non-blocking send loses replies in
/// NNG 1.4 (NNG-NOTES.md). One send at a time.
pub(crate) struct AioSend {
    aio: Aio,
    done: tokio::sync::mpsc::UnboundedReceiver<std::result::Result<(), nng::Error>>,
}

impl AioSend {
    pub(crate) fn new(timeout: Duration) -> Result<Self> {
        let (tx, done) = tokio::sync::mpsc::unbounded_channel();
        // The callback holds only the channel, never the Aio itself.
        let aio = Aio::new(move |_aio, result| {
            if let AioResult::Send(r) = result {
                let _ = tx.send(r.map_err(|(_, e)| e));
            }
        })
        .map_err(|e| Error::transport("create an aio", e))?;
        aio.set_timeout(Some(timeout))
            .map_err(|e| Error::transport("set an aio timeout", e))?;
        Ok(AioSend { aio, done })
    }

    /// Sends `msg` on `socket`, waiting at most the timeout given at creation.
    pub(crate) async fn send(
        &mut self,
        socket: &Socket,
        msg: nng::Message,
    ) -> std::result::Result<(), nng::Error> {
        socket.send_async(&self.aio, msg).map_err(|(_, e)| e)?;
        self.done.recv().await.unwrap_or(Err(nng::Error::Closed))
    }
}

impl Drop for AioSend {
    fn drop(&mut self) {
        // NNG-NOTES.md: never drop an Aio that may still run its callback.
        self.aio.cancel();
        self.aio.wait();
    }
}

/// The NNG receive-notification descriptor, owned by NNG: never closed here.
struct NngFd(RawFd);

impl AsRawFd for NngFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Async readiness of a socket's receive queue. Drop it before closing the socket.
pub(crate) struct RecvReady {
    fd: AsyncFd<NngFd>,
}

impl RecvReady {
    pub(crate) fn new(socket: &Socket) -> Result<Self> {
        let raw = socket
            .get_opt::<RecvFd>()
            .map_err(|e| Error::transport("get the receive descriptor", e))?;
        // SAFETY: the descriptor belongs to `socket` and stays open until the
        // socket is closed; every owner of a `RecvReady` drops it before
        // closing its socket (see the module notes).
        let fd = unsafe { AsyncFd::register_with_interest(NngFd(raw), Interest::READABLE) }
            .map_err(|e| Error::Config(format!("cannot poll the NNG receive descriptor: {e}")))?;
        Ok(RecvReady { fd })
    }

    /// Waits until `socket` has messages, then moves up to `max` of them into
    /// `out` without blocking. Cancel-safe: the only await comes before any
    /// message is taken. Returns `Err(Closed)` once the socket is closed.
    pub(crate) async fn recv_batch(
        &self,
        socket: &Socket,
        out: &mut Vec<nng::Message>,
        max: usize,
    ) -> std::result::Result<(), nng::Error> {
        loop {
            let mut guard = self.fd.readable().await.map_err(|_| nng::Error::Closed)?;
            while out.len() < max {
                match socket.try_recv() {
                    Ok(m) => out.push(m),
                    // A surveyor with no survey outstanding, or past its
                    // deadline, has nothing to receive: not an error.
                    Err(
                        nng::Error::TryAgain | nng::Error::IncorrectState | nng::Error::TimedOut,
                    ) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}
