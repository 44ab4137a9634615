//! The YAML fixtures in `tests/netpol/fixtures/`: reading them, filling in pod addresses, and
//! parsing them into the Kubernetes API types.
//!
//! A fixture is a multi-document YAML file of Namespaces, Pods and NetworkPolicies, as
//! `kubectl apply -f` takes it. The CIDR cases need real pod addresses, which only the running
//! lab (or the offline model) knows, so a fixture may hold placeholders, filled in by
//! [`render`]:
//! * `${ns/pod/host}`: the pod's address of the family under test with a host mask (/32, /128);
//! * `${ns/pod/large}`: the /4 holding that address (upstream's `makeLargeCIDRForIP`);
//! * `${ns/pod/host4}`, `${ns/pod/host6}`: the host prefix of one family, whatever is tested.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use serde::Deserialize as _;

/// The directory holding the fixtures.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netpol/fixtures")
}

/// The text of fixture `name` (a file name in [`dir`]).
pub fn text(name: &str) -> anyhow::Result<String> {
    let path = dir().join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading fixture {}", path.display()))
}

/// Fills in the placeholders of `text`. `family` is the family under test (`None` when the
/// case runs both families on one set of policies: then only the family-qualified `host4` and
/// `host6` may appear); `address` gives a pod's (`ns/name`) address of a family.
pub fn render(
    text: &str,
    family: Option<u8>,
    address: &dyn Fn(&str, u8) -> anyhow::Result<IpAddr>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .with_context(|| format!("unterminated placeholder at {:?}", &rest[start..]))?;
        out.push_str(&placeholder(&after[..end], family, address)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholder(
    spec: &str,
    family: Option<u8>,
    address: &dyn Fn(&str, u8) -> anyhow::Result<IpAddr>,
) -> anyhow::Result<String> {
    let Some((pod, what)) = spec.rsplit_once('/') else {
        bail!("placeholder ${{{spec}}} is not ns/pod/what");
    };
    let tested = || {
        family.with_context(|| {
            format!("placeholder ${{{spec}}} needs a family under test: mark the case per_family")
        })
    };
    let (family, prefix) = match what {
        "host" => (tested()?, None),
        "large" => (tested()?, Some(4)),
        "host4" => (4, None),
        "host6" => (6, None),
        _ => bail!("placeholder ${{{spec}}}: {what:?} is not host, large, host4 or host6"),
    };
    let ip = address(pod, family)?;
    let host = if ip.is_ipv4() { 32 } else { 128 };
    let net = IpNet::new(ip, prefix.unwrap_or(host))
        .with_context(|| format!("prefix of {ip}"))?
        .trunc();
    Ok(net.to_string())
}

/// One object of a fixture.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Namespace.
    Namespace(core::Namespace),
    /// A Pod.
    Pod(Box<core::Pod>),
    /// A NetworkPolicy.
    Policy(networking::NetworkPolicy),
}

/// The objects of a (rendered) fixture, in file order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Object>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).with_context(|| format!("document {i}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let object = match kind.as_str() {
            "Namespace" => Object::Namespace(serde_json::from_value(value)?),
            "Pod" => Object::Pod(Box::new(serde_json::from_value(value)?)),
            "NetworkPolicy" => Object::Policy(serde_json::from_value(value)?),
            other => bail!("document {i}: kind {other:?} is not Namespace, Pod or NetworkPolicy"),
        };
        out.push(object);
    }
    Ok(out)
}

/// The NetworkPolicies of a (rendered) fixture.
pub fn policies(text: &str) -> anyhow::Result<Vec<networking::NetworkPolicy>> {
    Ok(parse(text)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(p),
            _ => None,
        })
        .collect())
}

/// A policy's `namespace/name`.
pub fn policy_key(policy: &networking::NetworkPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Policies as one multi-document YAML file (for `meshctl lab delete -f`).
pub fn to_yaml(policies: &[networking::NetworkPolicy]) -> anyhow::Result<String> {
    let mut out = String::new();
    for p in policies {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(p).context("serialising a NetworkPolicy")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn fake(pod: &str, family: u8) -> anyhow::Result<IpAddr> {
        let last = if pod == "x/b" { 2 } else { 9 };
        Ok(if family == 4 {
            IpAddr::V4(Ipv4Addr::new(10, 244, 1, last))
        } else {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, last.into()))
        })
    }

    #[test]
    fn placeholders_take_the_family_under_test_or_their_own() {
        let text = "a: ${x/b/host}\nb: ${x/b/large}\nc: ${y/c/host6}\n";
        assert_eq!(
            render(text, Some(4), &fake).unwrap(),
            "a: 10.244.1.2/32\nb: 0.0.0.0/4\nc: fd00:244:0:1::9/128\n"
        );
        assert_eq!(
            render(text, Some(6), &fake).unwrap(),
            "a: fd00:244:0:1::2/128\nb: f000::/4\nc: fd00:244:0:1::9/128\n"
        );
        let err = render(text, None, &fake).unwrap_err().to_string();
        assert!(err.contains("per_family"), "{err}");
        assert!(render("${x/b/nope}", Some(4), &fake).is_err());
        assert!(render("${x/b/host", Some(4), &fake).is_err());
    }

    #[test]
    fn policies_round_trip_through_yaml() {
        let text = text("client-side-egress-deny.yaml").unwrap();
        let policies = policies(&text).unwrap();
        assert_eq!(policies.len(), 3);
        assert_eq!(
            policy_key(&policies[1]),
            "y/allow-from-xa-on-ya-match-selector"
        );
        let again = super::policies(&to_yaml(&policies).unwrap()).unwrap();
        assert_eq!(again, policies);
    }
}
