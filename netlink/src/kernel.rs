//! Kernel WireGuard configuration over generic netlink (`WG_CMD_GET_DEVICE` /
//! `WG_CMD_SET_DEVICE`), for links created with kind `wireguard`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use genetlink::{GenetlinkError, GenetlinkHandle};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use crate::model::{DeviceState, PeerChange, PeerStatus};

/// Peers per `WG_CMD_SET_DEVICE` message, to stay well below the socket buffer size.
const PEERS_PER_MESSAGE: usize = 32;

/// Errors talking to the kernel WireGuard generic netlink family.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Opening the generic netlink socket failed.
    #[error("opening generic netlink socket")]
    Connect(#[source] std::io::Error),
    /// Sending the request failed (includes an unknown `wireguard` family).
    #[error("sending {op} for ifindex {ifindex}")]
    Request {
        /// `get` or `set`.
        op: &'static str,
        /// The link index.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: GenetlinkError,
    },
    /// The answer could not be decoded.
    #[error("decoding {op} answer for ifindex {ifindex}")]
    Decode {
        /// `get` or `set`.
        op: &'static str,
        /// The link index.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    /// The kernel refused the request.
    #[error("kernel refused {op} for ifindex {ifindex}")]
    Nack {
        /// `get` or `set`.
        op: &'static str,
        /// The link index.
        ifindex: u32,
        /// The errno as an I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An X25519 private key as the kernel stores it: clamped (RFC 7748 §5). The kernel reports
/// the clamped key, so a key read back never equals an unclamped one that was written.
pub fn clamp_private_key(key: &[u8; 32]) -> [u8; 32] {
    let mut k = *key;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// Whether two private keys are the same X25519 key (equal once clamped).
pub fn same_private_key(a: &[u8; 32], b: &[u8; 32]) -> bool {
    clamp_private_key(a) == clamp_private_key(b)
}

/// A generic netlink handle for one kernel WireGuard link.
#[derive(Clone, Debug)]
pub struct KernelDevice {
    handle: GenetlinkHandle,
    ifindex: u32,
}

impl KernelDevice {
    /// Opens a generic netlink connection (spawned on tokio) for link `ifindex`.
    pub fn connect(ifindex: u32) -> Result<KernelDevice, KernelError> {
        let (conn, handle, _) = genetlink::new_connection().map_err(KernelError::Connect)?;
        tokio::spawn(conn);
        Ok(KernelDevice { handle, ifindex })
    }

    async fn request(
        &self,
        op: &'static str,
        attributes: Vec<WireguardAttribute>,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, KernelError> {
        let cmd = if op == "get" {
            WireguardCmd::GetDevice
        } else {
            WireguardCmd::SetDevice
        };
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd,
            attributes,
        }));
        msg.header.flags = flags;
        let ifindex = self.ifindex;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(msg)
            .await
            .map_err(|source| KernelError::Request {
                op,
                ifindex,
                source,
            })?;
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item.map_err(|source| KernelError::Decode {
                op,
                ifindex,
                source,
            })?;
            match item.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(KernelError::Nack {
                        op,
                        ifindex,
                        source: err.to_io(),
                    })
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Reads the device state.
    pub async fn get(&self) -> Result<DeviceState, KernelError> {
        let msgs = self
            .request(
                "get",
                vec![WireguardAttribute::IfIndex(self.ifindex)],
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await?;
        Ok(parse_dump(&msgs))
    }

    /// Sets the private key, listen port and/or firewall mark, leaving peers alone.
    ///
    /// The key is sent clamped: the kernel compares what it is given with the clamped key it
    /// holds, and a "different" key, even the same one unclamped, expires every peer's session
    /// (`wg_noise_expire_current_peer_keypairs`), forcing a handshake with every peer.
    pub async fn set_device(
        &self,
        private_key: Option<&[u8; 32]>,
        listen_port: Option<u16>,
        fwmark: Option<u32>,
    ) -> Result<(), KernelError> {
        let mut attrs = vec![WireguardAttribute::IfIndex(self.ifindex)];
        if let Some(m) = fwmark {
            attrs.push(WireguardAttribute::Fwmark(m));
        }
        if let Some(k) = private_key {
            attrs.push(WireguardAttribute::PrivateKey(clamp_private_key(k)));
        }
        if let Some(p) = listen_port {
            attrs.push(WireguardAttribute::ListenPort(p));
        }
        self.request("set", attrs, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Applies peer changes, in messages of at most [`PEERS_PER_MESSAGE`] peers.
    pub async fn apply(&self, changes: &[PeerChange]) -> Result<(), KernelError> {
        for chunk in changes.chunks(PEERS_PER_MESSAGE) {
            let peers = chunk.iter().map(peer_nla).collect();
            let attrs = vec![
                WireguardAttribute::IfIndex(self.ifindex),
                WireguardAttribute::Peers(peers),
            ];
            self.request("set", attrs, NLM_F_REQUEST | NLM_F_ACK)
                .await?;
        }
        Ok(())
    }
}

fn allowed_ip_nla(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// The netlink peer for one change: upserts replace allowed IPs and always state the
/// keepalive (0 = off); removals set `WGPEER_F_REMOVE_ME`.
fn peer_nla(change: &PeerChange) -> WireguardPeer {
    match change {
        PeerChange::Upsert(p) => {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::PersistentKeepalive(p.persistent_keepalive.unwrap_or(0)),
            ];
            if let Some(ep) = p.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(ep));
            }
            attrs.push(WireguardPeerAttribute::AllowedIps(
                p.allowed_ips.iter().map(allowed_ip_nla).collect(),
            ));
            WireguardPeer(attrs)
        }
        PeerChange::Remove(key) => WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(*key),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]),
    }
}

/// Merges a (possibly multi-part) `WG_CMD_GET_DEVICE` dump. A peer whose allowed IPs do
/// not fit one message continues in the next with the same public key.
fn parse_dump(msgs: &[WireguardMessage]) -> DeviceState {
    let mut state = DeviceState::default();
    let mut order: Vec<[u8; 32]> = Vec::new();
    let mut peers: BTreeMap<[u8; 32], PeerStatus> = BTreeMap::new();
    for msg in msgs {
        for attr in &msg.attributes {
            match attr {
                WireguardAttribute::PrivateKey(k) if *k != [0u8; 32] => {
                    state.private_key = Some(*k)
                }
                WireguardAttribute::ListenPort(p) => state.listen_port = *p,
                WireguardAttribute::Fwmark(m) => state.fwmark = *m,
                WireguardAttribute::Peers(list) => {
                    for WireguardPeer(pattrs) in list {
                        let Some(key) = pattrs.iter().find_map(|a| match a {
                            WireguardPeerAttribute::PublicKey(k) => Some(*k),
                            _ => None,
                        }) else {
                            continue;
                        };
                        let peer = peers.entry(key).or_insert_with(|| {
                            order.push(key);
                            PeerStatus::new(key)
                        });
                        merge_peer(peer, pattrs);
                    }
                }
                _ => {}
            }
        }
    }
    state.peers = order.iter().filter_map(|k| peers.remove(k)).collect();
    state
}

fn merge_peer(peer: &mut PeerStatus, attrs: &[WireguardPeerAttribute]) {
    for a in attrs {
        match a {
            WireguardPeerAttribute::Endpoint(ep) => peer.endpoint = Some(*ep),
            WireguardPeerAttribute::PersistentKeepalive(n) => {
                peer.persistent_keepalive = (*n != 0).then_some(*n)
            }
            WireguardPeerAttribute::LastHandshake(ts) => {
                peer.last_handshake =
                    match (u64::try_from(ts.seconds), u32::try_from(ts.nano_seconds)) {
                        (Ok(s), Ok(n)) if s != 0 || n != 0 => {
                            Some(UNIX_EPOCH + Duration::new(s, n))
                        }
                        _ => None,
                    }
            }
            WireguardPeerAttribute::RxBytes(n) => peer.rx_bytes = *n,
            WireguardPeerAttribute::TxBytes(n) => peer.tx_bytes = *n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for WireguardAllowedIp(ip_attrs) in ips {
                    let addr = ip_attrs.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::IpAddr(ip) => Some(*ip),
                        _ => None,
                    });
                    let cidr = ip_attrs.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    });
                    if let (Some(addr), Some(cidr)) = (addr, cidr) {
                        if let Ok(net) = IpNet::new(addr, cidr) {
                            peer.allowed_ips.push(net);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PeerConfig;
    use netlink_packet_wireguard::WireguardTimeSpec;

    #[test]
    fn peer_nlas() {
        let up = PeerChange::Upsert(PeerConfig {
            public_key: [1; 32],
            endpoint: Some("192.0.2.1:51820".parse().expect("ep")),
            allowed_ips: vec!["10.0.0.0/24".parse().expect("cidr")],
            persistent_keepalive: None,
        });
        let WireguardPeer(attrs) = peer_nla(&up);
        assert!(attrs.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        assert!(attrs.contains(&WireguardPeerAttribute::PersistentKeepalive(0)));
        let WireguardPeer(attrs) = peer_nla(&PeerChange::Remove([2; 32]));
        assert_eq!(
            attrs,
            vec![
                WireguardPeerAttribute::PublicKey([2; 32]),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)
            ]
        );
    }

    #[test]
    fn keys_compare_clamped() {
        let raw = [0xffu8; 32];
        let clamped = clamp_private_key(&raw);
        assert_eq!(clamped[0], 0xf8);
        assert_eq!(clamped[31], 0x7f);
        assert_eq!(clamp_private_key(&clamped), clamped);
        assert!(same_private_key(&raw, &clamped));
        assert!(!same_private_key(&raw, &[0u8; 32]));
        // Clamping does not change the key: the public keys agree.
        let pubkey = |k: [u8; 32]| {
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k)).to_bytes()
        };
        assert_eq!(pubkey(raw), pubkey(clamped));
    }

    #[test]
    fn dump_merges_split_peers() {
        let peer = |ips: &[&str], hs: i64| {
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([9; 32]),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                    seconds: hs,
                    nano_seconds: 0,
                }),
                WireguardPeerAttribute::AllowedIps(
                    ips.iter()
                        .map(|s| allowed_ip_nla(&s.parse().expect("cidr")))
                        .collect(),
                ),
            ])
        };
        let msgs = vec![
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![
                    WireguardAttribute::ListenPort(51820),
                    WireguardAttribute::Peers(vec![peer(&["10.0.0.0/24"], 0)]),
                ],
            },
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![peer(&["fd00::/64"], 0)])],
            },
        ];
        let st = parse_dump(&msgs);
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.private_key, None);
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.peers[0].allowed_ips.len(), 2);
        assert_eq!(st.peers[0].last_handshake, None);
    }
}
