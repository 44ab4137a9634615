//! The closed sets of modes meshd's settings, datapath and status share, and their names on
//! the wire.
//!
//! [`Encryption`] is the operator's choice (`meshd-config`'s `encryption` key, `--encryption`)
//! and is defined here once: the settings parse it, the datapath maps it to a program mode
//! (`bpf::program_mode`), the status reports it.
//!
//! This module depends on no other module of meshd, so that the settings, the datapath and the
//! status can all depend on it without depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What meshd does with pod traffic between nodes. Its names (`enabled`, `permissive`,
/// `disabled`) are those of the ConfigMap key, the flag and the status.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Pod traffic between nodes goes through WireGuard; with strict mode (the default) any
    /// cluster-addressed packet that would leave the node outside WireGuard is dropped.
    #[default]
    Enabled,
    /// Like `enabled` (the tunnel is up and used), but packets strict mode would drop are only
    /// counted (would-drop): for rollout and roll-back.
    Permissive,
    /// No tunnel: pod traffic takes the plain routed path to the other nodes' underlay
    /// addresses; the underlay program only counts it (would-drop).
    Disabled,
}

impl Encryption {
    /// The name in the ConfigMap, the flag and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Enabled => "enabled",
            Encryption::Permissive => "permissive",
            Encryption::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_names_are_the_settings_and_status_strings() {
        for (e, name) in [
            (Encryption::Enabled, "enabled"),
            (Encryption::Permissive, "permissive"),
            (Encryption::Disabled, "disabled"),
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{name}\""));
            assert_eq!(e.to_string(), name);
            let back: Encryption = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, e);
            assert_eq!(
                <Encryption as clap::ValueEnum>::from_str(name, false),
                Ok(e),
                "--encryption {name}"
            );
        }
        assert_eq!(Encryption::default(), Encryption::Enabled);
    }
}
