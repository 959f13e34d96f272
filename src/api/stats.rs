//! Per-peer counters, readable at any time through [`Peer::stats`](crate::Peer::stats).
//!
//! Owns: the live atomic counters ([`Counters`]) shared by the driver tasks and
//! the snapshot type ([`Stats`]) handed to callers. Counting is lock-free: a
//! snapshot is a consistent-enough view, not a transaction. Updates release
//! and the snapshot acquires, reading the fields in declaration order, so a
//! snapshot that sees one counter's update sees every update made before it
//! to a counter declared after it. The receive path counts a frame as
//! `received` after decoding it (and counting it as malformed, oversized, …)
//! and before delivering any of its events, and `delivered` is declared
//! first: a snapshot never shows more delivered than received, nor a
//! received bad frame not yet counted as bad. What the inbox made of a
//! frame (`duplicates`, `stale`, `held`, …) is published once the frames
//! read together are processed, so it may trail `received` for a moment.
//! On x86 these are the same instructions as relaxed ones.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Release},
};

macro_rules! stats {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// A snapshot of one peer's counters (monotonic unless marked as a gauge).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        /// The live counters behind [`Stats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $( $name: self.$name.load(Acquire), )* }
            }
        }
    };
}

stats! {
    /// Events this peer handed to its pub socket.
    published,
    /// Batch messages sent (each carrying several events).
    batches_sent,
    /// Deliveries handed to subscriptions (one event matching two subscriptions counts twice).
    delivered,
    /// Events received by pub/sub (each event of a batch counts), plus
    /// every frame rejected as bad input.
    received,
    /// Valid events that matched no subscription of this peer.
    unmatched,
    /// Frames that were not valid MessagePack frames (garbage, truncated, wrong types).
    malformed,
    /// Frames larger than the configured maximum message size.
    oversized,
    /// Frames of an unsupported wire version or unknown kind.
    unsupported,
    /// Payloads that did not deserialize into a subscriber's type.
    undecodable,
    /// Gauge: NNG pipes on the pub socket (subscribers connected to this peer).
    links_out,
    /// Gauge: NNG pipes on the sub socket (publishers this peer receives from).
    links_in,
    /// Gauge: live (Alive or Suspect) members, not counting this peer.
    members,
    /// Heartbeat rounds (surveys) started.
    heartbeat_rounds,
    /// Valid responses received to this peer's surveys.
    heartbeat_responses,
    /// Other members' surveys answered.
    surveys_answered,
    /// Heartbeat frames (surveys or responses) rejected as malformed, oversized or unsupported.
    heartbeat_malformed,
    /// Heartbeat traffic of an older incarnation than the one known.
    heartbeat_stale,
    /// Heartbeats contradicting a member's advertised info or claiming this peer's id.
    heartbeat_conflicts,
    /// New members refused because the member table was full.
    members_refused,
    /// Events a slow `membership()` or `losses()` stream missed.
    events_lagged,
    /// Messages that failed bus-key authentication (no tag, wrong key,
    /// altered in transit), on any socket.
    auth_failed,
    /// Links closed because their messages kept failing authentication.
    pipes_closed,
    /// New links refused because their address is quarantined after
    /// failing authentication.
    pipes_refused,
    /// Gauge: envelopes retained for retransmission (what every member
    /// acknowledged goes as the next events are published, or within a
    /// second once publishing stops).
    retransmit_buffer,
    /// Gauge: bytes of envelopes retained for retransmission (the same).
    retransmit_bytes,
    /// Members no longer waited for because they held the retransmit buffer
    /// full for longer than the stall limit (`PeerBuilder::stall_limit`).
    members_cut_off,
    /// Envelopes sent again in answer to NAKs.
    retransmits,
    /// Of those, envelopes read back from the log (a durable peer's
    /// retransmit buffer no longer held them).
    log_reads,
    /// Gauge: events in this peer's log (a durable peer).
    log_events,
    /// Gauge: segment files of that log (retention trims whole closed
    /// segments, never the newest).
    log_segments,
    /// Batches appended to the log that the disk refused (see `Error::Store`).
    log_append_failures,
    /// Gauge: durable consumers of this peer's stream it remembers (heard
    /// of within the retention age; the log keeps what they have not
    /// processed past `max_age`, within `max_bytes`).
    durable_readers,
    /// Events the log's size bound trimmed before a remembered durable
    /// consumer had processed them (each reported to it as a `Loss`).
    trimmed_unprocessed,
    /// NAKs received on the repair endpoint.
    naks_received,
    /// NAKs and direct acks that did not decode.
    naks_malformed,
    /// Acks received straight on the repair endpoint (sent by busy receivers).
    direct_acks_received,
    /// Acks sent straight to origins' repair endpoints.
    direct_acks_sent,
    /// NAKs for another origin or incarnation, or ranges past the last sequence number published.
    naks_refused,
    /// Acks from non-members or for another incarnation.
    acks_refused,
    /// NAKs sent to origins by this peer's repair clients.
    naks_sent,
    /// NAKs that got no answer before their deadline.
    naks_unanswered,
    /// NAKs for an origin with no repair client (not a member).
    naks_unroutable,
    /// Envelopes received through repair answers.
    repaired,
    /// Repair answers dropped as malformed or not from the origin asked.
    repairs_malformed,
    /// Envelopes received again after they were already delivered or held (dropped).
    duplicates,
    /// Envelopes dropped because their idempotency key was seen within the duplicate window.
    duplicate_keys,
    /// Deliveries replayed for durable subscriptions only (events the
    /// others here had already, or were never owed).
    replayed,
    /// Durable positions the data dir refused to commit (retried).
    commit_failures,
    /// Messages declared lost (see `Peer::losses`).
    lost,
    /// Sequence numbers skipped because their origin published them before
    /// it counted this peer as a member (not owed, so not lost).
    before_join,
    /// Events delivered again after this peer restarted (or came back after
    /// being declared Failed) before acknowledging them: `Delivery::redelivered`.
    redelivered,
    /// Envelopes of an older incarnation of their origin (dropped).
    stale,
    /// Envelopes set aside (hold buffer full, too far ahead, too many origins): asked for again later.
    held_overflow,
    /// Gauge: envelopes held back waiting for a gap to be repaired.
    held,
    /// Deliveries a `subscribe_with` handler processed successfully.
    handled,
    /// Handler runs that failed and were retried.
    handler_retries,
    /// Deliveries handed to the dead-letter hook (after `max_attempts`
    /// failures, or at once for a payload that does not decode).
    dead_lettered,
    /// Events of this peer's stream given to a member of a consumer group
    /// when published (one per group that wanted it).
    group_assigned,
    /// Events of this peer's stream given to another member of their group
    /// afterwards (a member failed, left or had not followed the view).
    group_reassigned,
    /// Of those, flagged as possibly handled already (after a failure).
    group_failed_over,
    /// Events of this peer's stream no longer protected against a group
    /// member's failure because the group's tracking bound was reached, or
    /// dropped with a durable group that had no member for longer than
    /// the retention age.
    group_untracked,
    /// Events of this peer's stream kept for a durable group while no
    /// member could take them (published then, or restored from the log
    /// after this peer restarted), handed to its next member.
    group_kept,
    /// Gauge: events of this peer's stream owed by group members or
    /// waiting for one.
    group_tracked,
    /// Gauge: members of the consumer groups this peer's stream is
    /// assigned to, as it counts them (a member of two groups counts twice).
    group_members,
    /// Control events (group views, reassignments) this peer put in its
    /// stream; they count in `published` too.
    group_controls,
    /// Deliveries handed to this peer's group handlers (its share).
    group_delivered,
    /// Control events received that did not decode (counted, ignored).
    group_controls_malformed,
    /// Frames dropped by injected link faults (`PeerBuilder::link_faults`).
    faults_dropped,
    /// Extra copies made by injected link faults.
    faults_duplicated,
    /// Frames delivered after a later one by injected link faults.
    faults_reordered,
    /// Frames delayed by injected link faults.
    faults_delayed,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Release);
    }

    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Release);
    }
}
