//! Event and batch frames (kinds 0 and 5) as a receiver decodes them: never
//! a panic; whatever decodes re-encodes to a frame that decodes the same.
#![no_main]
use chorus::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data, 1 << 20) {
        assert_eq!(Envelope::decode(&env.encode(), usize::MAX).unwrap(), env);
    }
    let mut out = Vec::new();
    if Envelope::decode_events(data, 1 << 20, &mut out).is_ok() {
        assert!(!out.is_empty());
    }
});
