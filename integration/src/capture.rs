//! Packet captures on the underlay, and their analysis: prove that no pod packet
//! and no marker string crossed the wire in clear, and that what did cross was
//! WireGuard between node addresses.
//!
//! [`Capture`] runs `tcpdump` inside a namespace; [`analyse`] reads the resulting
//! pcap (Ethernet, Linux cooked (SLL) or raw-IP link types) against a
//! [`CapturePolicy`] and produces a [`CaptureReport`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use ipnet::IpNet;
use pcap_file::pcap::PcapReader;
use pcap_file::{DataLink, PcapError};
use serde::Serialize;

/// How many descriptions each list in a [`CaptureReport`] keeps (counts are exact).
pub const MAX_DESCRIPTIONS: usize = 50;

/// How long [`Capture::start`] waits for tcpdump to report it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Capture::stop`] waits for tcpdump to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from capturing or analysing.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// tcpdump could not be started.
    #[error("failed to start tcpdump in {netns} on {iface}: {cause}")]
    Spawn {
        /// Namespace.
        netns: String,
        /// Interface.
        iface: String,
        /// Cause.
        cause: std::io::Error,
    },
    /// tcpdump exited or stalled before reporting "listening on".
    #[error("tcpdump in {netns} on {iface} did not start listening: {stderr}")]
    NotListening {
        /// Namespace.
        netns: String,
        /// Interface.
        iface: String,
        /// What tcpdump printed on stderr.
        stderr: String,
    },
    /// Signalling or waiting for tcpdump failed.
    #[error("stopping tcpdump: {0}")]
    Stop(String),
    /// The pcap file could not be opened.
    #[error("opening {path}: {cause}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// The pcap file is not a readable pcap.
    #[error("reading pcap {path}: {cause}")]
    Pcap {
        /// The file.
        path: PathBuf,
        /// Cause.
        cause: PcapError,
    },
    /// The pcap's link type is not one we can decode.
    #[error("unsupported pcap link type {0:?} (want Ethernet, Linux SLL or raw IP)")]
    LinkType(DataLink),
}

/// Result alias for this module.
pub type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// A running `tcpdump` writing a pcap file. Stop it with [`Capture::stop`];
/// dropping it kills tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    /// Runs `ip netns exec NETNS tcpdump -i IFACE -w PATH -U --immediate-mode -Z root -n -s 0`
    /// and waits
    /// until tcpdump reports "listening on" on stderr.
    pub fn start(netns: &str, iface: &str, path: &Path) -> Result<Capture> {
        let path_str = path.to_string_lossy().into_owned();
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface, "-w"])
            .arg(&path_str)
            // --immediate-mode: deliver each packet at once (otherwise packets in a
            // partly filled TPACKET_V3 block are lost on SIGINT); -Z root: keep
            // privileges so PATH may live in a root-only directory.
            .args(["-U", "--immediate-mode", "-Z", "root", "-n", "-s", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|cause| CaptureError::Spawn {
                netns: netns.to_string(),
                iface: iface.to_string(),
                cause,
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<()>();
        let reader = child.stderr.take().map(|pipe| {
            let log = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let listening = line.contains("listening on");
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if listening {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            })
        });
        let mut cap = Capture {
            child: Some(child),
            path: path.to_path_buf(),
            stderr,
            reader,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(()) => Ok(cap),
            Err(_) => {
                cap.kill();
                Err(CaptureError::NotListening {
                    netns: netns.to_string(),
                    iface: iface.to_string(),
                    stderr: cap.stderr_text(),
                })
            }
        }
    }

    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything tcpdump printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops tcpdump with SIGINT (so it flushes the file), waits for it to exit
    /// (killing it after a timeout) and returns the pcap path.
    pub fn stop(mut self) -> Result<PathBuf> {
        // Let packets already in flight reach tcpdump's buffer.
        std::thread::sleep(Duration::from_millis(200));
        let Some(mut child) = self.child.take() else {
            return Ok(self.path.clone());
        };
        let pid = i32::try_from(child.id()).map_err(|e| CaptureError::Stop(e.to_string()))?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Err(e) => return Err(CaptureError::Stop(e.to_string())),
            }
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(self.path.clone())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What is allowed on the captured link.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapturePolicy {
    /// Pod address ranges: any IP header with a cause or destination inside
    /// one of them is a plaintext pod packet.
    pub pod_cidrs: Vec<IpNet>,
    /// Node underlay addresses (WireGuard endpoints).
    pub node_addrs: Vec<IpAddr>,
    /// WireGuard UDP port.
    pub wireguard_port: u16,
    /// Byte strings that must not appear anywhere in any frame.
    pub markers: Vec<Vec<u8>>,
}

/// Result of [`analyse`]. Description lists are capped at [`MAX_DESCRIPTIONS`];
/// the `*_count` fields count everything.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureReport {
    /// Frames in the file.
    pub packets: usize,
    /// Frames carrying IPv4 or IPv6.
    pub ip_packets: usize,
    /// Frames that are not IP (ARP, LLDP…) or could not be decoded; harmless.
    pub non_ip_packets: usize,
    /// WireGuard messages between node addresses.
    pub wireguard_packets: usize,
    /// WireGuard messages by type (1 initiation, 2 response, 3 cookie, 4 data).
    pub wireguard_by_type: BTreeMap<u8, usize>,
    /// Descriptions of IP packets to or from a pod address (must be empty).
    pub plaintext_pod_packets: Vec<String>,
    /// Count of such packets.
    pub plaintext_pod_count: usize,
    /// Descriptions of other IP packets (ND, non-WireGuard UDP…), informational.
    pub non_wireguard_ip: Vec<String>,
    /// Count of such packets.
    pub non_wireguard_ip_count: usize,
    /// Frames containing a marker (frame number, marker, description); must be empty.
    pub marker_hits: Vec<String>,
    /// Count of such frames.
    pub marker_hit_count: usize,
    /// The file ended in the middle of a record (tcpdump killed); what was read is analysed.
    pub truncated: bool,
}

impl CaptureReport {
    /// No pod packet crossed in clear and no marker was seen.
    pub fn is_clean(&self) -> bool {
        self.plaintext_pod_count == 0 && self.marker_hit_count == 0
    }

    /// A short multi-line summary for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "packets={} ip={} wireguard={} plaintext_pod={} markers={} other_ip={} truncated={}",
            self.packets,
            self.ip_packets,
            self.wireguard_packets,
            self.plaintext_pod_count,
            self.marker_hit_count,
            self.non_wireguard_ip_count,
            self.truncated
        );
        for d in self.plaintext_pod_packets.iter().take(10) {
            s.push_str("\n  plaintext: ");
            s.push_str(d);
        }
        for d in self.marker_hits.iter().take(10) {
            s.push_str("\n  marker: ");
            s.push_str(d);
        }
        s
    }
}

fn push_capped(list: &mut Vec<String>, count: &mut usize, item: impl FnOnce() -> String) {
    *count += 1;
    if list.len() < MAX_DESCRIPTIONS {
        list.push(item());
    }
}

/// True when `payload` looks like a WireGuard message: type 1–4 then three zero bytes.
pub fn is_wireguard_payload(payload: &[u8]) -> bool {
    payload.len() >= 4 && (1..=4).contains(&payload[0]) && payload[1..4] == [0, 0, 0]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || needle.len() > hay.len() {
        return needle.is_empty();
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    hay[..=last_start]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == first && &hay[i..i + needle.len()] == needle)
}

fn proto_name(n: u8) -> String {
    match n {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        4 => "IPIP".into(),
        41 => "IPv6-in-IP".into(),
        47 => "GRE".into(),
        50 => "ESP".into(),
        other => format!("proto {other}"),
    }
}

/// Decoded essentials of one IP packet.
struct IpInfo<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// (src port, dst port, payload) for UDP.
    udp: Option<(u16, u16, &'a [u8])>,
    /// (src port, dst port) for TCP.
    tcp: Option<(u16, u16)>,
    /// The IP payload (for looking into IP-in-IP).
    ip_payload: &'a [u8],
}

impl IpInfo<'_> {
    fn describe(&self, frame: usize, len: usize) -> String {
        let ports = match (self.udp, self.tcp) {
            (Some((s, d, _)), _) | (None, Some((s, d))) => format!(" {s}→{d}"),
            _ => String::new(),
        };
        format!(
            "#{frame} {} → {} {}{ports} len {len}",
            self.src,
            self.dst,
            proto_name(self.proto)
        )
    }
}

fn ip_info<'a>(pkt: &LaxSlicedPacket<'a>) -> Option<IpInfo<'a>> {
    let (src, dst, payload) = match pkt.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.payload(),
        ),
        LaxNetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.payload(),
        ),
    };
    let (udp, tcp) = match pkt.transport.as_ref() {
        Some(TransportSlice::Udp(u)) => (
            Some((u.source_port(), u.destination_port(), u.payload())),
            None,
        ),
        Some(TransportSlice::Tcp(t)) => (None, Some((t.source_port(), t.destination_port()))),
        _ => (None, None),
    };
    Some(IpInfo {
        src,
        dst,
        proto: payload.ip_number.0,
        udp,
        tcp,
        ip_payload: payload.payload,
    })
}

/// Last-resort extraction of addresses from an IP header etherparse refused
/// (bad checksum-independent fields, odd options…): returns (src, dst, proto).
fn raw_ip_addrs(ip: &[u8]) -> Option<(IpAddr, IpAddr, u8)> {
    match ip.first()? >> 4 {
        4 if ip.len() >= 20 => {
            let src: [u8; 4] = ip[12..16].try_into().ok()?;
            let dst: [u8; 4] = ip[16..20].try_into().ok()?;
            Some((src.into(), dst.into(), ip[9]))
        }
        6 if ip.len() >= 40 => {
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            Some((src.into(), dst.into(), ip[6]))
        }
        _ => None,
    }
}

/// Finds the IP packet inside a link-layer frame (for the raw fallback).
fn ip_bytes(link: DataLink, frame: &[u8]) -> Option<&[u8]> {
    match link {
        DataLink::ETHERNET => {
            let mut off = 12;
            loop {
                let et = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
                match et {
                    0x8100 | 0x88a8 | 0x9100 => off += 4,
                    0x0800 | 0x86dd => return frame.get(off + 2..),
                    _ => return None,
                }
            }
        }
        DataLink::LINUX_SLL => {
            let et = u16::from_be_bytes(frame.get(14..16)?.try_into().ok()?);
            matches!(et, 0x0800 | 0x86dd)
                .then(|| frame.get(16..))
                .flatten()
        }
        _ => Some(frame),
    }
}

fn slice_frame(link: DataLink, frame: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    match link {
        DataLink::ETHERNET => LaxSlicedPacket::from_ethernet(frame).ok(),
        DataLink::LINUX_SLL => LaxSlicedPacket::from_ip(ip_bytes(link, frame)?).ok(),
        _ => LaxSlicedPacket::from_ip(frame).ok(),
    }
}

/// Analyses the pcap at `path` against `policy`.
pub fn analyse(path: &Path, policy: &CapturePolicy) -> Result<CaptureReport> {
    let file = std::fs::File::open(path).map_err(|cause| CaptureError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(|cause| CaptureError::Pcap {
        path: path.to_path_buf(),
        cause,
    })?;
    let link = reader.header().datalink;
    if !matches!(
        link,
        DataLink::ETHERNET | DataLink::LINUX_SLL | DataLink::RAW | DataLink::IPV4 | DataLink::IPV6
    ) {
        return Err(CaptureError::LinkType(link));
    }
    let mut report = CaptureReport::default();
    while let Some(next) = reader.next_packet() {
        let pkt = match next {
            Ok(p) => p,
            Err(PcapError::IncompleteBuffer) => {
                report.truncated = true;
                break;
            }
            Err(PcapError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                report.truncated = true;
                break;
            }
            Err(cause) => {
                return Err(CaptureError::Pcap {
                    path: path.to_path_buf(),
                    cause,
                })
            }
        };
        report.packets += 1;
        let frame_no = report.packets;
        classify_frame(link, frame_no, &pkt.data, policy, &mut report);
    }
    Ok(report)
}

fn in_pods(policy: &CapturePolicy, a: &IpAddr) -> bool {
    policy.pod_cidrs.iter().any(|n| n.contains(a))
}

fn classify_frame(
    link: DataLink,
    frame_no: usize,
    frame: &[u8],
    policy: &CapturePolicy,
    report: &mut CaptureReport,
) {
    let sliced = slice_frame(link, frame);
    let info = sliced.as_ref().and_then(ip_info);
    let desc = match &info {
        Some(i) => i.describe(frame_no, frame.len()),
        None => match ip_bytes(link, frame).and_then(raw_ip_addrs) {
            Some((s, d, p)) => format!("#{frame_no} {s} → {d} {} (undecoded)", proto_name(p)),
            None => format!("#{frame_no} non-IP frame len {}", frame.len()),
        },
    };

    for m in &policy.markers {
        if contains(frame, m) {
            push_capped(
                &mut report.marker_hits,
                &mut report.marker_hit_count,
                || format!("{desc} contains marker {:?}", String::from_utf8_lossy(m)),
            );
            break;
        }
    }

    let Some(info) = info else {
        // Not decodable by etherparse: if it still looks like IP, check addresses.
        match ip_bytes(link, frame).and_then(raw_ip_addrs) {
            Some((s, d, _)) => {
                report.ip_packets += 1;
                if in_pods(policy, &s) || in_pods(policy, &d) {
                    push_capped(
                        &mut report.plaintext_pod_packets,
                        &mut report.plaintext_pod_count,
                        || desc.clone(),
                    );
                } else {
                    push_capped(
                        &mut report.non_wireguard_ip,
                        &mut report.non_wireguard_ip_count,
                        || desc.clone(),
                    );
                }
            }
            None => report.non_ip_packets += 1,
        }
        return;
    };
    report.ip_packets += 1;

    let mut pod = in_pods(policy, &info.src) || in_pods(policy, &info.dst);
    // Pod packets tunnelled in clear (IP-in-IP, IPv6-in-IPv4) are plaintext too.
    if !pod && matches!(info.proto, 4 | 41) {
        if let Some((s, d, _)) = raw_ip_addrs(info.ip_payload) {
            pod = in_pods(policy, &s) || in_pods(policy, &d);
        }
    }
    if pod {
        push_capped(
            &mut report.plaintext_pod_packets,
            &mut report.plaintext_pod_count,
            || desc.clone(),
        );
        return;
    }

    if let Some((sp, dp, payload)) = info.udp {
        let between_nodes =
            policy.node_addrs.contains(&info.src) && policy.node_addrs.contains(&info.dst);
        let on_port = sp == policy.wireguard_port || dp == policy.wireguard_port;
        if between_nodes && on_port && is_wireguard_payload(payload) {
            report.wireguard_packets += 1;
            *report.wireguard_by_type.entry(payload[0]).or_default() += 1;
            return;
        }
    }
    push_capped(
        &mut report.non_wireguard_ip,
        &mut report.non_wireguard_ip_count,
        || desc,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
