//! The meshd-config ConfigMap (JSON) to meshd's settings.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd::fuzzing::settings_configmap(data);
});
