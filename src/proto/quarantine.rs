//! Back-off against reconnect floods from addresses that keep failing
//! authentication.
//!
//! Owns: [`Quarantine`], a sans-IO table of offending addresses. Each
//! offence (a pipe closed for failing authentication) bans the address for
//! twice as long as the previous one, from 1 s up to 5 min; an address
//! quiet for 10 min is forgotten. The table is bounded: when full, the entry
//! whose ban ends first is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// First ban.
pub(crate) const FIRST_BAN: Duration = Duration::from_secs(1);
/// Longest ban.
pub(crate) const MAX_BAN: Duration = Duration::from_secs(300);
/// An address without offences for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered.
pub(crate) const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    offences: u32,
    until: Instant,
    last: Instant,
}

/// Offending addresses (of any kind `A`: the driver uses IP addresses) and
/// their bans.
#[derive(Debug)]
pub(crate) struct Quarantine<A> {
    entries: HashMap<A, Entry>,
}

impl<A> Default for Quarantine<A> {
    fn default() -> Self {
        Quarantine {
            entries: HashMap::new(),
        }
    }
}

impl<A: Hash + Eq + Copy> Quarantine<A> {
    /// Records an offence by `addr` at `now`; returns the ban it earns.
    pub(crate) fn offend(&mut self, addr: A, now: Instant) -> Duration {
        self.forget_quiet(now);
        if !self.entries.contains_key(&addr) && self.entries.len() >= MAX_ENTRIES {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.until)
                .map(|(a, _)| *a)
            {
                self.entries.remove(&oldest);
            }
        }
        let e = self.entries.entry(addr).or_insert(Entry {
            offences: 0,
            until: now,
            last: now,
        });
        e.offences = e.offences.saturating_add(1);
        let ban = FIRST_BAN
            .saturating_mul(1u32 << (e.offences - 1).min(16))
            .min(MAX_BAN);
        e.until = now + ban;
        e.last = now;
        ban
    }

    /// Whether `addr` is banned at `now`.
    pub(crate) fn is_banned(&self, addr: A, now: Instant) -> bool {
        self.entries.get(&addr).is_some_and(|e| now < e.until)
    }

    /// Addresses remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn forget_quiet(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn bans_double_up_to_the_cap_and_expire() {
        let (mut q, t0) = (Quarantine::default(), Instant::now());
        let a = ip(0x0a00_0001);
        let mut now = t0;
        let mut bans = Vec::new();
        for _ in 0..12 {
            let ban = q.offend(a, now);
            assert!(q.is_banned(a, now) && q.is_banned(a, now + ban - Duration::from_millis(1)));
            assert!(!q.is_banned(a, now + ban));
            bans.push(ban.as_secs());
            now += ban;
        }
        assert_eq!(bans[..10], [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert!(!q.is_banned(ip(0x0a00_0002), t0), "others are not affected");
        // Quiet for long enough: forgotten, the next offence starts over.
        let later = now + FORGET_AFTER;
        assert_eq!(q.offend(a, later), FIRST_BAN);
    }

    #[test]
    fn the_table_is_bounded() {
        let (mut q, t0) = (Quarantine::default(), Instant::now());
        for n in 0..(2 * MAX_ENTRIES as u32) {
            q.offend(ip(n), t0 + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(q.len(), MAX_ENTRIES);
        assert!(q.is_banned(ip(2 * MAX_ENTRIES as u32 - 1), t0 + Duration::from_secs(9)));
    }
}
