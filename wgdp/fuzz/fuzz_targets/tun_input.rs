//! `wgdp::fuzzing::tun_input`: one read from the TUN (10-byte virtio-net header + IP
//! packet), through the send path: `segment_frame`, the destination lookup in the allowed
//! IPs, the peer's endpoint, and boringtun's `encapsulate` of every segment into the outbox
//! (in chunks, with the outbox's room check), then the flush.
//!
//! Input: one mode byte, then the TUN read. The mode helps mutated inputs get past the
//! cheap checks:
//! * bit 0: route it: the destination becomes one of the peer's allowed IPs (first byte
//!   of the IPv4 destination 10, of the IPv6 destination 0xfd);
//! * bit 1: force `gso_type` to NONE/TCPV4/TCPV6/UDP_L4 by its low two bits (ECN bit kept);
//! * bit 2: repair the length fields to fit the bytes (IPv4 total length, IPv6 payload
//!   length, the UDP length when UDP follows the fixed header) and the IPv4 header
//!   checksum (after the other changes).
//!
//! Mode 0 feeds the rest unchanged. Oracle: no panic (arithmetic overflow included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgdp::fuzzing::tun_input;

const VNET_HDR_LEN: usize = 10;

/// RFC 1071 one's complement sum of `data`, folded.
fn fold(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for w in data.chunks(2) {
        sum += u32::from(w[0]) << 8 | u32::from(w.get(1).copied().unwrap_or(0));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn set_u16(p: &mut [u8], at: usize, v: usize) {
    p[at..at + 2].copy_from_slice(&(v.min(0xffff) as u16).to_be_bytes());
}

/// Length fields and the IPv4 header checksum to match the bytes of `ip`.
fn repair(ip: &mut [u8]) {
    let len = ip.len();
    let (l4, proto, v4) = match ip.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ihl < 20 || ihl > len {
                return;
            }
            set_u16(ip, 2, len);
            (ihl, ip[9], true)
        }
        Some(6) if len >= 40 => {
            set_u16(ip, 4, len - 40);
            (40, ip[6], false)
        }
        _ => return,
    };
    if proto == 17 && len >= l4 + 8 {
        set_u16(ip, l4 + 4, len - l4);
    }
    if v4 {
        ip[10..12].fill(0);
        let c = !fold(&ip[..l4]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 7 == 0 || rest.len() < VNET_HDR_LEN {
        tun_input(rest);
        return;
    }
    let mut frame = rest.to_vec();
    if mode & 2 != 0 {
        let g = frame[1];
        frame[1] = [0, 1, 4, 5][usize::from(g & 3)] | (g & 0x80);
    }
    let ip = &mut frame[VNET_HDR_LEN..];
    if mode & 1 != 0 {
        match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 => ip[16] = 10,
            Some(6) if ip.len() >= 40 => ip[24] = 0xfd,
            _ => {}
        }
    }
    if mode & 4 != 0 {
        repair(ip);
    }
    tun_input(&frame);
});
