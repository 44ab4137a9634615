//! Property tests across the segmenter and the coalescer: round trips, flow order, and that
//! no input makes either panic.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::testutil::*;
use crate::vnet::{VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_UDP_L4};
use crate::{segment, segment_frame, Coalescer, VnetHdr, MAX_UDP_COALESCED_SEGMENTS, VNET_HDR_LEN};

fn segment_all(hdr: &VnetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    segment(hdr, pkt, &mut out, &mut ranges).unwrap();
    split(&out, &ranges)
}

/// Pushes `pkts`, flushes, and checks what the coalescer promises whatever the input:
/// every frame re-segments; together they give back exactly the pushed packets (up to what
/// [`normalize`] allows), each flow's in the order pushed. Returns the frames.
fn coalesce_checked(pkts: &[Vec<u8>], udp: bool) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new();
    c.set_udp(udp);
    for p in pkts {
        c.push(p);
    }
    let frames = flush_all(&mut c);
    assert!(frames.len() <= pkts.len());
    let mut got: Vec<Vec<u8>> = Vec::new();
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    for f in &frames {
        let h = VnetHdr::parse(f).unwrap();
        if h.gso_type == VIRTIO_NET_HDR_GSO_NONE {
            assert_eq!(h, VnetHdr::default());
        }
        segment_frame(f, &mut out, &mut ranges).unwrap();
        if h.gso_type != VIRTIO_NET_HDR_GSO_NONE {
            assert!(ranges.len() >= 2, "a merged frame holds several segments");
            for r in &ranges {
                check_packet(&out[r.clone()]);
            }
        } else {
            assert_eq!(
                &out[..],
                &f[VNET_HDR_LEN..],
                "single packets pass unchanged"
            );
        }
        got.extend(split(&out, &ranges));
    }
    let by_flow = |ps: &[Vec<u8>]| {
        let mut flows: BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>> = BTreeMap::new();
        for p in ps {
            flows.entry(flow_of(p)).or_default().push(normalize(p));
        }
        // Packets of no known flow may be reordered among themselves.
        if let Some(other) = flows.get_mut(&None) {
            other.sort();
        }
        flows
    };
    let (got, want) = (by_flow(&got), by_flow(pkts));
    if got != want {
        panic!(
            "per-flow packet sequences differ:\n{}",
            describe_diff(&got, &want)
        );
    }
    frames
}

type Flows = BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>>;

/// A short account of where two per-flow packet lists first differ (the packets themselves
/// are too long to print).
fn describe_diff(got: &Flows, want: &Flows) -> String {
    let mut s = String::new();
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    for k in keys {
        let (g, w) = (got.get(k), want.get(k));
        if g == w {
            continue;
        }
        let (g, w) = (g.map_or(&[][..], |v| v), w.map_or(&[][..], |v| v));
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
                    a.len(),
                    b.len(),
                    &a[..a.len().min(64)],
                    &b[..b.len().min(64)]
                );
                break;
            }
        }
    }
    s
}

fn ip_spec() -> impl Strategy<Value = IpSpec> {
    (
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        0u32..0x10_0000,
    )
        .prop_map(|(v6, src, dst, id, df, ttl, tos, flow_label)| {
            let mut s = if v6 { IpSpec::v6() } else { IpSpec::v4() };
            s.src = src;
            s.dst = dst;
            if !v6 {
                s.src[4..].fill(0);
                s.dst[4..].fill(0);
            }
            s.id = id;
            s.df = df;
            s.ttl = ttl;
            s.tos = tos;
            s.flow_label = flow_label;
            s
        })
}

fn tcp_spec() -> impl Strategy<Value = TcpSpec> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        prop::sample::select(vec![0, PSH, FIN, PSH | FIN, CWR, ECE, CWR | ECE | PSH]),
        any::<u16>(),
        prop::option::of(any::<(u32, u32)>()),
    )
        .prop_map(|(sport, dport, seq, ack, flags, window, ts)| TcpSpec {
            sport,
            dport,
            seq,
            ack,
            flags: ACK | flags,
            window,
            urgent: 0,
            options: ts.map(|(a, b)| timestamps(a, b)).unwrap_or_default(),
        })
}

/// A TSO super-packet as the kernel would hand it over.
fn tso_packet() -> impl Strategy<Value = (VnetHdr, Vec<u8>, usize)> {
    (
        ip_spec(),
        tcp_spec(),
        0usize..=65_000,
        any::<u8>(),
        32u16..=9000,
    )
        .prop_map(|(ip, tcp, len, seed, mss)| {
            let data = payload(len, seed);
            let (hdr, pkt) = tso(&ip, &tcp, &data, mss);
            (hdr, pkt, len)
        })
}

/// A USO super-packet as the kernel would hand it over (at most 128 datagrams).
fn uso_packet() -> impl Strategy<Value = (VnetHdr, Vec<u8>, usize)> {
    (
        ip_spec(),
        any::<(u16, u16)>(),
        1usize..=65_000,
        any::<u8>(),
        1u16..=9000,
    )
        .prop_filter(
            "UDP_SEGMENT sends at most 128 segments",
            |(_, _, len, _, size)| len.div_ceil(usize::from(*size)) <= 128,
        )
        .prop_map(|(ip, (sport, dport), len, seed, size)| {
            let data = payload(len, seed);
            let (hdr, pkt) = uso(&ip, sport, dport, &data, size);
            (hdr, pkt, len)
        })
}

/// Random edits to a valid packet: byte writes, then a cut.
fn mutate(mut pkt: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !pkt.is_empty() {
        for &(at, b) in edits {
            let i = at % pkt.len();
            pkt[i] = b;
        }
    }
    if let Some(c) = cut {
        pkt.truncate(c % (pkt.len() + 1));
    }
    pkt
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The word-at-a-time sum agrees with RFC 1071 done 16 bits at a time, at any length,
    /// any start in memory and with any sum carried in.
    #[test]
    fn checksum_sum_matches_the_reference(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        skip in 0usize..16,
        carried in any::<u32>(),
    ) {
        let data = &data[skip.min(data.len())..];
        let want = crate::checksum::fold(u64::from(ref_fold(data)) + u64::from(carried));
        prop_assert_eq!(crate::checksum::fold(crate::checksum::sum(data, u64::from(carried))), want);
    }

    /// TSO → segments (checked independently) → coalescer → one super-packet (two if the
    /// first segment carries CWR, which never merges) that re-segments to the same packets.
    #[test]
    fn tso_round_trip((hdr, pkt, len) in tso_packet()) {
        let segs = segment_all(&hdr, &pkt);
        let mss = usize::from(hdr.gso_size);
        prop_assert_eq!(segs.len(), len.div_ceil(mss).max(1));
        let mut joined = Vec::new();
        for s in &segs {
            prop_assert!(s.len() <= 60 + 40 + mss);
            joined.extend(check_packet(s).payload);
        }
        prop_assert_eq!(&joined, &pkt[pkt.len() - len..]);
        let frames = coalesce_checked(&segs, true);
        let cwr = pkt[if pkt[0] >> 4 == 6 { 53 } else { 33 }] & CWR != 0;
        let want = match (len, cwr, segs.len()) {
            (0, _, _) => 1,
            (_, true, n) => 1 + usize::from(n > 1),
            _ => 1,
        };
        prop_assert_eq!(frames.len(), want);
    }

    /// USO → datagrams → coalescer → GSO_UDP_L4 packets of at most 64 datagrams.
    #[test]
    fn uso_round_trip((hdr, pkt, len) in uso_packet()) {
        let segs = segment_all(&hdr, &pkt);
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(hdr.gso_size)));
        let joined: Vec<u8> = segs.iter().flat_map(|s| check_packet(s).payload).collect();
        prop_assert_eq!(&joined, &pkt[pkt.len() - len..]);
        let frames = coalesce_checked(&segs, true);
        prop_assert_eq!(frames.len(), segs.len().div_ceil(MAX_UDP_COALESCED_SEGMENTS));
        if segs.len() > 1 {
            prop_assert_eq!(VnetHdr::parse(&frames[0]).unwrap().gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
        }
        let off = coalesce_checked(&segs, false);
        prop_assert_eq!(off.len(), segs.len());
    }

    /// Several flows' segments interleaved, some dropped or duplicated, with stray packets
    /// in between: each flow comes out in order and nothing is lost or invented.
    #[test]
    fn interleaved_flows_keep_their_order(
        flows in prop::collection::vec((tso_packet(), 0u16..4), 1..4),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0u8..10), 0..200),
    ) {
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = flows
            .iter()
            .map(|((hdr, pkt, _), _)| segment_all(hdr, pkt).into())
            .collect();
        let mut pushed = Vec::new();
        for (which, action) in picks {
            let q = which.index(queues.len());
            let Some(front) = queues[q].front().cloned() else { continue };
            match action {
                0 => { queues[q].pop_front(); }                   // dropped
                1 => pushed.push(front),                          // duplicated (stays queued)
                2 => pushed.push(b"\x45 not really".to_vec()),    // garbage
                3 => pushed.push({                                // a pure ACK of this flow
                    let mut a = front.clone();
                    let l4 = if a[0] >> 4 == 6 { 40 } else { 20 };
                    let doff = usize::from(a[l4 + 12] >> 4) * 4;
                    a.truncate(l4 + doff);
                    let len = a.len();
                    if l4 == 40 { a[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()); }
                    else { a[2..4].copy_from_slice(&(len as u16).to_be_bytes()); }
                    a
                }),
                _ => { pushed.push(front); queues[q].pop_front(); }
            }
        }
        for q in &mut queues {
            pushed.extend(q.drain(..));
        }
        coalesce_checked(&pushed, true);
    }

    /// `segment` never panics, whatever the header and bytes; on success the ranges tile
    /// `out`.
    #[test]
    fn segment_never_panics(
        flags in any::<u8>(),
        gso_type in prop_oneof![Just(0u8), Just(1), Just(4), Just(5), Just(0x81), any::<u8>()],
        hdr_len in any::<u16>(),
        gso_size in prop_oneof![Just(0u16), 1u16..64, any::<u16>()],
        csum_start in prop_oneof![0u16..80, any::<u16>()],
        csum_offset in prop_oneof![0u16..20, any::<u16>()],
        pkt in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        let hdr = VnetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
        check_segment_output(&hdr, &pkt);
    }

    /// The same from valid super-packets with random edits to the header and bytes, which
    /// gets much deeper than random bytes.
    #[test]
    fn segment_never_panics_on_mutated_packets(
        (hdr, pkt, _) in prop_oneof![tso_packet(), uso_packet()],
        hdr_edit in prop::option::of((any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>())),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let mut hdr = hdr;
        if let Some((gso_type, gso_size, csum_start, csum_offset)) = hdr_edit {
            hdr = VnetHdr { gso_type: gso_type & 0x87, gso_size, csum_start, csum_offset, ..hdr };
        }
        check_segment_output(&hdr, &mutate(pkt, &edits, cut));
    }

    /// The coalescer never panics and keeps its promises on random packets and on edited
    /// valid segments mixed together.
    #[test]
    fn coalescer_never_panics(
        random in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
        (hdr, pkt, _) in prop_oneof![tso_packet(), uso_packet()],
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<usize>(), any::<u8>()), 0..6),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<usize>()), 0..3),
        udp in any::<bool>(),
    ) {
        let mut pkts = segment_all(&hdr, &pkt);
        pkts.truncate(100);
        if !pkts.is_empty() {
            for (which, at, b) in edits {
                let i = which.index(pkts.len());
                pkts[i] = mutate(std::mem::take(&mut pkts[i]), &[(at, b)], None);
            }
            for (which, cut) in cuts {
                let i = which.index(pkts.len());
                pkts[i] = mutate(std::mem::take(&mut pkts[i]), &[], Some(cut));
            }
        }
        pkts.extend(random);
        coalesce_checked(&pkts, udp);
    }
}

fn check_segment_output(hdr: &VnetHdr, pkt: &[u8]) {
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    match segment(hdr, pkt, &mut out, &mut ranges) {
        Ok(()) => {
            let mut at = 0;
            for r in &ranges {
                assert_eq!(r.start, at);
                at = r.end;
            }
            assert_eq!(at, out.len());
            assert!(!ranges.is_empty());
            if hdr.gso_type & 0x7f != VIRTIO_NET_HDR_GSO_NONE {
                // Every GSO output is a well-formed packet.
                for r in &ranges {
                    let seg = &out[r.clone()];
                    if seg[0] == 0x45 || seg[0] >> 4 == 6 && seg[6] == hdr_proto(hdr) {
                        check_packet(seg);
                    }
                }
            }
        }
        Err(e) => {
            assert!(out.is_empty() && ranges.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

fn hdr_proto(hdr: &VnetHdr) -> u8 {
    if hdr.gso_type & 0x7f == VIRTIO_NET_HDR_GSO_UDP_L4 {
        17
    } else {
        6
    }
}

#[test]
fn kernel_constants_match_linux() {
    use crate::vnet::*;
    // include/uapi/linux/virtio_net.h and if_tun.h.
    assert_eq!(
        [
            VIRTIO_NET_HDR_GSO_NONE,
            VIRTIO_NET_HDR_GSO_TCPV4,
            VIRTIO_NET_HDR_GSO_UDP,
            VIRTIO_NET_HDR_GSO_TCPV6,
            VIRTIO_NET_HDR_GSO_UDP_L4,
            VIRTIO_NET_HDR_GSO_ECN,
        ],
        [0, 1, 3, 4, 5, 0x80]
    );
    assert_eq!(
        [
            TUN_F_CSUM,
            TUN_F_TSO4,
            TUN_F_TSO6,
            TUN_F_TSO_ECN,
            TUN_F_USO4,
            TUN_F_USO6
        ],
        [1, 2, 4, 8, 0x20, 0x40]
    );
    assert_eq!(
        (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID),
        (1, 2)
    );
}
