//! Host encryption's tunnel liveness: a peer's tunnel is up while bytes keep arriving from it
//! (the keepalive guarantees some at least every interval). Host traffic follows a tunnel
//! only while it is up (it fails open).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use keyexchange::PublicKey;

use super::state::{HostLiveness, Live, HOST_KEEPALIVE};

/// A peer's tunnel counts as up while bytes arrived from it within this many keepalive
/// intervals.
const LIVENESS_INTERVALS: u32 = 3;

/// Follow each peer's received bytes: a tunnel is up while bytes arrived within
/// [`LIVENESS_INTERVALS`] keepalive intervals. True when the set of live peers changed.
pub(super) fn track_liveness(
    live: &Live,
    liveness: &mut HostLiveness,
    peers: &[netlink::PeerStatus],
) -> bool {
    if !live.host_encryption {
        let changed = !liveness.live_peers.is_empty();
        liveness.live_peers.clear();
        liveness.rx_seen.clear();
        return changed;
    }
    let window = liveness_window(live);
    let now = std::time::Instant::now();
    let mut seen = BTreeMap::new();
    for p in peers {
        let key = PublicKey::from_bytes(p.public_key);
        let at = match liveness.rx_seen.get(&key) {
            Some((rx, at)) if *rx == p.rx_bytes => *at,
            Some(_) => now,
            // First sight (a restart, a new key): up if it handshook recently.
            None => {
                if handshook_within(p, window) {
                    now
                } else {
                    now.checked_sub(window).unwrap_or(now)
                }
            }
        };
        seen.insert(key, (p.rx_bytes, at));
    }
    let up: BTreeSet<PublicKey> = seen
        .iter()
        .filter(|(_, (rx, at))| *rx > 0 && now.duration_since(*at) < window)
        .map(|(k, _)| *k)
        .collect();
    liveness.rx_seen = seen;
    if up == liveness.live_peers {
        return false;
    }
    for k in up.difference(&liveness.live_peers) {
        tracing::info!(peer = %k, "tunnel up: host traffic to the peer is encrypted");
    }
    // (Keys no longer programmed, e.g. replaced by a rotation, just leave the set.)
    for k in liveness
        .live_peers
        .difference(&up)
        .filter(|k| liveness.rx_seen.contains_key(*k))
    {
        tracing::warn!(peer = %k, window_s = window.as_secs(), "nothing received from the peer: host traffic to it leaves the tunnel (fails open)");
    }
    liveness.live_peers = up;
    true
}

/// Whether the peer completed a handshake within `window`.
pub(super) fn handshook_within(p: &netlink::PeerStatus, window: Duration) -> bool {
    p.last_handshake.is_some_and(|t| {
        SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age < window)
    })
}

/// How long a tunnel counts as up after bytes last arrived from it.
pub(super) fn liveness_window(live: &Live) -> Duration {
    Duration::from_secs(
        u64::from(live.effective_keepalive().unwrap_or(HOST_KEEPALIVE))
            * u64::from(LIVENESS_INTERVALS),
    )
}
