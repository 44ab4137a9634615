//! Oracles shared by the fuzz targets. Deliberately independent of the crate's own header
//! and checksum code.
#![allow(dead_code)]

use std::collections::BTreeMap;

use wgdp_offload::{segment_frame, Coalescer, VnetHdr, VNET_HDR_LEN};

/// RFC 1071, one word at a time.
pub fn ref_fold(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in data.chunks(2) {
        s += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(ip: &[u8], proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    if ip[0] >> 4 == 6 {
        p.extend_from_slice(&ip[8..40]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&ip[12..20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

/// (L4 offset, protocol) of a packet whose TCP/UDP header follows the IP header directly.
fn simple_l4(p: &[u8]) -> Option<(usize, u8)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            (ihl >= 20 && ihl <= p.len()).then_some((ihl, p[9]))
        }
        6 if p.len() >= 40 => Some((40, p[6])),
        _ => None,
    }
}

/// Asserts that a segment produced from a GSO packet is complete: lengths and checksums.
pub fn assert_wire_ready(seg: &[u8]) {
    let (l4, proto) = simple_l4(seg).expect("segment has an IP header");
    if seg[0] >> 4 == 4 {
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[2], seg[3]])),
            seg.len(),
            "IPv4 total length"
        );
        assert_eq!(ref_fold(&seg[..l4]), 0xffff, "IPv4 header checksum");
    } else {
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[4], seg[5]])) + 40,
            seg.len(),
            "IPv6 payload length"
        );
        if proto != 6 && proto != 17 {
            return; // extension headers: the L4 offset needs a walk; the unit tests cover it
        }
    }
    let mut all = pseudo(seg, proto, seg.len() - l4);
    all.extend_from_slice(&seg[l4..]);
    assert_eq!(ref_fold(&all), 0xffff, "L4 checksum");
    if proto == 17 {
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[l4 + 4], seg[l4 + 5]])),
            seg.len() - l4,
            "UDP length"
        );
        assert_ne!(&seg[l4 + 6..l4 + 8], &[0, 0], "UDP checksum 0");
    }
}

/// Sets length fields, the IPv4 header checksum and the TCP/UDP checksum to match the
/// bytes, when the headers are there.
pub fn repair(p: &mut [u8]) {
    let Some((l4, proto)) = simple_l4(p) else {
        return;
    };
    let len = p.len();
    if p[0] >> 4 == 4 {
        p[2..4].copy_from_slice(&(len.min(65535) as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = !ref_fold(&p[..l4]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((len - 40).min(65535) as u16).to_be_bytes());
    }
    let field = match proto {
        6 if len >= l4 + 20 => l4 + 16,
        17 if len >= l4 + 8 => {
            p[l4 + 4..l4 + 6].copy_from_slice(&((len - l4).min(65535) as u16).to_be_bytes());
            l4 + 6
        }
        _ => return,
    };
    p[field..field + 2].fill(0);
    let mut all = pseudo(p, proto, len - l4);
    all.extend_from_slice(&p[l4..]);
    let c = match !ref_fold(&all) {
        0 if proto == 17 => 0xffff,
        c => c,
    };
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// The packet cut to its IP length, as the coalescer keeps it.
pub fn trim(p: &[u8]) -> &[u8] {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl >= 20 && ihl <= total && total <= p.len() {
                &p[..total]
            } else {
                p
            }
        }
        Some(6) if p.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            if total <= p.len() {
                &p[..total]
            } else {
                p
            }
        }
        _ => p,
    }
}

/// What merging and re-segmenting may legitimately change: the IPv4 header checksum's
/// representation, the ID of DF packets, a TCP checksum of 0xffff (= 0).
pub fn normalize(pkt: &[u8]) -> Vec<u8> {
    let mut p = trim(pkt).to_vec();
    let l4 = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 && p[0] == 0x45 => {
            p[10..12].fill(0);
            if p[6] & 0x40 != 0 {
                p[4..6].fill(0);
            }
            (p[9] == 6).then_some(20)
        }
        Some(6) if p.len() >= 40 => (p[6] == 6).then_some(40),
        _ => None,
    };
    if let Some(l4) = l4 {
        if p.len() >= l4 + 18 && p[l4 + 16..l4 + 18] == [0xff, 0xff] {
            p[l4 + 16..l4 + 18].fill(0);
        }
    }
    p
}

/// The TCP/UDP flow a packet certainly belongs to.
pub fn flow_of(pkt: &[u8]) -> Option<Vec<u8>> {
    let p = trim(pkt);
    let (l4, proto, addrs) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            if ihl < 20 || frag_offset != 0 {
                return None;
            }
            (ihl, p[9], &p[12..20])
        }
        Some(6) if p.len() >= 40 => (40, p[6], &p[8..40]),
        _ => return None,
    };
    if (proto != 6 && proto != 17) || p.len() < l4 + 4 {
        return None;
    }
    let mut key = vec![p[0] >> 4, proto];
    key.extend_from_slice(addrs);
    key.extend_from_slice(&p[l4..l4 + 4]);
    Some(key)
}

/// Pushes `pkts` through a coalescer and checks its promises: every frame re-segments,
/// merged frames hold ≥ 2 valid segments, single packets are unchanged, and the packets come
/// back exactly (up to [`normalize`]), each flow's in order.
pub fn check_coalesce(c: &mut Coalescer, pkts: &[Vec<u8>]) {
    for p in pkts {
        c.push(p);
    }
    assert_eq!(c.len(), c.len().min(pkts.len()));
    let mut frames = Vec::new();
    c.flush(&mut |f| frames.push(f.to_vec()));
    assert!(c.is_empty());
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    let mut got = Vec::new();
    for f in &frames {
        let h = VnetHdr::parse(f).expect("frame has a vnet header");
        segment_frame(f, &mut out, &mut ranges).expect("coalesced frame re-segments");
        if h.gso_type == 0 {
            assert_eq!(h, VnetHdr::default());
            assert_eq!(&out[..], &f[VNET_HDR_LEN..]);
        } else {
            assert!(ranges.len() >= 2, "merged frame with one segment");
            for r in &ranges {
                assert_wire_ready(&out[r.clone()]);
            }
        }
        got.extend(ranges.iter().map(|r| out[r.clone()].to_vec()));
    }
    let by_flow = |ps: &[Vec<u8>]| {
        let mut flows: BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>> = BTreeMap::new();
        for p in ps {
            flows.entry(flow_of(p)).or_default().push(normalize(p));
        }
        if let Some(other) = flows.get_mut(&None) {
            other.sort();
        }
        flows
    };
    let (got, want) = (by_flow(&got), by_flow(pkts));
    if got != want {
        panic!(
            "packets lost, changed or reordered within a flow:\n{}",
            describe(&got, &want)
        );
    }
}

type Flows = BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>>;

fn describe(got: &Flows, want: &Flows) -> String {
    let mut s = String::new();
    for k in got.keys().chain(want.keys()) {
        let (g, w) = (
            got.get(k).map_or(&[][..], |v| v),
            want.get(k).map_or(&[][..], |v| v),
        );
        if g == w {
            continue;
        }
        s += &format!("flow {k:02x?}: got {} packets, want {}\n", g.len(), w.len());
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            if a != b {
                let at = a
                    .iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                s += &format!(
                    "  packet {i}: lengths {} vs {}, first difference at byte {at}\n  got  {:02x?}\n  want {:02x?}\n",
                    a.len(), b.len(), &a[..a.len().min(80)], &b[..b.len().min(80)]
                );
                break;
            }
        }
    }
    s
}
