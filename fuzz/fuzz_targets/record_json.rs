//! keyexchange's node record JSON (the directory registry's files).
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyexchange::fuzzing::record_json(data);
});
