//! Entry points of the cargo-fuzz targets that read the CNI plugin's untrusted inputs
//! (`fuzz/`, see `docs/fuzzing.md`): the network configuration on stdin ([`netconf`]), the
//! `CNI_*` environment ([`env`]), a chained plugin's `prevResult` ([`prev_result`]) and the
//! IPAM store's file contents and names ([`ipam_owner`]). Each asserts the properties that
//! must hold (panicking otherwise) and returns whether the input was accepted; this crate's
//! tests feed every committed seed through them. Nothing here touches a namespace, a link
//! or the file system.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde_json::Value;

use crate::ipam::{is_usable, nth_address, usable_range, Owner, INDEX_PREFIX};
use crate::{
    is_supported, plugin, pod_result, CniError, CniResult, Command, Env, ErrorResult, NetConf,
    SUPPORTED_VERSIONS,
};

const COMMANDS: [Command; 6] = [
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Status,
    Command::Version,
    Command::Gc,
];

/// An error's spec JSON is JSON with its code, and the error says what was wrong.
fn check_error(err: &CniError, expected_codes: &[u32]) {
    assert!(
        expected_codes.contains(&err.code()),
        "code {} for {err:?}",
        err.code()
    );
    assert!(
        !err.to_string().is_empty() && !err.details().is_empty(),
        "{err:?}"
    );
    let json = serde_json::to_string(&err.to_result("1.1.0")).expect("an error encodes");
    let back: ErrorResult = serde_json::from_str(&json).expect("an error decodes");
    assert_eq!(back.code, err.code());
}

/// `v` as JSON with every non-integer number replaced by null: serde_json's default float
/// parsing is not correctly rounded (a 42-digit number in an ignored key read back one ulp
/// off), so only exact values are compared.
fn without_floats(v: &impl serde::Serialize) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Number(n) if n.is_f64() => *v = Value::Null,
            Value::Array(a) => a.iter_mut().for_each(strip),
            Value::Object(o) => o.values_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(v).expect("encodes");
    strip(&mut v);
    v
}

/// `data` as stdin for every command, through [`NetConf::parse`]:
///
/// - an accepted configuration has a supported version, a name, an MTU in range and pod
///   CIDRs that parse without overlap, and re-encodes to JSON that parses to the same;
/// - a refusal is code 1 (version), 6 (decoding) or 7 (invalid value);
/// - `VERSION` through the whole plugin ([`plugin::run`], which touches nothing for it)
///   answers the supported versions.
///
/// Returns whether some command accepted it.
pub fn netconf(data: &[u8]) -> bool {
    let mut accepted = false;
    for command in COMMANDS {
        match NetConf::parse(data, command) {
            Ok(conf) => {
                accepted = true;
                assert!(is_supported(&conf.cni_version), "{}", conf.cni_version);
                assert!(!conf.name.is_empty());
                assert!(conf.mtu.is_none_or(|m| (1280..=65535).contains(&m)));
                let cidrs = conf.cidrs().expect("accepted CIDRs parse");
                assert_eq!(cidrs.len(), conf.pod_cidrs.len());
                let json = serde_json::to_vec(&conf).expect("a configuration encodes");
                let again = NetConf::parse(&json, command).expect("a re-encoded configuration");
                assert_eq!(
                    without_floats(&again),
                    without_floats(&conf),
                    "a configuration does not round-trip"
                );
            }
            Err(err) => check_error(&err, &[1, 6, 7]),
        }
    }
    let version = |k: &str| (k == "CNI_COMMAND").then(|| "VERSION".to_string());
    let outcome = plugin::run(version, data);
    assert_eq!(outcome.exit_code, 0, "{}", outcome.stdout);
    let answer: Value = serde_json::from_str(&outcome.stdout).expect("VERSION answers JSON");
    assert_eq!(
        answer["supportedVersions"].as_array().map(Vec::len),
        Some(SUPPORTED_VERSIONS.len())
    );
    accepted
}

/// `data` as the environment, one `KEY=VALUE` per line (lossy UTF-8), through
/// [`Env::parse`]: an accepted environment has what its command needs (container ID and
/// interface for ADD, DEL and CHECK; a namespace for ADD and CHECK), an interface name the
/// kernel can take and `CNI_ARGS` pairs with keys; a refusal is code 4 (or 4 for an
/// unknown command).
pub fn env(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    match Env::parse(|k| vars.get(k).map(|v| v.to_string())) {
        Ok(env) => {
            if matches!(env.command, Command::Add | Command::Del | Command::Check) {
                assert!(
                    env.container_id.is_some() && env.ifname.is_some(),
                    "{env:?}"
                );
            }
            if matches!(env.command, Command::Add | Command::Check) {
                assert!(env.netns.is_some(), "{env:?}");
            }
            if let Some(ifname) = &env.ifname {
                assert!(!ifname.is_empty() && ifname.len() <= 15, "{ifname:?}");
                assert!(!ifname.contains(['/', ':']) && !ifname.contains(char::is_whitespace));
            }
            assert!(
                env.args.iter().all(|(k, _)| !k.is_empty()),
                "{:?}",
                env.args
            );
            true
        }
        Err(err) => {
            check_error(&err, &[4]);
            false
        }
    }
}

/// `data` as a chained plugin's `prevResult` (JSON) in a configuration of every supported
/// version, decoded ([`NetConf::prev`]) and merged as ADD merges it:
///
/// - a decoded result re-encodes to JSON that decodes to the same;
/// - the merged result lists the previous interfaces, addresses and routes first, then
///   this plugin's, its addresses pointing at its own interfaces, and encodes to JSON;
/// - a refusal is code 6 naming `prevResult`.
///
/// Returns whether it decoded.
pub fn prev_result(data: &[u8]) -> bool {
    let Ok(prev) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    let mut decoded = false;
    for version in SUPPORTED_VERSIONS {
        let conf = serde_json::json!({
            "cniVersion": version, "name": "meshd", "type": "meshd-cni",
            "podCIDRs": ["10.244.1.0/24"], "prevResult": prev,
        });
        let conf = NetConf::parse(conf.to_string().as_bytes(), Command::Add)
            .expect("a configuration around any prevResult");
        match conf.prev() {
            Ok(None) => assert!(prev.is_null()),
            Ok(Some(prev)) => {
                decoded = true;
                let json = serde_json::to_string(&prev).expect("a result encodes");
                let again: CniResult = serde_json::from_str(&json).expect("a result decodes");
                assert_eq!(
                    without_floats(&again),
                    without_floats(&prev),
                    "a prevResult does not round-trip"
                );
                let addrs = [IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2))];
                let ours = pod_result(
                    version,
                    "mshd00000000",
                    "eth0",
                    "02:00:00:00:00:01",
                    "/var/run/netns/pod",
                    Some(1450),
                    &addrs,
                );
                let before = (prev.interfaces.len(), prev.ips.len(), prev.routes.len());
                let merged = ours.merge(prev).in_version(version);
                assert_eq!(merged.interfaces.len(), before.0 + 2);
                assert_eq!(merged.ips.len(), before.1 + 1);
                assert_eq!(merged.routes.len(), before.2 + 1);
                assert_eq!(merged.ips[before.1].interface, Some(before.0 + 1));
                serde_json::to_string(&merged).expect("a merged result encodes");
            }
            Err(err) => {
                // 6: not a result; 7: a result naming an interface it does not have.
                check_error(&err, &[6, 7]);
                assert!(err.details().starts_with("prevResult"), "{err}");
            }
        }
    }
    decoded
}

/// `data` as the IPAM store reads it:
///
/// - as an owner file's content ([`Owner::from_file`]): an owner read back writes exactly
///   the same content, and its index name is the prefix and 64 hex digits;
/// - as a directory entry's name: an address reads back from its canonical text;
/// - as a pod CIDR: the usable range's ends are usable addresses of it, in it.
///
/// Returns whether it was an owner file.
pub fn ipam_owner(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    if let Ok(addr) = text.parse::<IpAddr>() {
        assert_eq!(addr.to_string().parse::<IpAddr>(), Ok(addr));
    }
    if let Ok(cidr) = text.trim().parse::<IpNet>() {
        if let Some((first, last)) = usable_range(cidr) {
            assert!(first <= last, "{cidr}: {first} > {last}");
            for offset in [first, last] {
                let addr = nth_address(cidr, offset);
                assert!(cidr.contains(&addr), "{addr} outside {cidr}");
                assert!(is_usable(cidr, addr), "{addr} of {cidr} not usable");
            }
        }
        assert!(
            !is_usable(cidr, cidr.network()),
            "{cidr}: its network address is usable"
        );
    }
    match Owner::from_file(text) {
        Some(owner) => {
            assert_eq!(owner.to_file(), text, "an owner file does not round-trip");
            let index = owner.index_name();
            let hex = index.strip_prefix(INDEX_PREFIX).expect("the index prefix");
            assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed of `target` through `check` ([`testkit::seeds::replay`]).
    fn replay(target: &str, check: fn(&[u8]) -> bool) {
        testkit::seeds::replay(env!("CARGO_MANIFEST_DIR"), target, check);
    }

    #[test]
    fn cni_netconf_seeds() {
        replay("cni_netconf", netconf);
    }

    #[test]
    fn cni_env_seeds() {
        replay("cni_env", env);
    }

    #[test]
    fn cni_prev_result_seeds() {
        replay("cni_prev_result", prev_result);
    }

    #[test]
    fn ipam_owner_seeds() {
        replay("ipam_owner", ipam_owner);
    }
}
