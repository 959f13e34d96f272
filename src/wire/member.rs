//! What one peer knows about another: identity, endpoints, state, events.
//!
//! Owns: [`PeerInfo`] (what a peer advertises about itself), [`Member`] (a
//! snapshot of a member as seen locally), [`MemberState`] and
//! [`MemberEvent`]. Plain data: no I/O, no clock.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::wire::id::PeerId;
use crate::wire::url::validate_url;

/// Longest service name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 512;
/// Longest heartbeat interval a peer may advertise, in milliseconds.
pub const MAX_HEARTBEAT_INTERVAL_MS: u32 = 60_000;

/// The URLs a peer listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoints {
    /// Heartbeat surveyor: the peer's public address, what seeds point at.
    pub survey: String,
    /// Event publisher (pub0).
    pub publish: String,
    /// Repair endpoint (rep0) answering NAKs for this peer's events.
    pub repair: String,
}

/// What a peer advertises about itself in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Peer id.
    pub id: PeerId,
    /// Incarnation: start time in µs since the Unix epoch.
    pub incarnation: u64,
    /// Service name.
    pub name: String,
    /// Where it listens.
    pub endpoints: Endpoints,
    /// Its heartbeat interval in milliseconds (0: not advertised). Others
    /// judge its heartbeats against it, so members with different intervals
    /// do not suspect each other. Optional on the wire.
    #[serde(default)]
    pub heartbeat_interval_ms: u32,
    /// A command-line tool or other short-lived client rather than a
    /// service: [`Peer::wait_for_services`](crate::Peer::wait_for_services)
    /// does not count it. Optional on the wire.
    #[serde(default)]
    pub tool: bool,
    /// The epoch of the peer's stream, when it outlives the process: a peer
    /// with a data dir keeps its stream (and its sequence numbers) across
    /// restarts, so its events carry this epoch instead of the incarnation.
    /// 0 (the default; optional on the wire): the stream is the
    /// incarnation's own and ends with it, and the field is not written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stream: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PeerInfo {
    /// The epoch of the stream its events belong to (the `incarnation`
    /// field of its envelopes, NAKs and acks).
    pub fn stream_epoch(&self) -> u64 {
        if self.stream == 0 {
            self.incarnation
        } else {
            self.stream
        }
    }

    /// Whether its stream outlives its process (it has a data dir): what is
    /// missing of it when it fails is not lost, it is in its log.
    pub fn is_durable(&self) -> bool {
        self.stream != 0
    }

    /// Checks the fields a remote peer could get wrong: non-zero id and
    /// incarnation, name and URL lengths, URL schemes, the heartbeat
    /// interval's bound.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.0 == 0 {
            return Err("peer id 0".into());
        }
        if self.incarnation == 0 {
            return Err("incarnation 0".into());
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(format!("name longer than {MAX_NAME_LEN} bytes"));
        }
        if self.heartbeat_interval_ms > MAX_HEARTBEAT_INTERVAL_MS {
            return Err(format!(
                "heartbeat interval of {} ms (at most {MAX_HEARTBEAT_INTERVAL_MS})",
                self.heartbeat_interval_ms
            ));
        }
        let e = &self.endpoints;
        for url in [&e.survey, &e.publish, &e.repair] {
            if url.len() > MAX_URL_LEN {
                return Err(format!("endpoint longer than {MAX_URL_LEN} bytes"));
            }
            validate_url(url).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Where a member stands in the local view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Heartbeats are progressing.
    Alive,
    /// No heartbeat progress for `suspect_after` rounds.
    Suspect,
    /// No heartbeat progress for `miss_limit` rounds: considered dead.
    Failed,
    /// Announced a graceful exit.
    Left,
}

impl MemberState {
    /// Alive or Suspect: still counted as a member.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// A snapshot of one member as this peer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What the member advertises.
    pub info: Arc<PeerInfo>,
    /// Its state in the local view.
    pub state: MemberState,
    /// When its heartbeat last progressed (directly or by gossip).
    pub last_seen: Instant,
}

impl Member {
    /// Shorthand for `info.id`.
    pub fn id(&self) -> PeerId {
        self.info.id
    }

    /// Shorthand for `info.name`.
    pub fn name(&self) -> &str {
        &self.info.name
    }
}

/// What changed about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberEventKind {
    /// A member seen for the first time.
    Joined,
    /// Heartbeats stopped progressing for `suspect_after` rounds.
    Suspect,
    /// A suspect member's heartbeats progressed again.
    Recovered,
    /// Heartbeats stopped progressing for `miss_limit` rounds.
    Failed,
    /// The member announced a graceful exit.
    Left,
    /// A member that had failed or left is back: a new incarnation (restart),
    /// or the same one heard from directly again (e.g. after a partition).
    Rejoined,
}

/// One membership change, as yielded by [`Peer::membership`](crate::Peer::membership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// The member after the change.
    pub member: Member,
}
