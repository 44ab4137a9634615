//! Tests of GSO segmentation: TCP and UDP over IPv4 and IPv6, header copying, checksums, wrap-
//! around and malformed input.

use super::*;
use crate::testutil::*;
use crate::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_UDP};

fn run(hdr: &VnetHdr, pkt: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut out = vec![0xaa; 7];
    let mut ranges = vec![3..5, 5..7];
    let r = segment(hdr, pkt, &mut out, &mut ranges);
    if r.is_err() {
        assert!(
            out.is_empty() && ranges.is_empty(),
            "buffers left dirty on error"
        );
    } else {
        // Back to back, covering `out`.
        let mut at = 0;
        for range in &ranges {
            assert_eq!(range.start, at);
            at = range.end;
        }
        assert_eq!(at, out.len());
    }
    r.map(|()| split(&out, &ranges))
}

/// Segments a TSO packet and checks every segment against the original.
fn check_tso(ip: &IpSpec, tcp: &TcpSpec, len: usize, mss: u16) -> Vec<Parsed> {
    let data = payload(len, 7);
    let (hdr, pkt) = tso(ip, tcp, &data, mss);
    let segs = run(&hdr, &pkt).unwrap();
    let mss = usize::from(mss);
    assert_eq!(segs.len(), len.div_ceil(mss).max(1));
    let parsed: Vec<Parsed> = segs.iter().map(|s| check_packet(s)).collect();
    let n = parsed.len();
    for (i, p) in parsed.iter().enumerate() {
        let last = i + 1 == n;
        assert_eq!(p.protocol, 6);
        assert_eq!(p.v6, ip.v6);
        assert_eq!(
            (p.sport, p.dport, p.ack, p.window),
            (tcp.sport, tcp.dport, tcp.ack, tcp.window)
        );
        assert_eq!(p.options, tcp.options);
        assert_eq!(
            p.seq,
            tcp.seq.wrapping_add((i * mss) as u32),
            "seq of segment {i}"
        );
        if !ip.v6 {
            assert_eq!(p.id, ip.id.wrapping_add(i as u16), "IPv4 ID of segment {i}");
        }
        let mut want = tcp.flags;
        if !last {
            want &= !(FIN | PSH);
        }
        if i > 0 {
            want &= !CWR;
        }
        assert_eq!(p.flags, want, "flags of segment {i}");
        let expect_len = if last { len - i * mss } else { mss };
        assert_eq!(p.payload.len(), expect_len);
    }
    let joined: Vec<u8> = parsed.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(joined, data);
    parsed
}

#[test]
fn tcpv4_tso_segments() {
    let tcp = TcpSpec {
        flags: ACK | PSH | FIN | CWR | ECE,
        options: timestamps(1, 2),
        ..TcpSpec::default()
    };
    check_tso(&IpSpec::v4(), &tcp, 5000, 1400);
    check_tso(&IpSpec::v4(), &tcp, 64_000 - 52, 1448);
    check_tso(&IpSpec::v4(), &tcp, 2800, 1400); // exact multiple
}

#[test]
fn tcpv6_tso_segments() {
    let tcp = TcpSpec {
        flags: ACK | PSH,
        options: timestamps(0xdead_beef, 9),
        ..TcpSpec::default()
    };
    check_tso(&IpSpec::v6(), &tcp, 60_000, 1380);
    check_tso(&IpSpec::v6(), &TcpSpec::default(), 1381, 1380);
}

#[test]
fn sequence_numbers_and_ids_wrap() {
    let ip = IpSpec {
        id: 0xfffe,
        df: false,
        ..IpSpec::v4()
    };
    let tcp = TcpSpec {
        seq: u32::MAX - 1000,
        ..TcpSpec::default()
    };
    let p = check_tso(&ip, &tcp, 4000, 1000);
    assert_eq!(
        p.iter().map(|p| p.id).collect::<Vec<_>>(),
        [0xfffe, 0xffff, 0, 1]
    );
    assert_eq!(p[2].seq, 999);
}

#[test]
fn single_segment_and_empty_payload_gso() {
    check_tso(&IpSpec::v4(), &TcpSpec::default(), 100, 1400);
    check_tso(&IpSpec::v6(), &TcpSpec::default(), 0, 1400);
}

#[test]
fn ecn_bit_in_gso_type_is_accepted() {
    let (mut hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(3000, 1), 1000);
    hdr.gso_type |= VIRTIO_NET_HDR_GSO_ECN;
    assert_eq!(run(&hdr, &pkt).unwrap().len(), 3);
}

fn check_uso(ip: &IpSpec, len: usize, size: u16) {
    let data = payload(len, 3);
    let (hdr, pkt) = uso(ip, 4433, 53, &data, size);
    let segs = run(&hdr, &pkt).unwrap();
    let size = usize::from(size);
    assert_eq!(segs.len(), len.div_ceil(size));
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let p = check_packet(s);
        assert_eq!((p.protocol, p.sport, p.dport), (17, 4433, 53));
        assert_eq!(p.payload.len(), size.min(len - i * size));
        if !ip.v6 {
            assert_eq!(p.id, ip.id.wrapping_add(i as u16));
        }
        joined.extend_from_slice(&p.payload);
    }
    assert_eq!(joined, data);
}

#[test]
fn udpv4_uso_segments() {
    check_uso(&IpSpec::v4(), 3000, 1000);
    check_uso(&IpSpec::v4(), 65_000, 1400);
}

#[test]
fn udpv6_uso_segments() {
    check_uso(&IpSpec::v6(), 3001, 1000);
    check_uso(&IpSpec::v6(), 1, 1200);
}

#[test]
fn ipv4_options_are_copied_to_every_segment() {
    let data = payload(2500, 9);
    let (mut hdr, plain) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
    // Insert 4 bytes of options (NOP NOP NOP EOL) after the fixed header.
    let mut pkt = plain[..20].to_vec();
    pkt[0] = 0x46;
    pkt.extend_from_slice(&[1, 1, 1, 0]);
    pkt.extend_from_slice(&plain[20..]);
    let total = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    hdr.csum_start = 24;
    let segs = run(&hdr, &pkt).unwrap();
    assert_eq!(segs.len(), 3);
    for s in &segs {
        assert_eq!(&s[20..24], &[1, 1, 1, 0]);
        assert_eq!(ref_fold(&s[..24]), 0xffff);
        assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
        let mut all = ref_pseudo(s, 6, s.len() - 24);
        all.extend_from_slice(&s[24..]);
        assert_eq!(ref_fold(&all), 0xffff);
    }
}

#[test]
fn ipv6_hop_by_hop_is_walked_and_routing_header_refused() {
    let data = payload(2500, 9);
    let (hdr, plain) = tso(&IpSpec::v6(), &TcpSpec::default(), &data, 1000);
    let with_ext = |next: u8| {
        let mut pkt = plain[..40].to_vec();
        pkt[6] = next;
        pkt.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next TCP, 8 bytes, PadN
        pkt.extend_from_slice(&plain[40..]);
        let pl = (pkt.len() - 40) as u16;
        pkt[4..6].copy_from_slice(&pl.to_be_bytes());
        pkt
    };
    let segs = run(&hdr, &with_ext(0)).unwrap();
    assert_eq!(segs.len(), 3);
    for s in &segs {
        assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
        let mut all = ref_pseudo(s, 6, s.len() - 48);
        all.extend_from_slice(&s[48..]);
        assert_eq!(ref_fold(&all), 0xffff);
    }
    assert_eq!(
        run(&hdr, &with_ext(43)),
        Err(OffloadError::UnsupportedIpv6ExtensionHeader(43))
    );
    assert_eq!(run(&hdr, &with_ext(44)), Err(OffloadError::Fragment));
}

#[test]
fn trailing_bytes_after_ip_length_are_dropped() {
    let data = payload(2000, 2);
    let (hdr, mut pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
    pkt.extend_from_slice(&[0xee; 13]);
    let segs = run(&hdr, &pkt).unwrap();
    let joined: Vec<u8> = segs.iter().flat_map(|s| check_packet(s).payload).collect();
    assert_eq!(joined, data);
}

#[test]
fn non_gso_partial_checksum_is_completed() {
    for ip in [IpSpec::v4(), IpSpec::v6()] {
        let data = payload(777, 5);
        let (mut hdr, pkt) = tso(&ip, &TcpSpec::default(), &data, 1400);
        hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
        hdr.gso_size = 0;
        let segs = run(&hdr, &pkt).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0], tcp_packet(&ip, &TcpSpec::default(), &data));
        let (mut hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
        hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
        assert_eq!(run(&hdr, &pkt).unwrap()[0], udp_packet(&ip, 1, 2, &data));
    }
}

#[test]
fn computed_zero_udp_checksum_is_sent_as_ffff() {
    // Pick the last two payload bytes (an even offset) so that the checksum comes out 0:
    // with them zero the range sums to `s`, so the word 0xffff - s makes it 0xffff.
    let ip = IpSpec::v4();
    let mut data = payload(100, 1);
    data[98..100].fill(0);
    let p = udp_packet(&ip, 1, 2, &data);
    let mut all = ref_pseudo(&p, 17, p.len() - 20);
    all.extend_from_slice(&p[20..]);
    all[12 + 6..12 + 8].fill(0); // the UDP checksum field, after the 12-byte pseudo-header
    let fill = 0xffff - ref_fold(&all);
    data[98..100].copy_from_slice(&fill.to_be_bytes());

    let (mut hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
    hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
    let out = run(&hdr, &pkt).unwrap();
    assert_eq!(&out[0][26..28], &[0xff, 0xff]);
    check_packet(&out[0]);
    // And through USO, too.
    let (hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
    assert_eq!(&run(&hdr, &pkt).unwrap()[0][26..28], &[0xff, 0xff]);
}

#[test]
fn gso_none_without_needs_csum_passes_anything_through() {
    for pkt in [&b""[..], b"\x45", b"not an IP packet at all", &[0x60; 100]] {
        assert_eq!(run(&VnetHdr::default(), pkt).unwrap(), vec![pkt.to_vec()]);
    }
}

#[test]
fn segment_frame_parses_the_header() {
    let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(3000, 1), 1000);
    let mut frame = hdr.encode().to_vec();
    frame.extend_from_slice(&pkt);
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    segment_frame(&frame, &mut out, &mut ranges).unwrap();
    assert_eq!(ranges.len(), 3);
    assert_eq!(
        segment_frame(&frame[..9], &mut out, &mut ranges),
        Err(OffloadError::TruncatedVnetHdr { len: 9 })
    );
    assert!(out.is_empty() && ranges.is_empty());
    segment_frame(&frame[..10], &mut out, &mut ranges).unwrap_err();
}

#[test]
fn malformed_packets_are_errors() {
    let data = payload(3000, 1);
    let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
    let (hdr6, pkt6) = tso(&IpSpec::v6(), &TcpSpec::default(), &data, 1000);
    let (uhdr, upkt) = uso(&IpSpec::v4(), 1, 2, &data, 1000);
    let with = |h: VnetHdr, f: &dyn Fn(&mut VnetHdr)| {
        let mut h = h;
        f(&mut h);
        h
    };
    let edit = |p: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = p.to_vec();
        f(&mut p);
        p
    };
    use OffloadError as E;
    let cases: Vec<(VnetHdr, Vec<u8>, OffloadError)> = vec![
        (with(hdr, &|h| h.gso_size = 0), pkt.clone(), E::ZeroGsoSize),
        (
            with(hdr, &|h| h.gso_size = 1),
            pkt.clone(),
            E::TooManySegments {
                segments: 3000,
                max: MAX_SEGMENTS,
            },
        ),
        (
            with(hdr, &|h| h.gso_type = VIRTIO_NET_HDR_GSO_UDP),
            pkt.clone(),
            E::UnsupportedGsoType(3),
        ),
        (
            with(hdr, &|h| h.gso_type = 2),
            pkt.clone(),
            E::UnsupportedGsoType(2),
        ),
        (
            hdr,
            pkt6.clone(),
            E::IpVersionMismatch {
                version: 6,
                gso_type: 1,
            },
        ),
        (
            hdr6,
            pkt.clone(),
            E::IpVersionMismatch {
                version: 4,
                gso_type: 4,
            },
        ),
        (hdr, Vec::new(), E::TruncatedIpHeader { len: 0 }),
        (hdr, pkt[..19].to_vec(), E::TruncatedIpHeader { len: 19 }),
        (hdr6, pkt6[..39].to_vec(), E::TruncatedIpHeader { len: 39 }),
        (
            hdr,
            edit(&pkt, &|p| p[0] = 0x44),
            E::BadIpv4HeaderLength(16),
        ),
        (
            hdr,
            edit(&pkt[..50], &|p| {
                p[0] = 0x4f;
                p[2] = 0;
                p[3] = 50
            }),
            E::IpLengthMismatch {
                claimed: 50,
                actual: 50,
                min: 60,
            },
        ),
        (
            hdr,
            pkt[..1000].to_vec(),
            E::IpLengthMismatch {
                claimed: pkt.len(),
                actual: 1000,
                min: 20,
            },
        ),
        (
            hdr6,
            pkt6[..1000].to_vec(),
            E::IpLengthMismatch {
                claimed: pkt6.len(),
                actual: 1000,
                min: 40,
            },
        ),
        (hdr, edit(&pkt, &|p| p[6] = 0x20), E::Fragment),
        (hdr, edit(&pkt, &|p| p[7] = 0x01), E::Fragment),
        (
            hdr,
            edit(&pkt, &|p| p[9] = 17),
            E::ProtocolMismatch {
                protocol: 17,
                gso_type: 1,
            },
        ),
        (
            hdr6,
            edit(&pkt6, &|p| p[6] = 58),
            E::ProtocolMismatch {
                protocol: 58,
                gso_type: 4,
            },
        ),
        (
            uhdr,
            pkt.clone(),
            E::ProtocolMismatch {
                protocol: 6,
                gso_type: 5,
            },
        ),
        (hdr, edit(&pkt, &|p| p[32] = 0x40), E::BadTcpDataOffset(16)),
        (
            hdr,
            edit(&pkt[..40], &|p| {
                p[2] = 0;
                p[3] = 40;
                p[32] = 0xf0
            }),
            E::TruncatedTransportHeader {
                offset: 20,
                needed: 60,
                len: 40,
            },
        ),
        (
            hdr,
            edit(&pkt[..30], &|p| {
                p[2] = 0;
                p[3] = 30
            }),
            E::TruncatedTransportHeader {
                offset: 20,
                needed: 20,
                len: 30,
            },
        ),
        (
            uhdr,
            edit(&upkt[..27], &|p| {
                p[2] = 0;
                p[3] = 27
            }),
            E::TruncatedTransportHeader {
                offset: 20,
                needed: 8,
                len: 27,
            },
        ),
        (
            with(VnetHdr::default(), &|h| {
                h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                h.csum_start = 20;
                h.csum_offset = 16
            }),
            pkt[..37].to_vec(),
            E::ChecksumOutOfRange {
                csum_start: 20,
                csum_offset: 16,
                len: 37,
            },
        ),
        (
            with(VnetHdr::default(), &|h| {
                h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                h.csum_start = u16::MAX;
                h.csum_offset = u16::MAX
            }),
            pkt.clone(),
            E::ChecksumOutOfRange {
                csum_start: u16::MAX,
                csum_offset: u16::MAX,
                len: pkt.len(),
            },
        ),
    ];
    for (i, (h, p, want)) in cases.into_iter().enumerate() {
        let got = run(&h, &p).map(|segs| segs.len());
        assert_eq!(got, Err(want.clone()), "case {i}");
        // Messages name what was wrong.
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn many_small_segments_up_to_the_limit() {
    // Linux's smallest MSS over a 64 KiB super-packet stays under the limit.
    let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(65_000, 1), 48);
    let segs = run(&hdr, &pkt).unwrap();
    assert_eq!(segs.len(), 65_000usize.div_ceil(48));
    for s in &segs {
        check_packet(s);
    }
}
