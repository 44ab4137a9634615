//! A Kubernetes Node (JSON) to a node record: meshd's annotation codec.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd::fuzzing::node_record(data);
});
