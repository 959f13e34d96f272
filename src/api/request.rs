//! Request/reply: [`Peer::request`] asks, [`Peer::serve`] answers, both on
//! top of the bus's events and consumer groups.
//!
//! Owns: sending a request (an event carrying where its reply goes and its
//! id) and waiting for its reply, and the serving side: a handler in a
//! consumer group (one member answers each request; if it fails, the origin
//! gives the request to another) whose result, or error, is published back
//! to the requester's reply topic. Timeout, no responder, a responder's
//! error and a reply that does not decode are distinct [`Error`]s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::api::delivery::Delivery;
use crate::api::peer::Peer;
use crate::api::publish_options::PublishOptions;
use crate::driver::handler::{Handler, HandlerOptions};
use crate::error::{Error, Result};
use crate::wire::envelope::Envelope;
use crate::wire::reply::{ReplyBody, REPLY_FOR_HEADER, REPLY_TO_HEADER, REQUEST_HEADER};
use crate::wire::topic::validate_topic;

/// Removes a request from the pending table however its wait ends.
struct Pending<'a> {
    peer: &'a Peer,
    id: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.peer.registry().replies.close(&self.id);
    }
}

impl Peer {
    /// Sends `request` (MessagePack) on `topic` and waits up to `timeout`
    /// for the reply of the consumer group member that serves it (see
    /// [`serve`](Self::serve)).
    ///
    /// Errors: [`Error::NoResponder`] at once if no member of any group this
    /// peer knows of serves `topic`; [`Error::Remote`] with the responder's
    /// error; [`Error::BadReply`] if the reply does not decode into `Resp`;
    /// [`Error::Timeout`] if no reply came in time (the request may still
    /// be handled: make it idempotent, or give it an id with
    /// [`request_with`](Self::request_with)). The reply carries the
    /// request's flow (its correlation id).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> chorus::Result<()> {
    /// use std::time::Duration;
    /// let fast = |b: chorus::PeerBuilder| b.heartbeat_interval(Duration::from_millis(100))
    ///     .heartbeat_deadline(Duration::from_millis(50));
    /// let server = fast(chorus::Peer::builder().listen("inproc://req-doc-s")).start().await?;
    /// server.serve("quotes.get", "quotes", |d: chorus::Delivery<String>| async move {
    ///     Ok::<_, String>(format!("{} costs 7", d.value))
    /// })?;
    /// let client = fast(chorus::Peer::builder().listen("inproc://req-doc-c"))
    ///     .seed(server.local_url()).start().await?;
    /// client.wait_for_members(1, Duration::from_secs(10)).await?;
    /// // The server's group reaches the client in its heartbeats.
    /// while client.stats().group_members == 0 {
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    /// }
    /// let answer: String = client.request("quotes.get", "apples", Duration::from_secs(5)).await?;
    /// assert_eq!(answer, "apples costs 7");
    /// # client.shutdown().await; server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn request<Req, Resp>(
        &self,
        topic: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.request_with(topic, request, PublishOptions::new(), timeout)
            .await
    }

    /// [`request`](Self::request) with an id, key, correlation id or headers.
    pub async fn request_with<Req, Resp>(
        &self,
        topic: &str,
        request: &Req,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload =
            rmp_serde::to_vec_named(request).map_err(|e| Error::Serialize(e.to_string()))?;
        let reply = self
            .request_bytes_with(topic, payload, options, timeout)
            .await?;
        rmp_serde::from_slice(&reply).map_err(|e| Error::BadReply {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })
    }

    /// [`request`](Self::request) with raw bytes both ways.
    pub async fn request_bytes(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes> {
        self.request_bytes_with(topic, payload, PublishOptions::new(), timeout)
            .await
    }

    /// [`request_bytes`](Self::request_bytes) with publish options.
    pub async fn request_bytes_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Bytes> {
        self.check_topic(topic)?;
        let registry = self.registry();
        let prefix = format!("{}.{}", self.id(), self.info().incarnation);
        let (id, reply) = registry.replies.open(&prefix);
        let _pending = Pending {
            peer: self,
            id: id.clone(),
        };
        let reply_to = registry.reply_topic.get().cloned().unwrap_or_default();
        let options = options
            .header(REPLY_TO_HEADER, reply_to)
            .header(REQUEST_HEADER, id);
        let asked = async {
            let (assigned, was_assigned) = oneshot::channel();
            self.enqueue(topic, payload.into(), options, Some(assigned))
                .await?;
            if !was_assigned.await.map_err(|_| Error::Shutdown)? {
                return Err(Error::NoResponder {
                    topic: topic.to_owned(),
                });
            }
            let reply = reply.await.map_err(|_| Error::Shutdown)?;
            match ReplyBody::decode(&reply.payload) {
                Ok(ReplyBody::Ok(bytes)) => Ok(bytes),
                Ok(ReplyBody::Err(message)) => Err(Error::Remote {
                    topic: topic.to_owned(),
                    message,
                }),
                Err(e) => Err(Error::BadReply {
                    topic: topic.to_owned(),
                    reason: e.to_string(),
                }),
            }
        };
        tokio::time::timeout(timeout, asked).await.map_err(|_| {
            Error::Timeout(format!(
                "no reply to the request on {topic:?} within {timeout:?}"
            ))
        })?
    }

    /// Answers the requests on `pattern` as a member of the consumer group
    /// `group` (every server of one service uses the same name): each
    /// request is handled by one member; `Ok` is sent back as the reply,
    /// `Err` as the responder's error ([`Error::Remote`] for the
    /// requester). A handler is run once per request (no retry: the
    /// requester decides). If the member fails, the origin gives the
    /// request to another one, flagged [`Delivery::redelivered`]. An event
    /// on `pattern` that is not a request is handled and nothing is sent.
    pub fn serve<Req, Resp, F, Fut, E>(
        &self,
        pattern: &str,
        group: &str,
        handler: F,
    ) -> Result<Handler>
    where
        Req: DeserializeOwned + Clone + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Delivery<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Resp, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let peer = self.clone();
        let handler = Arc::new(handler);
        self.subscribe_with_options(pattern, serving(group), move |d: Delivery<Req>| {
            let (peer, handler) = (peer.clone(), handler.clone());
            async move {
                let env = d.envelope_arc();
                let body = match handler(d).await {
                    Ok(resp) => match rmp_serde::to_vec_named(&resp) {
                        Ok(bytes) => ReplyBody::Ok(bytes.into()),
                        Err(e) => ReplyBody::Err(format!("the reply did not serialize: {e}")),
                    },
                    Err(e) => ReplyBody::Err(e.to_string()),
                };
                peer.reply(&env, body).await;
                Ok::<(), String>(())
            }
        })
    }

    /// [`serve`](Self::serve) with raw bytes both ways.
    pub fn serve_bytes<F, Fut, E>(&self, pattern: &str, group: &str, handler: F) -> Result<Handler>
    where
        F: Fn(Delivery<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let peer = self.clone();
        let handler = Arc::new(handler);
        self.subscribe_bytes_with_options(pattern, serving(group), move |d: Delivery<Bytes>| {
            let (peer, handler) = (peer.clone(), handler.clone());
            async move {
                let env = d.envelope_arc();
                let body = match handler(d).await {
                    Ok(bytes) => ReplyBody::Ok(bytes),
                    Err(e) => ReplyBody::Err(e.to_string()),
                };
                peer.reply(&env, body).await;
                Ok::<(), String>(())
            }
        })
    }

    /// Publishes `body` as the reply to `request`, if it is one (a reply
    /// topic that is not a chorus reply topic is ignored).
    async fn reply(&self, request: &Envelope, body: ReplyBody) {
        let (Some(to), Some(id)) = (
            request.headers().get(REPLY_TO_HEADER),
            request.headers().get(REQUEST_HEADER),
        ) else {
            return;
        };
        if !to.starts_with("$chorus.reply.") || validate_topic(to).is_err() {
            tracing::warn!(reply_to = %to, "a request names a reply topic that is not a chorus reply topic; not answered");
            return;
        }
        let options = PublishOptions::new().header(REPLY_FOR_HEADER, id.as_str());
        if let Err(e) = self.enqueue(to, body.encode().into(), options, None).await {
            tracing::warn!(error = %e, "the reply to a request was not sent");
        }
    }
}

/// A serving handler's options: in `group`, run once.
fn serving(group: &str) -> HandlerOptions {
    HandlerOptions::new().group(group).max_attempts(1)
}
