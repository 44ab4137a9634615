//! Root test of flow events: the policy lab (`lab`), events switched on. A ping between the
//! pods is one first-packet event per observation point and is then only counted in
//! `FLOW_TABLE`; a spoofed packet and a policy drop are drop events naming the addresses, the
//! reason and (policy) the direction; with events off nothing is written; with a ring buffer
//! of one page and no reader, every event that did not fit is counted in `FLOW_LOST`
//! (`delivered + lost == sent`), and the verdicts and counters are what they were without
//! events.
#![allow(clippy::unwrap_used)]

mod lab;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use aya::maps::{MapData, RingBuf};
use ebpf_redirect::{Datapath, FlowMaps, MapSizes, Verdict};
use ebpf_redirect_common::{
    conntrack::CT_FAMILY_V4,
    flows::{
        FlowEvent, FLOW_EVENT_SIZE, FLOW_KIND_DROP, FLOW_KIND_FIRST_PACKET, FLOW_POINT_FROM_POD,
        FLOW_POINT_TO_POD, FLOW_REASON_LOCAL_DELIVERY, FLOW_REASON_POLICY_DENIED,
        FLOW_REASON_SPOOFED_SOURCE, FLOW_VERDICT_DROPPED, FLOW_VERDICT_FORWARDED,
    },
    DIRECTION_INGRESS,
};
use lab::{in_netns, ipn, ping, Lab, V4};

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), FLOW_EVENT_SIZE);
        out.push(FlowEvent::from_bytes(&item).unwrap());
    }
    out
}

fn v4(event_addr: [u8; 16]) -> IpAddr {
    IpAddr::from([event_addr[0], event_addr[1], event_addr[2], event_addr[3]])
}

/// Sends `count` UDP datagrams from `src` (an address A holds but may not send from) to B.
fn send_spoofed(lab: &Lab, src: IpAddr, count: usize) {
    let sock = in_netns(lab.a(), || {
        UdpSocket::bind(SocketAddr::new(src, 0)).unwrap()
    });
    for _ in 0..count {
        sock.send_to(b"spoof", SocketAddr::new(V4.b, 9)).unwrap();
    }
}

#[test]
fn drops_and_first_packets_are_reported_forwarded_packets_counted() {
    let mut lab = Lab::new("f");
    let mut flows = FlowMaps::open(&lab.pin_dir).unwrap();
    let mut ring = flows.ring().unwrap();
    drain(&mut ring);
    // Off (the unset default): nothing at all.
    assert!(ping(lab.a(), V4.b));
    assert!(drain(&mut ring).is_empty(), "events while off");
    assert!(flows.flows().unwrap().is_empty());

    flows.set_events(true).unwrap();
    assert!(flows.events().unwrap());
    let before = lab.counters();
    for _ in 0..3 {
        assert!(ping(lab.a(), V4.b));
    }
    let events = drain(&mut ring);
    let a_to_b = |e: &&FlowEvent| {
        e.family == CT_FAMILY_V4 && v4(e.src) == V4.a && v4(e.dst) == V4.b && e.protocol == 1
    };
    let firsts: Vec<&FlowEvent> = events
        .iter()
        .filter(a_to_b)
        .filter(|e| e.kind == FLOW_KIND_FIRST_PACKET)
        .collect();
    // One ping process per call: three echo ids, each a flow at from_pod (A) and to_pod (B).
    for (point, ifindex) in [
        (FLOW_POINT_FROM_POD, lab.ep_a),
        (FLOW_POINT_TO_POD, lab.ep_b),
    ] {
        let at: Vec<_> = firsts.iter().filter(|e| e.point == point).collect();
        assert_eq!(at.len(), 3, "first packets at point {point}: {events:?}");
        for e in at {
            assert_eq!(e.ifindex, ifindex);
            assert_eq!(e.verdict, FLOW_VERDICT_FORWARDED);
            assert_eq!(e.reason, FLOW_REASON_LOCAL_DELIVERY);
            assert_eq!((e.icmp_type, e.icmp_code), (8, 0));
            assert_eq!(e.ip_len, 84, "IP length of a default ping");
        }
    }
    let table = flows.flows().unwrap();
    let counted: u64 = table
        .iter()
        .filter(|(k, _)| k.ifindex == lab.ep_a && k.protocol == 1 && k.point == FLOW_POINT_FROM_POD)
        .map(|(_, c)| c.packets)
        .sum();
    assert_eq!(counted, 3, "{table:?}");
    // Observation changes no verdict counter beyond what the packets did.
    let after = lab.counters();
    assert!(after[Verdict::Pass as usize] >= before[Verdict::Pass as usize] + 3);

    // A spoofed source: a drop event naming the addresses and the reason.
    let spoofed: IpAddr = "10.210.1.77".parse().unwrap();
    ipn(lab.a(), "addr add 10.210.1.77/32 dev eth0");
    send_spoofed(&lab, spoofed, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let events = drain(&mut ring);
    let drop = events
        .iter()
        .find(|e| e.kind == FLOW_KIND_DROP && v4(e.src) == spoofed)
        .unwrap_or_else(|| panic!("no spoofed drop in {events:?}"));
    assert_eq!(drop.reason, FLOW_REASON_SPOOFED_SOURCE);
    assert_eq!(drop.verdict, FLOW_VERDICT_DROPPED);
    assert_eq!((drop.protocol, drop.dst_port, v4(drop.dst)), (17, 9, V4.b));

    // B isolated for ingress with no peer: A's ping dies in B's to_pod, reported as such.
    lab.isolate(lab.ep_b, DIRECTION_INGRESS);
    lab.dp.policy_changed().unwrap();
    assert!(!ping(lab.a(), V4.b));
    let events = drain(&mut ring);
    let denied = events
        .iter()
        .find(|e| e.kind == FLOW_KIND_DROP && e.reason == FLOW_REASON_POLICY_DENIED)
        .unwrap_or_else(|| panic!("no policy drop in {events:?}"));
    assert_eq!(denied.point, FLOW_POINT_TO_POD);
    assert_eq!(denied.ifindex, lab.ep_b);
    assert_eq!(denied.policy_direction, DIRECTION_INGRESS);
    assert_eq!((v4(denied.src), v4(denied.dst)), (V4.a, V4.b));

    // Flows can be forgotten; their next packet is a first packet again.
    for (key, _) in flows.flows().unwrap() {
        flows.remove_flow(&key).unwrap();
    }
    assert!(flows.flows().unwrap().is_empty());
    assert_eq!(flows.lost().unwrap(), 0);
}

#[test]
fn a_full_ring_counts_what_it_loses() {
    let lab = Lab::new("l");
    // Reload over the same pins with a one-page ring buffer. The attached programs stay the
    // first load's; their tail calls reach the new reporter, which writes into the new ring.
    let sizes = MapSizes {
        flow_ring_bytes: 4096,
        ..Default::default()
    };
    let dp = Datapath::load_sized(&lab.pin_dir, &sizes).unwrap();
    assert_eq!(dp.max_entries("FLOW_EVENTS").unwrap(), 4096);
    let mut flows = FlowMaps::open(&lab.pin_dir).unwrap();
    flows.set_events(true).unwrap();
    let mut ring = flows.ring().unwrap();
    drain(&mut ring);
    let spoofed: IpAddr = "10.210.1.78".parse().unwrap();
    ipn(lab.a(), "addr add 10.210.1.78/32 dev eth0");
    let before = dp.counters().unwrap()[Verdict::Spoofed as usize];
    const SENT: usize = 500;
    send_spoofed(&lab, spoofed, SENT);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dropped = dp.counters().unwrap()[Verdict::Spoofed as usize] - before;
    assert_eq!(
        dropped, SENT as u64,
        "every spoofed datagram dropped and counted"
    );
    let delivered = drain(&mut ring)
        .iter()
        .filter(|e| v4(e.src) == spoofed)
        .count() as u64;
    let lost = flows.lost().unwrap();
    assert!(
        delivered > 0 && lost > 0,
        "delivered {delivered}, lost {lost}"
    );
    // Lost counts every event that found no room (other traffic's events may be among them).
    assert!(
        delivered + lost >= SENT as u64,
        "delivered {delivered} + lost {lost} < {SENT}"
    );
    assert!(
        delivered < SENT as u64 / 2,
        "a page holds ~56 events, got {delivered}"
    );
}
