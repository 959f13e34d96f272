//! NAKs, direct acks and repair answers (kinds 3, 4, 6): never a panic;
//! what decodes round-trips.
#![no_main]
use chorus::repair::{Repair, RepairRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = RepairRequest::decode(data, 1 << 20) {
        let again = RepairRequest::decode(&req.encode(), usize::MAX).unwrap();
        assert_eq!(again, req);
    }
    if let Ok(r) = Repair::decode(data, 1 << 20) {
        assert_eq!(Repair::decode(&r.encode(), usize::MAX).unwrap(), r);
    }
});
