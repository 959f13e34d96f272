//! The publisher's log: what the publish driver keeps in and reads from
//! the data dir of a durable peer (the [log writer](crate::driver::log_writer)
//! appends to it).
//!
//! Owns: the repair answers' reach into the log for what the
//! retransmit buffer no longer holds, the durable consumers of the stream
//! it remembers (what each processed, heard from their heartbeats: the
//! log keeps it for them past `max_age`, within `max_bytes`), the durable
//! consumer groups' watermarks (the same, for a group), the upkeep done
//! about once a second (members' watermarks, readers, groups, retention), and
//! [`StoreHealth`], through which `publish` and `flush` report a log that
//! cannot be written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::api::stats::Counters;
use crate::error::{Error, Result};
use crate::proto::assign::DurableGroup;
use crate::proto::outbox::Outbox;
use crate::store::groups::{GroupRecord, Groups};
use crate::store::log::{Retention, StreamLog};
use crate::store::readers::{Reader, Readers};
use crate::store::watermarks::{Watermark, Watermarks};
use crate::store::{DataDir, StoreError};
use crate::wire::id::PeerId;
use crate::wire::repair::Repair;

/// Whether the log can be written; read by `publish` and `flush`.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    failed: AtomicBool,
    error: Mutex<Option<Arc<StoreError>>>,
}

impl StoreHealth {
    /// `Err(Error::Store)` while the last write to the log failed.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.error.lock().clone() {
            Some(e) => Err(Error::Store(e)),
            None => Ok(()),
        }
    }

    /// Records a failed write; while failing, the first error is kept (it
    /// says why: a later one may only say the engine gave up).
    pub(crate) fn set(&self, e: StoreError) {
        let mut error = self.error.lock();
        if error.is_none() {
            *error = Some(Arc::new(e));
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn clear(&self) {
        if self.failed.swap(false, Ordering::Relaxed) {
            *self.error.lock() = None;
        }
    }
}

/// Sets the gauges of `log` (events, segments).
pub(crate) fn set_log_gauges(counters: &Counters, log: &StreamLog) {
    Counters::set(&counters.log_events, log.events());
    Counters::set(&counters.log_segments, log.segment_count() as u64);
}

/// See the module documentation.
pub(crate) struct Journal {
    pub dir: Arc<DataDir>,
    /// Shared with the log writer, which appends to it.
    pub log: Arc<Mutex<StreamLog>>,
    pub watermarks: Watermarks,
    pub retention: Retention,
    /// The watermarks as last written.
    written: HashMap<PeerId, (u64, u64)>,
    readers_store: Readers,
    /// The durable consumers of this stream, by (member, name): what each
    /// processed, when it was last heard of (µs since the epoch), and what
    /// was last written of it (`None`: not written yet).
    readers: HashMap<(PeerId, String), ReaderState>,
    /// Readers forgotten since the last write.
    forgotten: Vec<(u64, String)>,
    groups_store: Groups,
    /// The durable groups as last written (or read at start).
    groups: HashMap<String, GroupRecord>,
    /// Groups forgotten since the last write.
    groups_forgotten: Vec<String>,
    /// Events retention trimmed before a remembered durable consumer had
    /// processed them (it finds them lost when it comes back).
    pub trimmed_unprocessed: u64,
}

/// A durable consumer of this stream, as the journal keeps it.
struct ReaderState {
    seq: u64,
    seen_us: u64,
    written: Option<u64>,
}

/// Most durable consumers of its stream a peer remembers (more are not).
const MAX_READERS: usize = 4096;

impl Journal {
    pub(crate) fn new(
        dir: Arc<DataDir>,
        log: Arc<Mutex<StreamLog>>,
        watermarks: Watermarks,
        earlier: &[Watermark],
        retention: Retention,
        (readers_store, known): (Readers, Vec<Reader>),
        (groups_store, groups): (Groups, Vec<GroupRecord>),
    ) -> Self {
        let written = earlier
            .iter()
            .map(|w| (PeerId(w.member), (w.incarnation, w.seq)))
            .collect();
        // Heard of now: a peer that was down could not hear anyone.
        let now = crate::driver::clock::now_us();
        let readers = known
            .into_iter()
            .map(|r| {
                let state = ReaderState {
                    seq: r.seq,
                    seen_us: now,
                    written: Some(r.seq),
                };
                ((PeerId(r.member), r.name), state)
            })
            .collect();
        Journal {
            dir,
            log,
            watermarks,
            retention,
            written,
            readers_store,
            readers,
            forgotten: Vec::new(),
            groups_store,
            groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
            groups_forgotten: Vec::new(),
            trimmed_unprocessed: 0,
        }
    }

    /// The durable groups recorded before this start.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupRecord> + '_ {
        self.groups.values()
    }

    /// The durable groups as the assigner has them now, and those it
    /// forgot: what changed is written.
    pub(crate) fn note_groups(
        &mut self,
        now: impl Iterator<Item = DurableGroup>,
        gone: Vec<Arc<str>>,
    ) {
        for name in gone {
            if self.groups.remove(&*name).is_some() {
                self.groups_forgotten.push(name.to_string());
            }
        }
        let changed: Vec<GroupRecord> = now
            .map(|g| GroupRecord {
                name: g.group.to_string(),
                through: g.through,
                patterns: g.patterns.iter().map(|p| p.as_str().to_owned()).collect(),
            })
            .filter(|g| self.groups.get(&g.name) != Some(g))
            .collect();
        if changed.is_empty() && self.groups_forgotten.is_empty() {
            return;
        }
        match self
            .groups_store
            .write(&self.dir, &changed, &self.groups_forgotten)
        {
            Ok(()) => {
                self.groups_forgotten.clear();
                for g in changed {
                    self.groups.insert(g.name.clone(), g);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot record the durable groups"),
        }
    }

    /// What `member`'s durable consumers have processed of this stream,
    /// `(name, stream epoch, through)`, from its heartbeat. Positions in
    /// another epoch of the stream are not this log's.
    pub(crate) fn note_readers(
        &mut self,
        member: PeerId,
        positions: Vec<(String, u64, u64)>,
        now_us: u64,
    ) {
        let epoch = self.dir.identity().stream;
        for (name, _, seq) in positions.into_iter().filter(|p| p.1 == epoch) {
            let key = (member, name);
            if let Some(r) = self.readers.get_mut(&key) {
                r.seq = seq;
                r.seen_us = now_us;
                continue;
            }
            if self.readers.len() >= MAX_READERS {
                tracing::warn!(%member, name = %key.1, "too many durable consumers to remember; this one is not");
                continue;
            }
            tracing::info!(%member, name = %key.1, processed = seq, "a durable consumer of this stream");
            let state = ReaderState {
                seq,
                seen_us: now_us,
                written: None,
            };
            self.readers.insert(key, state);
        }
    }

    /// Durable consumers of this stream remembered.
    pub(crate) fn readers(&self) -> usize {
        self.readers.len()
    }

    /// Forgets the readers not heard of for longer than the retention age
    /// (the age bound then applies to what they had not processed), then
    /// writes the ones that moved.
    fn record_readers(&mut self, now_us: u64) {
        let max_age = self.retention.max_age_us;
        let forgotten = &mut self.forgotten;
        self.readers.retain(|(member, name), r| {
            let keep = now_us.saturating_sub(r.seen_us) <= max_age;
            if !keep {
                tracing::info!(%member, %name, "a durable consumer not heard of within the retention age is forgotten");
                forgotten.push((member.0, name.clone()));
            }
            keep
        });
        let changed: Vec<Reader> = self
            .readers
            .iter()
            .filter(|(_, r)| r.written != Some(r.seq))
            .map(|((member, name), r)| Reader {
                member: member.0,
                name: name.clone(),
                seq: r.seq,
            })
            .collect();
        if changed.is_empty() && self.forgotten.is_empty() {
            return;
        }
        match self
            .readers_store
            .write(&self.dir, &changed, &self.forgotten)
        {
            Ok(()) => {
                self.forgotten.clear();
                for r in self.readers.values_mut() {
                    r.written = Some(r.seq);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot record the durable consumers"),
        }
    }

    /// Trims the log past retention: by age only what every remembered
    /// reader processed, by size whatever it holds (what a reader had not
    /// processed is counted, and reported to it as lost when it returns).
    fn trim(&mut self, now_us: u64) {
        let readers = self.readers.values().map(|r| r.seq);
        let groups = self.groups.values().map(|g| g.through);
        let processed = readers.chain(groups).min().unwrap_or(u64::MAX);
        let mut log = self.log.lock();
        let before = log.trimmed_through();
        let after = match log.enforce(&self.dir, self.retention, now_us, processed) {
            Ok(through) => through,
            Err(e) => return tracing::warn!(error = %e, "cannot trim the log"),
        };
        drop(log);
        for ((member, name), r) in &self.readers {
            let unprocessed = after.saturating_sub(r.seq.max(before));
            if unprocessed > 0 {
                self.trimmed_unprocessed += unprocessed;
                tracing::warn!(%member, %name, unprocessed,
                    max_bytes = self.retention.max_bytes,
                    "the log outgrew its size bound: trimmed events a durable consumer had not processed");
            }
        }
        for g in self.groups.values() {
            let unprocessed = after.saturating_sub(g.through.max(before));
            if unprocessed > 0 {
                self.trimmed_unprocessed += unprocessed;
                tracing::warn!(group = %g.name, unprocessed, max_bytes = self.retention.max_bytes,
                    "the log outgrew its size bound: trimmed events a durable group had not handled");
            }
        }
    }

    /// Moves into `repair` what it lists as `gone` but the log still holds
    /// (older than what the retransmit buffer holds), within `max_bytes`
    /// of frames and `max_count` frames in all. Returns how many it read.
    pub(crate) fn fill(&self, repair: &mut Repair, max_bytes: usize, max_count: usize) -> usize {
        if repair.gone.is_empty() {
            return 0;
        }
        let log = self.log.lock();
        let first_kept = log.first_seq();
        let (mut frames, mut gone, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        let mut full = false;
        for &(first, last) in &repair.gone {
            if first < first_kept {
                gone.push((first, last.min(first_kept - 1)));
            }
            let from = first.max(first_kept);
            if full || from > last {
                continue;
            }
            let room = max_bytes.saturating_sub(bytes);
            let count = max_count.saturating_sub(frames.len());
            match log.read(&self.dir, from, last, room, count) {
                Ok(read) => {
                    let got = read.len() as u64;
                    for (_, frame) in read {
                        bytes += frame.len();
                        frames.push(frame);
                    }
                    // What did not fit is still missing: asked for again.
                    full = got < last - from + 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, from, last, "cannot read the log for a repair");
                    full = true;
                }
            }
        }
        let read = frames.len();
        // Log frames are all older than the buffer's; the total stays
        // within the bound by dropping the newest.
        for frame in std::mem::take(&mut repair.frames) {
            if bytes + frame.len() > max_bytes || frames.len() >= max_count {
                break;
            }
            bytes += frame.len();
            frames.push(frame);
        }
        repair.frames = frames;
        repair.gone = gone;
        read
    }

    /// Sets the log's gauges (events, segments).
    pub(crate) fn set_gauges(&self, counters: &Counters) {
        set_log_gauges(counters, &self.log.lock());
    }

    /// About once a second: records the members' watermarks and the
    /// readers that changed, trims the log past retention.
    pub(crate) fn upkeep(&mut self, outbox: &Outbox, now_us: u64) {
        self.record_watermarks(outbox);
        self.record_readers(now_us);
        self.trim(now_us);
    }

    /// Records the members' watermarks that changed. Called at once when
    /// the members change, so that a member the peer knew is never taken
    /// for a new one after a crash (what a new member is not owed, it
    /// would skip as "published before it joined").
    pub(crate) fn record_watermarks(&mut self, outbox: &Outbox) {
        let now: HashMap<PeerId, (u64, u64)> = outbox
            .watermarks()
            .map(|(id, inc, ack)| (id, (inc, ack)))
            .collect();
        let changed: Vec<Watermark> = now
            .iter()
            .filter(|(id, w)| self.written.get(id) != Some(w))
            .map(|(id, (inc, ack))| Watermark {
                member: id.0,
                incarnation: *inc,
                seq: *ack,
            })
            .collect();
        let removed: Vec<u64> = self
            .written
            .keys()
            .filter(|id| !now.contains_key(id))
            .map(|id| id.0)
            .collect();
        match self.watermarks.write(&self.dir, &changed, &removed) {
            Ok(()) => self.written = now,
            Err(e) => tracing::warn!(error = %e, "cannot record the members' watermarks"),
        }
    }
}
