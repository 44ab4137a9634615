//! What the datapath reports: the verdict counters and the datapath's part of
//! `meshctl status` ([`DatapathReport`], a JSON contract: fields are only ever added).

use ebpf_redirect::{Mode, Verdict};
use ipnet::IpNet;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{map_err, Bpf, BpfError};

/// The verdict counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictCounters {
    /// Pod packets redirected into the tunnel.
    pub redirected: u64,
    /// Pod packets to a local pod, left to the kernel.
    pub local: u64,
    /// Pod packets to anything else, passed to the stack.
    pub passed: u64,
    /// Cluster packets dropped at the underlay by strict mode.
    pub strict_drops: u64,
    /// Cluster packets strict mode would have dropped (permissive).
    pub would_drops: u64,
    /// Pod packets dropped by `from_pod` because their source is not the pod's address on
    /// that interface (absent from an older meshd's report: 0).
    #[serde(default)]
    pub spoofed: u64,
    /// Pod packets dropped by the sending pod's egress policy.
    #[serde(default)]
    pub policy_denied_egress: u64,
    /// Packets dropped by the receiving pod's ingress policy.
    #[serde(default)]
    pub policy_denied_ingress: u64,
}

impl From<[u64; ebpf_redirect::VERDICT_COUNT as usize]> for VerdictCounters {
    fn from(c: [u64; ebpf_redirect::VERDICT_COUNT as usize]) -> Self {
        VerdictCounters {
            redirected: c[Verdict::Redirect as usize],
            local: c[Verdict::Local as usize],
            passed: c[Verdict::Pass as usize],
            strict_drops: c[Verdict::StrictDrop as usize],
            would_drops: c[Verdict::WouldDrop as usize],
            spoofed: c[Verdict::Spoofed as usize],
            policy_denied_egress: c[Verdict::PolicyDeniedEgress as usize],
            policy_denied_ingress: c[Verdict::PolicyDeniedIngress as usize],
        }
    }
}

/// The datapath as `meshctl status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatapathReport {
    /// bpffs directory holding the pins.
    pub pin_dir: String,
    /// `enforce` (strict drops) or `permissive` (would-drops only).
    #[serde(with = "crate::mode::underlay_mode_name")]
    pub underlay_mode: Mode,
    /// The underlay interface carrying `underlay_egress`.
    pub underlay_interface: String,
    /// Whether `underlay_egress` is attached to every guarded interface right now (`None`:
    /// the kernel cannot say).
    pub underlay_attached: Option<bool>,
    /// Every interface carrying `underlay_egress`: the underlay, `--guard-interface`s and
    /// the interfaces holding a default route.
    #[serde(default)]
    pub guarded_interfaces: Vec<String>,
    /// `tcx` (kernel >= 6.6, pinned links) or `netlink` (clsact filters).
    pub attach: crate::mode::Attachment,
    /// Remote pod CIDRs redirected into the tunnel.
    pub remote_cidrs: CidrList,
    /// Cluster CIDRs strict mode guards.
    pub cluster_cidrs: CidrList,
    /// Local pod addresses.
    pub local_pods: usize,
    /// Pod interfaces carrying `from_pod`.
    pub pod_interfaces: usize,
    /// Entries of the source map: (pod veth, address) pairs `from_pod` lets through.
    #[serde(default)]
    pub pod_sources: usize,
    /// Verdict counters.
    pub counters: VerdictCounters,
}

/// CIDRs as the status lists them: as text, sorted by their text. Held as [`IpNet`]s (18
/// bytes each) and written as text only when serialised: at 5,000 peers the datapath's 20,000
/// remote CIDRs as strings took ≈ 1 MiB of the served status, as values ≈ 0.35 MiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    /// `cidrs` in the order of their text.
    pub fn of(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list: Vec<IpNet> = cidrs.into_iter().collect();
        list.sort_by_cached_key(ToString::to_string);
        CidrList(list)
    }

    /// Where `cidr` is (`Ok`) or would go (`Err`), by the order of the text (each probe
    /// written into a buffer on the stack: no allocation per comparison).
    fn search(&self, cidr: &IpNet) -> Result<usize, usize> {
        let mut key = TextBuf::default();
        let key = key.text_of(cidr);
        let mut probe = TextBuf::default();
        self.0.binary_search_by(|c| probe.text_of(c).cmp(key))
    }

    /// Adds `cidr` in its place, unless it is listed.
    pub fn insert(&mut self, cidr: IpNet) {
        if let Err(i) = self.search(&cidr) {
            self.0.insert(i, cidr);
        }
    }

    /// Takes `cidr` out, if it is listed.
    pub fn remove(&mut self, cidr: &IpNet) {
        if let Ok(i) = self.search(cidr) {
            self.0.remove(i);
        }
    }

    /// The CIDRs, in the order of their text.
    pub fn as_slice(&self) -> &[IpNet] {
        &self.0
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Room for the longest CIDR's text (`ffff:…:ffff/128`, 43 bytes).
struct TextBuf {
    bytes: [u8; 64],
}

impl Default for TextBuf {
    fn default() -> Self {
        TextBuf { bytes: [0; 64] }
    }
}

impl TextBuf {
    /// `cidr`'s text, written into the buffer.
    fn text_of(&mut self, cidr: &IpNet) -> &str {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut self.bytes[..]);
        // A CIDR's text always fits: the write cannot fail.
        let _ = write!(cursor, "{cidr}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        std::str::from_utf8(&self.bytes[..len]).unwrap_or_default()
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for CidrList {
    /// The same CIDRs as these texts, in this order.
    fn eq(&self, other: &Vec<S>) -> bool {
        self.0.len() == other.len()
            && self
                .0
                .iter()
                .zip(other)
                .all(|(c, t)| c.to_string() == t.as_ref())
    }
}

impl Serialize for CidrList {
    /// A list of strings, as `Vec<String>` of the CIDRs' text.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for cidr in &self.0 {
            seq.serialize_element(&format_args!("{cidr}"))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for CidrList {
    /// A list of CIDR strings; one that is not a CIDR is an error naming it.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        let cidrs = texts
            .iter()
            .map(|t| {
                t.parse::<IpNet>()
                    .map_err(|err| serde::de::Error::custom(format!("CIDR {t:?}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CidrList::of(cidrs))
    }
}

impl<S: AsRef<str>> FromIterator<S> for CidrList {
    /// From CIDR texts (tests and fixtures); text that is not a CIDR is left out.
    fn from_iter<I: IntoIterator<Item = S>>(texts: I) -> Self {
        CidrList::of(texts.into_iter().filter_map(|t| t.as_ref().parse().ok()))
    }
}

impl Bpf {
    /// The verdict counters.
    pub fn counters(&self) -> Result<VerdictCounters, BpfError> {
        Ok(self
            .dp
            .counters()
            .map_err(map_err("reading counters"))?
            .into())
    }

    /// The datapath for `meshctl status`.
    pub fn report(&self) -> Result<DatapathReport, BpfError> {
        let remote_cidrs = CidrList::of(
            self.dp
                .remotes()
                .map_err(map_err("reading remote CIDRs"))?
                .into_iter()
                .map(|(c, _)| c),
        );
        let cluster_cidrs = CidrList::of(
            self.dp
                .clusters()
                .map_err(map_err("reading cluster CIDRs"))?,
        );
        Ok(DatapathReport {
            pin_dir: self.dp.pin_dir().display().to_string(),
            underlay_mode: self.mode,
            underlay_interface: self.underlay.clone(),
            underlay_attached: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .map(|i| self.dp.underlay_egress_attached(i).unwrap_or(None))
                .try_fold(true, |all, a| a.map(|a| all && a)),
            guarded_interfaces: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .cloned()
                .collect(),
            attach: crate::mode::Attachment::of_this_kernel(),
            remote_cidrs,
            cluster_cidrs,
            local_pods: self
                .dp
                .locals()
                .map_err(map_err("reading local pods"))?
                .len(),
            pod_interfaces: self.pods.len(),
            pod_sources: self
                .dp
                .sources()
                .map_err(map_err("reading the source map"))?
                .len(),
            counters: self.counters()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_lists_are_written_as_sorted_text_like_the_strings_they_replace() {
        let texts = ["10.244.2.0/24", "fd00:244:0:2::/64", "10.244.10.0/24"];
        let list = CidrList::of(texts.iter().map(|t| t.parse().unwrap()));
        let mut strings: Vec<String> = texts.iter().map(ToString::to_string).collect();
        strings.sort();
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            serde_json::to_string(&strings).unwrap()
        );
        assert_eq!(list, strings);
        let mut list = list;
        list.insert("10.244.3.0/24".parse().unwrap());
        list.insert("10.244.3.0/24".parse().unwrap());
        list.remove(&"10.244.10.0/24".parse().unwrap());
        assert_eq!(
            list,
            vec!["10.244.2.0/24", "10.244.3.0/24", "fd00:244:0:2::/64"]
        );
        let longest: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
            .parse()
            .unwrap();
        assert_eq!(TextBuf::default().text_of(&longest), longest.to_string());
        list.insert(longest);
        assert_eq!(list.as_slice().last(), Some(&longest));
        list.remove(&longest);
        let read: CidrList = serde_json::from_str(r#"["10.244.3.0/24","10.244.2.0/24"]"#).unwrap();
        assert_eq!(read, vec!["10.244.2.0/24", "10.244.3.0/24"]);
        let err = serde_json::from_str::<CidrList>(r#"["10.244.3.0/24","nonsense"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn counters_map_by_verdict_index() {
        let c = VerdictCounters::from([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (c.spoofed, c.policy_denied_egress, c.policy_denied_ingress),
            (6, 7, 8)
        );
        let json = serde_json::to_value(c).unwrap();
        for (name, value) in [
            ("spoofed", 6),
            ("policy_denied_egress", 7),
            ("policy_denied_ingress", 8),
        ] {
            assert_eq!(json[name], value, "{name}");
        }
        // An older meshd's report (five counters) still reads.
        let old: VerdictCounters = serde_json::from_str(
            r#"{"redirected":1,"local":2,"passed":3,"strict_drops":4,"would_drops":5}"#,
        )
        .unwrap();
        assert_eq!((old.would_drops, old.spoofed), (5, 0));
        assert_eq!(
            (
                c.redirected,
                c.local,
                c.passed,
                c.strict_drops,
                c.would_drops
            ),
            (1, 2, 3, 4, 5)
        );
    }
}
