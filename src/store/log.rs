//! The log of a peer's own stream: every event it published, by sequence
//! number, until retention trims it.
//!
//! Owns: the segments the log is cut into (one storage partition each, of
//! about [`SEGMENT_EVENTS`] events or [`SEGMENT_BYTES`] bytes), their index
//! in the meta partition, appending a batch as one atomic write (group
//! commit: one entry — its frames, length-prefixed, keyed by its first
//! sequence number — and at most one fsync per batch, whatever its size),
//! reading a range back, and trimming whole segments. The index and the
//! events of a batch are committed together, so after a crash the log is a
//! prefix of what was appended, never a torn batch; an index that does not
//! match its segments is reported as damage, never repaired by guessing.

use std::collections::BTreeMap;

use bytes::Bytes;
use fjall::{PartitionCreateOptions, PartitionHandle};

use super::data_dir::{corrupt, DataDir};
use super::StoreError;

/// Most events per segment.
pub const SEGMENT_EVENTS: u64 = 65_536;
/// Bytes after which a segment is closed.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Prefix of a segment's index entry in the meta partition.
const SEG_PREFIX: &[u8] = b"seg";
/// Meta key: the highest sequence number ever trimmed.
const TRIMMED: &str = "trimmed_through";

#[derive(Clone)]
struct Segment {
    last: u64,
    bytes: u64,
    /// When its last event was appended, µs since the Unix epoch.
    last_time_us: u64,
    partition: PartitionHandle,
}

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
    /// By first sequence number, ascending and contiguous.
    segments: BTreeMap<u64, Segment>,
    last_seq: u64,
    trimmed_through: u64,
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

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seg_key(first: u64) -> Vec<u8> {
    [SEG_PREFIX, &first.to_be_bytes()].concat()
}

/// One log entry: the frames of a batch, each as `[len: u32 BE][bytes]`.
/// Returns the entry, the number of frames and their bytes.
fn encode_entry<'a, I>(frames: I) -> (fjall::Slice, u64, u64)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    let frames = frames.into_iter();
    let (mut n, mut bytes) = (0u64, 0u64);
    for f in frames.clone() {
        n += 1;
        bytes += f.len() as u64;
    }
    let len = (bytes + 4 * n) as usize;
    // Written straight into the engine's buffer: one copy of each frame.
    let mut reader = EntryReader {
        frames,
        prefix: [0; 4],
        at: 4,
        frame: &[],
    };
    let value = fjall::Slice::from_reader(&mut reader, len).expect("reads from memory");
    (value, n, bytes)
}

/// Reads frames as one entry: each one's length (u32, big-endian), then it.
struct EntryReader<'a, I> {
    frames: I,
    prefix: [u8; 4],
    /// How much of `prefix` was read (4: all of it).
    at: usize,
    frame: &'a [u8],
}

impl<'a, I: Iterator<Item = &'a [u8]>> std::io::Read for EntryReader<'a, I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < 4 {
                let n = (4 - self.at).min(buf.len());
                buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if !self.frame.is_empty() {
                let n = self.frame.len().min(buf.len());
                buf[..n].copy_from_slice(&self.frame[..n]);
                self.frame = &self.frame[n..];
                return Ok(n);
            }
            match self.frames.next() {
                Some(f) => {
                    self.prefix = (f.len() as u32).to_be_bytes();
                    self.at = 0;
                    self.frame = f;
                }
                None => return Ok(0),
            }
        }
    }
}

/// The frames of an entry; `None` if it does not decode whole.
fn decode_entry(v: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let mut rest = v;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let frame = rest.get(4..4 + len)?;
        frames.push(frame);
        rest = &rest[4 + len..];
    }
    (!frames.is_empty()).then(|| frames.into_iter())
}

/// How a segment is stored: its entries (whole batches, kilobytes to
/// megabytes) go to blob files, written once, so compaction never copies
/// them again.
fn segment_options() -> PartitionCreateOptions {
    PartitionCreateOptions::default().with_kv_separation(fjall::KvSeparationOptions::default())
}

fn partition_name(first: u64) -> String {
    format!("log_{first:020}")
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

impl StreamLog {
    /// Opens the log of `dir`, checking its index against its segments.
    pub fn open(dir: &DataDir) -> Result<StreamLog, StoreError> {
        let damaged = |reason: String| corrupt(dir.path(), reason);
        let trimmed_through = match dir.meta().get(TRIMMED) {
            Ok(None) => 0,
            Ok(Some(v)) => u64_at(&v, 0).ok_or_else(|| damaged("trim mark malformed".into()))?,
            Err(e) => return Err(damaged(format!("cannot read the trim mark: {e}"))),
        };
        let mut segments = BTreeMap::new();
        for entry in dir.meta().prefix(SEG_PREFIX) {
            let (k, v) = entry.map_err(|e| damaged(format!("cannot read the log index: {e}")))?;
            let (Some(first), Some(last), Some(bytes), Some(last_time_us)) = (
                u64_at(&k, SEG_PREFIX.len()),
                u64_at(&v, 0),
                u64_at(&v, 8),
                u64_at(&v, 16),
            ) else {
                return Err(damaged("a log index entry is malformed".into()));
            };
            let name = partition_name(first);
            if !dir.keyspace().partition_exists(&name) || last < first {
                return Err(damaged(format!("log segment {first}..={last} is missing")));
            }
            let partition = dir
                .keyspace()
                .open_partition(&name, segment_options())
                .map_err(|e| damaged(format!("cannot open log segment {first}: {e}")))?;
            segments.insert(
                first,
                Segment {
                    last,
                    bytes,
                    last_time_us,
                    partition,
                },
            );
        }
        let mut log = StreamLog {
            segments,
            last_seq: trimmed_through,
            trimmed_through,
        };
        let mut next = trimmed_through + 1;
        for (&first, seg) in &log.segments {
            if first != next {
                return Err(damaged(format!(
                    "the log jumps from {} to {first}",
                    next - 1
                )));
            }
            next = seg.last + 1;
        }
        log.last_seq = next - 1;
        if let Some((_, seg)) = log.segments.iter().next_back() {
            let last = seg
                .partition
                .last_key_value()
                .map_err(|e| damaged(format!("cannot read the log's end: {e}")))?
                .and_then(|(k, v)| {
                    let n = decode_entry(&v)?.count() as u64;
                    Some(u64_at(&k, 0)? + n - 1)
                });
            if last != Some(seg.last) {
                return Err(damaged(format!(
                    "the log's index ends at {} but its events at {last:?}",
                    seg.last
                )));
            }
        }
        // Segments trimmed from the index whose files a crash left behind.
        let mut cleanup = Vec::new();
        for name in dir.keyspace().list_partitions() {
            let first = name
                .strip_prefix("log_")
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                if !log.segments.contains_key(&first) {
                    cleanup.push(name);
                }
            }
        }
        for name in cleanup {
            if let Ok(p) = dir
                .keyspace()
                .open_partition(&name, PartitionCreateOptions::default())
            {
                let _ = dir.keyspace().delete_partition(p);
            }
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

    /// The highest sequence number retention trimmed (0: none).
    pub fn trimmed_through(&self) -> u64 {
        self.trimmed_through
    }

    /// Bytes of events held.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Appends `frames`, which carry the sequence numbers `last_seq() + 1`
    /// onwards, as one atomic write, then makes it as durable as the data
    /// dir's fsync policy says. On error nothing of the batch is in the log.
    pub fn append<'a, I>(&mut self, dir: &DataDir, frames: I, now_us: u64) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        // The whole batch is one entry, keyed by its first sequence number:
        // one insert however many events it holds.
        let (value, count, bytes) = encode_entry(frames);
        dir.check_space(value.len() as u64, now_us)?;
        if count == 0 {
            return Ok(());
        }
        let first_seq = self.last_seq + 1;
        let seq = self.last_seq + count;
        let mut batch = dir.keyspace().batch();
        // The segments this batch writes to, as they will be once it is
        // committed; `self` is only updated then.
        let mut staged: Vec<(u64, Segment)> = Vec::new();
        let mut current = self
            .segments
            .iter()
            .next_back()
            .map(|(f, s)| (*f, s.clone()));
        let full = current.as_ref().is_none_or(|(first, s)| {
            s.last + 1 - first >= SEGMENT_EVENTS || s.bytes >= SEGMENT_BYTES
        });
        if full {
            let partition = dir
                .keyspace()
                .open_partition(&partition_name(first_seq), segment_options())
                .map_err(|e| dir.error("create a log segment", e))?;
            current = Some((
                first_seq,
                Segment {
                    last: first_seq - 1,
                    bytes: 0,
                    last_time_us: now_us,
                    partition,
                },
            ));
        }
        let (_, seg) = current.as_mut().expect("a segment is open");
        batch.insert(&seg.partition, seq_key(first_seq), value);
        seg.last = seq;
        seg.bytes += bytes;
        seg.last_time_us = now_us;
        staged.extend(current);
        for (first, s) in &staged {
            let mut v = Vec::with_capacity(24);
            v.extend_from_slice(&s.last.to_be_bytes());
            v.extend_from_slice(&s.bytes.to_be_bytes());
            v.extend_from_slice(&s.last_time_us.to_be_bytes());
            batch.insert(dir.meta(), seg_key(*first), v);
        }
        let committed = batch
            .commit()
            .map_err(|e| dir.error("append to the log", e))
            .and_then(|()| dir.persist("append to the log"));
        if let Err(e) = committed {
            self.abandon(dir, staged);
            return Err(e);
        }
        self.segments.extend(staged);
        self.last_seq = seq;
        Ok(())
    }

    /// Drops the segments a failed append had created.
    fn abandon(&self, dir: &DataDir, staged: Vec<(u64, Segment)>) {
        for (first, s) in staged {
            if !self.segments.contains_key(&first) {
                let _ = dir.keyspace().delete_partition(s.partition);
            }
        }
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
        for seg in self.segments.range(start..).map(|(_, s)| s) {
            // The entry holding `first` is the last one keyed at or below it.
            let from = match seg.partition.range(..=seq_key(first)).next_back() {
                Some(entry) => {
                    let (k, _) = entry.map_err(|e| dir.error("read the log", e))?;
                    u64_at(&k, 0).unwrap_or(first)
                }
                None => first,
            };
            for entry in seg.partition.range(seq_key(from)..=seq_key(last)) {
                let (k, v) = entry.map_err(|e| dir.error("read the log", e))?;
                let Some(mut seq) = u64_at(&k, 0) else {
                    continue;
                };
                let frames = decode_entry(&v)
                    .ok_or_else(|| corrupt(dir.path(), format!("log entry {seq} is malformed")))?;
                for frame in frames {
                    if seq > last {
                        return Ok(out);
                    }
                    if seq >= first {
                        if !out.is_empty() && bytes + frame.len() > max_bytes {
                            return Ok(out);
                        }
                        bytes += frame.len();
                        out.push((seq, Bytes::copy_from_slice(frame)));
                        if out.len() >= max_count {
                            return Ok(out);
                        }
                    }
                    seq += 1;
                }
            }
            if seg.last >= last {
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
            let old = now_us.saturating_sub(seg.last_time_us) > retention.max_age_us
                && seg.last <= processed;
            if !(old || total > retention.max_bytes) {
                break;
            }
            total -= seg.bytes;
            drop.push(first);
        }
        self.trim(dir, &drop)?;
        Ok(self.trimmed_through)
    }

    /// Removes the segments starting at `firsts` (the oldest ones, in order).
    fn trim(&mut self, dir: &DataDir, firsts: &[u64]) -> Result<(), StoreError> {
        let Some(through) = firsts.last().map(|f| self.segments[f].last) else {
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
                // Once the index no longer names it; a crash before this
                // leaves files that the next open removes.
                let _ = dir.keyspace().delete_partition(seg.partition);
            }
        }
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
        assert_eq!(log.segments.len(), 4);
        let last = log.last_seq();
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
    fn an_index_that_disagrees_with_its_events_is_damage() {
        let path = tmp("damage");
        let (dir, mut log) = open(&path);
        append(&dir, &mut log, 3, 1);
        // Claim more than the segment holds.
        let mut v = Vec::new();
        v.extend_from_slice(&9u64.to_be_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        dir.meta().insert(seg_key(1), v).unwrap();
        drop((dir, log));
        let dir =
            DataDir::open(&path, Fsync::OsBuffered, || Identity { id: 1, stream: 2 }).unwrap();
        let e = StreamLog::open(&dir).unwrap_err();
        assert!(e.to_string().contains("index ends at 9"), "{e}");
        drop(dir);
        std::fs::remove_dir_all(&path).unwrap();
    }
}
