//! Surveys and responses (kinds 1 and 2): never a panic; what decodes is
//! within its advertised bounds and round-trips.
#![no_main]
use chorus::heartbeat::{Response, Survey, MAX_GOSSIP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Survey::decode(data, 1 << 20) {
        assert!(s.acks.len() <= MAX_GOSSIP);
        assert_eq!(Survey::decode(&s.encode(), usize::MAX).unwrap(), s);
    }
    if let Ok(r) = Response::decode(data, 1 << 20) {
        assert!(r.gossip.len() <= MAX_GOSSIP && r.acks.len() <= MAX_GOSSIP);
        assert_eq!(Response::decode(&r.encode(), usize::MAX).unwrap(), r);
    }
});
