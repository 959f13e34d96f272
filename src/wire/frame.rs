//! The frame: the common outer layer of every chorus message on any socket.
//!
//! Owns: the `[version, kind, body]` layout, the size check, and
//! [`DecodeError`]. Each message kind (event envelope, survey, response)
//! defines its own body; this module only reads and writes the layer around
//! it. See `docs/WIRE.md`.

use std::io::Cursor;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the frame format this build reads and writes.
pub const WIRE_VERSION: u8 = 1;

/// Why bytes from the network were not accepted as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the configured maximum message size.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Size of the frame received.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// A well-formed frame header with a version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    Version(u8),
    /// A well-formed frame header with a kind not expected on this socket.
    #[error("unexpected frame kind {0}")]
    UnknownKind(u8),
    /// Not a valid frame: garbage, truncated, wrong types, bad field values
    /// or trailing bytes.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl DecodeError {
    pub(crate) fn malformed(e: impl std::fmt::Display) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

/// Appends a complete frame of `kind` carrying `body` to `buf`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, kind: u8, body: &T) {
    rmp_serde::encode::write(buf, &(WIRE_VERSION, kind, body))
        .expect("writing MessagePack into a Vec cannot fail");
}

/// Reads the frame header: checks the size, the 3-element array and the
/// version, and returns the kind with a cursor at the start of the body.
pub(crate) fn read_header(
    frame: &[u8],
    max_size: usize,
) -> Result<(u8, Cursor<&[u8]>), DecodeError> {
    if frame.len() > max_size {
        return Err(DecodeError::Oversized {
            size: frame.len(),
            max: max_size,
        });
    }
    let mut cur = Cursor::new(frame);
    let len = rmp::decode::read_array_len(&mut cur).map_err(DecodeError::malformed)?;
    if len != 3 {
        return Err(DecodeError::Malformed(format!(
            "frame is an array of {len}, expected 3"
        )));
    }
    let version: u8 = rmp::decode::read_int(&mut cur).map_err(DecodeError::malformed)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind: u8 = rmp::decode::read_int(&mut cur).map_err(DecodeError::malformed)?;
    Ok((kind, cur))
}

/// Deserializes one value at the cursor.
fn read_value<T: DeserializeOwned>(cur: &mut Cursor<&[u8]>) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::new(cur);
    T::deserialize(&mut de).map_err(DecodeError::malformed)
}

/// Checks that the cursor consumed the whole frame.
fn finish(cur: &Cursor<&[u8]>) -> Result<(), DecodeError> {
    let (used, len) = (cur.position() as usize, cur.get_ref().len());
    if used != len {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the body",
            len - used
        )));
    }
    Ok(())
}

/// Decodes a frame whose kind must be `kind`, with a body of type `T`.
/// Never panics, whatever the input.
pub(crate) fn decode<T: DeserializeOwned>(
    frame: &[u8],
    max_size: usize,
    kind: u8,
) -> Result<T, DecodeError> {
    let (got, mut cur) = read_header(frame, max_size)?;
    if got != kind {
        return Err(DecodeError::UnknownKind(got));
    }
    let body = read_value(&mut cur)?;
    finish(&cur)?;
    Ok(body)
}
