//! Property tests of the codec: whatever one end writes, the other end reads back unchanged,
//! for random device and peer configurations.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

fn any_key() -> impl Strategy<Value = Key> {
    any::<[u8; 32]>().prop_map(Key)
}

/// A key the protocol can carry as "set" (the all-zero key means "none").
fn nonzero_key() -> impl Strategy<Value = Key> {
    any_key().prop_filter("all-zero means no key", |k| !k.is_zero())
}

/// `Some(Some(k))` sets a key, `Some(None)` removes it, `None` leaves it.
fn key_change() -> impl Strategy<Value = Option<Option<Key>>> {
    prop_oneof![
        Just(None),
        Just(Some(None)),
        nonzero_key().prop_map(|k| Some(Some(k))),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A network with its host bits cleared (a `set` clears them when it parses).
fn network() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(ip, len)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, len % (max + 1))
            .expect("prefix in range")
            .trunc()
    })
}

fn peer_update() -> impl Strategy<Value = PeerUpdate> {
    (
        nonzero_key(),
        any::<(bool, bool, bool)>(),
        key_change(),
        proptest::option::of(endpoint()),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(network(), 0..5),
    )
        .prop_map(
            |(public_key, (remove, update_only, replace_allowed_ips), psk, ep, ka, nets)| {
                PeerUpdate {
                    public_key,
                    remove,
                    update_only,
                    preshared_key: psk,
                    endpoint: ep,
                    persistent_keepalive: ka,
                    replace_allowed_ips,
                    allowed_ips: nets,
                }
            },
        )
}

fn set_request() -> impl Strategy<Value = SetRequest> {
    (
        key_change(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(peer_update(), 0..6),
    )
        .prop_map(
            |(private_key, listen_port, fwmark, replace_peers, peers)| SetRequest {
                private_key,
                listen_port,
                fwmark,
                replace_peers,
                peers,
            },
        )
}

fn peer_info() -> impl Strategy<Value = PeerInfo> {
    (
        nonzero_key(),
        proptest::option::of(nonzero_key()),
        proptest::option::of(endpoint()),
        // A handshake time of zero means "never", so a real one is never the epoch.
        proptest::option::of((1..u64::from(u32::MAX), 0..1_000_000_000u32)),
        any::<(u64, u64, u16)>(),
        proptest::collection::vec(network(), 0..5),
    )
        .prop_map(
            |(public_key, preshared_key, endpoint, hs, (rx, tx, ka), nets)| PeerInfo {
                public_key,
                preshared_key,
                endpoint,
                last_handshake: hs.map(|(s, n)| UNIX_EPOCH + Duration::new(s, n)),
                rx_bytes: rx,
                tx_bytes: tx,
                persistent_keepalive: ka,
                allowed_ips: nets,
            },
        )
}

fn device_info() -> impl Strategy<Value = DeviceInfo> {
    (
        proptest::option::of(nonzero_key()),
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(peer_info(), 0..6),
    )
        .prop_map(|(private_key, listen_port, fwmark, peers)| DeviceInfo {
            private_key,
            listen_port,
            fwmark,
            peers,
        })
}

/// The lines of a written request as the server hands them to [`parse_request`]: without
/// the terminating empty line.
fn request_lines(text: &str) -> impl Iterator<Item = &str> {
    text.strip_suffix("\n\n")
        .expect("a request ends with an empty line")
        .lines()
}

proptest! {
    #[test]
    fn a_written_set_parses_back_unchanged(req in set_request()) {
        let mut text = String::new();
        write_set(&req, &mut text);
        prop_assert_eq!(text.matches("\n\n").count(), 1, "one empty line, at the end: {}", text);
        prop_assert_eq!(parse_request(request_lines(&text)), Ok(Request::Set(req)));
    }

    #[test]
    fn a_written_get_answer_reads_back_unchanged(info in device_info()) {
        let mut text = String::new();
        write_get(&info, &mut text);
        prop_assert!(answer_complete(text.as_bytes()));
        prop_assert_eq!(parse_get_answer(&text), Ok(info));
    }

    #[test]
    fn errno_answers_read_back(errno in any::<i32>()) {
        let mut text = String::new();
        write_errno(errno, &mut text);
        prop_assert!(answer_complete(text.as_bytes()));
        prop_assert_eq!(answer_errno(&text), Some(errno));
        let expected = if errno == 0 { Ok(()) } else { Err(AnswerError::Errno(errno)) };
        prop_assert_eq!(parse_set_answer(&text), expected);
    }
}

#[test]
fn a_written_get_request_parses_back() {
    let mut text = String::new();
    write_request(&Request::Get, &mut text);
    assert_eq!(text, "get=1\n\n");
    assert_eq!(parse_request(request_lines(&text)), Ok(Request::Get));
}

#[test]
fn rejected_request_values_that_may_be_keys_are_not_repeated() {
    let secret = "cd".repeat(31);
    for text in [
        format!("set=1\nprivate_key={secret}"),
        format!(
            "set=1\npublic_key={}\npreshared_key={secret}",
            "01".repeat(32)
        ),
        format!("set=1\n{secret}"),
        format!("set=1\n{secret}=\n"),
        format!("private_key={secret}"),
    ] {
        let err = parse_request(text.lines()).expect_err(&text);
        let shown = err.to_string();
        assert!(!shown.contains(&secret[..16]), "{shown}");
    }
    // Values that cannot be keys are still shown, so a mistake can be found.
    let err = parse_request("set=1\nlisten_port=65536".lines()).expect_err("port");
    assert!(err.to_string().contains("65536"), "{err}");
    let err = parse_request("set=1\nbogus=1".lines()).expect_err("key");
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn no_debug_output_shows_any_byte_of_a_key() {
    let secret = Key([0xcd; 32]);
    let hex = secret.to_hex();
    let mut peer = PeerUpdate::new(Key([0xab; 32]));
    peer.preshared_key = Some(Some(secret));
    let set = SetRequest {
        private_key: Some(Some(secret)),
        peers: vec![peer],
        ..SetRequest::default()
    };
    let info = DeviceInfo {
        private_key: Some(secret),
        ..DeviceInfo::default()
    };
    for shown in [
        format!("{secret:?}"),
        format!("{set:?}"),
        format!("{:?}", Request::Set(set.clone())),
        format!("{info:?}"),
    ] {
        // Not even the first four bytes (the Debug of earlier versions showed them).
        assert!(!shown.contains(&hex[..8]), "{shown}");
        assert!(!shown.contains("abababab"), "{shown}");
    }
    assert_eq!(format!("{secret:?}"), "Key(<withheld>)");
}

#[test]
fn a_private_key_line_ending_in_cr_is_rejected_without_the_key() {
    let hex = Key([0x5e; 32]).to_hex();
    let err = parse_request(format!("set=1\nprivate_key={hex}\r").lines()).expect_err("CR");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&hex[..16]), "{shown}");
    assert!(shown.contains("withheld"), "{shown}");
}
