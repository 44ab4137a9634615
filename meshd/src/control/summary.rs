//! Status at scale: peers counted by health and listed unhealthy first, in a bounded list.
//! Pure: the table renderers (`meshctl status`, `meshctl lab status`, `meshctl audit`) use it
//! so that a node with thousands of peers prints counts and the few that need attention, not
//! one line per peer (their `--all` lists every one). JSON output is unaffected.

use super::PeerReport;
use crate::audit::HANDSHAKE_WINDOW;

/// How many entries a bounded list shows by default.
pub const LIST_LIMIT: usize = 20;

/// A peer's health as its status shows it, the least healthy first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerHealth {
    /// No handshake yet.
    NoHandshake,
    /// The last handshake is older than WireGuard's rejection window (180 s): the session
    /// is dead.
    Stale,
    /// Handshook within the window.
    Ok,
}

impl PeerHealth {
    /// The health of `p`.
    pub fn of(p: &PeerReport) -> Self {
        match p.last_handshake_secs_ago {
            None => PeerHealth::NoHandshake,
            Some(ago) if ago >= HANDSHAKE_WINDOW.as_secs() => PeerHealth::Stale,
            Some(_) => PeerHealth::Ok,
        }
    }

    /// How a table names it.
    pub fn label(self) -> &'static str {
        match self {
            PeerHealth::NoHandshake => "no handshake yet",
            PeerHealth::Stale => "stale",
            PeerHealth::Ok => "ok",
        }
    }
}

/// Peers counted by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Every peer.
    pub total: usize,
    /// Handshook within the window.
    pub ok: usize,
    /// Handshake too old.
    pub stale: usize,
    /// Never handshook.
    pub no_handshake: usize,
}

impl PeerCounts {
    /// Counts `peers` by health.
    pub fn of(peers: &[PeerReport]) -> Self {
        let mut c = PeerCounts {
            total: peers.len(),
            ..Default::default()
        };
        for p in peers {
            match PeerHealth::of(p) {
                PeerHealth::Ok => c.ok += 1,
                PeerHealth::Stale => c.stale += 1,
                PeerHealth::NoHandshake => c.no_handshake += 1,
            }
        }
        c
    }
}

impl std::fmt::Display for PeerCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} peers: {} ok, {} stale, {} no handshake yet",
            self.total, self.ok, self.stale, self.no_handshake
        )
    }
}

/// `peers` ordered for a table: the least healthy first, then by name (unnamed last), then
/// by key.
pub fn unhealthy_first(peers: &[PeerReport]) -> Vec<&PeerReport> {
    let mut v: Vec<&PeerReport> = peers.iter().collect();
    v.sort_by(|a, b| {
        (PeerHealth::of(a), a.name.is_none(), &a.name, &a.public_key).cmp(&(
            PeerHealth::of(b),
            b.name.is_none(),
            &b.name,
            &b.public_key,
        ))
    });
    v
}

/// The first `limit` of `items` (all with `None`) and how many are left out.
pub fn bounded<T>(items: &[T], limit: Option<usize>) -> (&[T], usize) {
    match limit {
        Some(n) if items.len() > n => (&items[..n], items.len() - n),
        _ => (items, 0),
    }
}

/// The line that closes a bounded list: `... and N more <what> (<hint>)`, or `None` when
/// nothing was left out.
pub fn and_more(left_out: usize, what: &str, hint: &str) -> Option<String> {
    (left_out > 0).then(|| format!("... and {left_out} more {what} ({hint})"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer(i: usize, ago: Option<u64>) -> PeerReport {
        PeerReport {
            name: Some(format!("n{i:05}")),
            public_key: format!("key{i}"),
            endpoint: None,
            allowed_ips: vec![],
            last_handshake_unix: None,
            last_handshake_secs_ago: ago,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    #[test]
    fn peers_are_counted_by_health_and_the_unhealthy_come_first() {
        let peers = vec![
            peer(0, Some(5)),
            peer(1, None),
            peer(2, Some(600)),
            peer(3, None),
        ];
        let c = PeerCounts::of(&peers);
        assert_eq!((c.total, c.ok, c.stale, c.no_handshake), (4, 1, 1, 2));
        let order: Vec<&str> = unhealthy_first(&peers)
            .iter()
            .map(|p| p.name.as_deref().unwrap())
            .collect();
        assert_eq!(order, ["n00001", "n00003", "n00002", "n00000"]);
        assert_eq!(c.to_string(), "4 peers: 1 ok, 1 stale, 2 no handshake yet");
    }

    #[test]
    fn a_bounded_list_says_how_many_it_left_out() {
        let v: Vec<u32> = (0..50).collect();
        assert_eq!(bounded(&v, Some(20)), (&v[..20], 30));
        assert_eq!(bounded(&v, None), (&v[..], 0));
        assert_eq!(bounded(&v[..3], Some(20)), (&v[..3], 0));
        assert_eq!(and_more(0, "peers", "--all"), None);
        assert_eq!(
            and_more(30, "peers", "--all lists every one").unwrap(),
            "... and 30 more peers (--all lists every one)"
        );
    }
}
