//! Tests of the node record: its exact wire format, round trips, and the field each validation
//! error names.
#![allow(clippy::unwrap_used)]

use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

fn sample() -> NodeRecord {
    NodeRecord {
        name: "n1".into(),
        public_key: PublicKey::from_bytes([3; 32]),
        listen_port: 51820,
        endpoints: vec!["198.18.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
        pod_cidrs: vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap(),
        ],
        rotation: Default::default(),
    }
}

/// Sample as a JSON object with `edit` applied.
fn json_with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(&sample().to_json()).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

#[test]
fn rotation_fields_round_trip_and_are_omitted_when_empty() {
    let plain = sample().to_json();
    assert!(!plain.contains("second") && !plain.contains("rotation") && !plain.contains("acks"));
    let mut r = sample();
    r.rotation = Rotation {
        second: Some(SlotKey {
            public_key: PublicKey::from_bytes([5; 32]),
            listen_port: 51821,
        }),
        step: Some(RotationStep {
            serial: 3,
            draining: Some(1),
            replaced: true,
        }),
    };
    let text = r.to_json();
    assert!(
        text.contains(r#""rotation":{"serial":3,"draining":1,"replaced":true}"#),
        "{text}"
    );
    assert_eq!(NodeRecord::from_json("n1", &text).unwrap(), r);
    assert_eq!(r.slot(Slot::SECOND).unwrap().listen_port, 51821);
    assert_eq!(r.draining(), Some(Slot::SECOND));
}

#[test]
fn rotation_field_errors_name_the_field() {
    let bad = [
        (
            json_with(|o| drop(o.insert("secondKey".into(), "AAAA".into()))),
            "secondKey",
        ),
        (
            json_with(|o| {
                o.insert("secondKey".into(), STANDARD.encode([5u8; 32]).into());
                o.insert("secondPort".into(), 0.into());
            }),
            "secondPort",
        ),
        (
            json_with(|o| drop(o.insert("rotation".into(), serde_json::json!({"serial": 0})))),
            "rotation",
        ),
        (
            json_with(|o| {
                o.insert(
                    "rotation".into(),
                    serde_json::json!({"serial": 2, "draining": 2}),
                );
            }),
            "rotation",
        ),
        (
            json_with(|o| {
                o.insert(
                    "rotation".into(),
                    serde_json::json!({"serial": 2, "draining": 1, "replaced": "yes"}),
                );
            }),
            "rotation",
        ),
    ];
    for (text, field) in bad {
        assert_eq!(field_err(&text).field, field, "{text}");
    }
}

#[test]
fn acks_from_an_older_meshd_parse_and_are_neither_kept_nor_written_back() {
    // meshd before 0.20 acknowledged other nodes' rotation steps in its own record.
    let with_acks = json_with(|o| drop(o.insert("acks".into(), serde_json::json!({"n2": 9}))));
    let r = NodeRecord::from_json("n1", &with_acks).unwrap();
    assert_eq!(r, sample());
    assert!(!r.to_json().contains("acks"), "{}", r.to_json());
    // Whatever shape it has: the field means nothing any more.
    for acks in [serde_json::json!({"N2!": 1}), serde_json::json!("x")] {
        let text = json_with(|o| drop(o.insert("acks".into(), acks.clone())));
        assert_eq!(
            NodeRecord::from_json("n1", &text).unwrap(),
            sample(),
            "{text}"
        );
    }
}

fn field_err(text: &str) -> RecordError {
    NodeRecord::from_json("n1", text).unwrap_err()
}

#[test]
fn exact_wire_format() {
    let key = STANDARD.encode([3u8; 32]);
    assert_eq!(
        sample().to_json(),
        format!(
            r#"{{"version":1,"name":"n1","publicKey":"{key}","listenPort":51820,"endpoints":["198.18.0.1","fd00:1::1"],"podCIDRs":["10.244.1.0/24","fd00:244:1::/64"]}}"#
        )
    );
}

#[test]
fn round_trip() {
    let r = sample();
    assert_eq!(r.validate(), Ok(()));
    assert_eq!(NodeRecord::from_json("n1", &r.to_json()).unwrap(), r);
    assert_eq!(NodeRecord::from_json("", &r.to_json()).unwrap(), r);
    let mut empty = r.clone();
    empty.pod_cidrs.clear();
    assert_eq!(
        NodeRecord::from_json("n1", &empty.to_json()).unwrap(),
        empty
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let text = json_with(|o| {
        o.insert("futureField".into(), serde_json::json!({"x": [1, 2]}));
        o.insert("mtu".into(), 1420.into());
    });
    assert_eq!(NodeRecord::from_json("n1", &text).unwrap(), sample());
}

#[test]
fn not_json_or_not_object() {
    for text in ["", "{", "nope", "[1,2]", "\"str\"", "null", "42"] {
        let e = NodeRecord::from_json("hint", text).unwrap_err();
        assert_eq!(e.field, "record", "{text:?}");
        assert_eq!(e.node, "hint");
    }
}

#[test]
fn version_errors() {
    let e = field_err(&json_with(|o| {
        o.remove("version");
    }));
    assert_eq!((e.field, e.reason.as_str()), ("version", "missing"));

    let e = field_err(&json_with(|o| {
        o.insert("version".into(), 2.into());
    }));
    assert_eq!(e.field, "version");
    assert_eq!(e.node, "n1");
    assert!(
        e.reason.contains("unsupported future version 2"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("understands 1"), "{}", e.reason);
    assert_eq!(
        e.to_string(),
        "record for node \"n1\": field version: unsupported future version 2 (this meshd understands 1)"
    );

    for bad in [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!("1"),
        serde_json::json!(1.5),
    ] {
        let e = field_err(&json_with(|o| {
            o.insert("version".into(), bad.clone());
        }));
        assert_eq!(e.field, "version", "{bad}");
    }
}

#[test]
fn name_errors() {
    let e = NodeRecord::from_json(
        "hint",
        &json_with(|o| {
            o.remove("name");
        }),
    )
    .unwrap_err();
    assert_eq!((e.field, e.node.as_str()), ("name", "hint"));

    let long = "a".repeat(254);
    for bad in [
        "",
        "N1",
        "-n1",
        "n1-",
        "n_1",
        "../x",
        "a/b",
        ".n1",
        long.as_str(),
    ] {
        let e = NodeRecord::from_json(
            "hint",
            &json_with(|o| {
                o.insert("name".into(), bad.into());
            }),
        )
        .unwrap_err();
        assert_eq!(e.field, "name", "{bad:?}");
        assert_eq!(
            e.node, "hint",
            "invalid name must not be used as node: {bad:?}"
        );
    }
    let e = field_err(&json_with(|o| {
        o.insert("name".into(), 7.into());
    }));
    assert_eq!(e.field, "name");

    let ok = "a".repeat(253);
    assert!(is_dns1123_subdomain(&ok));
    assert!(is_dns1123_subdomain("node-1.example.com"));
}

#[test]
fn name_mismatch_with_hint() {
    let e = NodeRecord::from_json("n2", &sample().to_json()).unwrap_err();
    assert_eq!(e.field, "name");
    assert_eq!(e.node, "n1");
    assert!(e.reason.contains("n2"), "{}", e.reason);
}

#[test]
fn public_key_errors() {
    let e = field_err(&json_with(|o| {
        o.insert("publicKey".into(), "!!!not base64!!!".into());
    }));
    assert_eq!(e.field, "publicKey");
    assert!(e.reason.contains("base64"), "{}", e.reason);

    let e = field_err(&json_with(|o| {
        o.insert("publicKey".into(), STANDARD.encode([1u8; 16]).into());
    }));
    assert_eq!(e.field, "publicKey");
    assert!(e.reason.contains("16"), "{}", e.reason);

    let e = field_err(&json_with(|o| {
        o.insert("publicKey".into(), STANDARD.encode([0u8; 32]).into());
    }));
    assert_eq!(e.field, "publicKey");

    for edit in [None, Some(Value::from(5))] {
        let e = field_err(&json_with(|o| match edit {
            None => {
                o.remove("publicKey");
            }
            Some(v) => {
                o.insert("publicKey".into(), v);
            }
        }));
        assert_eq!(e.field, "publicKey");
    }
}

#[test]
fn listen_port_errors() {
    for bad in [
        Some(Value::from(0)),
        Some(Value::from(65536)),
        Some(Value::from("51820")),
        None,
    ] {
        let e = field_err(&json_with(|o| match &bad {
            None => {
                o.remove("listenPort");
            }
            Some(v) => {
                o.insert("listenPort".into(), v.clone());
            }
        }));
        assert_eq!(e.field, "listenPort", "{bad:?}");
    }
}

#[test]
fn endpoint_errors() {
    let cases = [
        serde_json::json!([]),
        serde_json::json!(["not-an-ip"]),
        serde_json::json!(["198.18.0.1:51820"]),
        serde_json::json!(["0.0.0.0"]),
        serde_json::json!(["::"]),
        serde_json::json!(["224.0.0.1"]),
        serde_json::json!(["ff02::1"]),
        serde_json::json!([1]),
        serde_json::json!("198.18.0.1"),
    ];
    for bad in cases {
        let e = field_err(&json_with(|o| {
            o.insert("endpoints".into(), bad.clone());
        }));
        assert_eq!(e.field, "endpoints", "{bad}");
    }
    let e = field_err(&json_with(|o| {
        o.remove("endpoints");
    }));
    assert_eq!(e.field, "endpoints");
}

#[test]
fn pod_cidr_errors() {
    let cases = [
        serde_json::json!(["10.0.0.1/24"]),
        serde_json::json!(["fd00::1/64"]),
        serde_json::json!(["10.0.0.0"]),
        serde_json::json!(["10.0.0.0/33"]),
        serde_json::json!(["garbage"]),
        serde_json::json!({}),
    ];
    for bad in cases {
        let e = field_err(&json_with(|o| {
            o.insert("podCIDRs".into(), bad.clone());
        }));
        assert_eq!(e.field, "podCIDRs", "{bad}");
    }
    let e = field_err(&json_with(|o| {
        o.insert("podCIDRs".into(), serde_json::json!(["10.0.0.1/24"]));
    }));
    assert!(e.reason.contains("10.0.0.0/24"), "{}", e.reason);
}

#[test]
fn validate_rejects_bad_records() {
    let mut r = sample();
    r.name = "../x".into();
    assert_eq!(r.validate().unwrap_err().field, "name");
    let mut r = sample();
    r.public_key = PublicKey::from_bytes([0; 32]);
    assert_eq!(r.validate().unwrap_err().field, "publicKey");
    let mut r = sample();
    r.listen_port = 0;
    assert_eq!(r.validate().unwrap_err().field, "listenPort");
    let mut r = sample();
    r.endpoints.clear();
    assert_eq!(r.validate().unwrap_err().field, "endpoints");
    let mut r = sample();
    r.endpoints.push("0.0.0.0".parse().unwrap());
    assert_eq!(r.validate().unwrap_err().field, "endpoints");
    let mut r = sample();
    r.pod_cidrs.push("10.1.2.3/16".parse().unwrap());
    assert_eq!(r.validate().unwrap_err().field, "podCIDRs");
}
