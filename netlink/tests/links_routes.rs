//! Root tests of [`netlink::Links`] and [`netlink::Routes`]: routes meshd owns on a
//! user-space device's TUN in both families (and never anyone else's), underlay detection
//! and global addresses.

mod common;

use std::net::IpAddr;

use common::{ifname, in_netns, net, opts, Netns};
use netlink::{Links, Routes, WgDevice, WireguardMode, MESHD_ROUTE_PROTOCOL};

#[test]
fn routes_and_links_on_the_tun_both_families() {
    testkit::require_tools(&["ip"]);
    let mut ns = Netns::new();
    let name = ifname();
    ns.track(&name);
    let logs = tempfile::tempdir().expect("tempdir");
    let opts = opts(&logs);
    let n = name.clone();
    let ifindex = in_netns(&ns, move || async move {
        let (dev, _) = WgDevice::ensure(&n, WireguardMode::Userspace, &opts)
            .await
            .expect("ensure");
        let links = Links::connect().await.expect("links");
        let idx = dev.ifindex();
        links.set_mtu(idx, 1380).await.expect("set mtu");
        links.set_mtu(idx, 1380).await.expect("set same mtu");
        assert_eq!(links.mtu(idx).await.expect("mtu"), 1380);
        links.set_up(idx).await.expect("up");

        let routes = Routes::connect().await.expect("routes");
        let want = vec![net("10.77.0.0/24"), net("fd77::/64")];
        for dst in &want {
            routes.add(*dst, idx).await.expect("add");
            routes.add(*dst, idx).await.expect("add is idempotent");
        }
        let mut got = routes.list(idx).await.expect("list");
        got.sort();
        assert_eq!(got, want);
        idx
    });
    let v4 = ns.ip(&[
        "-4",
        "route",
        "show",
        "proto",
        &MESHD_ROUTE_PROTOCOL.to_string(),
    ]);
    assert!(v4.contains(&format!("10.77.0.0/24 dev {name}")), "{v4}");
    let v6 = ns.ip(&[
        "-6",
        "route",
        "show",
        "proto",
        &MESHD_ROUTE_PROTOCOL.to_string(),
    ]);
    assert!(v6.contains(&format!("fd77::/64 dev {name}")), "{v6}");
    // Routes of other owners on the same link are neither listed nor deleted.
    ns.ip(&["route", "add", "10.78.0.0/24", "dev", &name]);
    ns.ip(&["-6", "route", "add", "fd78::/64", "dev", &name]);

    let n = name.clone();
    in_netns(&ns, move || async move {
        let routes = Routes::connect().await.expect("routes");
        let mut got = routes.list(ifindex).await.expect("list");
        got.sort();
        assert_eq!(got, vec![net("10.77.0.0/24"), net("fd77::/64")]);
        for dst in [net("10.77.0.0/24"), net("fd77::/64")] {
            routes.del(dst, ifindex).await.expect("del");
            routes.del(dst, ifindex).await.expect("del is idempotent");
        }
        // Deleting a foreign route's destination with meshd's protocol leaves it alone.
        routes
            .del(net("10.78.0.0/24"), ifindex)
            .await
            .expect("del foreign");
        routes
            .del(net("fd78::/64"), ifindex)
            .await
            .expect("del foreign v6");
        assert!(routes.list(ifindex).await.expect("list").is_empty());

        let links = Links::connect().await.expect("links");
        assert_eq!(links.index_of(&n).await.expect("index"), Some(ifindex));
    });
    let v4 = ns.ip(&["-4", "route", "show"]);
    assert!(v4.contains("10.78.0.0/24"), "foreign route kept: {v4}");
    assert!(!v4.contains("10.77.0.0/24"), "{v4}");
    let v6 = ns.ip(&["-6", "route", "show"]);
    assert!(v6.contains("fd78::/64"), "foreign route kept: {v6}");

    let logs = tempfile::tempdir().expect("tempdir");
    let opts = self::opts(&logs);
    in_netns(&ns, move || async move {
        let (dev, adopted) = WgDevice::ensure(&name, WireguardMode::Userspace, &opts)
            .await
            .expect("adopt");
        assert!(adopted);
        dev.destroy().await.expect("destroy");
    });
}

#[test]
fn underlay_and_addresses() {
    testkit::require_tools(&["ip"]);
    let ns = Netns::new();
    // Nothing but lo (up) and a down TUN: no underlay.
    ns.ip(&["tuntap", "add", "dev", "nldummy", "mode", "tun"]);
    let none = in_netns(&ns, || async {
        Links::connect()
            .await
            .expect("links")
            .underlay()
            .await
            .expect("underlay")
    });
    assert_eq!(none, None);
    // An UP link without a default route is the fallback.
    ns.ip(&["link", "set", "nldummy", "up"]);
    let fallback = in_netns(&ns, || async {
        Links::connect()
            .await
            .expect("links")
            .underlay()
            .await
            .expect("underlay")
    });
    assert_eq!(fallback.map(|(_, n, _)| n), Some("nldummy".to_string()));

    ns.ip(&[
        "link", "add", "nlu0", "mtu", "1450", "type", "veth", "peer", "name", "nlu1",
    ]);
    ns.ip(&["addr", "add", "198.18.5.1/24", "dev", "nlu0"]);
    ns.ip(&["addr", "add", "2001:db8:5::1/64", "dev", "nlu0", "nodad"]);
    ns.ip(&["link", "set", "nlu0", "up"]);
    ns.ip(&["link", "set", "nlu1", "up"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.5.254",
        "dev",
        "nlu0",
    ]);
    let (underlay, addrs) = in_netns(&ns, || async {
        let links = Links::connect().await.expect("links");
        (
            links.underlay().await.expect("underlay"),
            links.addresses("nlu0").await.expect("addresses"),
        )
    });
    let (_, name, mtu) = underlay.expect("underlay found");
    assert_eq!((name.as_str(), mtu), ("nlu0", 1450));
    assert!(
        addrs.contains(&"198.18.5.1".parse::<IpAddr>().expect("ip")),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&"2001:db8:5::1".parse::<IpAddr>().expect("ip")),
        "{addrs:?}"
    );
    assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    // The link-local address is not global scope.
    assert!(
        addrs.iter().all(|a| match a {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        }),
        "{addrs:?}"
    );
}
