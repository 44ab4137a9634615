//! The `MeshdEncrypted` Node condition: whether this node's mesh is encrypted and healthy, on
//! the node's own Node object where `kubectl describe node` and alerting see it.
//!
//! [`condition`] decides (pure); [`spawn`] follows meshd's status and writes the condition with
//! a strategic merge patch of `status.conditions` (merged by `type`, so the kubelet's own
//! conditions are untouched), only when status, reason or message change.

use std::time::Duration;

use ebpf_redirect::Mode;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use tokio::sync::watch;

use crate::control::StatusReport;
use crate::mode::Encryption;

/// The condition's type.
pub const CONDITION_TYPE: &str = "MeshdEncrypted";

/// What the condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `True` or `False`.
    pub status: &'static str,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// A sentence for humans.
    pub message: String,
}

/// The condition for a status report (whatever its peers are: it only counts them).
pub fn condition<P>(s: &StatusReport<P>) -> Condition {
    let guard = s.datapath.as_ref();
    let (status, reason, message) = if s.encryption == Encryption::Disabled {
        (
            "False",
            "EncryptionDisabled",
            "encryption is disabled in meshd-config".to_string(),
        )
    } else if s.encryption != Encryption::Enabled {
        (
            "False",
            "EncryptionPermissive",
            "encryption is permissive: cleartext to nodes without a peer is not dropped".into(),
        )
    } else if !s.strict_mode || guard.is_none_or(|d| d.underlay_mode != Mode::Enforce) {
        (
            "False",
            "StrictModeOff",
            "strict mode is off: cleartext to nodes without a peer is not dropped".into(),
        )
    } else if guard.is_some_and(|d| d.underlay_attached == Some(false)) {
        (
            "False",
            "GuardNotAttached",
            "the underlay guard program is not attached".into(),
        )
    } else if !s.converged {
        (
            "False",
            "NotConverged",
            "the last reconcile did not converge; see meshd's log".into(),
        )
    } else {
        (
            "True",
            "Encrypted",
            format!(
                "{} peers over WireGuard ({}), strict mode enforcing",
                s.peers.len(),
                s.mode
            ),
        )
    };
    Condition {
        status,
        reason,
        message,
    }
}

/// Write `c`; `since` is when its status last flipped (the condition's lastTransitionTime).
async fn write(api: &Api<Node>, node: &str, c: &Condition, since: &str) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "status": { "conditions": [{
            "type": CONDITION_TYPE,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": since,
            "lastHeartbeatTime": now,
        }]}
    });
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(drop)
}

/// Follow `status` and keep the Node's condition in step until the channel closes.
pub fn spawn<P: Send + Sync + 'static>(
    client: Client,
    node: String,
    mut status: watch::Receiver<Option<StatusReport<P>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Node> = Api::all(client);
        let mut written: Option<Condition> = None;
        let mut since = String::new();
        loop {
            let want = status.borrow_and_update().as_ref().map(condition);
            if let Some(want) = want {
                if written.as_ref() != Some(&want) {
                    if written.as_ref().is_none_or(|w| w.status != want.status) {
                        since = k8s_openapi::jiff::Timestamp::now().to_string();
                    }
                    match write(&api, &node, &want, &since).await {
                        Ok(()) => {
                            tracing::info!(
                                status = want.status,
                                reason = want.reason,
                                "Node condition {CONDITION_TYPE} written"
                            );
                            written = Some(want);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "writing the Node condition failed; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            continue;
                        }
                    }
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_only_when_enabled_strict_attached_and_converged() {
        let mut s: StatusReport = crate::control::tests_support::sample();
        assert_eq!(condition(&s).status, "True");
        assert_eq!(condition(&s).reason, "Encrypted");
        s.converged = false;
        assert_eq!(condition(&s).reason, "NotConverged");
        s.converged = true;
        s.strict_mode = false;
        assert_eq!(condition(&s).reason, "StrictModeOff");
        s.strict_mode = true;
        s.encryption = Encryption::Permissive;
        assert_eq!(condition(&s).reason, "EncryptionPermissive");
        s.encryption = Encryption::Disabled;
        assert_eq!(
            (condition(&s).status, condition(&s).reason),
            ("False", "EncryptionDisabled")
        );
        s.encryption = Encryption::Enabled;
        if let Some(d) = s.datapath.as_mut() {
            d.underlay_attached = Some(false);
        }
        assert_eq!(condition(&s).reason, "GuardNotAttached");
    }
}
