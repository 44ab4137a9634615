//! meshd's control socket: a request line, and the JSON answers meshctl reads.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd::fuzzing::control_protocol(data);
});
