//! The bus-key check: never a panic, never accepts what was not sealed
//! with the key, always accepts what was.
#![no_main]
use chorus::auth::{open_frame, seal_frame};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"the fuzzing bus key, 32 bytes..";

fuzz_target!(|data: &[u8]| {
    let _ = open_frame(KEY, data);
    let sealed = seal_frame(KEY, data);
    assert_eq!(open_frame(KEY, &sealed), Some(data));
    if let Some((last, rest)) = sealed.split_last() {
        let mut flipped = rest.to_vec();
        flipped.push(last ^ 0x80);
        assert_eq!(open_frame(KEY, &flipped), None);
    }
});
