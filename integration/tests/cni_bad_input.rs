//! Bad input at the CNI plugin (issue 19), through the real `meshd-cni` binary run as a
//! runtime runs it (`CNI_*` environment, configuration on stdin) inside a node namespace this
//! test creates, on pod namespaces it creates: JSON nested 10,000 deep and 2 MiB on stdin, the
//! host's own network namespace as `CNI_NETNS`, interface names the kernel would refuse or
//! rename, container IDs outside the spec, hostile `CNI_ARGS` and `prevResult`, an IPAM store
//! left 0755, and CNI GC racing many ADDs on one store.
//!
//! Each refusal is the spec's error JSON with the right code and a message naming what was
//! wrong, and nothing else changes: the IPAM store's files, and an attached pod's interface and
//! address, are asserted identical before and after. Needs root and `ip`/`nsenter`; every
//! namespace is removed on drop, and no traffic is sent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use testkit::netns::{unique_name, NetnsGuard, NetnsSet};

const POD_CIDR: &str = "10.250.0.0/24";

/// A node namespace with its own IPAM store, where the plugin runs.
struct Node {
    ns: NetnsGuard,
    store: tempfile::TempDir,
    plugin: PathBuf,
}

/// What one plugin run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Assert a refusal: exit 1 and the spec's error JSON with `code`, its details naming
    /// `names`.
    fn refused(&self, code: u64, names: &str) {
        assert_eq!(self.code, Some(1), "expected a refusal, got {self:?}");
        let j = self.json();
        assert_eq!(j["code"], code, "{j}");
        assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        let details = j["details"].as_str().unwrap_or_default();
        assert!(
            details.contains(names),
            "details {details:?} do not name {names:?}"
        );
        assert!(
            details.len() < 512,
            "details echo the input: {} bytes",
            details.len()
        );
    }
}

impl Node {
    fn new(tag: &str) -> Node {
        testkit::require_root();
        testkit::require_tools(&["ip", "nsenter"]);
        let plugin = integration::lab::bin("meshd-cni");
        assert!(
            plugin.exists(),
            "{} missing: cargo build --workspace --bins",
            plugin.display()
        );
        Node {
            ns: NetnsGuard::new(&unique_name("hcni", tag)).unwrap(),
            store: tempfile::tempdir().unwrap(),
            plugin,
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.store.path().join("ipam")
    }

    fn config(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "meshd",
            "type": "meshd-cni",
            "podCIDRs": [POD_CIDR],
            "ipamDir": self.ipam_dir(),
        })
    }

    /// Run the plugin in the node namespace with `env` (`CNI_*` pairs) and `stdin`.
    fn run(&self, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg("--")
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // The plugin may stop reading (oversized stdin): a broken pipe is expected then.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    fn add(&self, id: &str, ifname: &str, netns: &str, conf: &Value) -> Run {
        self.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", netns),
            ],
            conf.to_string().as_bytes(),
        )
    }

    fn gc(&self, valid: &[String]) -> Run {
        let mut conf = self.config();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        self.run(&[("CNI_COMMAND", "GC")], conf.to_string().as_bytes())
    }

    /// Every file of the store with its content and mode.
    fn store_files(&self) -> BTreeMap<String, (String, u32)> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.ipam_dir()) else {
            return out;
        };
        for entry in rd {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                (text, meta.permissions().mode() & 0o777),
            );
        }
        out
    }

    /// The store's allocations: address → owner's container ID.
    fn allocations(&self) -> BTreeMap<String, String> {
        self.store_files()
            .into_iter()
            .filter(|(name, _)| name.parse::<std::net::IpAddr>().is_ok())
            .map(|(name, (text, _))| (name, text.lines().next().unwrap_or("").to_string()))
            .collect()
    }

    /// The node namespace's links (names).
    fn links(&self) -> BTreeSet<String> {
        links_in(self.ns.name())
    }
}

fn links_in(ns: &str) -> BTreeSet<String> {
    let out = testkit::netns::run("ip", &["-n", ns, "-j", "link", "show"]).unwrap();
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The IPv4 addresses of `dev` in namespace `ns` (empty when it has no such device).
fn addrs_in(ns: &str, dev: &str) -> Vec<String> {
    let out = testkit::netns::run_in_unchecked(ns, &["ip", "-j", "-4", "addr", "show", "dev", dev])
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect()
}

/// A node with one attached pod (`resident`): its store, its links and the pod's address are
/// what every refusal must leave as they were.
struct Baseline {
    node: Node,
    _pods: NetnsSet,
    pod_ns: String,
    store: BTreeMap<String, (String, u32)>,
    links: BTreeSet<String>,
    pod_addrs: Vec<String>,
}

impl Baseline {
    fn new(tag: &str) -> Baseline {
        let node = Node::new(tag);
        let pod_ns = unique_name("hcnip", tag);
        let mut pods = NetnsSet::new();
        pods.create(std::slice::from_ref(&pod_ns)).unwrap();
        let r = node.add(
            "resident",
            "eth0",
            &format!("/run/netns/{pod_ns}"),
            &node.config(),
        );
        assert_eq!(r.code, Some(0), "{r:?}");
        let pod_addrs = addrs_in(&pod_ns, "eth0");
        assert_eq!(pod_addrs.len(), 1, "{pod_addrs:?}");
        Baseline {
            store: node.store_files(),
            links: node.links(),
            node,
            _pods: pods,
            pod_addrs,
            pod_ns,
        }
    }

    fn assert_unchanged(&self, after: &str) {
        assert_eq!(
            self.node.store_files(),
            self.store,
            "IPAM store changed after {after}"
        );
        assert_eq!(
            self.node.links(),
            self.links,
            "node links changed after {after}"
        );
        assert_eq!(
            addrs_in(&self.pod_ns, "eth0"),
            self.pod_addrs,
            "the resident pod changed after {after}"
        );
    }

    /// A fresh pod namespace path for an ADD that must be refused (it stays empty).
    fn spare_pod(&self, pods: &mut NetnsSet, tag: &str) -> String {
        let name = unique_name("hcnix", tag);
        pods.create(std::slice::from_ref(&name)).unwrap();
        name
    }
}

#[test]
fn nested_and_oversized_stdin_are_refused_as_decoding_errors() {
    let b = Baseline::new("stdin");
    let mut pods = NetnsSet::new();
    let pod = b.spare_pod(&mut pods, "stdin");
    let netns = format!("/run/netns/{pod}");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "deep"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns.as_str()),
    ];
    let mut conf = b.node.config().to_string();
    conf.pop();
    let deep = format!(
        r#"{conf},"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    b.node
        .run(&env, deep.as_bytes())
        .refused(6, "recursion limit");
    let deep_prev = format!(
        r#"{conf},"prevResult":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    b.node
        .run(&env, deep_prev.as_bytes())
        .refused(6, "recursion limit");
    // Valid JSON, but 2 MiB of it: refused before it is all read.
    let big = format!("{}{}", b.node.config(), " ".repeat(2 << 20));
    b.node
        .run(&env, big.as_bytes())
        .refused(6, "over 1048576 bytes");
    b.assert_unchanged("hostile stdin");
    assert!(addrs_in(&pod, "eth0").is_empty());
}

#[test]
fn the_hosts_own_network_namespace_is_refused_by_any_path() {
    let b = Baseline::new("hostns");
    let own = format!("/run/netns/{}", b.node.ns.name());
    let mut paths = vec![
        "/proc/self/ns/net",
        "/proc/thread-self/ns/net",
        own.as_str(),
    ];
    // pid 1's namespace, where this sandbox lets root open it.
    if std::fs::File::open("/proc/1/ns/net").is_ok() {
        paths.push("/proc/1/ns/net");
    } else {
        eprintln!("/proc/1/ns/net cannot be opened here: not tried");
    }
    for path in paths {
        for command in ["ADD", "CHECK"] {
            let r = b.node.run(
                &[
                    ("CNI_COMMAND", command),
                    ("CNI_CONTAINERID", "hostile"),
                    ("CNI_IFNAME", "eth1"),
                    ("CNI_NETNS", path),
                ],
                b.node.config().to_string().as_bytes(),
            );
            r.refused(4, "host's own network namespace");
            assert!(r.json()["details"].as_str().unwrap().contains(path));
        }
        b.assert_unchanged(path);
    }
}

#[test]
fn interface_names_the_kernel_would_refuse_or_rename_are_refused() {
    let b = Baseline::new("ifname");
    let mut pods = NetnsSet::new();
    let pod = b.spare_pod(&mut pods, "ifname");
    let netns = format!("/run/netns/{pod}");
    for bad in [
        "eth%d",
        "0123456789abcdef",
        "a/b",
        "a b",
        ".",
        "..",
        "a:b",
        "tab\t",
    ] {
        b.node
            .add("c-ifname", bad, &netns, &b.node.config())
            .refused(4, "CNI_IFNAME");
    }
    // Empty is "not set" for ADD.
    b.node
        .add("c-ifname", "", &netns, &b.node.config())
        .refused(4, "CNI_IFNAME");
    b.assert_unchanged("bad interface names");
    assert_eq!(links_in(&pod), BTreeSet::from(["lo".to_string()]));
}

#[test]
fn container_ids_outside_the_spec_are_refused_and_never_touch_a_path() {
    let b = Baseline::new("ctrid");
    let mut pods = NetnsSet::new();
    let pod = b.spare_pod(&mut pods, "ctrid");
    let netns = format!("/run/netns/{pod}");
    let long = "a".repeat(300);
    // A file next to the store that a path-built ID would reach.
    let bait = b.node.store.path().join("bait");
    std::fs::write(&bait, "keep\n").unwrap();
    for bad in [long.as_str(), "../bait", "a/b", "a\u{1}b", "-x", ".", ".."] {
        b.node
            .add(bad, "eth0", &netns, &b.node.config())
            .refused(4, "CNI_CONTAINERID");
        b.node
            .run(
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", bad),
                    ("CNI_IFNAME", "eth0"),
                ],
                b.node.config().to_string().as_bytes(),
            )
            .refused(4, "CNI_CONTAINERID");
    }
    assert_eq!(std::fs::read_to_string(&bait).unwrap(), "keep\n");
    b.assert_unchanged("bad container IDs");
    assert_eq!(links_in(&pod), BTreeSet::from(["lo".to_string()]));
}

#[test]
fn hostile_cni_args_and_prev_results_are_refused() {
    let b = Baseline::new("args");
    let mut pods = NetnsSet::new();
    let pod = b.spare_pod(&mut pods, "args");
    let netns = format!("/run/netns/{pod}");
    let huge = format!("K8S_POD_NAME={}", "p".repeat(100_000));
    for bad in [huge.as_str(), "K8S_POD_NAME=a\u{1b}[2Jb", "novalue"] {
        b.node
            .run(
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c-args"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", &netns),
                    ("CNI_ARGS", bad),
                ],
                b.node.config().to_string().as_bytes(),
            )
            .refused(4, "CNI_ARGS");
    }
    let hostile = [
        (json!("x"), 6, "prevResult is a string"),
        (json!([1, 2]), 6, "prevResult is an array"),
        (
            json!({"cniVersion": "1.1.0", "ips": {"a": 1}}),
            6,
            "prevResult",
        ),
        (
            json!({"cniVersion": "1.1.0", "interfaces": [],
                   "ips": [{"address": "10.9.9.9/32", "interface": 4_000_000_000u64}]}),
            7,
            "ips[0].interface",
        ),
        (
            json!({"cniVersion": "1.1.0",
                   "ips": vec![json!({"address": "10.9.9.9/32", "interface": 0}); 1]}),
            7,
            "ips[0].interface",
        ),
    ];
    for (prev, code, names) in hostile {
        let mut conf = b.node.config();
        conf["prevResult"] = prev;
        b.node
            .add("c-args", "eth0", &netns, &conf)
            .refused(code, names);
    }
    // A prevResult of 2 MiB: refused by the stdin bound.
    let mut conf = b.node.config();
    conf["prevResult"] =
        json!({"cniVersion": "1.1.0", "dns": {"search": vec!["x".repeat(1000); 2100]}});
    b.node
        .add("c-args", "eth0", &netns, &conf)
        .refused(6, "over 1048576 bytes");
    b.assert_unchanged("hostile CNI_ARGS and prevResult");
    assert_eq!(links_in(&pod), BTreeSet::from(["lo".to_string()]));
}

#[test]
fn an_open_ipam_directory_is_tightened_and_new_files_are_private() {
    let b = Baseline::new("perm");
    let dir = b.node.ipam_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "created 0700");
    for (name, (_, m)) in &b.store {
        assert_eq!(*m, 0o600, "{name}");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut pods = NetnsSet::new();
    let pod = b.spare_pod(&mut pods, "perm");
    let r = b.node.add(
        "second",
        "eth0",
        &format!("/run/netns/{pod}"),
        &b.node.config(),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(mode(&dir), 0o700, "tightened");
    let files = b.node.store_files();
    for (name, (_, m)) in &files {
        assert_eq!(*m, 0o600, "{name}");
    }
    // The resident's allocation is untouched.
    for (name, entry) in &b.store {
        if name.parse::<std::net::IpAddr>().is_ok() {
            assert_eq!(files.get(name), Some(entry), "{name}");
        }
    }
    assert_eq!(addrs_in(&b.pod_ns, "eth0"), b.pod_addrs);
}

/// Many ADDs against one store while GCs run back to back, each GC listing as valid only the
/// attachments whose ADD had returned before it started (as a runtime does). No address may
/// be lost or handed out twice: whatever a pod carries, the store holds for it, and whatever
/// the store no longer holds for a pod, the pod no longer carries. (An ADD that committed
/// between the runtime's list and the GC's start is collected whole, interface included: the
/// plugin cannot know the list's age. One in flight when the GC starts is always spared.)
#[test]
fn gc_racing_adds_never_loses_or_duplicates_an_address() {
    let node = Node::new("race");
    let names: Vec<String> = (0..96)
        .map(|i| unique_name("hcnr", &i.to_string()))
        .collect();
    let mut pods = NetnsSet::new();
    pods.create(&names).unwrap();
    // A stale allocation (a pod gone without DEL) that every GC may collect.
    let stale_ns = unique_name("hcnr", "stale");
    pods.create(std::slice::from_ref(&stale_ns)).unwrap();
    let r = node.add(
        "stale",
        "eth0",
        &format!("/run/netns/{stale_ns}"),
        &node.config(),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    pods.delete(std::slice::from_ref(&stale_ns)).unwrap();

    let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let results: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let adds_over = AtomicBool::new(false);
    let gcs = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(ns) = names.get(i) else { break };
                    let r = node.add(ns, "eth0", &format!("/run/netns/{ns}"), &node.config());
                    assert_eq!(r.code, Some(0), "ADD {ns}: {r:?}");
                    let ip = r.json()["ips"][0]["address"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches("/32")
                        .to_string();
                    results.lock().unwrap().insert(ns.clone(), ip);
                    done.lock().unwrap().push(ns.clone());
                })
            })
            .collect();
        for _ in 0..2 {
            s.spawn(|| {
                while !adds_over.load(Ordering::SeqCst) {
                    let valid = done.lock().unwrap().clone();
                    let r = node.gc(&valid);
                    assert_eq!(r.code, Some(0), "GC: {r:?}");
                    gcs.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // Stop the GCs even when an ADD failed, then report the failure.
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        adds_over.store(true, Ordering::SeqCst);
        for j in joined {
            if let Err(panic) = j {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let gcs = gcs.load(Ordering::SeqCst);
    assert!(gcs >= 3, "only {gcs} GCs ran alongside the ADDs");

    let results = results.into_inner().unwrap();
    let store = node.allocations();
    assert!(
        !store.values().any(|owner| owner == "stale"),
        "the stale allocation survived {gcs} GCs"
    );
    let mut carried: HashMap<String, Vec<String>> = HashMap::new();
    let mut torn_down = 0;
    for ns in &names {
        let ip = &results[ns];
        let kept = store.get(ip) == Some(ns);
        if !kept {
            // Collected by a GC that began after this ADD committed (its list, made before,
            // could not name it): then the pod's interface went with the address (the veth's
            // deletion is asynchronous: give it a moment).
            for _ in 0..50 {
                if addrs_in(ns, "eth0").is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            torn_down += 1;
        }
        let on_pod = addrs_in(ns, "eth0");
        for a in &on_pod {
            carried.entry(a.clone()).or_default().push(ns.clone());
        }
        if kept {
            assert_eq!(
                &on_pod,
                std::slice::from_ref(ip),
                "{ns} does not carry its address {ip}"
            );
        } else {
            assert!(
                on_pod.is_empty(),
                "{ns} carries {on_pod:?} but the store no longer holds {ip} for it (it says \
                 {:?}): GC released an address an ADD had allocated",
                store.get(ip)
            );
        }
    }
    assert!(
        torn_down < names.len() / 2,
        "{torn_down} of {} pods collected: GC is not sparing ADDs",
        names.len()
    );
    for (addr, holders) in &carried {
        assert_eq!(holders.len(), 1, "{addr} is carried by {holders:?}");
    }
    eprintln!(
        "{} ADDs against {gcs} GCs: {} kept, {torn_down} collected whole by a GC begun after \
         their ADD committed",
        names.len(),
        names.len() - torn_down
    );
    // Nothing lost for good: a final GC listing every pod keeps all that are left.
    let r = node.gc(&names);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(node.allocations().len(), names.len() - torn_down);
}
