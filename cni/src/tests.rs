use super::*;
use std::collections::BTreeMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn env_requirements_per_command() {
    let add = Env::parse(env_of(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ]))
    .unwrap();
    assert_eq!(add.command, Command::Add);
    assert_eq!(add.args.len(), 2);
    assert_eq!(add.path.len(), 2);
    let missing = Env::parse(env_of(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]));
    assert_eq!(missing.unwrap_err().code(), 4);
    assert_eq!(Env::parse(env_of(&[])).unwrap_err().code(), 4);
    assert_eq!(
        Env::parse(env_of(&[("CNI_COMMAND", "FOO")]))
            .unwrap_err()
            .code(),
        4
    );
    // DEL needs no netns; VERSION needs nothing.
    Env::parse(env_of(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ]))
    .unwrap();
    Env::parse(env_of(&[("CNI_COMMAND", "VERSION")])).unwrap();
    let bad_if = Env::parse(env_of(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "a/b"),
    ]));
    assert_eq!(bad_if.unwrap_err().code(), 4);
    assert_eq!(parse_cni_args("a=1;=2").unwrap_err().code(), 4);
}

#[test]
fn netconf_error_codes() {
    let ok = br#"{"cniVersion":"1.1.0","name":"n","type":"meshd-cni","podCIDRs":["10.0.0.0/24","fd00::/64"],"mtu":1420,"other":1}"#;
    let conf = NetConf::parse(ok, Command::Add).unwrap();
    assert_eq!(conf.cidrs().unwrap().len(), 2);
    assert_eq!(conf.mtu, Some(1420));
    assert!(conf.extra.contains_key("other"));
    let code = |s: &[u8], c| NetConf::parse(s, c).unwrap_err().code();
    assert_eq!(code(b"{not json", Command::Add), 6);
    assert_eq!(
        code(
            br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
            Command::Add
        ),
        1
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
            Command::Check
        ),
        1
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
            Command::Gc
        ),
        1
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"x"}"#,
            Command::Add
        ),
        6
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":10}"#,
            Command::Add
        ),
        7
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","podCIDRs":["x"]}"#,
            Command::Add
        ),
        7
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","podCIDRs":["10.0.0.0/16","10.0.1.0/24"]}"#,
            Command::Add
        ),
        7
    );
    assert_eq!(
        code(
            br#"{"cniVersion":"1.1.0","name":"","type":"t"}"#,
            Command::Add
        ),
        7
    );
}

#[test]
fn error_json_is_the_specs() {
    let e = CniError::UnknownContainer("network namespace /x does not exist".into());
    let json = serde_json::to_value(e.to_result("1.0.0")).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "code": 3,
            "msg": "container unknown or does not exist",
            "details": "network namespace /x does not exist"
        })
    );
}

#[test]
fn version_result() {
    let v = VersionResult::new(Some("0.4.0"));
    assert_eq!(v.cni_version, "0.4.0");
    assert_eq!(v.supported_versions.len(), 5);
    assert_eq!(
        VersionResult::new(Some("7.0.0")).cni_version,
        LATEST_VERSION
    );
}

fn ours(version: &str) -> CniResult {
    pod_result(
        version,
        "mshd00000000",
        "eth0",
        "02:00:00:00:00:01",
        "/run/netns/p",
        Some(1420),
        &[
            "10.244.1.2".parse().unwrap(),
            "fd00:244:0:1::2".parse().unwrap(),
        ],
    )
}

#[test]
fn result_json_per_version() {
    let new = serde_json::to_value(ours("1.1.0")).unwrap();
    assert_eq!(new["ips"][0]["address"], "10.244.1.2/32");
    assert_eq!(new["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(new["ips"][0]["interface"], 1);
    assert_eq!(new["ips"][1]["address"], "fd00:244:0:1::2/128");
    assert!(new["ips"][0].get("version").is_none());
    assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/p");
    assert_eq!(new["interfaces"][0]["mac"], HOST_VETH_MAC);
    assert_eq!(new["interfaces"][0]["mtu"], 1420);
    assert_eq!(new["routes"][1]["gw"], "fe80::ecee:eeff:feee:eeee");
    let old = serde_json::to_value(ours("0.3.1")).unwrap();
    assert_eq!(old["ips"][0]["version"], "4");
    assert_eq!(old["ips"][1]["version"], "6");
    assert!(old["interfaces"][0].get("mtu").is_none());
    let back: CniResult = serde_json::from_value(new).unwrap();
    assert_eq!(back, ours("1.1.0"));
}

#[test]
fn chaining_appends_and_reindexes() {
    let prev: CniResult = serde_json::from_value(serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "other0", "sandbox": "/run/netns/p", "custom": true}],
        "ips": [{"address": "192.168.9.9/24", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["10.96.0.10"]},
        "extraKey": "kept"
    }))
    .unwrap();
    let merged = ours("1.0.0").merge(prev);
    let j = serde_json::to_value(&merged).unwrap();
    assert_eq!(j["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(j["interfaces"][0]["custom"], true);
    assert_eq!(j["ips"][0]["interface"], 0);
    assert_eq!(j["ips"][1]["interface"], 2);
    assert_eq!(j["ips"][2]["interface"], 2);
    assert_eq!(j["routes"].as_array().unwrap().len(), 3);
    assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
    assert_eq!(j["extraKey"], "kept");
    assert_eq!(j["cniVersion"], "1.0.0");
}

#[test]
fn host_veth_names_are_stable_and_short() {
    let a = host_veth_name("abc", "eth0");
    assert_eq!(a, host_veth_name("abc", "eth0"));
    assert_ne!(a, host_veth_name("abc", "eth1"));
    assert_ne!(a, host_veth_name("abd", "eth0"));
    assert_eq!(a.len(), 12);
    assert!(a.starts_with("mshd"));
}

fn del_env(id: &str, ifname: &str) -> Result<Env, CniError> {
    Env::parse(env_of(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", id),
        ("CNI_IFNAME", ifname),
    ]))
}

#[test]
fn ifnames_the_kernel_would_not_create_as_given_are_refused() {
    for bad in [
        "eth%d",
        "0123456789abcdef",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "a\u{1b}b",
    ] {
        let err = del_env("c1", bad).unwrap_err();
        assert_eq!(err.code(), 4, "{bad:?}");
        assert!(err.details().contains("CNI_IFNAME"), "{err}");
    }
    assert!(check_ifname("").is_err());
    assert!(check_ifname("eth%d").unwrap_err().contains('%'));
    del_env("c1", "0123456789abcde").unwrap();
    del_env("c1", "net-1_a.b").unwrap();
}

#[test]
fn container_ids_outside_the_spec_are_refused_for_every_command() {
    let long = "a".repeat(300);
    for bad in [
        long.as_str(),
        "../../etc",
        "a/b",
        "-leading-dash",
        ".hidden",
        "a\nb",
        "a\u{7f}b",
        "a b",
        "é",
    ] {
        let err = del_env(bad, "eth0").unwrap_err();
        assert_eq!(err.code(), 4, "{bad:?}");
        assert!(err.details().contains("CNI_CONTAINERID"), "{err}");
    }
    // The message names the value without echoing 300 bytes of it.
    assert!(del_env(&long, "eth0").unwrap_err().details().len() < 200);
    del_env(&"a".repeat(255), "eth0").unwrap();
    del_env("0123abcdef_A.b-c", "eth0").unwrap();
}

#[test]
fn hostile_cni_args_are_refused() {
    let huge = format!("K8S_POD_NAME={}", "p".repeat(100_000));
    for bad in [huge.as_str(), "K8S_POD_NAME=a\u{1}b", "K=\u{e9}", "novalue"] {
        let err = Env::parse(env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", bad),
        ]))
        .unwrap_err();
        assert_eq!(err.code(), 4, "{bad:?}");
        assert!(err.details().contains("CNI_ARGS"), "{err}");
        assert!(err.details().len() < 200, "{err}");
    }
}

#[test]
fn deep_or_oversized_stdin_is_refused_as_a_decoding_error() {
    let deep = format!(
        r#"{{"cniVersion":"1.1.0","name":"n","type":"meshd-cni","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = NetConf::parse(deep.as_bytes(), Command::Add).unwrap_err();
    assert_eq!(err.code(), 6);
    assert!(err.details().contains("recursion limit"), "{err}");
    let padding = " ".repeat(MAX_STDIN_BYTES);
    let big = format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"meshd-cni"}}{padding}"#);
    let err = NetConf::parse(big.as_bytes(), Command::Add).unwrap_err();
    assert_eq!(err.code(), 6);
    assert!(err.details().contains("over 1048576 bytes"), "{err}");
}

#[test]
fn hostile_prev_results_are_refused() {
    let conf = |prev: serde_json::Value| {
        NetConf::parse(
            serde_json::json!({
                "cniVersion": "1.1.0", "name": "n", "type": "meshd-cni",
                "podCIDRs": ["10.0.0.0/24"], "prevResult": prev,
            })
            .to_string()
            .as_bytes(),
            Command::Add,
        )
        .unwrap()
    };
    let cases = [
        (serde_json::json!("x"), 6, "a string"),
        (serde_json::json!(7), 6, "a number"),
        (serde_json::json!({"ips": "10.0.0.1/32"}), 6, "prevResult"),
        (serde_json::json!({"cniVersion": 1}), 6, "prevResult"),
        (
            serde_json::json!({"cniVersion": "1.1.0", "interfaces": [{"name": "a"}],
                "ips": [{"address": "10.0.0.9/32", "interface": 18446744073709551615u64}]}),
            7,
            "ips[0].interface",
        ),
    ];
    for (prev, code, says) in cases {
        let err = conf(prev.clone()).prev().unwrap_err();
        assert_eq!(err.code(), code, "{prev}");
        assert!(err.details().contains(says), "{prev}: {err}");
    }
}

#[test]
fn errors_never_echo_a_huge_value() {
    let huge = "x".repeat(100_000);
    let ifname = del_env("c1", &huge).unwrap_err();
    assert!(ifname.details().len() < 200, "{}", ifname.details().len());
    let command = Env::parse(env_of(&[("CNI_COMMAND", &huge)])).unwrap_err();
    assert!(command.details().len() < 200);
}

#[test]
fn status_with_node_subnet_blocks_is_full_only_when_every_block_of_a_family_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("ipam");
    let conf = |blocks: bool| {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "meshd",
            "type": "meshd-cni",
            "podCIDRs": ["192.168.10.16/30", "192.168.10.52/30"],
            "nodeSubnetBlocks": blocks,
            "ipamDir": store,
        })
        .to_string()
    };
    let status = |blocks: bool| {
        crate::plugin::run(
            env_of(&[("CNI_COMMAND", "STATUS")]),
            conf(blocks).as_bytes(),
        )
    };
    assert_eq!(status(true).exit_code, 0, "{}", status(true).stdout);
    let parsed = NetConf::parse(conf(true).as_bytes(), Command::Status).unwrap();
    assert!(parsed.node_subnet_blocks);
    let ipam = parsed.open_ipam(&parsed.cidrs().unwrap()).unwrap();
    ipam.allocate("c1", "eth0").unwrap();
    // The first block is full: still room in the second.
    assert_eq!(status(true).exit_code, 0, "{}", status(true).stdout);
    // Per-node CIDRs: every CIDR gives an address, so a full one is unavailable.
    let plain = status(false);
    assert_eq!(plain.exit_code, 1);
    assert!(
        plain.stdout.contains("192.168.10.16/30"),
        "{}",
        plain.stdout
    );
    ipam.allocate("c2", "eth0").unwrap();
    let full = status(true);
    assert_eq!(full.exit_code, 1);
    assert!(
        full.stdout.contains("node-subnet blocks"),
        "{}",
        full.stdout
    );
}
