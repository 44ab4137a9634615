//! NetworkPolicy enforcement: the four policy maps, the per-endpoint decision (exactly
//! `meshd_policy::datapath_model::direction_allows`), and the two check points the programs
//! call: [`egress`] from `from_pod` (tc ingress of the pod's host veth; peer = destination) and
//! [`ingress`] from `to_pod` (tc egress of that veth; peer = source). The endpoint is
//! `skb->ifindex`, the host veth, in both. Connection tracking ([`crate::conntrack`]) decides
//! first; policy decides new connections and re-judges stale ones.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_SHOT},
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie},
    programs::TcContext,
};
use ebpf_redirect_common::{
    conntrack::CT_FAMILY_V4,
    policy::{PEER_V4_DATA_LEN, PEER_V6_DATA_LEN, PORT_DATA_LEN},
    IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits, Verdict,
    DIRECTION_EGRESS, DIRECTION_INGRESS, MAX_POLICY_ISOLATION, MAX_POLICY_PEERS, MAX_POLICY_PORTS,
    PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
};

use ebpf_redirect_common::flows::{FLOW_REASON_POLICY_DENIED, FLOW_VERDICT_DROPPED};

use crate::{conntrack, count, flows, parse};

// Pinned by name like the other maps; sizes are defaults the loader may override.
#[map]
static POLICY_ISOLATION: HashMap<IsolationKey, IsolationValue> =
    HashMap::pinned(MAX_POLICY_ISOLATION, 0);
#[map]
static POLICY_PEER_V4: LpmTrie<[u8; PEER_V4_DATA_LEN], RuleBits> =
    LpmTrie::pinned(MAX_POLICY_PEERS, BPF_F_NO_PREALLOC);
#[map]
static POLICY_PEER_V6: LpmTrie<[u8; PEER_V6_DATA_LEN], RuleBits> =
    LpmTrie::pinned(MAX_POLICY_PEERS, BPF_F_NO_PREALLOC);
#[map]
static POLICY_PORT: LpmTrie<[u8; PORT_DATA_LEN], RuleBits> =
    LpmTrie::pinned(MAX_POLICY_PORTS, BPF_F_NO_PREALLOC);

/// Whether `endpoint` is isolated in `direction`.
#[inline(always)]
pub fn isolated(endpoint: u32, direction: u8) -> bool {
    let key = IsolationKey {
        endpoint,
        direction,
        reserved: [0; 3],
    };
    // SAFETY: only presence is checked; the value reference is not kept.
    unsafe { POLICY_ISOLATION.get(&key) }.is_some()
}

/// The policy's verdict for a new connection at `endpoint` in `direction` with `peer` (the
/// destination for egress, the source for ingress), `protocol` and destination `port`: open
/// without an isolation entry, else `peer_bits & port_bits != 0` (a missed lookup is 0).
#[inline(always)]
pub fn allows(
    endpoint: u32,
    direction: u8,
    family: u8,
    peer: &[u8; 16],
    protocol: u8,
    port: [u8; 2],
) -> bool {
    if !isolated(endpoint, direction) {
        return true;
    }
    let peer_bits = if family == CT_FAMILY_V4 {
        let key = PeerKeyV4 {
            prefix_len: PEER_KEY_FIXED_BITS + 32,
            endpoint,
            direction,
            reserved: [0; 3],
            address: [peer[0], peer[1], peer[2], peer[3]],
        };
        POLICY_PEER_V4
            .get(Key::new(key.prefix_len, key.trie_data()))
            .map_or(0, |v| v.bits)
    } else {
        let key = PeerKeyV6 {
            prefix_len: PEER_KEY_FIXED_BITS + 128,
            endpoint,
            direction,
            reserved: [0; 3],
            address: *peer,
        };
        POLICY_PEER_V6
            .get(Key::new(key.prefix_len, key.trie_data()))
            .map_or(0, |v| v.bits)
    };
    if peer_bits == 0 {
        return false;
    }
    let key = PortKey {
        prefix_len: PORT_KEY_FIXED_BITS + 24,
        endpoint,
        direction,
        protocol,
        port,
    };
    let port_bits = POLICY_PORT
        .get(Key::new(key.prefix_len, key.trie_data()))
        .map_or(0, |v| v.bits);
    peer_bits & port_bits != 0
}

/// The endpoint: the host veth the program runs on.
#[inline(always)]
fn endpoint(ctx: &TcContext) -> u32 {
    // SAFETY: reads a scalar field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The counter of a denial in `direction`.
#[inline(always)]
pub fn denied(direction: u8) -> Verdict {
    if direction == DIRECTION_EGRESS {
        Verdict::PolicyDeniedEgress
    } else {
        Verdict::PolicyDeniedIngress
    }
}

/// One check point: `Some(TC_ACT_SHOT)` (counted, and noted for the flow reporter)
/// if the packet must be dropped, `None` to let the program go on. A frame that cannot be
/// parsed is dropped where the direction is isolated.
#[inline(always)]
fn check(ctx: &TcContext, direction: u8, from_host: bool) -> Option<i32> {
    let endpoint = endpoint(ctx);
    let packet = match parse::packet(ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(_) => {
            if isolated(endpoint, direction) {
                count(denied(direction));
                flows::note(
                    ctx,
                    flows::drop_note(FLOW_VERDICT_DROPPED, FLOW_REASON_POLICY_DENIED, direction),
                );
                return Some(TC_ACT_SHOT as i32);
            }
            return None;
        }
    };
    match conntrack::judge(ctx, endpoint, direction, &packet, from_host) {
        conntrack::Judgement::Pass => None,
        conntrack::Judgement::Deny(denied_by) => {
            count(denied(denied_by));
            flows::note(
                ctx,
                flows::drop_note(FLOW_VERDICT_DROPPED, FLOW_REASON_POLICY_DENIED, denied_by),
            );
            Some(TC_ACT_SHOT as i32)
        }
    }
}

/// The pod's egress check, for `from_pod`.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Option<i32> {
    check(ctx, DIRECTION_EGRESS, false)
}

/// The pod's ingress check, for `to_pod`. A packet the node itself originated
/// (`skb->ingress_ifindex == 0`) passes and is tracked, so its replies pass the pod's egress.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Option<i32> {
    // SAFETY: reads a scalar field of the context the kernel passed in.
    let from_host = unsafe { (*ctx.skb.skb).ingress_ifindex } == 0;
    check(ctx, DIRECTION_INGRESS, from_host)
}
