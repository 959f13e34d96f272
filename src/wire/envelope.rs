//! The wire envelope: what one published event looks like on the network.
//!
//! Owns: [`Envelope`], its frame layout and MessagePack encoding/decoding
//! (one event, or the events of a [batch](crate::wire::batch)), the
//! [`Draft`] a publish encodes before it is numbered, and the size bound
//! used to reject oversized messages before they are sent. The byte-level
//! format is specified in `docs/WIRE.md`; keep both in step.
//!
//! An event travels as a [frame](crate::wire::frame) of kind [`KIND_EVENT`] whose
//! body is one envelope.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::wire::frame::{self, DecodeError, WIRE_VERSION};
use crate::wire::id::PeerId;
use crate::wire::topic::Interner;

/// Frame kind of a single event envelope.
pub const KIND_EVENT: u8 = 0;
/// Frame kind of a batch: several envelopes in one message.
pub(crate) const KIND_BATCH: u8 = 5;
/// Most envelopes accepted in one batch.
pub(crate) const MAX_BATCH: u32 = 65_536;
/// A batch frame may be up to this many times the largest event (the
/// `max_size` of the decoders, a peer's `max_message_size`): a publisher
/// sends batches of up to twice it, plus the event that reached the bound.
pub const BATCH_FRAME_FACTOR: usize = 4;
/// Bytes of the frame header `[1, 0, …]` before an event's envelope array.
pub(crate) const EVENT_HEADER: usize = 3;

/// Application headers: string keys to string values, ordered by key.
pub type Headers = BTreeMap<String, String>;

/// One published event with everything a receiver needs to route,
/// order, deduplicate and trace it.
///
/// `(origin, incarnation, seq)` identifies an envelope uniquely on the bus.
/// What most events do not carry (an application id, a correlation id,
/// headers) is boxed in [`meta`](Self::meta), so the envelope that the
/// receive path moves from decoding to the reader stays small (88 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The publishing peer.
    pub origin: PeerId,
    /// The publishing peer's incarnation: a new value each time it starts.
    pub incarnation: u64,
    /// Position in the origin's stream, from 1, without gaps, per incarnation.
    pub seq: u64,
    /// Concrete topic, e.g. `orders.eu.created` (shared: received
    /// envelopes of one topic point to one copy).
    pub topic: Arc<str>,
    /// Publish time, microseconds since the Unix epoch (publisher's clock).
    pub timestamp_us: u64,
    /// Application payload: MessagePack for typed publishes, anything for bytes.
    pub payload: Bytes,
    /// The application id, correlation id and headers; `None` when the
    /// event has none of them (see [`Meta::boxed`]).
    pub meta: Option<Box<Meta>>,
}

/// The optional fields of an [`Envelope`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Application message id (idempotency key); `None` when the message is
    /// identified by `(origin, incarnation, seq)` alone.
    pub id: Option<String>,
    /// Correlation / trace id linking this event to the flow it belongs to.
    pub correlation_id: Option<String>,
    /// Application headers.
    pub headers: Headers,
}

impl Meta {
    /// The envelope's `meta` for these fields: `None` when all are empty.
    pub fn boxed(
        id: Option<String>,
        correlation_id: Option<String>,
        headers: Headers,
    ) -> Option<Box<Meta>> {
        match (&id, &correlation_id, headers.is_empty()) {
            (None, None, true) => None,
            _ => Some(Box::new(Meta {
                id,
                correlation_id,
                headers,
            })),
        }
    }
}

/// The headers of an event without any.
static NO_HEADERS: Headers = Headers::new();

/// Worst-case MessagePack size of a string, bin or container header.
const MAX_HEADER: usize = 5;
/// Worst-case size of a MessagePack unsigned integer.
const MAX_UINT: usize = 9;
/// Frame array header + version + kind + envelope array header.
const FRAME_OVERHEAD: usize = 1 + 1 + 1 + 1;

/// Upper bound of the encoded frame size of an envelope with these fields.
pub(crate) fn encoded_len_bound(
    topic: &str,
    id: Option<&str>,
    correlation_id: Option<&str>,
    headers: &Headers,
    payload_len: usize,
) -> usize {
    let opt_str = |s: Option<&str>| s.map_or(1, |s| MAX_HEADER + s.len());
    let headers_len: usize = headers
        .iter()
        .map(|(k, v)| 2 * MAX_HEADER + k.len() + v.len())
        .sum();
    FRAME_OVERHEAD
        + 4 * MAX_UINT
        + opt_str(id)
        + MAX_HEADER
        + topic.len()
        + opt_str(correlation_id)
        + MAX_HEADER
        + headers_len
        + MAX_HEADER
        + payload_len
}

impl Envelope {
    /// Application message id (idempotency key), if it has one.
    pub fn id(&self) -> Option<&str> {
        self.meta.as_ref()?.id.as_deref()
    }

    /// Correlation / trace id, if it has one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.meta.as_ref()?.correlation_id.as_deref()
    }

    /// Application headers (empty if it has none).
    pub fn headers(&self) -> &Headers {
        self.meta.as_ref().map_or(&NO_HEADERS, |m| &m.headers)
    }

    /// The flow this event belongs to: its correlation id; for the first
    /// event of a flow (none set), its application id; otherwise
    /// `origin/incarnation/seq`. Events published while handling this one
    /// carry it as their correlation id.
    pub fn flow_id(&self) -> std::borrow::Cow<'_, str> {
        match (self.correlation_id(), self.id()) {
            (Some(c), _) => c.into(),
            (None, Some(id)) => id.into(),
            (None, None) => format!("{}/{}/{}", self.origin, self.incarnation, self.seq).into(),
        }
    }

    /// Upper bound of [`encode_into`](Self::encode_into)'s output, computed
    /// without encoding; used to reject oversized messages at publish time.
    pub fn max_encoded_len(&self) -> usize {
        encoded_len_bound(
            &self.topic,
            self.id(),
            self.correlation_id(),
            self.headers(),
            self.payload.len(),
        )
    }

    /// Appends this envelope as one complete event frame to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        write_event(
            buf,
            Fields {
                origin: self.origin,
                incarnation: self.incarnation,
                seq: self.seq,
                id: self.id(),
                topic: &self.topic,
                timestamp_us: self.timestamp_us,
                correlation_id: self.correlation_id(),
                headers: self.headers(),
                payload: &self.payload,
            },
        );
    }

    /// Encodes this envelope as one complete event frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.max_encoded_len());
        self.encode_into(&mut buf);
        buf
    }

    /// Decodes one event frame, rejecting frames longer than `max_size`,
    /// of another version or kind, malformed (including an invalid topic),
    /// or with trailing bytes. Never panics, whatever the input.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Envelope, DecodeError> {
        match frame::read_header(bytes, max_size)?.0 {
            KIND_EVENT => {
                let mut out = Vec::with_capacity(1);
                Self::decode_events(bytes, max_size, &mut out)?;
                Ok(out.pop().expect("one event decoded"))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    /// [`decode_events`](Self::decode_events) from a shared buffer: each
    /// payload is a slice of `frame` (no copy, no allocation per payload),
    /// each topic validated and shared through `topics` (no allocation for
    /// a topic seen before). A frame with an invalid topic is malformed.
    pub(crate) fn decode_events_shared(
        frame: &Bytes,
        max_size: usize,
        topics: &mut Interner,
        out: &mut Vec<Envelope>,
    ) -> Result<(), DecodeError> {
        let (kind, cur) = frame::read_header(frame, max_size.saturating_mul(BATCH_FRAME_FACTOR))?;
        let oversized = |size: usize| DecodeError::Oversized {
            size,
            max: max_size,
        };
        if kind == KIND_EVENT && frame.len() > max_size {
            return Err(oversized(frame.len()));
        }
        let mut pos = cur.position() as usize;
        let start = out.len();
        let mut one = |pos: &mut usize, out: &mut Vec<Envelope>| -> Result<(), DecodeError> {
            let (env, used) = read_envelope(frame, *pos, topics)?;
            // Each envelope of a batch is bounded as if it came alone.
            if used + EVENT_HEADER > max_size {
                return Err(oversized(used + EVENT_HEADER));
            }
            *pos += used;
            out.push(env);
            Ok(())
        };
        let result = match kind {
            KIND_EVENT => one(&mut pos, out),
            KIND_BATCH => (|| {
                let mut cur = std::io::Cursor::new(&frame[pos..]);
                let n = rmp::decode::read_array_len(&mut cur).map_err(DecodeError::malformed)?;
                if n == 0 || n > MAX_BATCH {
                    return Err(DecodeError::Malformed(format!("batch of {n} envelopes")));
                }
                pos += cur.position() as usize;
                for _ in 0..n {
                    one(&mut pos, out)?;
                }
                Ok(())
            })(),
            other => Err(DecodeError::UnknownKind(other)),
        };
        let result = result.and_then(|()| {
            if pos == frame.len() {
                Ok(())
            } else {
                Err(DecodeError::Malformed(format!(
                    "{} trailing bytes after the body",
                    frame.len() - pos
                )))
            }
        });
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Decodes an event frame (kind 0) or a batch (kind 5), appending the
    /// envelopes to `out`. `max_size` bounds an event (alone or in a batch);
    /// a batch frame may be [`BATCH_FRAME_FACTOR`] times it. On error `out`
    /// is left as it was. Never panics.
    pub fn decode_events(
        bytes: &[u8],
        max_size: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<(), DecodeError> {
        // The size, before copying.
        frame::read_header(bytes, max_size.saturating_mul(BATCH_FRAME_FACTOR))?;
        let frame = Bytes::copy_from_slice(bytes);
        Self::decode_events_shared(&frame, max_size, &mut Interner::default(), out)
    }
}

/// Reads the envelope at `frame[at..]` (the kind-0 body layout): its topic
/// through `topics`, its payload as a slice of `frame`. Returns it with the
/// number of bytes it took. Never panics, whatever the input.
fn read_envelope(
    frame: &Bytes,
    at: usize,
    topics: &mut Interner,
) -> Result<(Envelope, usize), DecodeError> {
    use rmp::decode as r;
    let start = frame
        .get(at..)
        .ok_or_else(|| DecodeError::Malformed("envelope outside the frame".into()))?;
    let mut rd: &[u8] = start;
    let fields = r::read_array_len(&mut rd).map_err(DecodeError::malformed)?;
    if fields != 9 {
        return Err(DecodeError::Malformed(format!(
            "envelope is an array of {fields}, expected 9"
        )));
    }
    fn string<'a>(rd: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
        let (s, rest) = rmp::decode::read_str_from_slice(*rd).map_err(DecodeError::malformed)?;
        *rd = rest;
        Ok(s)
    }
    fn opt_string(rd: &mut &[u8]) -> Result<Option<String>, DecodeError> {
        if rd.first() == Some(&0xc0) {
            *rd = &rd[1..];
            return Ok(None);
        }
        string(rd).map(|s| Some(s.to_owned()))
    }
    let origin = PeerId(r::read_int(&mut rd).map_err(DecodeError::malformed)?);
    let incarnation = r::read_int(&mut rd).map_err(DecodeError::malformed)?;
    let seq = r::read_int(&mut rd).map_err(DecodeError::malformed)?;
    let id = opt_string(&mut rd)?;
    let text = string(&mut rd)?;
    let topic = topics.intern(text).map_err(|reason| {
        // At most 64 characters of it: the topic may be as long as the frame.
        let shown: String = text.chars().take(64).collect();
        DecodeError::Malformed(format!("invalid topic {shown:?}: {reason}"))
    })?;
    let timestamp_us = r::read_int(&mut rd).map_err(DecodeError::malformed)?;
    let correlation_id = opt_string(&mut rd)?;
    let mut headers = Headers::new();
    for _ in 0..r::read_map_len(&mut rd).map_err(DecodeError::malformed)? {
        let key = string(&mut rd)?.to_owned();
        headers.insert(key, string(&mut rd)?.to_owned());
    }
    let len = r::read_bin_len(&mut rd).map_err(DecodeError::malformed)? as usize;
    if len > rd.len() {
        return Err(DecodeError::Malformed(
            "payload longer than the frame".into(),
        ));
    }
    let payload = frame.slice_ref(&rd[..len]);
    let used = start.len() - (rd.len() - len);
    Ok((
        Envelope {
            origin,
            incarnation,
            seq,
            topic,
            timestamp_us,
            payload,
            meta: Meta::boxed(id, correlation_id, headers),
        },
        used,
    ))
}

/// The fields of one envelope, borrowed, for [`write_event`].
pub(crate) struct Fields<'a> {
    pub origin: PeerId,
    pub incarnation: u64,
    pub seq: u64,
    pub id: Option<&'a str>,
    pub topic: &'a str,
    pub timestamp_us: u64,
    pub correlation_id: Option<&'a str>,
    pub headers: &'a Headers,
    pub payload: &'a [u8],
}

/// Where [`write_event`] writes: an in-memory buffer (writes cannot fail)
/// that knows its length.
trait FrameBuf: std::io::Write {
    fn len(&self) -> usize;
}

impl FrameBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// A [`BytesMut`] written in place (a draft's arena block), through the
/// `io::Write` adapter `bytes` provides.
impl FrameBuf for bytes::buf::Writer<&mut BytesMut> {
    fn len(&self) -> usize {
        self.get_ref().len()
    }
}

/// Appends one event frame (the layout of `docs/WIRE.md`) to `buf`, seq
/// and timestamp as 9-byte uints; returns where their 8 value bytes start
/// and where the topic's bytes are (from the start of `buf`).
fn write_event(buf: &mut impl FrameBuf, f: Fields<'_>) -> (usize, usize, std::ops::Range<usize>) {
    use rmp::encode as w;
    const IN_MEMORY: &str = "writing into memory cannot fail";
    let opt_str = |buf: &mut _, s: Option<&str>| match s {
        Some(s) => w::write_str(buf, s).expect(IN_MEMORY),
        None => w::write_nil(buf).expect(IN_MEMORY),
    };
    buf.write_all(&[0x93, WIRE_VERSION, KIND_EVENT, 0x99])
        .expect(IN_MEMORY);
    w::write_uint(buf, f.origin.0).expect(IN_MEMORY);
    w::write_uint(buf, f.incarnation).expect(IN_MEMORY);
    let seq_at = buf.len() + 1;
    w::write_u64(buf, f.seq).expect(IN_MEMORY);
    opt_str(buf, f.id);
    w::write_str(buf, f.topic).expect(IN_MEMORY);
    let topic_at = buf.len() - f.topic.len()..buf.len();
    let ts_at = buf.len() + 1;
    w::write_u64(buf, f.timestamp_us).expect(IN_MEMORY);
    opt_str(buf, f.correlation_id);
    w::write_map_len(buf, f.headers.len() as u32).expect(IN_MEMORY);
    for (k, v) in f.headers {
        w::write_str(buf, k).expect(IN_MEMORY);
        w::write_str(buf, v).expect(IN_MEMORY);
    }
    w::write_bin(buf, f.payload).expect(IN_MEMORY);
    (seq_at, ts_at, topic_at)
}

/// An event encoded by `publish`, in the caller's task, before it has a
/// place in the origin's stream: a complete event frame whose seq and
/// timestamp the publisher fills in with [`number`](Self::number), so the
/// publish driver neither encodes nor allocates per event.
#[derive(Debug)]
pub(crate) struct Draft {
    frame: Frame,
    seq_at: usize,
    ts_at: usize,
    topic_at: std::ops::Range<usize>,
    /// The consumer groups' partition key, hashed (`None`: by seq).
    pub key: Option<u64>,
}

/// Where a draft's frame lives.
#[derive(Debug)]
enum Frame {
    /// Cut from the publishing thread's [`ARENA`] block.
    Block(BytesMut),
    /// A large frame's own buffer (no copy into a block).
    Own(Vec<u8>),
}

impl Frame {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Frame::Block(b) => b,
            Frame::Own(v) => v,
        }
    }
}

/// Frames up to this size are cut from the publishing thread's
/// [`ARENA`]; larger ones get their own buffer.
const ARENA_FRAME: usize = 8 * 1024;

thread_local! {
    /// The block this thread encodes frames into, in place, and cuts them
    /// from: one allocation per ~64 KiB of small frames instead of two per
    /// frame (a `Vec`, then the `Bytes` header its first clone adds),
    /// freed once every frame cut from it is dropped.
    static ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Bytes of a fresh arena block.
const ARENA_BLOCK: usize = 64 * 1024;

impl Draft {
    /// Encodes `f` (its seq and timestamp are placeholders) into a buffer
    /// of `capacity` bytes (the size bound checked by the caller), with the
    /// hash of its partition key.
    pub fn new(f: Fields<'_>, capacity: usize, key: Option<u64>) -> Self {
        let (frame, (seq_at, ts_at, topic_at)) = if capacity > ARENA_FRAME {
            let mut frame = Vec::with_capacity(capacity);
            let at = write_event(&mut frame, f);
            (Frame::Own(frame), at)
        } else {
            ARENA.with(|arena| {
                let block = &mut *arena.borrow_mut();
                // Everything written before was split off: the frame starts at 0.
                debug_assert!(block.is_empty());
                if block.capacity() < capacity {
                    *block = BytesMut::with_capacity(ARENA_BLOCK);
                }
                let at = write_event(&mut bytes::BufMut::writer(&mut *block), f);
                (Frame::Block(block.split()), at)
            })
        };
        Draft {
            frame,
            seq_at,
            ts_at,
            topic_at,
            key,
        }
    }

    /// Its topic.
    pub fn topic(&self) -> &str {
        let frame = match &self.frame {
            Frame::Block(b) => &b[..],
            Frame::Own(v) => &v[..],
        };
        std::str::from_utf8(&frame[self.topic_at.clone()]).expect("written from a str")
    }

    /// The finished frame with `seq` and `timestamp_us` in place.
    pub fn number(mut self, seq: u64, timestamp_us: u64) -> Bytes {
        let frame = self.frame.bytes_mut();
        frame[self.seq_at..self.seq_at + 8].copy_from_slice(&seq.to_be_bytes());
        frame[self.ts_at..self.ts_at + 8].copy_from_slice(&timestamp_us.to_be_bytes());
        match self.frame {
            Frame::Block(b) => b.freeze(),
            Frame::Own(v) => Bytes::from(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope {
            origin: PeerId(0x0123_4567_89ab_cdef),
            incarnation: 1_763_774_400_000_000,
            seq: 42,
            topic: "orders.created".into(),
            timestamp_us: 1_763_774_400_123_456,
            payload: Bytes::from_static(b"\x81\xa2id\x07"),
            meta: Meta::boxed(
                Some("order-7".into()),
                Some("flow-1".into()),
                [("k".to_string(), "v".to_string())].into_iter().collect(),
            ),
        }
    }

    #[test]
    fn the_envelope_stays_small() {
        // The receive path moves it several times per event (decode, inbox,
        // subscription queue, reader): the rare fields live behind `meta`.
        assert!(std::mem::size_of::<Envelope>() <= 88);
        let env = Envelope {
            meta: Meta::boxed(None, None, Headers::new()),
            ..sample()
        };
        assert_eq!((env.id(), env.headers().len()), (None, 0));
        assert!(env.meta.is_none());
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let bytes = env.encode();
        assert!(bytes.len() <= env.max_encoded_len());
        assert_eq!(Envelope::decode(&bytes, 1 << 20).unwrap(), env);
    }

    #[test]
    fn frame_layout_matches_wire_doc() {
        let env = Envelope {
            origin: PeerId(1),
            incarnation: 2,
            seq: 3,
            topic: "t".into(),
            timestamp_us: 4,
            payload: Bytes::from_static(b"x"),
            meta: None,
        };
        // [1, 0, [1, 2, 3, nil, "t", 4, nil, {}, bin8(1) "x"]]
        #[rustfmt::skip]
        let expected = [
            0x93, 0x01, 0x00, 0x99, 0x01, 0x02,
            0xcf, 0, 0, 0, 0, 0, 0, 0, 0x03,
            0xc0, 0xa1, b't',
            0xcf, 0, 0, 0, 0, 0, 0, 0, 0x04,
            0xc0, 0x80, 0xc4, 0x01, b'x',
        ];
        assert_eq!(env.encode(), expected);
        // Any MessagePack uint encoding is accepted: the smallest here.
        let smallest = [
            0x93, 0x01, 0x00, 0x99, 0x01, 0x02, 0x03, 0xc0, 0xa1, b't', 0x04, 0xc0, 0x80, 0xc4,
            0x01, b'x',
        ];
        assert_eq!(Envelope::decode(&smallest, 1 << 20).unwrap(), env);
    }

    #[test]
    fn rejects_bad_frames() {
        let good = sample().encode();
        assert!(matches!(
            Envelope::decode(&good, 10),
            Err(DecodeError::Oversized { .. })
        ));
        let mut v2 = good.clone();
        v2[1] = 2;
        assert_eq!(Envelope::decode(&v2, 1 << 20), Err(DecodeError::Version(2)));
        let mut k = good.clone();
        k[2] = 9;
        assert_eq!(
            Envelope::decode(&k, 1 << 20),
            Err(DecodeError::UnknownKind(9))
        );
        for cut in 0..good.len() {
            assert!(
                Envelope::decode(&good[..cut], 1 << 20).is_err(),
                "cut {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            Envelope::decode(&trailing, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        assert!(Envelope::decode(b"garbage!", 1 << 20).is_err());
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(".{0,20}"),
            "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
            any::<u64>(),
            proptest::option::of(".{0,20}"),
            prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(o, i, s, id, topic, ts, c, headers, p)| Envelope {
                origin: PeerId(o),
                incarnation: i,
                seq: s,
                topic: topic.into(),
                timestamp_us: ts,
                payload: Bytes::from(p),
                meta: Meta::boxed(id, c, headers),
            })
    }

    #[test]
    fn drafts_cut_from_one_block_and_a_large_one_keep_their_own_bytes() {
        let headers = Headers::new();
        let draft = |topic: &str, payload: &[u8]| {
            let fields = Fields {
                origin: PeerId(1),
                incarnation: 2,
                seq: 0,
                id: None,
                topic,
                timestamp_us: 0,
                correlation_id: None,
                headers: &headers,
                payload,
            };
            let size = encoded_len_bound(topic, None, None, &headers, payload.len());
            Draft::new(fields, size, None)
        };
        // Small ones share the thread's block; each stays what it was.
        let frames: Vec<Bytes> = (0..2000u64)
            .map(|n| draft("a.b", &n.to_le_bytes()).number(n + 1, n))
            .collect();
        let big = vec![7u8; 16 * 1024];
        let large = draft("a.big", &big).number(9, 9);
        for (n, frame) in frames.iter().enumerate() {
            let env = Envelope::decode(frame, usize::MAX).unwrap();
            assert_eq!(
                (env.seq, &env.payload[..]),
                (n as u64 + 1, &(n as u64).to_le_bytes()[..])
            );
        }
        let env = Envelope::decode(&large, usize::MAX).unwrap();
        assert_eq!(
            (env.seq, env.payload.len(), &*env.topic),
            (9, big.len(), "a.big")
        );
    }

    /// The envelope's wire layout (docs/WIRE.md) for serde's generic
    /// MessagePack encoder and decoder, to check this module's against.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Generic(
        PeerId,
        u64,
        u64,
        Option<String>,
        String,
        u64,
        Option<String>,
        Headers,
        Bytes,
    );

    impl From<&Envelope> for Generic {
        fn from(e: &Envelope) -> Self {
            let id = e.id().map(str::to_owned);
            let correlation_id = e.correlation_id().map(str::to_owned);
            let (topic, headers) = (e.topic.to_string(), e.headers().clone());
            Generic(
                e.origin,
                e.incarnation,
                e.seq,
                id,
                topic,
                e.timestamp_us,
                correlation_id,
                headers,
                e.payload.clone(),
            )
        }
    }

    impl From<Generic> for Envelope {
        fn from(
            Generic(
                origin,
                incarnation,
                seq,
                id,
                topic,
                timestamp_us,
                correlation_id,
                headers,
                payload,
            ): Generic,
        ) -> Self {
            Envelope {
                origin,
                incarnation,
                seq,
                topic: topic.into(),
                timestamp_us,
                payload,
                meta: Meta::boxed(id, correlation_id, headers),
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(env in arb_envelope()) {
            let bytes = env.encode();
            prop_assert!(bytes.len() <= env.max_encoded_len());
            prop_assert_eq!(Envelope::decode(&bytes, usize::MAX).unwrap(), env.clone());
            // The serde encoding (smallest uints) reads the same.
            let mut serde = Vec::new();
            frame::encode_into(&mut serde, KIND_EVENT, &Generic::from(&env));
            prop_assert_eq!(Envelope::decode(&serde, usize::MAX).unwrap(), env.clone());
            // A draft numbered afterwards is the same frame.
            let draft = Draft::new(Fields {
                origin: env.origin, incarnation: env.incarnation, seq: 0,
                id: env.id(), topic: &env.topic, timestamp_us: 0,
                correlation_id: env.correlation_id(), headers: env.headers(),
                payload: &env.payload,
            }, env.max_encoded_len(), None);
            prop_assert_eq!(draft.topic(), &*env.topic);
            prop_assert_eq!(&draft.number(env.seq, env.timestamp_us)[..], &bytes[..]);
        }

        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes, usize::MAX);
            let mut out = Vec::new();
            let _ = Envelope::decode_events(&bytes, usize::MAX, &mut out);
            let mut batch = vec![0x93, 1, KIND_BATCH];
            batch.extend_from_slice(&bytes);
            let _ = Envelope::decode_events(&batch, usize::MAX, &mut out);
            let topics = &mut Interner::default();
            let _ = Envelope::decode_events_shared(&Bytes::from(bytes), usize::MAX, topics, &mut out);
            let _ = Envelope::decode_events_shared(&Bytes::from(batch), usize::MAX, topics, &mut out);
        }

        #[test]
        fn decoder_survives_mutations(env in arb_envelope(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = env.encode();
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            // Differential: what this decoder accepts, serde's generic
            // MessagePack decoder reads the same (this one is stricter: str
            // fields must be str, the payload a bin, the topic valid).
            if let Ok(env) = Envelope::decode(&bytes, usize::MAX) {
                prop_assert!(crate::validate_topic(&env.topic).is_ok());
                let generic: Generic = frame::decode(&bytes, usize::MAX, KIND_EVENT).unwrap();
                prop_assert_eq!(Envelope::from(generic), env);
            }
        }

        #[test]
        fn batches_decode_in_order_and_share_topics(envs in prop::collection::vec(arb_envelope(), 1..20)) {
            let mut w = crate::wire::batch::BatchWriter::default();
            for e in &envs {
                w.push(&Bytes::from(e.encode()));
            }
            let frame = w.finish(|s| {
                let mut out = vec![0; s.len()];
                s.write_to(&mut out);
                out
            }).unwrap();
            let (mut copied, mut shared) = (Vec::new(), Vec::new());
            Envelope::decode_events(&frame, usize::MAX, &mut copied).unwrap();
            let topics = &mut Interner::default();
            Envelope::decode_events_shared(&Bytes::from(frame.clone()), usize::MAX, topics, &mut shared).unwrap();
            prop_assert_eq!(&copied, &envs);
            prop_assert_eq!(&shared, &envs);
            // Topics seen before are shared, not copied.
            let mut again = Vec::new();
            Envelope::decode_events_shared(&Bytes::from(frame), usize::MAX, topics, &mut again).unwrap();
            for (a, b) in shared.iter().zip(&again) {
                prop_assert!(Arc::ptr_eq(&a.topic, &b.topic));
            }
        }
    }
}
