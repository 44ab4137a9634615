//! Root tests of `meshd-wg`'s peer table over UAPI: a peer changed in place keeps its
//! session, and five thousand peers are configured, changed and listed quickly and cheaply.

mod common;

use std::time::Duration;

use common::{b64_to_hex, cpu_ticks, ifname, rss_kib, run, uapi, Impl, Keys, Netns, Pair};

#[test]
fn peer_is_modified_in_place_without_losing_its_session() {
    testkit::require_tools(&["wg", "ip"]);
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, false);
    p.ping(true, false);
    let hs_before = p.a.wg(&["show", &p.ia, "latest-handshakes"]);
    std::thread::sleep(Duration::from_millis(1100));
    // Same peer: new allowed IPs (replace), keepalive, same endpoint.
    let net = p.net;
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "persistent-keepalive",
        "15",
        "allowed-ips",
        &format!("10.{net}.0.2/32,fd10:{net}::2/128,192.0.2.0/24"),
    ]);
    let dump = p.a.wg(&["show", &p.ia, "dump"]);
    let peer: Vec<&str> = dump.lines().nth(1).expect("peer").split('\t').collect();
    let mut ips: Vec<&str> = peer[3].split(',').collect();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            "10.".to_string() + &format!("{net}.0.2/32"),
            "192.0.2.0/24".into(),
            format!("fd10:{net}::2/128")
        ]
    );
    assert_eq!(peer[7], "15");
    p.ping(true, false);
    assert_eq!(
        p.a.wg(&["show", &p.ia, "latest-handshakes"]),
        hs_before,
        "the session survived the change (no new handshake)"
    );
    // Removing the route's prefix stops traffic; re-adding brings it back.
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "allowed-ips",
        &format!("fd10:{net}::2/128"),
    ]);
    let out = run(p
        .a
        .cmd("ping")
        .args(["-c", "1", "-W", "1", &p.tunnel_ip(2, false)]));
    assert!(!out.status.success(), "no allowed IP, no traffic");
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "allowed-ips",
        &format!("10.{net}.0.2/32"),
    ]);
    p.ping(true, false);
    // Remove and re-add: a new peer object, a new handshake.
    p.a.wg(&["set", &p.ia, "peer", &p.kb.public, "remove"]);
    assert!(!p.a.wg(&["show", &p.ia, "peers"]).contains(&p.kb.public));
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "endpoint",
        &format!("198.18.{net}.2:51820"),
        "allowed-ips",
        &format!("10.{net}.0.2/32"),
    ]);
    p.ping(true, false);
    let _ = (p.pid_a, p.pid_b, &p.ib);
}

#[test]
fn five_thousand_peers_then_add_and_remove_one() {
    testkit::require_tools(&["wg", "ip"]);
    let mut ns = Netns::new();
    let ifn = ifname();
    let pid = ns.start_device(&ifn, Impl::Wgdp, 1);
    let rss0 = rss_kib(pid);
    let key = |i: u32| -> String {
        // Distinct, valid-looking public keys (any 32 bytes are accepted).
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[31] = 0x5a;
        k.iter().map(|b| format!("{b:02x}")).collect()
    };
    let own = Keys::new();
    let mut req = format!("set=1\nprivate_key={}\n", b64_to_hex(&own.private));
    for i in 0..5000u32 {
        let (hi, lo) = (i / 250, i % 250);
        req.push_str(&format!(
            "public_key={}\nendpoint=198.18.{hi}.{lo}:51820\nreplace_allowed_ips=true\n\
             allowed_ip=10.{hi}.{lo}.0/24\nallowed_ip=fd00:{hi}:{lo}::/64\n",
            key(i)
        ));
    }
    req.push('\n');
    let (ans, bulk) = uapi(&ifn, &req);
    assert_eq!(ans, "errno=0\n\n");
    let peers = ns.wg(&["show", &ifn, "peers"]);
    assert_eq!(peers.lines().count(), 5000);
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for round in 0..5u32 {
        let k = key(100_000 + round);
        let (ans, t) = uapi(
            &ifn,
            &format!(
                "set=1\npublic_key={k}\nendpoint=192.0.2.1:51820\nallowed_ip=10.250.{round}.0/24\n\n"
            ),
        );
        assert_eq!(ans, "errno=0\n\n");
        adds.push(t);
        let (ans, t) = uapi(&ifn, &format!("set=1\npublic_key={k}\nremove=true\n\n"));
        assert_eq!(ans, "errno=0\n\n");
        removes.push(t);
    }
    adds.sort();
    removes.sort();
    let (get, t_get) = uapi(&ifn, "get=1\n\n");
    assert_eq!(get.matches("public_key=").count(), 5000);
    let rss = rss_kib(pid);
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let idle = cpu_ticks(pid) - t0;
    println!(
        "5000 peers: bulk set {bulk:?}; add one median {:?} (max {:?}); remove one median {:?} (max {:?}); \
         get {t_get:?}; RSS {rss0} KiB empty, {rss} KiB with 5000 peers; idle CPU {idle} ticks in 3 s",
        adds[2], adds[4], removes[2], removes[4]
    );
    assert!(adds[2] < Duration::from_millis(20), "add one: {adds:?}");
    assert!(
        removes[2] < Duration::from_millis(20),
        "remove one: {removes:?}"
    );
    assert!(rss < 48 * 1024, "RSS {rss} KiB");
    assert!(idle <= 3, "idle CPU {idle} ticks in 3 s");
}
