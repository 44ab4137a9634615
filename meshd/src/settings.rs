//! Operator settings from the `meshd-config` ConfigMap: the keys, their pure parsing, and the
//! last good settings kept on disk.
//!
//! # Keys (all optional; a missing key takes its default)
//!
//! | key               | values                                | default    | meaning |
//! |-------------------|---------------------------------------|------------|---------|
//! | `encryption`      | `enabled` \| `permissive` \| `disabled` | `enabled`  | `enabled`: pod traffic to peers goes through the tunnel; `permissive`: the tunnel is up and used, but plaintext pod traffic from and to nodes is still accepted (for rollout and roll-back); `disabled`: pod traffic takes the plain routed path, the tunnel is torn down after traffic has moved off it |
//! | `strict-mode`     | `true` \| `false`                     | `true`     | with `encryption: enabled`, drop pod traffic that would leave a node outside WireGuard instead of sending it in clear (with `permissive` or `disabled` such traffic is only counted) |
//! | `host-encryption` | `true` \| `false`                     | `false`    | also encrypt node-to-node (host network) traffic; opt-in, since a mistake can cut a node off the API server |
//! | `mtu`             | `auto` \| 1280–9000                   | `auto`     | MTU of the tunnel and pod interfaces; `auto` derives it from the underlay |
//! | `listen-port`     | 1–65534                               | `51820`    | WireGuard UDP listen port (the second key slot: the next one) |
//! | `keepalive`       | `off` \| 0–65535 (seconds; 0 is off)  | `off`      | WireGuard persistent keepalive |
//!
//! Parsing is pure ([`Settings::from_data`]); an invalid value is an error naming the key and
//! the value ([`SettingsError`]). Unknown keys are not errors (a newer meshd may know them) but
//! are reported by [`Settings::unknown_keys`].
//!
//! The live watcher of the ConfigMap (it publishes each valid configuration, rejects an invalid
//! one with an Event and keeps the last good one in force) lives with the rest of meshd's
//! Kubernetes code: [`crate::registry::kube::settings`].
//!
//! # The last good settings survive restarts
//!
//! With [`WatcherConfig::state_dir`](crate::registry::kube::settings::WatcherConfig::state_dir),
//! every valid configuration the watcher applies is written to [`LAST_GOOD_FILE`] in that
//! directory (atomically: a temporary file, fsync, rename; mode 0644, nothing in it is secret),
//! in the ConfigMap's own key/value form so that reading it back validates it again. meshd
//! starts from that file ([`load_last_good`], [`fallback`]): if the ConfigMap holds an invalid
//! value (or is gone) when meshd restarts, the last good settings stay in force instead of the
//! flags'. A file that cannot be read or does not validate is a logged error, and meshd falls
//! back to its flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The daemon's flow-observability flags (`meshd --flow-*`; see docs/observability.md). Three
/// also read the environment (`MESHD_FLOW_EVENTS`, `MESHD_FLOW_RING_BYTES`,
/// `MESHD_FLOW_REPORT_SECS`), so a lab or a benchmark can set them for every node it starts.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct FlowArgs {
    /// Flow events from the datapath (every drop, forwarded flows' first packets and
    /// aggregates), served on the control socket (`flows`) and counted in `/metrics`.
    /// `--flow-events=false` turns them off in the datapath too.
    #[arg(long, env = "MESHD_FLOW_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_events: bool,
    /// Size of the datapath's flow ring buffer in bytes (rounded up to a power of two, at
    /// least a page). Events that find it full are counted as lost.
    #[arg(long, env = "MESHD_FLOW_RING_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(4096..=(1 << 30)))]
    pub flow_ring_bytes: u32,
    /// Flow lines kept in memory for `meshctl observe` (and queued per follower at most).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub flow_history: u64,
    /// Distinct (source, destination) namespace pairs with series of their own in
    /// `meshd_flows_total`; later pairs are counted under `other`.
    #[arg(long, default_value_t = 200)]
    pub flow_metrics_max_pairs: usize,
    /// Count flows per pod pair too (`meshd_flows_by_pod_total`), for at most this many pairs
    /// (later pairs under `other`). Off by default: pod pairs grow with the cluster.
    #[arg(long)]
    pub flow_metrics_pod_pairs: Option<usize>,
    /// Seconds between aggregate reports of forwarded flows (and of lost events).
    #[arg(long, env = "MESHD_FLOW_REPORT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub flow_report_secs: u64,
    /// Seconds a forwarded flow may stay idle before it is forgotten (its next packet is a
    /// first packet again).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub flow_idle_secs: u64,
}

/// The ConfigMap's conventional name.
pub const CONFIG_MAP_NAME: &str = "meshd-config";

/// Every key meshd understands.
pub const KEYS: [&str; 6] = [
    "encryption",
    "strict-mode",
    "host-encryption",
    "mtu",
    "listen-port",
    "keepalive",
];

pub use crate::mode::Encryption;

/// Validated operator settings (see the module docs for each key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `encryption`.
    pub encryption: Encryption,
    /// `strict-mode`.
    pub strict_mode: bool,
    /// `host-encryption`.
    pub host_encryption: bool,
    /// `mtu` (`None`: derive from the underlay).
    pub mtu: Option<u32>,
    /// `listen-port`.
    pub listen_port: u16,
    /// `keepalive` in seconds (`None`: off).
    pub keepalive: Option<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            encryption: Encryption::Enabled,
            strict_mode: true,
            host_encryption: false,
            mtu: None,
            listen_port: 51820,
            keepalive: None,
        }
    }
}

/// An invalid `meshd-config`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A key holds a value it cannot take.
    #[error("meshd-config key {key:?}: invalid value {value:?} (expected {expected})")]
    InvalidValue {
        /// The key.
        key: &'static str,
        /// The rejected value, as written.
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
}

impl SettingsError {
    /// The offending key.
    pub fn key(&self) -> &'static str {
        match self {
            SettingsError::InvalidValue { key, .. } => key,
        }
    }

    /// The offending value.
    pub fn value(&self) -> &str {
        match self {
            SettingsError::InvalidValue { value, .. } => value,
        }
    }
}

fn invalid(key: &'static str, value: &str, expected: &'static str) -> SettingsError {
    SettingsError::InvalidValue {
        key,
        value: value.to_string(),
        expected,
    }
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, SettingsError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "true or false")),
    }
}

impl Settings {
    /// Validates a ConfigMap's `data`. Missing keys take their defaults; the first invalid key
    /// (in the order of [`KEYS`]) is the error.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let get = |key: &str| data.get(key).map(String::as_str);
        if let Some(v) = get("encryption") {
            s.encryption = match v.trim() {
                "enabled" => Encryption::Enabled,
                "permissive" => Encryption::Permissive,
                "disabled" => Encryption::Disabled,
                _ => return Err(invalid("encryption", v, "enabled, permissive or disabled")),
            };
        }
        if let Some(v) = get("strict-mode") {
            s.strict_mode = parse_bool("strict-mode", v)?;
        }
        if let Some(v) = get("host-encryption") {
            s.host_encryption = parse_bool("host-encryption", v)?;
        }
        if let Some(v) = get("mtu") {
            s.mtu = match v.trim() {
                "auto" | "" => None,
                t => Some(
                    t.parse::<u32>()
                        .ok()
                        .filter(|m| (1280..=9000).contains(m))
                        .ok_or_else(|| invalid("mtu", v, "auto or an integer 1280-9000"))?,
                ),
            };
        }
        if let Some(v) = get("listen-port") {
            s.listen_port = v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && *p != u16::MAX)
                .ok_or_else(|| {
                    invalid(
                        "listen-port",
                        v,
                        "a port 1-65534 (the second key slot listens on the next one)",
                    )
                })?;
        }
        if let Some(v) = get("keepalive") {
            s.keepalive = match v.trim() {
                "off" => None,
                // Zero however written ("0", "00", "+0") is off.
                t => Some(
                    t.parse::<u16>()
                        .map_err(|_| invalid("keepalive", v, "off or seconds 0-65535"))?,
                )
                .filter(|secs| *secs != 0),
            };
        }
        Ok(s)
    }

    /// The settings as ConfigMap `data` ([`Settings::from_data`] reads it back unchanged).
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let pairs = [
            ("encryption", self.encryption.to_string()),
            ("strict-mode", self.strict_mode.to_string()),
            ("host-encryption", self.host_encryption.to_string()),
            ("mtu", self.mtu.map_or("auto".into(), |m| m.to_string())),
            ("listen-port", self.listen_port.to_string()),
            (
                "keepalive",
                self.keepalive.map_or("off".into(), |k| k.to_string()),
            ),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Keys in `data` that meshd does not know (typos, or keys of a newer meshd).
    pub fn unknown_keys(data: &BTreeMap<String, String>) -> Vec<&str> {
        data.keys()
            .map(String::as_str)
            .filter(|k| !KEYS.contains(k))
            .collect()
    }
}

/// The file in the state directory holding the last good settings.
pub const LAST_GOOD_FILE: &str = "settings.json";

/// Reading or writing [`LAST_GOOD_FILE`].
#[derive(Debug, thiserror::Error)]
pub enum SettingsFileError {
    /// The file could not be read.
    #[error("reading the last good settings {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the JSON meshd writes.
    #[error("the last good settings {path} are corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing it (temporary file, fsync, rename) failed.
    #[error("writing the last good settings {path}: {source}")]
    Write {
        /// The file written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The file's format version.
const LAST_GOOD_VERSION: u64 = 1;

/// Writes `settings` as the last good ones into `dir`, atomically (mode 0644).
pub fn save_last_good(dir: &Path, settings: &Settings) -> Result<(), SettingsFileError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = dir.join(LAST_GOOD_FILE);
    let body = serde_json::json!({"version": LAST_GOOD_VERSION, "data": settings.to_data()});
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            crate::statefile::write_atomic(&path, format!("{body:#}\n").as_bytes(), 0o644)
        })
        .map_err(|source| SettingsFileError::Write {
            path: path.clone(),
            source,
        })
}

/// The last good settings in `dir`: `None` when there is no file; an error when it cannot be
/// read or its content does not validate.
pub fn load_last_good(dir: &Path) -> Result<Option<Settings>, SettingsFileError> {
    let path = dir.join(LAST_GOOD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SettingsFileError::Read { path, source }),
    };
    let corrupt = |reason: String| SettingsFileError::Corrupt {
        path: path.clone(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    if value["version"].as_u64() != Some(LAST_GOOD_VERSION) {
        return Err(corrupt(format!(
            "version {} (this meshd writes {LAST_GOOD_VERSION})",
            value["version"]
        )));
    }
    let data: BTreeMap<String, String> = serde_json::from_value(value["data"].clone())
        .map_err(|e| corrupt(format!("\"data\" is not a map of strings: {e}")))?;
    Settings::from_data(&data)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

/// The settings meshd starts from until the ConfigMap says otherwise (and keeps when the
/// ConfigMap is invalid or missing at start): the last good ones read from the state
/// directory, else `flags`. A read error is logged and falls back to `flags`.
pub fn fallback(
    last_good: Result<Option<Settings>, SettingsFileError>,
    flags: Settings,
) -> Settings {
    match last_good {
        Ok(Some(settings)) => {
            tracing::info!(?settings, "starting from the last good settings");
            settings
        }
        Ok(None) => flags,
        Err(error) => {
            tracing::error!(%error, "cannot use the last good settings; starting from the flags");
            flags
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(pairs: &[(&str, &str)]) -> SettingsError {
        Settings::from_data(&data(pairs)).unwrap_err()
    }

    /// Found by the `settings_configmap` fuzz target: `keepalive: "00"` (or `"+0"`) read as
    /// `Some(0)` where `"0"` reads as off, so the settings did not read back from
    /// [`Settings::to_data`] and a keepalive of 0 seconds went to the device.
    #[test]
    fn a_zero_keepalive_however_written_is_off() {
        for v in ["0", "00", "+0", " 000 "] {
            let s = Settings::from_data(&data(&[("keepalive", v)])).unwrap();
            assert_eq!(s.keepalive, None, "{v:?}");
            assert_eq!(Settings::from_data(&s.to_data()).unwrap(), s);
        }
    }

    #[test]
    fn empty_is_defaults() {
        let s = Settings::from_data(&BTreeMap::new()).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.encryption, Encryption::Enabled);
        assert!(s.strict_mode && !s.host_encryption);
        assert_eq!((s.mtu, s.listen_port, s.keepalive), (None, 51820, None));
    }

    #[test]
    fn every_key_parses() {
        let s = Settings::from_data(&data(&[
            ("encryption", "enabled"),
            ("strict-mode", "true"),
            ("host-encryption", "true"),
            ("mtu", "1420"),
            ("listen-port", "51821"),
            ("keepalive", "25"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            Settings {
                encryption: Encryption::Enabled,
                strict_mode: true,
                host_encryption: true,
                mtu: Some(1420),
                listen_port: 51821,
                keepalive: Some(25),
            }
        );
        for (v, want) in [
            ("permissive", Encryption::Permissive),
            ("disabled", Encryption::Disabled),
            (" enabled\n", Encryption::Enabled),
        ] {
            assert_eq!(
                Settings::from_data(&data(&[("encryption", v)]))
                    .unwrap()
                    .encryption,
                want
            );
        }
        let s = Settings::from_data(&data(&[("mtu", "auto"), ("keepalive", "off")])).unwrap();
        assert_eq!((s.mtu, s.keepalive), (None, None));
        assert_eq!(
            Settings::from_data(&data(&[("keepalive", "0")]))
                .unwrap()
                .keepalive,
            None
        );
    }

    #[test]
    fn invalid_values_name_key_and_value() {
        for (key, value) in [
            ("encryption", "on"),
            ("encryption", "Enabled"),
            ("strict-mode", "yes"),
            ("host-encryption", "1"),
            ("mtu", "1279"),
            ("mtu", "9001"),
            ("mtu", "big"),
            ("listen-port", "0"),
            ("listen-port", "65536"),
            ("listen-port", "65535"),
            ("keepalive", "-1"),
            ("keepalive", "70000"),
        ] {
            let e = err(&[(key, value)]);
            assert_eq!((e.key(), e.value()), (key, value));
            let message = e.to_string();
            assert!(
                message.contains(key) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn strict_mode_only_tightens_enabled_encryption() {
        for mode in ["permissive", "disabled"] {
            let s = Settings::from_data(&data(&[("encryption", mode), ("strict-mode", "true")]))
                .unwrap();
            assert!(s.strict_mode, "kept, and without effect outside enabled");
        }
        let s = Settings::from_data(&data(&[("strict-mode", "false")])).unwrap();
        assert!(!s.strict_mode);
    }

    #[test]
    fn settings_round_trip_through_configmap_data() {
        for s in [
            Settings::default(),
            Settings {
                encryption: Encryption::Permissive,
                strict_mode: false,
                host_encryption: true,
                mtu: Some(1380),
                listen_port: 41000,
                keepalive: Some(25),
            },
            Settings {
                encryption: Encryption::Disabled,
                ..Settings::default()
            },
        ] {
            let data = s.to_data();
            assert_eq!(
                data.keys().map(String::as_str).collect::<Vec<_>>().len(),
                KEYS.len()
            );
            assert_eq!(Settings::from_data(&data).unwrap(), s);
        }
    }

    #[test]
    fn last_good_settings_are_saved_atomically_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(load_last_good(&state).unwrap().is_none(), "no file yet");
        let first = Settings {
            encryption: Encryption::Permissive,
            mtu: Some(1400),
            ..Settings::default()
        };
        save_last_good(&state, &first).unwrap();
        assert_eq!(load_last_good(&state).unwrap(), Some(first));
        let second = Settings {
            encryption: Encryption::Disabled,
            keepalive: Some(10),
            ..Settings::default()
        };
        save_last_good(&state, &second).unwrap();
        assert_eq!(load_last_good(&state).unwrap(), Some(second.clone()));
        let path = state.join(LAST_GOOD_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![LAST_GOOD_FILE.to_string()],
            "no temporary file left"
        );
        // What meshd starts from: the file's settings over the flags'.
        let flags = Settings {
            listen_port: 40000,
            ..Settings::default()
        };
        assert_eq!(fallback(load_last_good(&state), flags.clone()), second);
        assert_eq!(fallback(Ok(None), flags.clone()), flags);
    }

    #[test]
    fn a_corrupt_last_good_file_is_an_error_naming_it_and_the_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LAST_GOOD_FILE);
        let flags = Settings {
            encryption: Encryption::Permissive,
            ..Settings::default()
        };
        for (content, why) in [
            ("{not json", "not JSON"),
            (r#"{"version":7,"data":{}}"#, "version 7"),
            (r#"{"version":1,"data":{"mtu":42}}"#, "data"),
            (
                r#"{"version":1,"data":{"encryption":"sometimes"}}"#,
                "sometimes",
            ),
        ] {
            std::fs::write(&path, content).unwrap();
            let err = load_last_good(dir.path()).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, SettingsFileError::Corrupt { .. })
                    && message.contains(LAST_GOOD_FILE)
                    && message.contains(why),
                "{content}: {message}"
            );
            assert_eq!(fallback(load_last_good(dir.path()), flags.clone()), flags);
            // Never replaced by reading: the operator can look at it.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        }
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let d = data(&[("strict_mode", "true"), ("mtu", "1400")]);
        assert_eq!(Settings::from_data(&d).unwrap().mtu, Some(1400));
        assert_eq!(Settings::unknown_keys(&d), vec!["strict_mode"]);
    }
}
