//! The CNI plugin's network configuration on stdin, for each command.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd_cni::fuzzing::netconf(data);
});
