//! Per-message publish options: idempotency key, correlation id, headers.
//!
//! Owns: [`PublishOptions`], a plain value passed to
//! [`Peer::publish_with`](crate::Peer::publish_with).

use crate::wire::envelope::Headers;

/// Optional metadata for one published message.
///
/// ```
/// let opts = chorus::PublishOptions::new()
///     .id("order-42")
///     .correlation_id("checkout-7")
///     .header("tenant", "acme");
/// assert_eq!(opts.headers["tenant"], "acme");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Application message id (idempotency key) carried in the envelope.
    pub id: Option<String>,
    /// Correlation / trace id linking this message to a flow.
    pub correlation_id: Option<String>,
    /// Application headers.
    pub headers: Headers,
}

impl PublishOptions {
    /// No id, no correlation id, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the application message id (idempotency key).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Marks the message as caused by `delivery`: it joins the delivery's
    /// flow (its correlation id becomes the delivery's
    /// [`flow_id`](crate::Delivery::flow_id)). Inside a
    /// [`subscribe_with`](crate::Peer::subscribe_with) handler this happens
    /// by itself; use it where the work continues in another task.
    pub fn caused_by<T>(self, delivery: &crate::Delivery<T>) -> Self {
        self.correlation_id(delivery.flow_id())
    }

    /// Sets the partition key of a consumer group's assignment (carried as
    /// the `chorus-key` header): the events with one key go to the same
    /// member of each group while the group is stable, so they are handled
    /// in order. Without it the message id counts, and without that each
    /// event goes to any member.
    pub fn key(self, key: impl Into<String>) -> Self {
        self.header(crate::proto::group_view::KEY_HEADER, key)
    }

    /// Adds (or replaces) one header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}
