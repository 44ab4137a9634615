//! `segment()` on an arbitrary virtio-net header and packet.
//!
//! Input: one mode byte, the 10-byte header, then the IP packet. Mode bit 0 repairs the IP
//! length fields (and the IPv4 header checksum) to match the bytes, so that more inputs get
//! past header validation; bit 1 forces `gso_type` to one of the supported ones.
//! Oracles: no panic; on error the buffers are empty; on success the ranges tile `out`,
//! every GSO segment is wire-ready (independent checksum), and coalescing the segments and
//! re-segmenting gives them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgdp_offload::{segment, Coalescer, VnetHdr, VNET_HDR_LEN};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut hdr) = VnetHdr::parse(rest) else {
        return;
    };
    let mut pkt = rest[VNET_HDR_LEN..].to_vec();
    if mode & 2 != 0 {
        hdr.gso_type = [0, 1, 4, 5][usize::from(hdr.gso_type & 3)] | (hdr.gso_type & 0x80);
    }
    if mode & 1 != 0 {
        common::repair(&mut pkt);
    }
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    match segment(&hdr, &pkt, &mut out, &mut ranges) {
        Err(e) => {
            assert!(out.is_empty() && ranges.is_empty());
            assert!(!e.to_string().is_empty());
        }
        Ok(()) => {
            let mut at = 0;
            for r in &ranges {
                assert_eq!(r.start, at);
                at = r.end;
            }
            assert_eq!(at, out.len());
            assert!(!ranges.is_empty());
            if hdr.gso_type & 0x7f != 0 {
                let segs: Vec<Vec<u8>> = ranges.iter().map(|r| out[r.clone()].to_vec()).collect();
                for s in &segs {
                    common::assert_wire_ready(s);
                }
                common::check_coalesce(&mut Coalescer::new(), &segs);
            }
        }
    }
});
