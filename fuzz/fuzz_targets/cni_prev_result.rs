//! A chained CNI plugin's prevResult, decoded and merged into meshd-cni's result.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd_cni::fuzzing::prev_result(data);
});
