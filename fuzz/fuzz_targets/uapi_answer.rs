//! The UAPI client (netlink's user-space back end): a device's answer through parse_get and parse_set.
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netlink::fuzzing::uapi_answer(data);
});
