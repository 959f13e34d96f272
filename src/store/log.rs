//! The log of a peer's own stream: every event it published, by sequence
//! number, until retention trims it.
//!
//! Owns: the segments the log is cut into (one [segment file](super::segment)
//! each under `log/` in the data dir, of about [`SEGMENT_EVENTS`] events or
//! [`SEGMENT_BYTES`] bytes), the record of which segments exist and how far
//! retention trimmed (in the meta partition), appending a batch as one
//! record (group commit: one write and at most one fsync per batch,
//! whatever its size), reading a range back, and trimming whole segments.
//! After a crash the log is a prefix of what was appended, never a torn
//! batch (the newest segment's torn tail is cut off); a recorded segment
//! whose file is missing, or segments that do not follow on from each
//! other, are reported as damage, never repaired by guessing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::data_dir::{corrupt, DataDir, Fsync};
use super::segment::{self, SegmentFile};
use super::StoreError;

/// Most events per segment.
pub const SEGMENT_EVENTS: u64 = 65_536;
/// Bytes after which a segment is closed.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Prefix of a segment's entry in the meta partition (key: its first
/// sequence number; value: empty).
const SEG_PREFIX: &[u8] = b"seg";
/// Meta key: the highest sequence number ever trimmed.
const TRIMMED: &str = "trimmed_through";
/// The log's directory under the data dir.
const LOG_DIR: &str = "log";

/// How far the log may grow before its oldest segments are trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of events kept at most (the newest segment is always kept).
    pub max_bytes: u64,
    /// Age of the newest event of a segment after which it is trimmed, µs.
    pub max_age_us: u64,
}

/// See the module documentation.
pub struct StreamLog {
    path: PathBuf,
    /// By first sequence number, ascending and contiguous.
    segments: BTreeMap<u64, SegmentFile>,
    last_seq: u64,
    trimmed_through: u64,
    /// The record being appended (kept to reuse its allocation).
    record: Vec<u8>,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("first_seq", &self.first_seq())
            .field("last_seq", &self.last_seq)
            .field("segments", &self.segments.len())
            .finish()
    }
}

fn seg_key(first: u64) -> Vec<u8> {
    [SEG_PREFIX, &first.to_be_bytes()].concat()
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Makes the entries of directory `path` durable (a created or removed file).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl StreamLog {
    /// Opens the log of `dir`, checking its record against its segments.
    pub fn open(dir: &DataDir) -> Result<StreamLog, StoreError> {
        let damaged = |reason: String| corrupt(dir.path(), reason);
        let path = dir.path().join(LOG_DIR);
        std::fs::create_dir_all(&path).map_err(|e| dir.error("create the log directory", e))?;
        let trimmed_through = match dir.meta().get(TRIMMED) {
            Ok(None) => 0,
            Ok(Some(v)) => u64_at(&v, 0).ok_or_else(|| damaged("trim mark malformed".into()))?,
            Err(e) => return Err(damaged(format!("cannot read the trim mark: {e}"))),
        };
        let mut recorded = Vec::new();
        for entry in dir.meta().prefix(SEG_PREFIX) {
            let (k, v) = entry.map_err(|e| damaged(format!("cannot read the log index: {e}")))?;
            match u64_at(&k, SEG_PREFIX.len()) {
                Some(first) if v.is_empty() => recorded.push(first),
                _ => return Err(damaged("a log index entry is malformed".into())),
            }
        }
        let mut files = Vec::new();
        let listing = std::fs::read_dir(&path).map_err(|e| dir.error("list the log", e))?;
        for entry in listing {
            let entry = entry.map_err(|e| dir.error("list the log", e))?;
            if let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) {
                files.push(first);
            }
        }
        files.sort_unstable();
        // Segments trimmed whose files a crash left behind.
        for &first in files.iter().filter(|f| **f <= trimmed_through) {
            let _ = std::fs::remove_file(path.join(segment::file_name(first)));
        }
        files.retain(|f| *f > trimmed_through);
        recorded.retain(|f| *f > trimmed_through);
        if let Some(missing) = recorded.iter().find(|f| files.binary_search(f).is_err()) {
            return Err(damaged(format!("log segment {missing} is missing")));
        }
        // A file beyond the record: created by a roll-over that a crash
        // interrupted before it was recorded.
        let newest_recorded = recorded.last().copied().unwrap_or(0);
        let unrecorded: Vec<u64> = files
            .iter()
            .copied()
            .filter(|f| recorded.binary_search(f).is_err())
            .collect();
        if let Some(stray) = unrecorded.iter().find(|f| **f < newest_recorded) {
            return Err(damaged(format!(
                "log segment {stray} is not in the log's record"
            )));
        }
        let mut log = StreamLog {
            path,
            segments: BTreeMap::new(),
            last_seq: trimmed_through,
            trimmed_through,
            record: Vec::new(),
        };
        for (i, &first) in files.iter().enumerate() {
            if first != log.last_seq + 1 {
                return Err(damaged(format!(
                    "the log jumps from {} to {first}",
                    log.last_seq
                )));
            }
            let newest = i + 1 == files.len();
            let file = log.path.join(segment::file_name(first));
            let (seg, torn) = SegmentFile::open(&file, first, newest).map_err(damaged)?;
            if let Some(t) = torn {
                tracing::warn!(segment = %file.display(), bytes = t.bytes, reason = %t.reason,
                    "cut off the torn tail of the log (an append a crash interrupted)");
            }
            if !newest && seg.events() == 0 {
                return Err(damaged(format!("log segment {first} is empty")));
            }
            log.last_seq = seg.last();
            log.segments.insert(first, seg);
        }
        for first in unrecorded {
            log.record_segment(dir, first)?;
        }
        Ok(log)
    }

    /// The last sequence number appended (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The oldest sequence number still in the log (`last_seq() + 1` when
    /// it holds none).
    pub fn first_seq(&self) -> u64 {
        self.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last_seq + 1)
    }

    /// Events it holds.
    pub fn events(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq())
    }

    /// Segment files it holds (retention trims whole closed ones).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The highest sequence number retention trimmed (0: none).
    pub fn trimmed_through(&self) -> u64 {
        self.trimmed_through
    }

    /// Bytes of events held.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes()).sum()
    }

    /// Appends `frames`, which carry the sequence numbers `last_seq() + 1`
    /// onwards, as one record, then makes it as durable as the data dir's
    /// fsync policy says. On error nothing of the batch is in the log.
    pub fn append<'a, I>(&mut self, dir: &DataDir, frames: I, now_us: u64) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let first = self.last_seq + 1;
        let count = segment::encode(&mut self.record, first, now_us, frames);
        if count == 0 {
            return Ok(());
        }
        dir.check_space(self.record.len() as u64, now_us)?;
        let full = self
            .segments
            .values()
            .next_back()
            .is_none_or(|s| s.events() >= SEGMENT_EVENTS || s.bytes() >= SEGMENT_BYTES);
        if full {
            self.roll_over(dir, first)?;
        }
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("a segment is open");
        seg.append(&self.record, dir.fsync() == Fsync::EveryBatch)
            .map_err(|e| dir.error("append to the log", e))?;
        self.last_seq = first + count - 1;
        Ok(())
    }

    /// Closes the newest segment (synced whatever the policy: only the
    /// newest can have a torn tail) and opens one starting at `first`.
    fn roll_over(&mut self, dir: &DataDir, first: u64) -> Result<(), StoreError> {
        if let Some(closed) = self.segments.values().next_back() {
            closed
                .sync()
                .map_err(|e| dir.error("close a log segment", e))?;
            closed.evict();
        }
        let seg = SegmentFile::create(&self.path, first)
            .map_err(|e| dir.error("create a log segment", e))?;
        let made = sync_dir(&self.path)
            .map_err(|e| dir.error("create a log segment", e))
            .and_then(|()| self.record_segment(dir, first));
        if let Err(e) = made {
            let _ = std::fs::remove_file(seg.path());
            return Err(e);
        }
        self.segments.insert(first, seg);
        Ok(())
    }

    /// Records in the meta partition that the segment `first` exists.
    fn record_segment(&self, dir: &DataDir, first: u64) -> Result<(), StoreError> {
        dir.meta()
            .insert(seg_key(first), [])
            .map_err(|e| dir.error("record a log segment", e))?;
        dir.persist("record a log segment")
    }

    /// The events `first..=last` still in the log, ascending, up to about
    /// `max_bytes` (at least one if any) and `max_count`.
    pub fn read(
        &self,
        dir: &DataDir,
        first: u64,
        last: u64,
        max_bytes: usize,
        max_count: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let mut out = Vec::new();
        let first = first.max(self.first_seq());
        let last = last.min(self.last_seq);
        if first > last || max_count == 0 {
            return Ok(out);
        }
        let start = self
            .segments
            .range(..=first)
            .next_back()
            .map_or(first, |(f, _)| *f);
        let mut bytes = 0usize;
        for seg in self.segments.range(start..=last).map(|(_, s)| s) {
            let from = first.max(seg.first());
            let more = seg
                .read(from, last, (max_bytes, max_count), &mut bytes, &mut out)
                .map_err(|e| corrupt(dir.path(), e))?;
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// Trims the oldest segments beyond `retention` (never the newest
    /// segment): past `max_bytes` whatever they hold, past `max_age` only
    /// the segments whose events are all at or below `processed` (what
    /// every durable consumer known to be reading has processed; `u64::MAX`
    /// when there is none). Returns the highest sequence number trimmed so
    /// far (0: none).
    pub fn enforce(
        &mut self,
        dir: &DataDir,
        retention: Retention,
        now_us: u64,
        processed: u64,
    ) -> Result<u64, StoreError> {
        let mut total = self.bytes();
        let mut drop = Vec::new();
        for (&first, seg) in &self.segments {
            if drop.len() + 1 >= self.segments.len() {
                break; // the newest stays
            }
            let old = now_us.saturating_sub(seg.last_time_us()) > retention.max_age_us
                && seg.last() <= processed;
            if !(old || total > retention.max_bytes) {
                break;
            }
            total -= seg.bytes();
            drop.push(first);
        }
        self.trim(dir, &drop)?;
        Ok(self.trimmed_through)
    }

    /// Removes the segments starting at `firsts` (the oldest ones, in order).
    fn trim(&mut self, dir: &DataDir, firsts: &[u64]) -> Result<(), StoreError> {
        let Some(through) = firsts.last().map(|f| self.segments[f].last()) else {
            return Ok(());
        };
        let mut batch = dir.keyspace().batch();
        for first in firsts {
            batch.remove(dir.meta(), seg_key(*first));
        }
        batch.insert(dir.meta(), TRIMMED, through.to_be_bytes());
        batch.commit().map_err(|e| dir.error("trim the log", e))?;
        dir.persist("trim the log")?;
        self.trimmed_through = through;
        for first in firsts {
            if let Some(seg) = self.segments.remove(first) {
                // Once the record no longer names it; a crash before this
                // leaves files that the next open removes.
                let _ = std::fs::remove_file(seg.path());
            }
        }
        let _ = sync_dir(&self.path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::{Fsync, Identity};
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chorus-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn open(path: &std::path::Path) -> (DataDir, StreamLog) {
        let dir = DataDir::open(path, Fsync::OsBuffered, || Identity { id: 1, stream: 2 }).unwrap();
        let log = StreamLog::open(&dir).unwrap();
        (dir, log)
    }

    /// Why the log at `path` does not open.
    fn open_damaged(path: &std::path::Path) -> StoreError {
        let dir = DataDir::open(path, Fsync::OsBuffered, || Identity { id: 1, stream: 2 }).unwrap();
        StreamLog::open(&dir).unwrap_err()
    }

    fn frame(seq: u64) -> Vec<u8> {
        format!("event {seq:06}").into_bytes()
    }

    fn append(dir: &DataDir, log: &mut StreamLog, n: u64, now: u64) {
        let frames: Vec<Vec<u8>> = (log.last_seq() + 1..=log.last_seq() + n)
            .map(frame)
            .collect();
        log.append(dir, frames.iter().map(|f| f.as_slice()), now)
            .unwrap();
    }

    #[test]
    fn appended_events_are_read_back_after_a_reopen() {
        let path = tmp("reopen");
        let (dir, mut log) = open(&path);
        assert_eq!((log.first_seq(), log.last_seq()), (1, 0));
        append(&dir, &mut log, 10, 1);
        append(&dir, &mut log, 5, 2);
        drop((dir, log));
        let (dir, log) = open(&path);
        assert_eq!((log.first_seq(), log.last_seq()), (1, 15));
        let got = log.read(&dir, 3, 12, usize::MAX, 100).unwrap();
        assert_eq!(got.len(), 10);
        for (seq, bytes) in got {
            assert_eq!(bytes, frame(seq));
        }
        // Bounded by bytes (at least one) and by count.
        assert_eq!(log.read(&dir, 1, 15, 1, 100).unwrap().len(), 1);
        assert_eq!(log.read(&dir, 1, 15, 30, 100).unwrap().len(), 2);
        assert_eq!(log.read(&dir, 1, 15, usize::MAX, 4).unwrap().len(), 4);
        // Beyond what was published: nothing.
        assert!(log.read(&dir, 16, 99, usize::MAX, 100).unwrap().is_empty());
        drop((dir, log));
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn segments_roll_over_and_retention_trims_whole_old_ones() {
        let path = tmp("trim");
        let (dir, mut log) = open(&path);
        // Three full segments and a bit, appended at times 1, 2, 3, 4 s.
        for t in 1..=3u64 {
            let frames: Vec<Vec<u8>> = (0..SEGMENT_EVENTS).map(frame).collect();
            log.append(&dir, frames.iter().map(|f| f.as_slice()), t * 1_000_000)
                .unwrap();
        }
        append(&dir, &mut log, 3, 4_000_000);
        assert_eq!(log.segment_count(), 4);
        let last = log.last_seq();
        assert_eq!(log.events(), last);
        // Nothing is old enough or too big.
        let keep = Retention {
            max_bytes: u64::MAX,
            max_age_us: 10_000_000,
        };
        assert_eq!(log.enforce(&dir, keep, 5_000_000, u64::MAX).unwrap(), 0);
        // By age: the segments last written more than 2.5 s ago, but only
        // as far as a durable consumer has processed them.
        let by_age = Retention {
            max_bytes: u64::MAX,
            max_age_us: 2_500_000,
        };
        let processed = SEGMENT_EVENTS + 10;
        assert_eq!(
            log.enforce(&dir, by_age, 5_000_000, processed).unwrap(),
            SEGMENT_EVENTS
        );
        assert_eq!(
            log.enforce(&dir, by_age, 5_000_000, u64::MAX).unwrap(),
            SEGMENT_EVENTS * 2
        );
        assert_eq!(log.first_seq(), SEGMENT_EVENTS * 2 + 1);
        // By size: everything but the newest segment, processed or not.
        let by_size = Retention {
            max_bytes: 1,
            max_age_us: u64::MAX,
        };
        assert_eq!(
            log.enforce(&dir, by_size, 5_000_000, 0).unwrap(),
            SEGMENT_EVENTS * 3
        );
        drop((dir, log));
        let (dir, mut log) = open(&path);
        assert_eq!(
            (log.first_seq(), log.last_seq()),
            (SEGMENT_EVENTS * 3 + 1, last)
        );
        assert_eq!((log.segment_count(), log.events()), (1, 3));
        assert_eq!(
            log.read(&dir, 1, last, usize::MAX, 10).unwrap()[0].0,
            SEGMENT_EVENTS * 3 + 1
        );
        append(&dir, &mut log, 1, 6_000_000);
        assert_eq!(log.last_seq(), last + 1);
        drop((dir, log));
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_recorded_segment_whose_file_is_gone_is_damage() {
        let path = tmp("damage");
        let (dir, mut log) = open(&path);
        let frames: Vec<Vec<u8>> = (1..=SEGMENT_EVENTS).map(frame).collect();
        log.append(&dir, frames.iter().map(|f| f.as_slice()), 1)
            .unwrap();
        append(&dir, &mut log, 3, 2);
        drop((dir, log));
        let newest = path
            .join(LOG_DIR)
            .join(segment::file_name(SEGMENT_EVENTS + 1));
        std::fs::remove_file(&newest).unwrap();
        let e = open_damaged(&path);
        assert!(e.to_string().contains("is missing"), "{e}");
        // The oldest gone instead: the log would jump.
        std::fs::remove_dir_all(&path).unwrap();
        let (dir, mut log) = open(&path);
        log.append(&dir, frames.iter().map(|f| f.as_slice()), 1)
            .unwrap();
        append(&dir, &mut log, 3, 2);
        drop((dir, log));
        std::fs::remove_file(path.join(LOG_DIR).join(segment::file_name(1))).unwrap();
        let e = open_damaged(&path);
        assert!(e.to_string().contains("is missing"), "{e}");
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_segment_created_but_not_recorded_before_a_crash_is_taken_up() {
        let path = tmp("unrecorded");
        let (dir, mut log) = open(&path);
        append(&dir, &mut log, 3, 1);
        // As if the roll-over had crashed between the file and its record.
        dir.meta().remove(seg_key(1)).unwrap();
        drop((dir, log));
        let (dir, mut log) = open(&path);
        assert_eq!((log.first_seq(), log.last_seq()), (1, 3));
        append(&dir, &mut log, 2, 2);
        assert!(dir.meta().get(seg_key(1)).unwrap().is_some());
        drop((dir, log));
        std::fs::remove_dir_all(&path).unwrap();
    }
}
