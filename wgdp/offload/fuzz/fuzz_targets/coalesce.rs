//! `Coalescer` on an arbitrary sequence of packets, then `flush`.
//!
//! Input: a config byte (bit 0: merge UDP; bit 1: repair lengths and checksums of every
//! packet), then operations, each one byte followed by its arguments:
//! * 0: a raw packet, `u16` LE length then the bytes;
//! * 1: the segment that would follow the last packet (sequence number advanced by its
//!   payload, IPv4 ID + 1), with a new payload length (`u16` LE) and TCP flags byte;
//! * 2: a copy of an earlier packet (one byte: how far back);
//! * 3: the last packet with one byte changed (position `u16` LE, xor value).
//! Then everything is pushed and flushed (twice over, reusing the coalescer), with the
//! oracles of `common::check_coalesce`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgdp_offload::Coalescer;

#[path = "common.rs"]
mod common;

const MAX_PACKETS: usize = 300;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The segment after `prev` in its TCP stream, with `len` payload bytes and `flags`.
fn next_segment(prev: &[u8], len: usize, flags: u8, fill: &[u8]) -> Option<Vec<u8>> {
    let v6 = prev.first()? >> 4 == 6;
    let l4 = if v6 {
        40
    } else {
        usize::from(prev[0] & 0xf) * 4
    };
    let doff = usize::from(prev.get(l4 + 12)? >> 4) * 4;
    let hdrs = l4 + doff.max(20);
    let old_payload = prev.len().checked_sub(hdrs)?;
    let mut p = prev.get(..hdrs)?.to_vec();
    let seq = u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().ok()?);
    p[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add(old_payload as u32).to_be_bytes());
    p[l4 + 13] = flags;
    if !v6 {
        let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(1);
        p[4..6].copy_from_slice(&id.to_be_bytes());
    }
    p.extend((0..len).map(|i| fill.get(i % fill.len().max(1)).copied().unwrap_or(i as u8)));
    Some(p)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(config) = input.byte() else { return };
    let mut pkts: Vec<Vec<u8>> = Vec::new();
    while pkts.len() < MAX_PACKETS {
        let Some(op) = input.byte() else { break };
        let pkt = match op % 4 {
            0 => {
                let Some(n) = input.u16() else { break };
                input.bytes(usize::from(n)).to_vec()
            }
            1 => {
                let (Some(len), Some(flags)) = (input.u16(), input.byte()) else {
                    break;
                };
                let fill = input.bytes(8).to_vec();
                let Some(prev) = pkts.last() else { continue };
                match next_segment(prev, usize::from(len) % 9001, flags, &fill) {
                    Some(p) => p,
                    None => continue,
                }
            }
            2 => {
                let Some(back) = input.byte() else { break };
                if pkts.is_empty() {
                    continue;
                }
                pkts[pkts.len() - 1 - usize::from(back) % pkts.len()].clone()
            }
            _ => {
                let (Some(at), Some(x)) = (input.u16(), input.byte()) else {
                    break;
                };
                let Some(mut p) = pkts.pop() else { continue };
                if !p.is_empty() {
                    let i = usize::from(at) % p.len();
                    p[i] ^= x;
                }
                p
            }
        };
        let mut pkt = pkt;
        if config & 2 != 0 {
            common::repair(&mut pkt);
        }
        pkts.push(pkt);
    }
    let mut c = Coalescer::new();
    c.set_udp(config & 1 != 0);
    common::check_coalesce(&mut c, &pkts);
    // Reuse after flush behaves the same.
    common::check_coalesce(&mut c, &pkts);
});
