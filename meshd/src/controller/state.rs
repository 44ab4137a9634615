//! What the control loop keeps between events: the settings in force, the registry's records,
//! the counters, host encryption's tunnel liveness, the key rotation's bookkeeping and the
//! cleartext watch. Plain data: the loop and its helpers change it, nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use keyexchange::slots::Slot;
use keyexchange::trust::{Established, Refusal};
use keyexchange::{NodeRecord, PublicKey};

use crate::bpf::Encryption;
use crate::control::{self, Counters};
use crate::rotation::Driver;

/// Keepalive used with host encryption when none is configured: a live tunnel then shows
/// received bytes at least this often, which is how a tunnel is judged up.
pub(super) const HOST_KEEPALIVE: u16 = 10;

/// Settings that can change while meshd runs (the flags, then the ConfigMap's live values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Pod traffic encryption.
    pub encryption: Encryption,
    /// Strict mode (with encryption enabled).
    pub strict_mode: bool,
    /// The configured persistent keepalive.
    pub keepalive: Option<u16>,
    /// The slot devices' MTU.
    pub mtu: u32,
    /// The first slot's listen port (the second listens on the next).
    pub listen_port: u16,
    /// Node-to-node encryption.
    pub host_encryption: bool,
}

impl Live {
    /// Folds new operator settings in; `mtu: auto` (`None`) is `auto_mtu`.
    pub fn apply(&mut self, new: &crate::settings::Settings, auto_mtu: u32) {
        self.encryption = new.encryption;
        self.strict_mode = new.strict_mode;
        self.keepalive = new.keepalive;
        self.mtu = new.mtu.unwrap_or(auto_mtu);
        self.listen_port = new.listen_port;
        self.host_encryption = new.host_encryption;
    }

    /// The keepalive programmed on peers (`None`: off): host encryption needs one to judge
    /// tunnels up.
    pub fn effective_keepalive(&self) -> Option<u16> {
        match (self.keepalive, self.host_encryption) {
            (Some(k), _) if k > 0 => Some(k),
            (_, true) => Some(HOST_KEEPALIVE),
            (_, false) => None,
        }
    }
}

/// Everything the loop keeps.
#[derive(Default)]
pub(super) struct State {
    /// The registry as last read.
    pub registry: RegistryCache,
    /// The counters `meshctl status` shows.
    pub counters: Counters,
    /// Host encryption: which tunnels are up.
    pub liveness: HostLiveness,
    /// This node's key rotation.
    pub rotation: RotationBook,
    /// When cleartext was last attempted.
    pub cleartext: CleartextWatch,
    /// Since when reconcile passes have been failing (None: the last one converged).
    pub failing_since: Option<Instant>,
    /// This node's record changed (listen port, acknowledgements): publish it.
    pub republish: bool,
    /// What the last pass left on the node, if it applied every step exactly: the next pass
    /// for record changes alone plans against it (see [`super::remembered`]).
    pub remembered: Option<super::remembered::Remembered>,
}

/// The registry's records as the loop knows them.
#[derive(Default)]
pub(super) struct RegistryCache {
    /// Whether the registry delivered its complete initial state.
    pub synced: bool,
    /// Every node's last good record (this node's own included).
    pub records: BTreeMap<String, NodeRecord>,
    /// The nodes whose record was added, changed or removed since the last pass took them,
    /// each with the record that pass took in (a pass from memory brings its desired state
    /// forward by those alone, taking their old share out).
    pub changed: super::desired::incremental::Changed,
    /// Nodes whose record is malformed, with why.
    pub malformed: BTreeMap<String, String>,
    /// The conflicts last reported (each is logged once, when it appears).
    pub last_conflicts: BTreeSet<String>,
    /// The records refused by the last pass (record trust), each logged once.
    pub refused: Vec<Refusal>,
    /// The claims accepted by the last pass (loaded from the state directory before the
    /// first; `None` until then).
    pub established: Option<Established>,
}

/// Host encryption's view of each tunnel: up while bytes keep arriving.
#[derive(Default)]
pub(super) struct HostLiveness {
    /// Per peer (public key, so per slot): the last received-bytes count and when it last
    /// grew.
    pub rx_seen: BTreeMap<PublicKey, (u64, Instant)>,
    /// Peers whose tunnel is up by that measure.
    pub live_peers: BTreeSet<PublicKey>,
    /// Peer node addresses routed through the tunnel now.
    pub encrypted_hosts: BTreeSet<IpAddr>,
}

/// This node's key rotation and its history.
#[derive(Default)]
pub(super) struct RotationBook {
    /// The rotation driver.
    pub driver: Driver,
    /// Who waits for the rotation under way to end (`meshctl rotate-key`).
    pub waiters: Vec<tokio::sync::oneshot::Sender<Result<String, String>>>,
    /// Every programmed peer key's last handshake (both devices), as last read while a
    /// rotation is under way; `None` otherwise (no peer is judged silent then).
    pub handshakes: Option<BTreeMap<PublicKey, Option<SystemTime>>>,
    /// The slot each peer node's traffic uses now.
    pub peer_slots: BTreeMap<String, Slot>,
    /// Every peer node's published keys (slot 0, slot 1) as last seen after a converged
    /// pass: a key that changed gets a handshake poked on it.
    pub seen_keys: BTreeMap<String, [Option<PublicKey>; 2]>,
    /// When this node last poked the peers that have not proved its own new key.
    pub poked_at: Option<std::time::Instant>,
    /// This node's record as last written to the registry ([`super::publisher::Publisher::landed`]):
    /// the rotation's next step waits until it is the record of the current one.
    pub landed: Option<tokio::sync::watch::Receiver<Option<keyexchange::NodeRecord>>>,
    /// Rotations finished.
    pub rotations: u64,
    /// Rotations abandoned.
    pub failures: u64,
    /// When the last rotation ended (UNIX seconds).
    pub last_unix: Option<u64>,
    /// Why the last rotation was abandoned, if it was.
    pub last_error: Option<String>,
}

/// The cleartext watch (see [`control::CleartextReport`]).
#[derive(Default)]
pub(super) struct CleartextWatch {
    /// What the status reports.
    pub report: control::CleartextReport,
    /// The last reading of the strict-drop plus would-drop counters.
    pub total: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Live {
            encryption: Encryption::Enabled,
            strict_mode: true,
            keepalive: None,
            mtu: 1420,
            listen_port: 51820,
            host_encryption: false,
        }
    }

    #[test]
    fn live_mtu_follows_the_setting_and_auto_reverts_to_the_derived_one() {
        let mut live = live();
        let with_mtu = |mtu| crate::settings::Settings {
            mtu,
            ..Default::default()
        };
        live.apply(&with_mtu(Some(1300)), 1420);
        assert_eq!(live.mtu, 1300);
        // `mtu: auto` after an override goes back to what auto means.
        live.apply(&with_mtu(None), 1420);
        assert_eq!(live.mtu, 1420);
        live.apply(&with_mtu(Some(9000)), 1420);
        live.apply(&with_mtu(None), 1380);
        assert_eq!(live.mtu, 1380);
        // An MTU change re-programs no peer: the keepalive stays what it was.
        assert_eq!(live.effective_keepalive(), None);
    }

    #[test]
    fn host_encryption_brings_a_keepalive_and_zero_is_off() {
        let mut live = live();
        live.keepalive = Some(0);
        assert_eq!(live.effective_keepalive(), None);
        live.host_encryption = true;
        assert_eq!(live.effective_keepalive(), Some(HOST_KEEPALIVE));
        live.keepalive = Some(25);
        assert_eq!(live.effective_keepalive(), Some(25));
    }
}
