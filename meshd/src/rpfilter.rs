//! Reverse-path filtering for the WireGuard devices.
//!
//! While a slot drains, a peer's packets can arrive on one key slot's device while this node
//! routes the peer's CIDRs via the other. The kernel's reverse-path check would drop them, and
//! not only in strict mode: the devices have no IPv4 address, and for an address-less device
//! loose mode (2) drops a packet whose source is routed elsewhere just the same. So the
//! devices need an effective `rp_filter` of 0, and the kernel applies the larger of
//! `conf/all/rp_filter` and the device's own value.
//!
//! When `all` is not 0, meshd moves its value onto `default` and onto every other interface
//! whose own value is lower (their effective setting stays exactly what it was, and
//! interfaces created later, pods' veths included, inherit it from `default`), then sets
//! `all` to 0, and the devices' own values to 0. The plan is pure ([`plan`]); [`apply`] reads
//! and writes the `net/ipv4/conf` tree under a configurable root (in a pod, a host path mount
//! of `/proc/sys/net`: the container's own `/proc/sys` is read-only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of reading or writing the `rp_filter` settings.
#[derive(Debug, thiserror::Error)]
pub enum RpFilterError {
    /// Reading a setting failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting did not hold 0, 1 or 2.
    #[error("{path}: {value:?} is not an rp_filter value (0, 1 or 2)")]
    Value {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// Writing a setting failed.
    #[error("writing {value} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: u8,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The writes, in order, that give every device in `devices` an effective `rp_filter` of 0
/// and leave every other interface's effective value as it was. `current` maps `all`,
/// `default` and every interface to its value.
///
/// The devices are always written, and first: the kernel copies a write to `default` onto
/// every interface whose value was never written explicitly, and a device must not be
/// raised that way.
pub fn plan(current: &BTreeMap<String, u8>, devices: &[&str]) -> Vec<(String, u8)> {
    let all = current.get("all").copied().unwrap_or(0);
    let mut writes: Vec<(String, u8)> = devices.iter().map(|d| ((*d).to_string(), 0)).collect();
    if all != 0 {
        // Stricter first, looser last: no interface is ever less filtered than before.
        let mut raised: Vec<(String, u8)> = current
            .iter()
            .filter(|(name, value)| {
                *name != "all" && !devices.contains(&name.as_str()) && **value < all
            })
            .map(|(name, _)| (name.clone(), all))
            .collect();
        raised.sort_by_key(|(name, _)| name != "default");
        writes.extend(raised);
        writes.push(("all".to_string(), 0));
    }
    writes
}

/// Reads the `net/ipv4/conf/*/rp_filter` values under `proc_sys_net` (e.g. `/proc/sys/net`).
pub fn read(proc_sys_net: &Path) -> Result<BTreeMap<String, u8>, RpFilterError> {
    let conf = proc_sys_net.join("ipv4/conf");
    let entries = std::fs::read_dir(&conf).map_err(|source| RpFilterError::Read {
        path: conf.clone(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| RpFilterError::Read {
            path: conf.clone(),
            source,
        })?;
        let path = entry.path().join("rp_filter");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // An interface that vanished since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RpFilterError::Read { path, source }),
        };
        let value = match text.trim().parse::<u8>() {
            Ok(v) if v <= 2 => v,
            _ => {
                return Err(RpFilterError::Value {
                    path,
                    value: text.trim().to_string(),
                })
            }
        };
        out.insert(entry.file_name().to_string_lossy().into_owned(), value);
    }
    Ok(out)
}

/// Gives `devices` an effective `rp_filter` of 0 (see the module documentation). Returns the
/// writes made.
pub fn apply(proc_sys_net: &Path, devices: &[&str]) -> Result<Vec<(String, u8)>, RpFilterError> {
    let current = read(proc_sys_net)?;
    let writes = plan(&current, devices);
    for (name, value) in &writes {
        let path = proc_sys_net.join("ipv4/conf").join(name).join("rp_filter");
        match std::fs::write(&path, value.to_string()) {
            Ok(()) => {}
            // An interface removed since it was read needs nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "all" => {}
            Err(source) => {
                return Err(RpFilterError::Write {
                    path,
                    value: *value,
                    source,
                })
            }
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn conf(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    }

    /// The effective value of every interface (the larger of `all` and its own).
    fn effective(c: &BTreeMap<String, u8>) -> BTreeMap<String, u8> {
        let all = c["all"];
        c.iter()
            .filter(|(k, _)| *k != "all")
            .map(|(k, v)| (k.clone(), (*v).max(all)))
            .collect()
    }

    fn applied(c: &BTreeMap<String, u8>, writes: &[(String, u8)]) -> BTreeMap<String, u8> {
        let mut c = c.clone();
        for (k, v) in writes {
            c.insert(k.clone(), *v);
        }
        c
    }

    #[test]
    fn with_all_off_only_the_devices_change() {
        let c = conf(&[
            ("all", 0),
            ("default", 1),
            ("eth0", 1),
            ("meshd0", 1),
            ("meshd0b", 0),
        ]);
        assert_eq!(
            plan(&c, &["meshd0", "meshd0b"]),
            [("meshd0".to_string(), 0), ("meshd0b".to_string(), 0)],
            "the devices are written explicitly, even when already 0"
        );
    }

    #[test]
    fn a_strict_all_moves_onto_every_other_interface_before_it_is_cleared() {
        for all in [1, 2] {
            let c = conf(&[
                ("all", all),
                ("default", 0),
                ("eth0", 0),
                ("eth1", 2),
                ("lo", 0),
                ("meshd0", 1),
                ("meshd0b", 0),
            ]);
            let devices = ["meshd0", "meshd0b"];
            let writes = plan(&c, &devices);
            assert_eq!(&writes[..2], [("meshd0".into(), 0), ("meshd0b".into(), 0)]);
            assert_eq!(writes[2].0, "default", "{writes:?}");
            let all_at = writes.iter().position(|(k, _)| k == "all").unwrap();
            assert_eq!(all_at, writes.len() - 1, "all is cleared last: {writes:?}");
            assert!(
                writes[2..all_at].iter().all(|(_, v)| *v == all),
                "every other interface is raised before all is cleared: {writes:?}"
            );
            let after = applied(&c, &writes);
            let (before, now) = (effective(&c), effective(&after));
            for (name, value) in &before {
                if devices.contains(&name.as_str()) {
                    assert_eq!(now[name], 0, "{name} unfiltered");
                } else {
                    assert_eq!(now[name], *value, "{name} keeps its effective value");
                }
            }
            assert_eq!(
                plan(&after, &devices),
                [("meshd0".into(), 0), ("meshd0b".into(), 0)],
                "idempotent: only the devices' own zero again"
            );
        }
    }

    #[test]
    fn reads_and_applies_a_conf_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (name, value) in [
            ("all", "1"),
            ("default", "0"),
            ("eth0", "0"),
            ("meshd0", "2"),
        ] {
            let d = root.join("ipv4/conf").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("rp_filter"), format!("{value}\n")).unwrap();
        }
        let writes = apply(root, &["meshd0"]).unwrap();
        assert_eq!(writes.len(), 4, "meshd0, default, eth0, all: {writes:?}");
        let now = read(root).unwrap();
        assert_eq!(
            now,
            conf(&[("all", 0), ("default", 1), ("eth0", 1), ("meshd0", 0)])
        );
        assert_eq!(apply(root, &["meshd0"]).unwrap().len(), 1);
        std::fs::write(root.join("ipv4/conf/eth0/rp_filter"), "7").unwrap();
        let err = read(root).unwrap_err().to_string();
        assert!(err.contains("eth0") && err.contains("\"7\""), "{err}");
    }
}
