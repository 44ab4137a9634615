//! The `policy` object of `meshctl status -o json`: what the policy loop knows, when it last
//! wrote the maps, and what it refused.

use serde::{Deserialize, Serialize};

/// The policy loop's state as `meshctl status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyReport {
    /// Where the objects come from: `directory` or `kubernetes`.
    pub source: String,
    /// Whether every kind has been listed and the IPAM store read, so the maps are written.
    pub synced: bool,
    /// NetworkPolicies known.
    pub policies: usize,
    /// Namespaces known.
    pub namespaces: usize,
    /// Pods known (cluster-wide; host-network pods are not counted).
    pub pods_known: usize,
    /// Local pods that are endpoints now (host veth found).
    pub local_endpoints: usize,
    /// Entries in the four policy maps as the loop wrote them.
    pub map_entries: usize,
    /// Batches of changes written.
    pub applies: u64,
    /// When the last batch was written (UNIX milliseconds).
    pub last_apply_unix_ms: Option<u64>,
    /// How long the last batch took from its first event to its last write (microseconds).
    pub last_apply_micros: Option<u64>,
    /// Map writes of the last batch.
    pub last_apply_ops: usize,
    /// Failed writes (each forces a full reconcile against the live maps).
    pub write_errors: u64,
    /// The last failed write, while the maps are not in step.
    pub write_error: Option<String>,
    /// Policies the compiler could not enforce as written (it failed closed), one line each.
    pub compile_errors: Vec<String>,
    /// Objects refused now, with what is wrong.
    pub malformed: Vec<MalformedObject>,
    /// Refusals since start.
    pub malformed_total: u64,
    /// Pods by address and the policies isolating them, for flow enrichment, kept up to date
    /// by the loop as it applies each change. Not part of the status document.
    #[serde(skip)]
    pub pod_table: super::pod_table::SharedPodTable,
    /// Whether anyone reads [`PolicyReport::pod_table`] (the flow collector sets it when it
    /// starts): without a reader the loop keeps no table.
    #[serde(skip)]
    pub pod_table_wanted: bool,
}

/// One refused object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MalformedObject {
    /// `Kind namespace/name`.
    pub object: String,
    /// What is wrong, naming the file or the field.
    pub error: String,
}

/// The report, shared by the loop (writer) and the status (reader).
pub type SharedPolicyReport = std::sync::Arc<std::sync::Mutex<PolicyReport>>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The field names are part of `meshctl status -o json`.
    #[test]
    fn the_json_field_names() {
        let json = serde_json::to_value(PolicyReport::default()).unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "applies",
                "compile_errors",
                "last_apply_micros",
                "last_apply_ops",
                "last_apply_unix_ms",
                "local_endpoints",
                "malformed",
                "malformed_total",
                "map_entries",
                "namespaces",
                "pods_known",
                "policies",
                "source",
                "synced",
                "write_error",
                "write_errors",
            ]
        );
    }
}
