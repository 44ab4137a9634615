//! The lab's SCTP probe packets, pure. This kernel has no SCTP sockets, so a probe is a raw
//! IP protocol 132 packet: a valid SCTP common header (source and destination port,
//! verification tag, CRC32c checksum, RFC 9260 §3.1) and one chunk. The prober sends an INIT
//! whose initiate tag is its token; a pod's server answers an INIT addressed to a port it
//! serves with an INIT ACK, ports swapped, carrying the token as verification tag and
//! initiate tag. Port parsing in BPF sees real ports in both directions.

/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;
/// Chunk type INIT.
const CHUNK_INIT: u8 = 1;
/// Chunk type INIT ACK.
const CHUNK_INIT_ACK: u8 = 2;
/// Common header (12) plus an INIT / INIT ACK chunk without parameters (20).
pub const PACKET_LEN: usize = 32;

/// What a probe packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// SCTP source port.
    pub src_port: u16,
    /// SCTP destination port.
    pub dst_port: u16,
    /// The prober's token (the INIT's initiate tag; the INIT ACK's tags).
    pub token: u32,
    /// INIT (`false`) or INIT ACK (`true`).
    pub answer: bool,
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), as SCTP's checksum.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The packet for `probe`.
pub fn encode(probe: &Probe) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0..2].copy_from_slice(&probe.src_port.to_be_bytes());
    p[2..4].copy_from_slice(&probe.dst_port.to_be_bytes());
    // An INIT carries verification tag 0; the INIT ACK the peer's initiate tag.
    let vtag = if probe.answer { probe.token } else { 0 };
    p[4..8].copy_from_slice(&vtag.to_be_bytes());
    // Checksum (8..12) computed last, over the packet with the field zero.
    p[12] = if probe.answer {
        CHUNK_INIT_ACK
    } else {
        CHUNK_INIT
    };
    p[13] = 0;
    p[14..16].copy_from_slice(&20u16.to_be_bytes());
    p[16..20].copy_from_slice(&probe.token.to_be_bytes()); // initiate tag
    p[20..24].copy_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&probe.token.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    // The CRC32c is stored in network order of its reflected form (RFC 9260 appendix B).
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Parse an SCTP packet (no IP header): `None` unless it is a probe packet with a correct
/// checksum.
pub fn decode(packet: &[u8]) -> Option<Probe> {
    if packet.len() < PACKET_LEN {
        return None;
    }
    let mut copy = packet.to_vec();
    let stored = u32::from_le_bytes([copy[8], copy[9], copy[10], copy[11]]);
    copy[8..12].fill(0);
    if crc32c(&copy) != stored {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    let be32 =
        |i: usize| u32::from_be_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
    let answer = match packet[12] {
        CHUNK_INIT => false,
        CHUNK_INIT_ACK => true,
        _ => return None,
    };
    let token = be32(16);
    if answer && be32(4) != token {
        return None;
    }
    Some(Probe {
        src_port: be16(0),
        dst_port: be16(2),
        token,
        answer,
    })
}

/// The SCTP packet inside a packet read from a raw IPv4 socket (which includes the IPv4
/// header); `None` if it is not IPv4 or too short.
pub fn strip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    packet.get(ihl..)
}

/// The answer a server sends to `probe` if it serves `port`: the probe's ports swapped.
pub fn answer(probe: &Probe, port: u16) -> Option<Probe> {
    (!probe.answer && probe.dst_port == port).then_some(Probe {
        src_port: probe.dst_port,
        dst_port: probe.src_port,
        token: probe.token,
        answer: true,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn probe_and_answer_round_trip_and_match() {
        let probe = Probe {
            src_port: 40001,
            dst_port: 80,
            token: 0xdead_beef,
            answer: false,
        };
        let wire = encode(&probe);
        assert_eq!(&wire[0..4], &[0x9c, 0x41, 0, 80]);
        assert_eq!(decode(&wire), Some(probe));
        assert_eq!(
            answer(&probe, 81),
            None,
            "another port's server stays silent"
        );
        let reply = answer(&probe, 80).unwrap();
        assert_eq!((reply.src_port, reply.dst_port), (80, 40001));
        let reply_wire = encode(&reply);
        assert_eq!(&reply_wire[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(decode(&reply_wire), Some(reply));
        assert_eq!(answer(&reply, 40001), None, "answers are never answered");
    }

    #[test]
    fn corrupt_or_foreign_packets_are_ignored() {
        let mut wire = encode(&Probe {
            src_port: 1,
            dst_port: 2,
            token: 3,
            answer: false,
        });
        assert!(decode(&wire[..20]).is_none());
        wire[30] ^= 1;
        assert!(decode(&wire).is_none(), "bad checksum");
        let mut ipv4 = vec![0x45u8; 20];
        ipv4.extend_from_slice(&[7; 4]);
        assert_eq!(strip_ipv4_header(&ipv4), Some(&[7u8; 4][..]));
        assert_eq!(strip_ipv4_header(&[0x60, 0, 0]), None);
    }
}
