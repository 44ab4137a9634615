//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sums (RFC 9293 3.1,
//! RFC 768, RFC 8200 8.1).
//!
//! Sums are carried unfolded in a `u64` so that pieces (pseudo-header, header, payload) can
//! be added cheaply; [`fold`] reduces one to 16 bits and [`finish`] turns it into the value
//! written into a checksum field.

/// Adds `data`, read as big-endian 16-bit words (an odd last byte padded with zero), to the
/// one's-complement sum `initial`. `data` must start at an even offset of the checksummed
/// range for pieces to combine correctly.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    // The sum is byte-order independent (RFC 1071 2(B)): add the data as little-endian
    // 64-bit words (no byte swaps), two independent 128-bit accumulators so that the adds
    // do not wait on each other's carries, fold to 16 bits and swap that once.
    let (mut a, mut b) = (0u128, 0u128);
    let mut pairs = data.chunks_exact(16);
    for c in &mut pairs {
        let (lo, hi) = c.split_at(8);
        a += u128::from(u64::from_le_bytes(lo.try_into().unwrap_or_default()));
        b += u128::from(u64::from_le_bytes(hi.try_into().unwrap_or_default()));
    }
    // At most 2^60 words: neither accumulator nor their sum can overflow 128 bits.
    let mut le = a + b;
    let mut words = pairs.remainder().chunks_exact(2);
    for c in &mut words {
        le += u128::from(u16::from_le_bytes([c[0], c[1]]));
    }
    if let [last] = words.remainder() {
        // The odd last byte is the high half of a big-endian word: the low half here.
        le += u128::from(*last);
    }
    let folded = fold(add(le as u64, (le >> 64) as u64)).swap_bytes();
    add(initial, u64::from(folded))
}

fn add(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// Folds an unfolded sum to 16 bits (end-around carry).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves sum <= 0xffff.
    sum as u16
}

/// The value to write into a checksum field whose range sums (with the field zeroed) to
/// `sum`: the complement of the folded sum.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// Like [`finish`], but never 0: UDP sends 0xffff for a computed 0, since 0 means "no
/// checksum" (RFC 768) and is forbidden over IPv6. (0xffff and 0 are the same number in
/// one's complement, so this is also what Linux writes for any partial checksum.)
pub fn finish_nonzero(sum: u64) -> u16 {
    match finish(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether a range that includes its own checksum field (and the pseudo-header, if any)
/// verifies: its sum folds to 0xffff.
pub fn verifies(sum: u64) -> bool {
    fold(sum) == 0xffff
}

/// Unfolded pseudo-header sum for TCP/UDP over IPv4: source, destination, protocol and the
/// transport length (header + payload).
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, l4_len: u32) -> u64 {
    let s = sum(src, 0);
    let s = sum(dst, s);
    add(add(s, u64::from(protocol)), u64::from(l4_len))
}

/// Unfolded pseudo-header sum for TCP/UDP over IPv6: source, final destination, the
/// transport length and the upper-layer protocol.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], protocol: u8, l4_len: u32) -> u64 {
    let s = sum(src, 0);
    let s = sum(dst, s);
    add(add(s, u64::from(protocol)), u64::from(l4_len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn pieces_combine_and_odd_tail_is_padded() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        let whole = fold(sum(&data, 0));
        let split = fold(sum(&data[600..], sum(&data[..600], 0)));
        assert_eq!(whole, split);
        let mut padded = data.clone();
        padded.push(0);
        assert_eq!(whole, fold(sum(&padded, 0)));
        assert_eq!(whole, crate::testutil::ref_fold(&data));
    }

    #[test]
    fn pseudo_headers_match_their_byte_layout() {
        use crate::testutil::{ref_fold, ref_pseudo, IpSpec};
        let v4 = IpSpec::v4().header(6, 1234);
        let (src, dst) = (
            v4[12..16].try_into().unwrap(),
            v4[16..20].try_into().unwrap(),
        );
        assert_eq!(
            fold(pseudo_header_v4(&src, &dst, 6, 1234)),
            ref_fold(&ref_pseudo(&v4, 6, 1234))
        );
        let v6 = IpSpec::v6().header(17, 70_000);
        let (src, dst) = (
            v6[8..24].try_into().unwrap(),
            v6[24..40].try_into().unwrap(),
        );
        assert_eq!(
            fold(pseudo_header_v6(&src, &dst, 17, 70_000)),
            ref_fold(&ref_pseudo(&v6, 17, 70_000))
        );
    }

    #[test]
    fn all_ones_words_fold_to_ffff() {
        assert_eq!(fold(sum(&[0xff; 4096], 0)), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(finish_nonzero(0xffff), 0xffff);
        assert_eq!(finish(0xffff), 0);
    }
}
