//! wgdp's UDP input from many source addresses: roaming, replays, tampering, handshake floods
//! (operations decoded with `arbitrary`; see wgdp::fuzzing::flood).
//! The properties are asserted inside the entry point (shared with the crate's seed test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wgdp::fuzzing::flood::udp_flood(data);
});
