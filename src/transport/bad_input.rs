//! Handling of rejected network input: count it, warn once per source and kind.
//!
//! Owns: the bounded memory of which (kind, source) pairs were already
//! logged at `warn`. Later occurrences are logged at `debug`, so a peer
//! flooding garbage cannot flood the logs, and the set cannot grow without
//! bound. Counting itself is the caller's job (see [`Counters`](crate::api::stats::Counters)).

use std::collections::HashSet;

/// How many distinct (kind, source) pairs are remembered for warn-once.
const REMEMBERED: usize = 256;

/// Rate-limits `warn` logging of rejected input.
#[derive(Debug, Default)]
pub(crate) struct BadInputLog {
    warned: HashSet<(&'static str, String)>,
}

impl BadInputLog {
    /// Logs a rejected frame: at `warn` the first time for this kind and
    /// source, at `debug` afterwards (or once the memory is full).
    pub(crate) fn reject(
        &mut self,
        kind: &'static str,
        source: &str,
        detail: &dyn std::fmt::Display,
    ) {
        let first = self.warned.len() < REMEMBERED && self.warned.insert((kind, source.to_owned()));
        if first {
            tracing::warn!(kind, source, %detail, "dropped bad input from the network (further ones from this source are logged at debug)");
        } else {
            tracing::debug!(kind, source, %detail, "dropped bad input from the network");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded() {
        let mut log = BadInputLog::default();
        for i in 0..10 * REMEMBERED {
            log.reject("malformed", &i.to_string(), &"x");
        }
        assert_eq!(log.warned.len(), REMEMBERED);
    }
}
