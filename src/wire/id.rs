//! The identity of a peer on the bus.
//!
//! Owns: [`PeerId`], its random choice and its display form.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of a peer on the bus: 64 random bits, chosen at start-up
/// unless pinned with [`PeerBuilder::id`](crate::PeerBuilder::id).
/// Displayed as 16 hexadecimal digits (`Debug` too: `PeerId(00000000000000ff)`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub u64);

impl PeerId {
    /// A fresh random, non-zero id.
    pub fn random() -> Self {
        PeerId(rand::random::<u64>().max(1))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_hex() {
        assert_eq!(PeerId(255).to_string(), "00000000000000ff");
        assert_eq!(format!("{:?}", PeerId(255)), "PeerId(00000000000000ff)");
    }
}
