//! Bus-key authentication of every message on every socket.
//!
//! Owns: `Auth` (crate-private), the keys of a peer's bus and the seal/open of messages, and [`seal_frame`]/[`open_frame`] for other implementations.
//! With a bus key, each NNG message is its frame (batch, heartbeat, NAK,
//! repair answer…) followed by a 16-byte tag: keyed BLAKE3 of the frame
//! bytes under a key derived from the shared secret. The frame already names
//! its origin, incarnation and sequence number (or heartbeat counter), so
//! the tag binds them: a peer without the key can neither join (its
//! heartbeats fail), publish (its envelopes fail) nor forge another member
//! (changing any field breaks the tag); a replayed message is an old
//! incarnation (dropped as stale) or a duplicate (dropped by dedup). Several
//! keys may be accepted at once for rotation; the first one signs.
//!
//! What it does not do: encrypt (payloads and topics travel in clear over
//! NNG's plaintext tcp), or tell members apart from each other — every
//! holder of the key is trusted with every identity.

use std::sync::Arc;

/// Bytes of the tag appended to each message.
pub(crate) const TAG_LEN: usize = 16;

/// Context string of the key derivation (BLAKE3 `derive_key`): keys for
/// chorus bus messages are never the raw secret, nor usable elsewhere.
const CONTEXT: &str = "chorus 2026-11 bus message authentication v1";

/// Shortest secret accepted.
pub const MIN_BUS_KEY_LEN: usize = 16;

/// Seals one frame as a peer built with
/// [`bus_key(secret)`](crate::PeerBuilder::bus_key) sends it: the frame
/// followed by its 16-byte tag (see `docs/WIRE.md`). For peers written in
/// other languages, tools and tests; peers seal by themselves.
///
/// ```
/// let msg = chorus::auth::seal_frame(b"sixteen+ byte secret", b"frame");
/// assert_eq!(chorus::auth::open_frame(b"sixteen+ byte secret", &msg), Some(&b"frame"[..]));
/// assert_eq!(chorus::auth::open_frame(b"another 16+ byte secret", &msg), None);
/// ```
pub fn seal_frame(secret: &[u8], frame: &[u8]) -> Vec<u8> {
    Auth::new(&[secret.to_vec()]).seal(frame)
}

/// The frame of a message sealed under `secret`, or `None` if its tag does
/// not match.
pub fn open_frame<'a>(secret: &[u8], message: &'a [u8]) -> Option<&'a [u8]> {
    Auth::new(&[secret.to_vec()]).open(message).ok()
}

/// Why a message failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// Shorter than a tag: cannot carry one.
    #[error("message too short to carry an authentication tag")]
    Untagged,
    /// The tag matches none of the accepted keys.
    #[error("authentication tag does not match the bus key")]
    BadTag,
}

/// The bus keys of one peer (none: messages are neither sealed nor checked).
#[derive(Clone, Default)]
pub(crate) struct Auth {
    keys: Option<Arc<[[u8; 32]]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.keys.as_ref().map_or(0, |k| k.len());
        write!(f, "Auth({n} keys)")
    }
}

impl Auth {
    /// Keys derived from `secrets`; the first signs, all are accepted. An
    /// empty list means no authentication.
    pub(crate) fn new(secrets: &[Vec<u8>]) -> Self {
        if secrets.is_empty() {
            return Auth::default();
        }
        let keys: Vec<[u8; 32]> = secrets
            .iter()
            .map(|s| blake3::derive_key(CONTEXT, s))
            .collect();
        Auth {
            keys: Some(keys.into()),
        }
    }

    fn tag_with(key: &[u8; 32], frame: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(key, frame);
        hash.as_bytes()[..TAG_LEN]
            .try_into()
            .expect("16 of 32 bytes")
    }

    /// Whether messages are sealed and checked (keys are set).
    pub(crate) fn is_on(&self) -> bool {
        self.keys.is_some()
    }

    /// The tag to append to `frame`, under the signing key; none without keys.
    pub(crate) fn tag(&self, frame: &[u8]) -> Option<[u8; TAG_LEN]> {
        self.keys
            .as_ref()
            .map(|keys| Self::tag_with(&keys[0], frame))
    }

    /// `frame` followed by its tag (just `frame` without keys).
    pub(crate) fn seal(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame.len() + TAG_LEN);
        out.extend_from_slice(frame);
        if let Some(tag) = self.tag(frame) {
            out.extend_from_slice(&tag);
        }
        out
    }

    /// The frame of an authentic message, without its tag.
    pub(crate) fn open<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(bytes);
        };
        let split = bytes
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(AuthError::Untagged)?;
        let (frame, tag) = bytes.split_at(split);
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("TAG_LEN bytes");
        // Every key is tried (no early exit on the first), so the time
        // taken does not tell which key matched.
        let mut ok = false;
        for key in keys.iter() {
            ok |= constant_time_eq::constant_time_eq_16(&Self::tag_with(key, frame), tag);
        }
        if ok {
            Ok(frame)
        } else {
            Err(AuthError::BadTag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[&str]) -> Auth {
        Auth::new(
            &keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn sealed_messages_open_with_the_same_key_only() {
        let a = auth(&["correct horse battery staple"]);
        let msg = a.seal(b"frame bytes");
        assert_eq!(msg.len(), 11 + TAG_LEN);
        assert_eq!(a.open(&msg), Ok(&b"frame bytes"[..]));
        let other = auth(&["another secret of enough length"]);
        assert_eq!(other.open(&msg), Err(AuthError::BadTag));
        // No key: the tag is just trailing bytes to the frame decoder.
        assert_eq!(Auth::default().open(&msg), Ok(&msg[..]));
    }

    #[test]
    fn any_change_breaks_the_tag() {
        let a = auth(&["correct horse battery staple"]);
        let msg = a.seal(b"origin 1 incarnation 2 seq 3");
        for i in 0..msg.len() {
            let mut bytes = msg.to_vec();
            bytes[i] ^= 0x01;
            assert_eq!(a.open(&bytes), Err(AuthError::BadTag), "flip at {i}");
        }
        assert_eq!(a.open(&msg[1..]), Err(AuthError::BadTag));
        assert_eq!(a.open(&[0u8; 5]), Err(AuthError::Untagged));
        assert_eq!(a.open(&[]), Err(AuthError::Untagged));
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_all() {
        let old = auth(&["the old secret, 16+ bytes"]);
        let both = auth(&["the new secret, 16+ bytes", "the old secret, 16+ bytes"]);
        let new = auth(&["the new secret, 16+ bytes"]);
        let from_old = old.seal(b"x");
        let from_both = both.seal(b"y");
        assert!(both.open(&from_old).is_ok());
        assert!(new.open(&from_both).is_ok(), "signed with the first key");
        assert!(old.open(&from_both).is_err());
    }
}
