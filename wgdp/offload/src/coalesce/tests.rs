//! Tests of GRO coalescing: which segments merge, which stay alone or end a flow, and that merged
//! frames segment back to the originals.

use super::*;
use crate::testutil::*;
use crate::{segment_frame, OffloadError};

/// `n` consecutive segments of one flow, `mss` payload bytes each (the last `last`).
fn stream(ip: &IpSpec, tcp: &TcpSpec, n: usize, mss: usize, last: usize) -> Vec<Vec<u8>> {
    let mut ip = ip.clone();
    let mut tcp = tcp.clone();
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { mss };
            let p = tcp_packet(&ip, &tcp, &payload(len, i as u8));
            ip.id = ip.id.wrapping_add(1);
            tcp.seq = tcp.seq.wrapping_add(len as u32);
            p
        })
        .collect()
}

fn coalesce(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new();
    for p in pkts {
        c.push(p);
    }
    assert_eq!(c.len(), {
        let mut probe = Coalescer::new();
        pkts.iter().for_each(|p| probe.push(p));
        probe.len()
    });
    let frames = flush_all(&mut c);
    assert!(c.is_empty());
    assert!(flush_all(&mut c).is_empty(), "flush must reset");
    frames
}

/// Re-segments a frame the way the kernel would (via our own segmenter, whose output is
/// checked independently in its tests).
fn resegment(frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    segment_frame(frame, &mut out, &mut ranges)?;
    Ok(split(&out, &ranges))
}

fn vnet(frame: &[u8]) -> VnetHdr {
    VnetHdr::parse(frame).unwrap()
}

/// Checks a merged frame as the kernel's `virtio_net_hdr_to_skb` and TCP stack would.
fn check_merged(frame: &[u8], v6: bool, tcp: bool, gso_size: usize) {
    let h = vnet(frame);
    let ip = &frame[VNET_HDR_LEN..];
    let l4_off = if v6 { 40 } else { 20 };
    let (want_type, l4_hdr, csum_off, proto) = match (v6, tcp) {
        (false, true) => (
            VIRTIO_NET_HDR_GSO_TCPV4,
            usize::from(ip[32] >> 4) * 4,
            16,
            6,
        ),
        (true, true) => (
            VIRTIO_NET_HDR_GSO_TCPV6,
            usize::from(ip[52] >> 4) * 4,
            16,
            6,
        ),
        (_, false) => (VIRTIO_NET_HDR_GSO_UDP_L4, 8, 6, 17),
    };
    assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!(h.gso_type, want_type);
    assert_eq!(usize::from(h.gso_size), gso_size);
    assert_eq!(usize::from(h.hdr_len), l4_off + l4_hdr);
    assert_eq!(usize::from(h.csum_start), l4_off);
    assert_eq!(usize::from(h.csum_offset), csum_off);
    if v6 {
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40,
            ip.len()
        );
    } else {
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(ref_fold(&ip[..20]), 0xffff, "IPv4 header checksum");
    }
    let field = l4_off + csum_off;
    let pseudo = ref_fold(&ref_pseudo(ip, proto, ip.len() - l4_off));
    assert_eq!(
        u16::from_be_bytes([ip[field], ip[field + 1]]),
        pseudo,
        "pseudo-header sum"
    );
    if !tcp {
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[l4_off + 4], ip[l4_off + 5]])),
            ip.len() - l4_off
        );
    }
    // Completing the checksum as the kernel would gives a valid packet.
    let mut done = ip.to_vec();
    let c = !ref_fold(&done[l4_off..]);
    done[field..field + 2].copy_from_slice(&c.to_be_bytes());
    let mut all = ref_pseudo(&done, proto, done.len() - l4_off);
    all.extend_from_slice(&done[l4_off..]);
    assert_eq!(ref_fold(&all), 0xffff);
}

#[test]
fn in_order_tcpv4_segments_merge_and_round_trip() {
    let tcp = TcpSpec {
        options: timestamps(5, 6),
        ..TcpSpec::default()
    };
    let segs = stream(&IpSpec::v4(), &tcp, 10, 1388, 500);
    let frames = coalesce(&segs);
    assert_eq!(frames.len(), 1);
    check_merged(&frames[0], false, true, 1388);
    assert_eq!(resegment(&frames[0]).unwrap(), segs);
}

#[test]
fn in_order_tcpv6_segments_merge_and_round_trip() {
    let segs = stream(&IpSpec::v6(), &TcpSpec::default(), 30, 1380, 1380);
    let frames = coalesce(&segs);
    assert_eq!(frames.len(), 1);
    check_merged(&frames[0], true, true, 1380);
    assert_eq!(resegment(&frames[0]).unwrap(), segs);
}

#[test]
fn psh_and_fin_end_a_merge_and_stay_on_the_last_segment() {
    for end in [PSH, FIN, PSH | FIN] {
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 6, 1000, 1000);
        let last3 = TcpSpec {
            seq: TcpSpec::default().seq + 2000,
            flags: ACK | end,
            ..TcpSpec::default()
        };
        let ip3 = IpSpec {
            id: IpSpec::v4().id + 2,
            ..IpSpec::v4()
        };
        segs[2] = tcp_packet(&ip3, &last3, &payload(1000, 2));
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 2);
        let first = resegment(&frames[0]).unwrap();
        assert_eq!(first, segs[..3]);
        assert_eq!(resegment(&frames[1]).unwrap(), segs[3..]);
    }
}

#[test]
fn a_short_segment_ends_a_merge() {
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 600);
    let more = stream(
        &IpSpec {
            id: IpSpec::v4().id + 3,
            ..IpSpec::v4()
        },
        &TcpSpec {
            seq: TcpSpec::default().seq + 2600,
            ..TcpSpec::default()
        },
        3,
        1000,
        1000,
    );
    segs.extend(more);
    let frames = coalesce(&segs);
    assert_eq!(frames.len(), 2);
    assert_eq!(resegment(&frames[0]).unwrap(), segs[..3]);
    assert_eq!(resegment(&frames[1]).unwrap(), segs[3..]);
    // A longer segment after the first can't join either.
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 2, 500, 500);
    segs[1] = tcp_packet(
        &IpSpec {
            id: IpSpec::v4().id + 1,
            ..IpSpec::v4()
        },
        &TcpSpec {
            seq: TcpSpec::default().seq + 500,
            ..TcpSpec::default()
        },
        &payload(501, 0),
    );
    assert_eq!(coalesce(&segs), frames_alone(&segs));
}

/// The frames `pkts` would give if nothing merged.
fn frames_alone(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    pkts.iter()
        .map(|p| {
            let mut f = vec![0u8; VNET_HDR_LEN];
            f.extend_from_slice(p);
            f
        })
        .collect()
}

#[test]
fn out_of_order_and_duplicate_segments_are_not_merged() {
    let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
    // 0 2 1 3: each continues neither the packet its flow last started nor anything later,
    // so all four stay alone, in arrival order.
    let order = [0usize, 2, 1, 3];
    let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| segs[i].clone()).collect();
    let frames = coalesce(&shuffled);
    let replayed: Vec<Vec<u8>> = frames.iter().flat_map(|f| resegment(f).unwrap()).collect();
    assert_eq!(replayed, shuffled, "arrival order kept");
    assert_eq!(frames, frames_alone(&shuffled));
}

#[test]
fn retransmitted_segment_is_not_merged() {
    let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
    let pushed = vec![
        segs[0].clone(),
        segs[1].clone(),
        segs[1].clone(),
        segs[2].clone(),
    ];
    let frames = coalesce(&pushed);
    let replayed: Vec<Vec<u8>> = frames.iter().flat_map(|f| resegment(f).unwrap()).collect();
    assert_eq!(replayed, pushed);
    assert_eq!(frames.len(), 2);
}

#[test]
fn interleaved_flows_merge_separately_in_order() {
    let a = stream(&IpSpec::v4(), &TcpSpec::default(), 5, 1200, 1200);
    let b = stream(
        &IpSpec::v4(),
        &TcpSpec {
            sport: 40001,
            ..TcpSpec::default()
        },
        5,
        1200,
        700,
    );
    let c6 = stream(&IpSpec::v6(), &TcpSpec::default(), 5, 1200, 1200);
    let mut mixed = Vec::new();
    for i in 0..5 {
        mixed.push(a[i].clone());
        mixed.push(b[i].clone());
        mixed.push(c6[i].clone());
    }
    let frames = coalesce(&mixed);
    assert_eq!(frames.len(), 3);
    assert_eq!(resegment(&frames[0]).unwrap(), a);
    assert_eq!(resegment(&frames[1]).unwrap(), b);
    assert_eq!(resegment(&frames[2]).unwrap(), c6);
}

#[test]
fn differing_headers_are_not_merged() {
    let base = TcpSpec::default();
    let next = |t: TcpSpec| TcpSpec {
        seq: base.seq + 1000,
        ..t
    };
    let ip1 = IpSpec {
        id: IpSpec::v4().id + 1,
        ..IpSpec::v4()
    };
    let variants: Vec<(&str, IpSpec, TcpSpec)> = vec![
        (
            "ack",
            ip1.clone(),
            next(TcpSpec {
                ack: 78,
                ..base.clone()
            }),
        ),
        (
            "window",
            ip1.clone(),
            next(TcpSpec {
                window: 1,
                ..base.clone()
            }),
        ),
        (
            "options",
            ip1.clone(),
            next(TcpSpec {
                options: timestamps(1, 1),
                ..base.clone()
            }),
        ),
        (
            "ece",
            ip1.clone(),
            next(TcpSpec {
                flags: ACK | ECE,
                ..base.clone()
            }),
        ),
        (
            "cwr",
            ip1.clone(),
            next(TcpSpec {
                flags: ACK | CWR,
                ..base.clone()
            }),
        ),
        (
            "seq gap",
            ip1.clone(),
            TcpSpec {
                seq: base.seq + 1001,
                ..base.clone()
            },
        ),
        (
            "ttl",
            IpSpec {
                ttl: 63,
                ..ip1.clone()
            },
            next(base.clone()),
        ),
        (
            "tos",
            IpSpec {
                tos: 3,
                ..ip1.clone()
            },
            next(base.clone()),
        ),
        (
            "df",
            IpSpec {
                df: false,
                ..ip1.clone()
            },
            next(base.clone()),
        ),
        (
            "dst",
            IpSpec {
                dst: [9; 16],
                ..ip1.clone()
            },
            next(base.clone()),
        ),
        (
            "dport",
            ip1.clone(),
            next(TcpSpec {
                dport: 1,
                ..base.clone()
            }),
        ),
        // Fuzzing found this one: a stray urgent pointer (URG clear) on a later segment
        // was dropped by the merge (fuzz/artifacts/coalesce/crash-035ba0cf…).
        (
            "urgent pointer",
            ip1.clone(),
            next(TcpSpec {
                urgent: 0x87,
                ..base.clone()
            }),
        ),
    ];
    for (what, ip, tcp) in variants {
        let pkts = vec![
            tcp_packet(&IpSpec::v4(), &base, &payload(1000, 0)),
            tcp_packet(&ip, &tcp, &payload(1000, 1)),
        ];
        assert!(
            coalesce(&pkts) == frames_alone(&pkts),
            "{what} differs, yet merged"
        );
    }
    let v6 = IpSpec::v6();
    for (what, ip) in [
        (
            "flow label",
            IpSpec {
                flow_label: 1,
                ..v6.clone()
            },
        ),
        (
            "hop limit",
            IpSpec {
                ttl: 1,
                ..v6.clone()
            },
        ),
        (
            "traffic class",
            IpSpec {
                tos: 1,
                ..v6.clone()
            },
        ),
    ] {
        let pkts = vec![
            tcp_packet(&v6, &base, &payload(1000, 0)),
            tcp_packet(&ip, &next(base.clone()), &payload(1000, 1)),
        ];
        assert!(
            coalesce(&pkts) == frames_alone(&pkts),
            "{what} differs, yet merged"
        );
    }
}

#[test]
fn ipv4_without_df_needs_consecutive_ids() {
    let ip = IpSpec {
        df: false,
        id: 0xffff,
        ..IpSpec::v4()
    };
    let segs = stream(&ip, &TcpSpec::default(), 3, 1000, 1000);
    let frames = coalesce(&segs);
    assert_eq!(frames.len(), 1);
    assert_eq!(resegment(&frames[0]).unwrap(), segs);
    let mut skipped = segs.clone();
    skipped[1] = tcp_packet(
        &IpSpec {
            id: 5,
            ..ip.clone()
        },
        &TcpSpec {
            seq: TcpSpec::default().seq + 1000,
            ..TcpSpec::default()
        },
        &payload(1000, 1),
    );
    // 0 | 1 (wrong ID) | 2 (does not follow 1's ID either).
    assert_eq!(coalesce(&skipped), frames_alone(&skipped));
    // With DF the ID may jump (RFC 6864): it is not part of the flow.
    let df = IpSpec {
        id: 9,
        ..IpSpec::v4()
    };
    let mut pkts = stream(&df, &TcpSpec::default(), 2, 1000, 1000);
    pkts[1][4..6].copy_from_slice(&500u16.to_be_bytes());
    pkts[1][10..12].fill(0);
    let c = !ref_fold(&pkts[1][..20]);
    pkts[1][10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(coalesce(&pkts).len(), 1);
}

#[test]
fn ipv4_reserved_flag_is_not_merged() {
    // Fuzzing found the merge dropping the reserved ("evil") bit of a later segment,
    // whose IPv4 flags then came back as plain DF (fuzz/artifacts/coalesce/crash-fb04…).
    let set_reserved = |p: &mut Vec<u8>| {
        p[6] |= 0x80;
        p[10..12].fill(0);
        let c = !ref_fold(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    };
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
    set_reserved(&mut segs[1]);
    let frames = coalesce(&segs);
    assert_eq!(frames.len(), 3);
    assert!(frames[1] == frames_alone(&segs[1..2])[0]);
    for s in &mut segs {
        if s[6] & 0x80 == 0 {
            set_reserved(s);
        }
    }
    assert!(
        coalesce(&segs) == frames_alone(&segs),
        "reserved bit merged"
    );
}

#[test]
fn bad_checksums_stay_alone_and_end_the_flow() {
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
    segs[1][100] ^= 1; // payload corrupt: TCP checksum fails
    let frames = coalesce(&segs);
    // 0 | 1 (alone, unchanged) | 2+3
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[1], frames_alone(&segs[1..2])[0]);
    assert_eq!(resegment(&frames[2]).unwrap(), segs[2..]);
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
    segs[1][8] = 1; // TTL changed without fixing the header checksum
    segs[2][8] = 1;
    assert_eq!(coalesce(&segs), frames_alone(&segs));
}

#[test]
fn unmergeable_packets_pass_through_unchanged() {
    let ip = IpSpec::v4();
    let syn = tcp_packet(
        &ip,
        &TcpSpec {
            flags: SYN,
            ..TcpSpec::default()
        },
        &[],
    );
    let pure_ack = tcp_packet(&ip, &TcpSpec::default(), &[]);
    let mut icmp = ip.header(1, 8);
    icmp.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let mut fragment = tcp_packet(&ip, &TcpSpec::default(), &payload(100, 0));
    fragment[6] = 0x20; // MF
    let mut options = tcp_packet(&ip, &TcpSpec::default(), &payload(100, 0));
    options.splice(20..20, [1, 1, 1, 0]);
    options[0] = 0x46;
    options[3] += 4;
    let mut ext6 = tcp_packet(&IpSpec::v6(), &TcpSpec::default(), &payload(100, 0));
    ext6.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
    ext6[6] = 0;
    ext6[5] += 8;
    let udp_no_csum = {
        let mut u = udp_packet(&ip, 1, 2, &payload(100, 0));
        u[26..28].fill(0);
        u
    };
    let pkts: Vec<Vec<u8>> = vec![
        syn.clone(),
        syn,
        pure_ack.clone(),
        pure_ack,
        icmp.clone(),
        icmp,
        fragment.clone(),
        fragment,
        options.clone(),
        options,
        ext6.clone(),
        ext6,
        udp_no_csum.clone(),
        udp_no_csum,
        b"garbage".to_vec(),
        vec![],
        vec![0x45],
        vec![0x60; 39],
    ];
    assert!(coalesce(&pkts) == frames_alone(&pkts), "something merged");
}

#[test]
fn a_packet_that_may_belong_to_a_flow_ends_its_merge() {
    let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
    let mut frag = segs[0].clone();
    frag[6] = 0x00;
    frag[7] = 0x10; // offset 128: a non-first fragment with no ports
    frag[10..12].fill(0);
    let c = !ref_fold(&frag[..20]);
    frag[10..12].copy_from_slice(&c.to_be_bytes());
    let pkts = vec![
        segs[0].clone(),
        segs[1].clone(),
        frag,
        segs[2].clone(),
        segs[3].clone(),
    ];
    let frames = coalesce(&pkts);
    assert_eq!(frames.len(), 3);
    assert_eq!(resegment(&frames[0]).unwrap(), segs[..2]);
    assert_eq!(frames[1], frames_alone(&pkts[2..3])[0]);
    assert_eq!(resegment(&frames[2]).unwrap(), segs[2..]);
}

#[test]
fn merges_stop_at_64k() {
    let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 100, 1400, 1400);
    let frames = coalesce(&segs);
    // 20 + 20 + 46 × 1400 = 64,440; one more would be 65,840.
    let per = (MAX_COALESCED_LEN - 40) / 1400;
    assert_eq!(per, 46);
    assert_eq!(frames.len(), 100usize.div_ceil(per));
    let mut replayed = Vec::new();
    for f in &frames {
        assert!(f.len() - VNET_HDR_LEN <= MAX_COALESCED_LEN);
        replayed.extend(resegment(f).unwrap());
    }
    assert_eq!(replayed, segs);
}

#[test]
fn wireguard_padding_is_trimmed() {
    let segs = stream(&IpSpec::v6(), &TcpSpec::default(), 3, 1000, 1000);
    let padded: Vec<Vec<u8>> = segs
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.resize(p.len().next_multiple_of(16), 0);
            p
        })
        .collect();
    let frames = coalesce(&padded);
    assert_eq!(frames.len(), 1);
    assert_eq!(resegment(&frames[0]).unwrap(), segs);
    let single = coalesce(&padded[..1]);
    assert_eq!(single, frames_alone(&segs[..1]));
}

fn udp_stream(ip: &IpSpec, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
    let mut ip = ip.clone();
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { size };
            let p = udp_packet(&ip, 443, 50_000, &payload(len, i as u8));
            ip.id = ip.id.wrapping_add(1);
            p
        })
        .collect()
}

#[test]
fn udp_datagrams_merge_into_uso_and_round_trip() {
    for ip in [IpSpec::v4(), IpSpec::v6()] {
        let dgrams = udp_stream(&ip, 5, 1200, 300);
        let frames = coalesce(&dgrams);
        assert_eq!(frames.len(), 1);
        check_merged(&frames[0], ip.v6, false, 1200);
        assert_eq!(resegment(&frames[0]).unwrap(), dgrams);
    }
}

#[test]
fn udp_merges_stop_at_64_datagrams_and_on_a_short_one() {
    let dgrams = udp_stream(&IpSpec::v4(), 100, 500, 500);
    let frames = coalesce(&dgrams);
    assert_eq!(frames.len(), 2);
    assert_eq!(vnet(&frames[0]).gso_size, 500);
    assert_eq!(
        resegment(&frames[0]).unwrap().len(),
        MAX_UDP_COALESCED_SEGMENTS
    );
    let mut dgrams = udp_stream(&IpSpec::v4(), 2, 500, 100);
    dgrams.extend(udp_stream(
        &IpSpec {
            id: IpSpec::v4().id + 2,
            ..IpSpec::v4()
        },
        2,
        500,
        500,
    ));
    let frames = coalesce(&dgrams);
    assert_eq!(frames.len(), 2);
    assert_eq!(resegment(&frames[1]).unwrap(), dgrams[2..]);
}

#[test]
fn udp_coalescing_can_be_turned_off() {
    let dgrams = udp_stream(&IpSpec::v4(), 5, 1200, 1200);
    let mut c = Coalescer::default();
    c.set_udp(false);
    dgrams.iter().for_each(|d| c.push(d));
    assert_eq!(flush_all(&mut c), frames_alone(&dgrams));
}

#[test]
fn single_packets_get_a_zero_header() {
    let p = tcp_packet(&IpSpec::v4(), &TcpSpec::default(), &payload(10, 0));
    let frames = coalesce(std::slice::from_ref(&p));
    assert_eq!(frames, frames_alone(&[p]));
}

#[test]
fn buffers_are_reused_across_batches() {
    let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 50, 1400, 1400);
    let mut c = Coalescer::new();
    let capacity = |c: &Coalescer| {
        (
            c.items.capacity(),
            c.flows.capacity(),
            c.items
                .iter()
                .map(|i| (i.buf.as_ptr(), i.buf.capacity()))
                .collect::<Vec<_>>(),
        )
    };
    for round in 0..3 {
        segs.iter().for_each(|p| c.push(p));
        let before = capacity(&c);
        assert_eq!(flush_all(&mut c).len(), 2);
        if round > 0 {
            segs.iter().for_each(|p| c.push(p));
            assert_eq!(capacity(&c), before, "no reallocation in steady state");
            flush_all(&mut c);
        }
    }
}

#[test]
fn trusted_checksums_merge_unverified_but_ip_headers_are_still_checked() {
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
    segs[1][100] ^= 1; // payload changed: the TCP checksum no longer matches
    let mut c = Coalescer::new();
    c.trust_l4_checksums(true);
    for s in &segs {
        c.push(s);
    }
    let frames = flush_all(&mut c);
    assert_eq!(frames.len(), 1, "all four merge");
    check_merged(&frames[0], false, true, 1000);
    // Re-segmenting computes every checksum afresh: the same headers and payloads, with the
    // checksum the changed payload calls for.
    let back = resegment(&frames[0]).unwrap();
    assert_eq!(back.len(), 4);
    assert_eq!(back[0], segs[0]);
    assert_eq!(back[2..], segs[2..]);
    assert_eq!(back[1][..36], segs[1][..36]);
    assert_eq!(back[1][38..], segs[1][38..]);
    assert_ne!(back[1][36..38], segs[1][36..38]);
    // The IPv4 header checksum is not trusted.
    let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
    segs[1][8] = 1;
    segs[2][8] = 1;
    let mut c = Coalescer::new();
    c.trust_l4_checksums(true);
    for s in &segs {
        c.push(s);
    }
    assert_eq!(flush_all(&mut c), frames_alone(&segs));
}
