//! The closed sets of modes meshd's settings, datapath and status share, and their names on
//! the wire.
//!
//! [`Encryption`] is the operator's choice (`meshd-config`'s `encryption` key, `--encryption`)
//! and is defined here once: the settings parse it, the datapath maps it to a program mode
//! (`bpf::program_mode`), the status reports it. The WireGuard device mode
//! ([`netlink::ActiveMode`]) and the underlay program mode ([`ebpf_redirect::Mode`]) are owned
//! by their crates; this module only gives them their serde names ([`device_mode_name`],
//! [`underlay_mode_name`]), which are part of the `meshctl status -o json` contract.
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

/// How `underlay_egress` is attached: `tcx` links (kernel >= 6.6, pinned) or classic `clsact`
/// filters over `netlink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    /// tcx links, pinned in bpffs.
    Tcx,
    /// `clsact` qdisc filters added over netlink.
    Netlink,
}

impl Attachment {
    /// The one this kernel uses.
    pub fn of_this_kernel() -> Attachment {
        if ebpf_redirect::tcx_supported() {
            Attachment::Tcx
        } else {
            Attachment::Netlink
        }
    }

    /// Its name in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Attachment::Tcx => "tcx",
            Attachment::Netlink => "netlink",
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serde names of [`netlink::ActiveMode`] (`kernel`, `userspace`, as its `Display`); use with
/// `#[serde(with = "crate::mode::device_mode_name")]`.
pub mod device_mode_name {
    use netlink::ActiveMode;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "ActiveMode", rename_all = "lowercase")]
    enum Name {
        Kernel,
        Userspace,
    }

    /// Writes the mode's name.
    pub fn serialize<S: Serializer>(mode: &ActiveMode, s: S) -> Result<S::Ok, S::Error> {
        Name::serialize(mode, s)
    }

    /// Reads a mode's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ActiveMode, D::Error> {
        Name::deserialize(d)
    }
}

/// Serde names of [`ebpf_redirect::Mode`] (`enforce`, `permissive`, as its `Display`); use
/// with `#[serde(with = "crate::mode::underlay_mode_name")]`.
pub mod underlay_mode_name {
    use ebpf_redirect::Mode;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Mode", rename_all = "lowercase")]
    enum Name {
        Enforce,
        Permissive,
    }

    /// Writes the mode's name.
    pub fn serialize<S: Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
        Name::serialize(mode, s)
    }

    /// Reads a mode's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        Name::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a value under a `with` module, as a field of a struct would have it.
    fn json_with<T>(value: T, ser: fn(&T, &mut serde_json::Serializer<Vec<u8>>)) -> String {
        let mut out = serde_json::Serializer::new(Vec::new());
        ser(&value, &mut out);
        String::from_utf8(out.into_inner()).expect("utf-8")
    }

    #[test]
    fn encryption_names_are_the_settings_and_status_strings() {
        for (e, name) in [
            (Encryption::Enabled, "enabled"),
            (Encryption::Permissive, "permissive"),
            (Encryption::Disabled, "disabled"),
        ] {
            assert_eq!(
                serde_json::to_string(&e).expect("serializes"),
                format!("\"{name}\"")
            );
            assert_eq!(e.to_string(), name);
            let back: Encryption =
                serde_json::from_str(&format!("\"{name}\"")).expect("reads back");
            assert_eq!(back, e);
            assert_eq!(
                <Encryption as clap::ValueEnum>::from_str(name, false),
                Ok(e),
                "--encryption {name}"
            );
        }
        assert_eq!(Encryption::default(), Encryption::Enabled);
    }

    #[test]
    fn attachment_names_are_the_status_strings() {
        for (a, name) in [(Attachment::Tcx, "tcx"), (Attachment::Netlink, "netlink")] {
            assert_eq!(
                serde_json::to_string(&a).expect("serializes"),
                format!("\"{name}\"")
            );
            assert_eq!(a.to_string(), name);
            let back: Attachment =
                serde_json::from_str(&format!("\"{name}\"")).expect("reads back");
            assert_eq!(back, a);
        }
    }

    #[test]
    fn device_mode_names_are_the_status_strings_and_its_display() {
        use netlink::ActiveMode;
        for (m, name) in [
            (ActiveMode::Kernel, "kernel"),
            (ActiveMode::Userspace, "userspace"),
        ] {
            let json = json_with(m, |m, s| {
                device_mode_name::serialize(m, s).expect("serializes")
            });
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(m.to_string(), name);
            let mut de = serde_json::Deserializer::from_str(&json);
            assert_eq!(
                device_mode_name::deserialize(&mut de).expect("reads back"),
                m
            );
        }
    }

    #[test]
    fn underlay_mode_names_are_the_status_strings_and_its_display() {
        use ebpf_redirect::Mode;
        for (m, name) in [(Mode::Enforce, "enforce"), (Mode::Permissive, "permissive")] {
            let json = json_with(m, |m, s| {
                underlay_mode_name::serialize(m, s).expect("serializes")
            });
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(m.to_string(), name);
            let mut de = serde_json::Deserializer::from_str(&json);
            assert_eq!(
                underlay_mode_name::deserialize(&mut de).expect("reads back"),
                m
            );
        }
    }
}
