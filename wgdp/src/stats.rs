//! Counters of dropped packets, one per reason. Kept in the process (the UAPI `get` must
//! stay exactly what `wg` parses): logged at debug level when they change, and all of them
//! at info level on `SIGUSR1`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use defguard_boringtun::noise::errors::WireGuardError;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A TUN packet whose destination no peer's allowed IPs cover.
    NoRoute,
    /// A TUN packet for a peer without an endpoint.
    NoEndpoint,
    /// No private key configured.
    NoKey,
    /// A TUN read that is not an IP packet (or an unusable virtio-net header).
    BadTunPacket,
    /// A super-packet the offload code could not segment.
    Segmentation,
    /// A datagram that is no WireGuard message (bad type or length).
    Malformed,
    /// A message for a receiver index no peer has.
    UnknownIndex,
    /// A handshake initiation from a key that is not a peer (or that fails to decrypt).
    UnknownPeer,
    /// A handshake message with a bad MAC, timestamp or index.
    BadHandshake,
    /// A data message that failed authentication.
    Decryption,
    /// A replayed or too old data message.
    Replay,
    /// A data message for a session that no longer exists.
    NoSession,
    /// A decrypted packet whose source is outside the sending peer's allowed IPs.
    SourceNotAllowed,
    /// A decrypted packet that is not a valid IP packet.
    BadInnerPacket,
    /// Handshake refused because the device is under load (cookie needed).
    UnderLoad,
    /// Any other protocol error from the noise state machine.
    Protocol,
    /// A UDP send failed.
    UdpSend,
    /// No socket for the endpoint's address family.
    NoSocket,
    /// A TUN write failed.
    TunWrite,
    /// A packet for a peer whose handshake is settling, beyond the packets held for it.
    HeldOverflow,
    /// A held packet dropped (the peer's oldest first) because the device-wide byte budget
    /// of held packets was used up.
    HeldBudget,
    /// Held packets dropped because the peer had no session for as long as a handshake is
    /// tried.
    HeldExpired,
    /// A cookie-valid handshake initiation from a source address over its budget.
    HandshakeBudget,
}

const REASONS: [DropReason; 23] = [
    DropReason::NoRoute,
    DropReason::NoEndpoint,
    DropReason::NoKey,
    DropReason::BadTunPacket,
    DropReason::Segmentation,
    DropReason::Malformed,
    DropReason::UnknownIndex,
    DropReason::UnknownPeer,
    DropReason::BadHandshake,
    DropReason::Decryption,
    DropReason::Replay,
    DropReason::NoSession,
    DropReason::SourceNotAllowed,
    DropReason::BadInnerPacket,
    DropReason::UnderLoad,
    DropReason::Protocol,
    DropReason::UdpSend,
    DropReason::NoSocket,
    DropReason::TunWrite,
    DropReason::HeldOverflow,
    DropReason::HeldBudget,
    DropReason::HeldExpired,
    DropReason::HandshakeBudget,
];

impl DropReason {
    /// The reason for a noise-layer error.
    pub fn of(err: &WireGuardError) -> DropReason {
        match err {
            WireGuardError::InvalidAeadTag => DropReason::Decryption,
            WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
            WireGuardError::NoCurrentSession => DropReason::NoSession,
            WireGuardError::InvalidMac
            | WireGuardError::WrongTai64nTimestamp
            | WireGuardError::WrongIndex
            | WireGuardError::UnexpectedPacket
            | WireGuardError::WrongKey => DropReason::BadHandshake,
            WireGuardError::InvalidPacket
            | WireGuardError::IncorrectPacketLength
            | WireGuardError::WrongPacketType => DropReason::Malformed,
            WireGuardError::UnderLoad => DropReason::UnderLoad,
            _ => DropReason::Protocol,
        }
    }

    /// A stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoKey => "no_key",
            DropReason::BadTunPacket => "bad_tun_packet",
            DropReason::Segmentation => "segmentation",
            DropReason::Malformed => "malformed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadHandshake => "bad_handshake",
            DropReason::Decryption => "decryption",
            DropReason::Replay => "replay",
            DropReason::NoSession => "no_session",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::UnderLoad => "under_load",
            DropReason::Protocol => "protocol",
            DropReason::UdpSend => "udp_send",
            DropReason::NoSocket => "no_socket",
            DropReason::TunWrite => "tun_write",
            DropReason::HeldOverflow => "held_overflow",
            DropReason::HeldBudget => "held_budget",
            DropReason::HeldExpired => "held_expired",
            DropReason::HandshakeBudget => "handshake_budget",
        }
    }
}

/// The drop counters.
#[derive(Debug, Default)]
pub struct Stats {
    drops: [AtomicU64; REASONS.len()],
}

impl Stats {
    /// Counts one drop.
    pub fn drop(&self, reason: DropReason) {
        self.drop_n(reason, 1);
    }

    /// Counts `n` drops.
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// All counters as (name, count).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        REASONS.iter().map(|r| (r.name(), self.get(*r))).collect()
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        REASONS.iter().map(|r| self.get(*r)).sum()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, n) in self.snapshot() {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={n}")?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let s = Stats::default();
        s.drop(DropReason::Replay);
        s.drop_n(DropReason::NoRoute, 2);
        assert_eq!(s.get(DropReason::Replay), 1);
        assert_eq!(s.total(), 3);
        assert_eq!(s.to_string(), "no_route=2 replay=1");
        assert_eq!(
            DropReason::of(&WireGuardError::DuplicateCounter),
            DropReason::Replay
        );
    }
}
