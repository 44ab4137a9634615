//! wgdp's UAPI server: a client's bytes through serve_requests and parse_request.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wgdp::fuzzing::uapi::uapi_request(data);
});
