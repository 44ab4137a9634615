//! The strict-mode guard on every way out of the node (`underlay_egress` on Ethernet links,
//! `underlay_egress_ip` on links without a link-layer header): finds the IP header where the
//! attachment's [`Framing`] says it is, and drops (or, permissive, counts) a packet whose
//! source or destination lies in `CLUSTER_V4/6` unless it is the tunnel's own ciphertext.
//!
//! Framing is chosen per attachment by the loader from the interface's link type, never
//! guessed per packet: on an Ethernet link the frame starts with the MAC header (EtherType at
//! byte 12); on tun, WireGuard, ipip/sit/ip6tnl, raw-IP and PPP links tc sees the packet from
//! its network header on (`skb->data` = network header, no MAC header), so the IP version
//! nibble of byte 0 tells the family, as it does for whoever reads the packet off that link.
//!
//! The tunnel's own ciphertext is recognised by the mesh mark AND its shape: UDP whose source
//! port is one of the devices' listen ports (`Config::wg_port`, `Config::second_wg_port`), or a
//! non-first fragment (no UDP header to look at). A marked packet of any other shape (a TCP
//! segment, UDP from another port) is judged like an unmarked one: the mark alone, which any
//! process with `CAP_NET_ADMIN` (or `CAP_NET_RAW` on Linux >= 5.17) can put on its socket, no
//! longer exempts it. The shape is only looked at for packets with a cluster address: the
//! ciphertext's header normally carries node addresses and passes before that.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ebpf_redirect_common::flows::{
    FLOW_POLICY_DIRECTION_NONE, FLOW_REASON_STRICT_MODE, FLOW_REASON_WOULD_DROP,
    FLOW_VERDICT_AUDIT, FLOW_VERDICT_DROPPED,
};
use ebpf_redirect_common::{Config, Ipv4Addr, Ipv6Addr, Verdict, MODE_PERMISSIVE};

use crate::{count, flows, CLUSTER_V4, CLUSTER_V6, CONFIG};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;
const PROTO_UDP: u8 = 17;
const IPV6_NEXT_FRAGMENT: u8 = 44;

/// Where the network header starts on the link the program is attached to.
#[derive(Clone, Copy)]
pub enum Framing {
    /// After a 14-byte Ethernet header; the EtherType says the family.
    Ethernet,
    /// At byte 0 (no link-layer header); the IP version nibble says the family.
    Ip,
}

/// Addresses of an IP packet and the offset of its IP header.
enum Header {
    V4 {
        off: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
    V6 {
        off: usize,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
}

/// The IP header of the packet, `None` when it is not IP (ARP, ...).
#[inline(always)]
fn header(ctx: &TcContext, framing: Framing) -> Result<Option<Header>, i64> {
    match framing {
        Framing::Ethernet => match u16::from_be(ctx.load::<u16>(12)?) {
            ETH_P_IP => v4(ctx, ETH_HLEN).map(Some),
            ETH_P_IPV6 => v6(ctx, ETH_HLEN).map(Some),
            _ => Ok(None),
        },
        Framing::Ip => match ctx.load::<u8>(0)? >> 4 {
            4 => v4(ctx, 0).map(Some),
            6 => v6(ctx, 0).map(Some),
            _ => Ok(None),
        },
    }
}

#[inline(always)]
fn v4(ctx: &TcContext, off: usize) -> Result<Header, i64> {
    Ok(Header::V4 {
        off,
        src: ctx.load(off + 12)?,
        dst: ctx.load(off + 16)?,
    })
}

#[inline(always)]
fn v6(ctx: &TcContext, off: usize) -> Result<Header, i64> {
    Ok(Header::V6 {
        off,
        src: ctx.load(off + 8)?,
        dst: ctx.load(off + 24)?,
    })
}

/// Whether the packet looks like the tunnel's ciphertext: UDP from a listen port, or a
/// non-first fragment.
#[inline(always)]
fn tunnel_shaped(ctx: &TcContext, h: &Header, cfg: &Config) -> Result<bool, i64> {
    let port_off = match *h {
        Header::V4 { off, .. } => {
            let fixed: [u8; 10] = ctx.load(off)?;
            if u16::from_be_bytes([fixed[6], fixed[7]]) & 0x1fff != 0 {
                return Ok(true);
            }
            if fixed[9] != PROTO_UDP {
                return Ok(false);
            }
            off + usize::from(fixed[0] & 0x0f) * 4
        }
        Header::V6 { off, .. } => match ctx.load::<u8>(off + 6)? {
            PROTO_UDP => off + IPV6_HLEN,
            IPV6_NEXT_FRAGMENT => {
                // Next header, reserved, offset (13 bits) + flags.
                let frag: [u8; 4] = ctx.load(off + IPV6_HLEN)?;
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                    return Ok(true);
                }
                if frag[0] != PROTO_UDP {
                    return Ok(false);
                }
                off + IPV6_HLEN + 8
            }
            _ => return Ok(false),
        },
    };
    let sport = u16::from_be(ctx.load::<u16>(port_off)?);
    Ok(sport != 0 && (sport == cfg.wg_port || sport == cfg.second_wg_port))
}

/// The guard's verdict on one packet leaving a link framed as `framing`; a drop (or would-drop)
/// is noted for the flow reporter.
#[inline(always)]
pub fn check(ctx: &TcContext, framing: Framing) -> Result<i32, i64> {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => return Ok(TC_ACT_OK),
    };
    let Some(h) = header(ctx, framing)? else {
        return Ok(TC_ACT_OK);
    };
    let in_cluster = match h {
        Header::V4 { src, dst, .. } => {
            CLUSTER_V4.get(Key::new(32, src)).is_some()
                || CLUSTER_V4.get(Key::new(32, dst)).is_some()
        }
        Header::V6 { src, dst, .. } => {
            CLUSTER_V6.get(Key::new(128, src)).is_some()
                || CLUSTER_V6.get(Key::new(128, dst)).is_some()
        }
    };
    if !in_cluster {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: reads a scalar field of the context the kernel passed in.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if cfg.mesh_mark != 0 && mark == cfg.mesh_mark
        // A marked packet too short to show its ports is not the tunnel's.
        && tunnel_shaped(ctx, &h, &cfg).unwrap_or(false)
    {
        // The tunnel's own ciphertext (every fragment of it carries the mark).
        return Ok(TC_ACT_OK);
    }
    // No exemption for unmarked "WireGuard-looking" UDP: the mesh's ciphertext carries node
    // addresses and the mesh mark, never a pod address, so a packet with a cluster address
    // in its IP header is cleartext about the cluster whatever its payload claims to be.
    if cfg.mode == MODE_PERMISSIVE {
        count(Verdict::WouldDrop);
        flows::note(
            ctx,
            flows::drop_note(
                FLOW_VERDICT_AUDIT,
                FLOW_REASON_WOULD_DROP,
                FLOW_POLICY_DIRECTION_NONE,
            ),
        );
        Ok(TC_ACT_OK)
    } else {
        count(Verdict::StrictDrop);
        flows::note(
            ctx,
            flows::drop_note(
                FLOW_VERDICT_DROPPED,
                FLOW_REASON_STRICT_MODE,
                FLOW_POLICY_DIRECTION_NONE,
            ),
        );
        Ok(TC_ACT_SHOT)
    }
}
