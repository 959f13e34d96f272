//! One segment file of the log: batches of events appended as checksummed
//! records, read back by sequence number.
//!
//! Owns: the record format, appending a record (all of it or, after a
//! failed write, nothing: the file is cut back), scanning a file on open
//! (the newest segment's records are checked against their checksums and a
//! torn tail — an append a crash interrupted, which never returned — is cut
//! off; an older segment, fsynced when it was closed, is only walked), and
//! a sparse in-memory index (one entry per [`INDEX_EVERY`] bytes) to find a
//! sequence number without reading the file from its start.
//!
//! A record: `[body length: u32][crc32 of the rest: u32][first seq: u64]
//! [time µs: u64][count: u32]`, then the body: each frame as `[len: u32]
//! [bytes]`; integers big-endian. The log's events are written once, here;
//! why it is not the storage engine's: see `docs/ARCHITECTURE.md`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Bytes of a record's header.
pub const HEADER: usize = 28;

/// Bytes of records between two entries of the sparse index.
pub const INDEX_EVERY: u64 = 4096;

/// Largest record accepted when reading (a bound against a damaged length).
const MAX_RECORD: u32 = 1 << 30;

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    body: u32,
    crc: u32,
    first: u64,
    time_us: u64,
    count: u32,
}

impl Header {
    fn decode(b: &[u8; HEADER]) -> Header {
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Header {
            body: u32_at(0),
            crc: u32_at(4),
            first: u64_at(8),
            time_us: u64_at(16),
            count: u32_at(24),
        }
    }

    fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }

    /// The crc32 of the header after it and of `body`, as [`encode`] wrote it.
    fn checksum(&self, body: &[u8]) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.first.to_be_bytes());
        crc.update(&self.time_us.to_be_bytes());
        crc.update(&self.count.to_be_bytes());
        crc.update(body);
        crc.finalize()
    }
}

/// Encodes one record of `frames` into `buf` (cleared first). Returns how
/// many frames it holds.
pub fn encode<'a>(
    buf: &mut Vec<u8>,
    first: u64,
    time_us: u64,
    frames: impl IntoIterator<Item = &'a [u8]>,
) -> u64 {
    buf.clear();
    buf.resize(HEADER, 0);
    let mut count = 0u64;
    for f in frames {
        buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
        buf.extend_from_slice(f);
        count += 1;
    }
    let body = (buf.len() - HEADER) as u32;
    buf[0..4].copy_from_slice(&body.to_be_bytes());
    buf[8..16].copy_from_slice(&first.to_be_bytes());
    buf[16..24].copy_from_slice(&time_us.to_be_bytes());
    buf[24..28].copy_from_slice(&(count as u32).to_be_bytes());
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    count
}

/// Calls `f` with each frame of a record's body; `None` if it does not
/// decode into exactly `count` frames.
fn frames(body: &[u8], count: u32, mut f: impl FnMut(usize, usize)) -> Option<()> {
    let mut at = 0usize;
    for _ in 0..count {
        let len = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        body.get(at + 4..at + 4 + len)?;
        f(at + 4, len);
        at += 4 + len;
    }
    (at == body.len()).then_some(())
}

/// What opening a segment found past its last whole record.
#[derive(Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Bytes cut off the file.
    pub bytes: u64,
    /// Why the first of them was not a whole record.
    pub reason: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    file: File,
    first: u64,
    last: u64,
    len: u64,
    last_time_us: u64,
    /// `(first seq of a record, its offset)`, ascending.
    index: Vec<(u64, u64)>,
    /// Offset of the newest index entry.
    indexed_at: u64,
}

/// The file name of the segment starting at `first`.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The first sequence number of a segment file's name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

impl SegmentFile {
    /// Creates the empty segment starting at `first` in `dir`.
    pub fn create(dir: &Path, first: u64) -> std::io::Result<SegmentFile> {
        let path = dir.join(file_name(first));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        Ok(SegmentFile::empty(path, file, first))
    }

    /// The state of a segment with no record yet.
    fn empty(path: PathBuf, file: File, first: u64) -> SegmentFile {
        SegmentFile {
            path,
            file,
            first,
            last: first - 1,
            len: 0,
            last_time_us: 0,
            index: Vec::new(),
            indexed_at: 0,
        }
    }

    /// Opens the segment starting at `first`. `newest`: check every
    /// record's checksum and cut a torn tail off (reported); otherwise a
    /// record that does not add up is an error.
    pub fn open(
        path: &Path,
        first: u64,
        newest: bool,
    ) -> Result<(SegmentFile, Option<TornTail>), String> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
            .len();
        let mut seg = SegmentFile::empty(path.to_path_buf(), file, first);
        let scan = seg
            .file
            .try_clone()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, scan);
        let mut body = Vec::new();
        let torn = loop {
            if seg.len == size {
                break None;
            }
            let mut h = [0u8; HEADER];
            if let Err(e) = reader.read_exact(&mut h) {
                break Some(format!("a header is cut short ({e})"));
            }
            let h = Header::decode(&h);
            if h.first != seg.last + 1 || h.count == 0 || h.body > MAX_RECORD {
                break Some(format!(
                    "a record at byte {} claims {} events from {} (expected from {})",
                    seg.len,
                    h.count,
                    h.first,
                    seg.last + 1
                ));
            }
            if newest {
                body.resize(h.body as usize, 0);
                if let Err(e) = reader.read_exact(&mut body) {
                    break Some(format!("a record is cut short ({e})"));
                }
                if h.checksum(&body) != h.crc || frames(&body, h.count, |_, _| ()).is_none() {
                    break Some(format!("the record at byte {} fails its checksum", seg.len));
                }
            } else if seg.len + (HEADER as u64) + u64::from(h.body) > size
                || reader.seek_relative(i64::from(h.body)).is_err()
            {
                break Some(format!("a record at byte {} is cut short", seg.len));
            }
            seg.note(h, seg.len);
        };
        drop(reader);
        let Some(reason) = torn else {
            return Ok((seg, None));
        };
        if !newest {
            return Err(format!("{}: {reason}", path.display()));
        }
        seg.file
            .set_len(seg.len)
            .and_then(|()| seg.file.sync_data())
            .map_err(|e| format!("cannot cut the torn tail of {}: {e}", path.display()))?;
        let tail = TornTail {
            bytes: size - seg.len,
            reason,
        };
        Ok((seg, Some(tail)))
    }

    /// Takes a record's header into the segment's state and index.
    fn note(&mut self, h: Header, offset: u64) {
        if self.index.is_empty() || offset - self.indexed_at >= INDEX_EVERY {
            self.index.push((h.first, offset));
            self.indexed_at = offset;
        }
        self.last = h.last();
        self.last_time_us = h.time_us;
        self.len = offset + HEADER as u64 + u64::from(h.body);
    }

    /// Appends a record [`encode`]d into `record`, synced (`fdatasync`) if
    /// `sync`. On error the file is cut back to where it was (nothing of
    /// the record counts, and it is never left half written).
    pub fn append(&mut self, record: &[u8], sync: bool) -> std::io::Result<()> {
        let h = Header::decode(record[..HEADER].try_into().expect("a whole header"));
        debug_assert_eq!(h.first, self.last + 1);
        let written =
            self.file.write_all(record).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.note(h, self.len);
        Ok(())
    }

    /// Writes what was appended to the disk (`fdatasync`).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Tells the kernel its pages will not be needed soon (once synced: a
    /// closed segment), so the page cache does not grow with the log and
    /// the next segment's writes reuse the freed pages.
    pub fn evict(&self) {
        #[cfg(target_os = "linux")]
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed);
    }

    /// Its first sequence number.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Its last sequence number (`first() - 1` while empty).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events it holds.
    pub fn events(&self) -> u64 {
        self.last + 1 - self.first
    }

    /// Bytes of the file.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// When its last record was appended, µs since the Unix epoch (0: none).
    pub fn last_time_us(&self) -> u64 {
        self.last_time_us
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the events `first..=last` of this segment to `out`, ascending,
    /// while `out` holds fewer than `max_count` and (beyond its first) their
    /// bytes stay within `max_bytes` (`bytes`: what `out` holds so far).
    /// Returns false once a bound stopped it.
    pub fn read(
        &self,
        first: u64,
        last: u64,
        (max_bytes, max_count): (usize, usize),
        bytes: &mut usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<bool, String> {
        let i = self.index.partition_point(|(seq, _)| *seq <= first);
        let mut offset = match i {
            0 => 0,
            i => self.index[i - 1].1,
        };
        let damaged = |what: String| format!("{}: {what}", self.path.display());
        while offset < self.len {
            let mut h = [0u8; HEADER];
            self.file
                .read_exact_at(&mut h, offset)
                .map_err(|e| damaged(format!("cannot read byte {offset}: {e}")))?;
            let h = Header::decode(&h);
            if h.count == 0 || h.body > MAX_RECORD {
                return Err(damaged(format!("the record at byte {offset} is malformed")));
            }
            let next = offset + HEADER as u64 + u64::from(h.body);
            if h.last() < first {
                offset = next;
                continue;
            }
            if h.first > last {
                return Ok(true);
            }
            let mut body = vec![0u8; h.body as usize];
            self.file
                .read_exact_at(&mut body, offset + HEADER as u64)
                .map_err(|e| damaged(format!("cannot read byte {offset}: {e}")))?;
            if h.checksum(&body) != h.crc {
                return Err(damaged(format!(
                    "the record at byte {offset} fails its checksum"
                )));
            }
            let body = Bytes::from(body);
            let mut spans = Vec::with_capacity(h.count as usize);
            frames(&body, h.count, |at, len| spans.push((at, len)))
                .ok_or_else(|| damaged(format!("the record at byte {offset} is malformed")))?;
            for (seq, (at, len)) in (h.first..).zip(spans) {
                if seq > last {
                    return Ok(true);
                }
                if seq < first {
                    continue;
                }
                if !out.is_empty() && *bytes + len > max_bytes {
                    return Ok(false);
                }
                *bytes += len;
                out.push((seq, body.slice(at..at + len)));
                if out.len() >= max_count {
                    return Ok(false);
                }
            }
            offset = next;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(first: u64, frames: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, first, 7, frames.iter().copied());
        buf
    }

    #[test]
    fn records_are_read_back_by_sequence_number_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = SegmentFile::create(dir.path(), 10).unwrap();
        seg.append(&record(10, &[b"a", b"bb"]), true).unwrap();
        seg.append(&record(12, &[b"ccc"]), false).unwrap();
        let path = seg.path().to_path_buf();
        drop(seg);
        let (seg, torn) = SegmentFile::open(&path, 10, true).unwrap();
        assert_eq!(torn, None);
        assert_eq!((seg.first(), seg.last(), seg.last_time_us()), (10, 12, 7));
        let mut out = Vec::new();
        let done = seg
            .read(11, 12, (usize::MAX, 10), &mut 0, &mut out)
            .unwrap();
        assert!(done);
        assert_eq!(
            out,
            vec![
                (11, Bytes::from_static(b"bb")),
                (12, Bytes::from_static(b"ccc"))
            ]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_the_newest_segment_and_is_damage_in_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = SegmentFile::create(dir.path(), 1).unwrap();
        seg.append(&record(1, &[b"one"]), false).unwrap();
        let whole = seg.bytes();
        let path = seg.path().to_path_buf();
        drop(seg);
        // Half a record, as a crash mid-write leaves it.
        let half = record(2, &[b"two, never acknowledged"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        assert!(SegmentFile::open(&path, 1, false).is_err());
        let (seg, torn) = SegmentFile::open(&path, 1, true).unwrap();
        assert_eq!(torn.unwrap().bytes, (half.len() / 2) as u64);
        assert_eq!((seg.last(), seg.bytes()), (1, whole));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = SegmentFile::create(dir.path(), 1).unwrap();
        seg.append(&record(1, &[b"one"]), false).unwrap();
        seg.append(&record(2, &[b"two"]), false).unwrap();
        let path = seg.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = seg
            .read(1, 2, (usize::MAX, 10), &mut 0, &mut Vec::new())
            .unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        let (seg, torn) = SegmentFile::open(&path, 1, true).unwrap();
        assert!(torn.unwrap().reason.contains("checksum"));
        assert_eq!(seg.last(), 1);
    }
}
