#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

fn pod(ns: &str, name: &str, app: &str, ips: &[&str]) -> Pod {
    Pod {
        key: PodKey::new(ns, name),
        labels: [("app".to_owned(), app.to_owned())].into(),
        addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        node: "n2".into(),
        named_ports: [(
            "http".to_owned(),
            NamedPort {
                protocol: Protocol::Tcp,
                number: 80,
            },
        )]
        .into(),
    }
}

fn cidrs() -> Vec<IpNet> {
    vec![
        "10.244.2.0/24".parse().unwrap(),
        "fd00:2::/64".parse().unwrap(),
    ]
}

#[test]
fn a_batch_round_trips_and_shares_label_sets() {
    let pods = [
        pod("x", "b", "web", &["10.244.2.3", "fd00:2::3"]),
        pod("x", "a", "web", &["10.244.2.2"]),
        pod("y", "c", "db", &[]),
    ];
    let text = encode("n2", &pods);
    let wire: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(wire["labels"].as_array().unwrap().len(), 2, "{text}");
    let decoded = decode(text.as_bytes(), "n2").unwrap();
    assert!(decoded.refused.is_empty());
    let mut want = pods.to_vec();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(decoded.pods, want);
    // Equal sets encode equally, whatever the order they come in.
    let mut reversed = pods.to_vec();
    reversed.reverse();
    assert_eq!(encode("n2", &reversed), text);
}

#[test]
fn a_batch_that_cannot_be_read_is_refused_whole() {
    assert!(matches!(
        decode(b"{not json", "n2"),
        Err(BatchError::Syntax { .. })
    ));
    assert_eq!(
        decode(br#"{"v":2,"node":"n2"}"#, "n2"),
        Err(BatchError::Version { found: 2 })
    );
    assert_eq!(
        decode(encode("n3", &[]).as_bytes(), "n2"),
        Err(BatchError::WrongNode {
            expected: "n2".into(),
            found: "n3".into()
        })
    );
    let big = vec![b' '; MAX_BATCH_BYTES + 1];
    assert!(matches!(
        decode(&big, "n2"),
        Err(BatchError::TooLarge { .. })
    ));
    let many: Vec<Pod> = (0..=MAX_PODS)
        .map(|i| pod("x", &format!("p{i}"), "a", &[]))
        .collect();
    assert!(matches!(
        decode(encode("n2", &many).as_bytes(), "n2"),
        Err(BatchError::TooManyPods { .. })
    ));
    let odd_key = br#"{"v":1,"node":"n2","labels":[{"a=b":"c"}],
        "pods":[{"ns":"x","name":"a","l":0,"ips":["10.244.2.2"]}]}"#;
    assert_eq!(
        decode(odd_key, "n2"),
        Err(BatchError::LabelKey { key: "a=b".into() })
    );
}

#[test]
fn a_bad_entry_is_refused_alone() {
    let text = r#"{"v":1,"node":"n2","labels":[{"app":"a"}],"pods":[
        {"ns":"x","name":"good","l":0,"ips":["10.244.2.2"]},
        {"ns":"X_bad","name":"p"},
        {"ns":"x","name":"no-label-set","l":7},
        {"ns":"x","name":"bad-ip","ips":["10.244.2.300"]},
        {"ns":"x","name":"bad-proto","ports":{"p":[1,80]}},
        {"ns":"x","name":"good"}]}"#;
    let decoded = decode(text.as_bytes(), "n2").unwrap();
    assert_eq!(decoded.pods.len(), 1);
    assert_eq!(decoded.pods[0].key, PodKey::new("x", "good"));
    assert_eq!(decoded.refused.len(), 5, "{:?}", decoded.refused);
    for (refusal, says) in decoded.refused.iter().zip([
        "namespace \"X_bad\"",
        "label set 7",
        "\"10.244.2.300\" is not an IP address",
        "protocol 1",
        "x/good is listed twice",
    ]) {
        assert!(refusal.contains(says), "{refusal} should say {says}");
    }
}

#[test]
fn an_address_outside_the_publishers_pod_cidrs_is_refused_alone() {
    // n2 claims an address of n1's CIDR (10.244.1.0/24) for one of its pods.
    let pods = [
        pod("x", "mine", "a", &["10.244.2.2", "fd00:2::2"]),
        pod("x", "hijack", "a", &["10.244.1.7", "fd00:2::7"]),
    ];
    let vetted = vet(
        decode(encode("n2", &pods).as_bytes(), "n2").unwrap(),
        "n2",
        &cidrs(),
    );
    assert_eq!(vetted.pods[0].addresses, pods[1].addresses[1..]);
    assert_eq!(vetted.pods[1].addresses, pods[0].addresses);
    assert_eq!(vetted.refused.len(), 1);
    assert!(vetted.refused[0].contains("10.244.1.7") && vetted.refused[0].contains("n2"));
    // A node without pod CIDRs vouches for no address.
    let vetted = vet(
        decode(encode("n2", &pods).as_bytes(), "n2").unwrap(),
        "n2",
        &[],
    );
    assert!(vetted.pods.iter().all(|p| p.addresses.is_empty()));
    assert_eq!(vetted.refused.len(), 4);
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    (
        "[a-z][a-z0-9]{0,6}",
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..4),
        prop::collection::vec(any::<u8>(), 0..3),
        prop::collection::btree_map("[a-z]{1,8}", (0..3usize, 1..=u16::MAX), 0..3),
    )
        .prop_map(|(ns, name, labels, hosts, ports)| Pod {
            key: PodKey::new(ns, name),
            labels: labels.into(),
            addresses: hosts
                .into_iter()
                .map(|h| IpAddr::from([10, 244, 2, h]))
                .fold(Vec::new(), |mut v, a| {
                    if !v.contains(&a) {
                        v.push(a);
                    }
                    v
                }),
            node: "n2".into(),
            named_ports: ports
                .into_iter()
                .map(|(name, (p, number))| {
                    let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][p];
                    (name, NamedPort { protocol, number })
                })
                .collect(),
        })
}

proptest! {
    #[test]
    fn encode_then_decode_is_the_identity(pods in prop::collection::btree_map(
        ("[a-z]{1,3}", "[a-z]{1,3}"), arb_pod(), 0..20)) {
        let pods: Vec<Pod> = pods
            .into_iter()
            .map(|((ns, name), mut p)| { p.key = PodKey::new(ns, name); p })
            .collect();
        let decoded = decode(encode("n2", &pods).as_bytes(), "n2").unwrap();
        prop_assert!(decoded.refused.is_empty());
        prop_assert_eq!(&decoded.pods, &pods);
        let vetted = vet(decoded, "n2", &cidrs());
        prop_assert_eq!(vetted.pods, pods);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_never_leaves_the_node(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(decoded) = decode(&bytes, "n2") {
            prop_assert!(decoded.pods.iter().all(|p| p.node == "n2"));
        }
    }

    #[test]
    fn vetting_keeps_exactly_the_addresses_inside(hosts in prop::collection::vec(
        (any::<bool>(), any::<u8>()), 0..4)) {
        let ips: Vec<String> = hosts
            .iter()
            .map(|(inside, h)| format!("10.244.{}.{h}", if *inside { 2 } else { 3 }))
            .collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let p = pod("x", "p", "a", &refs);
        let decoded = decode(encode("n2", [&p]).as_bytes(), "n2").unwrap();
        let before = decoded.pods[0].addresses.clone();
        let vetted = vet(decoded, "n2", &cidrs());
        let cidrs = cidrs();
        let inside: Vec<_> = before.iter().copied().filter(|a| cidrs[0].contains(a)).collect();
        prop_assert_eq!(&vetted.pods[0].addresses, &inside);
        prop_assert_eq!(vetted.refused.len(), before.len() - inside.len());
    }
}
