//! A pod's port server: the long-running process `apply` starts for each
//! `containers[].ports` entry of a Pod (hidden command `meshctl lab serve`), inside the pod's
//! network namespace. TCP accepts and closes; UDP echoes every datagram; SCTP (no SCTP sockets
//! in this kernel) reads raw IP protocol 132 packets of both families and answers every probe
//! INIT addressed to its port with an INIT ACK (see [`crate::sctp`]). It prints `ready` on
//! stdout once its sockets are bound, so `apply` returns only when the pod answers.

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::sctp;

/// Enter the network namespace pinned at `netns` (this thread; call it before spawning any).
pub(crate) fn enter_netns(netns: &Path) -> anyhow::Result<()> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", netns.display()))
}

/// A raw IP protocol 132 socket of `domain`, as a `UdpSocket` (same datagram calls).
pub(crate) fn raw_sctp_socket(domain: Domain) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(sctp::IPPROTO_SCTP)))
        .context("opening a raw IP protocol 132 socket")?;
    Ok(UdpSocket::from(OwnedFd::from(socket)))
}

/// A dual-stack socket of `ty` bound to `[::]:port`.
fn dual_stack(ty: Type, protocol: Protocol, port: u16) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, ty, Some(protocol))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding [::]:{port}"))?;
    Ok(socket)
}

/// `meshctl lab serve`: serve `protocol`/`port` in the network namespace `netns`, forever.
pub fn serve(netns: &Path, protocol: &str, port: u16) -> anyhow::Result<()> {
    enter_netns(netns)?;
    match protocol {
        "TCP" => {
            let socket = dual_stack(Type::STREAM, Protocol::TCP, port)?;
            socket.listen(128)?;
            let listener = TcpListener::from(OwnedFd::from(socket));
            ready()?;
            // Accept and close: a completed connection is the answer.
            for stream in listener.incoming() {
                drop(stream);
            }
            Ok(())
        }
        "UDP" => {
            let socket =
                UdpSocket::from(OwnedFd::from(dual_stack(Type::DGRAM, Protocol::UDP, port)?));
            ready()?;
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }
        "SCTP" => {
            let v4 = raw_sctp_socket(Domain::IPV4)?;
            let v6 = raw_sctp_socket(Domain::IPV6)?;
            ready()?;
            let v4_thread = std::thread::spawn(move || answer_sctp(&v4, true, port));
            answer_sctp(&v6, false, port);
            let _ = v4_thread.join();
            Ok(())
        }
        other => anyhow::bail!("protocol {other:?}: expected TCP, UDP or SCTP"),
    }
}

fn ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "ready").context("reporting readiness")?;
    out.flush().context("reporting readiness")
}

/// Answer every SCTP probe INIT to `port` arriving on `socket` (IPv4 packets carry their IP
/// header).
fn answer_sctp(socket: &UdpSocket, ipv4: bool, port: u16) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let packet = if ipv4 {
            match sctp::strip_ipv4_header(&buf[..n]) {
                Some(p) => p,
                None => continue,
            }
        } else {
            &buf[..n]
        };
        if let Some(reply) = sctp::decode(packet).and_then(|p| sctp::answer(&p, port)) {
            // Raw sockets take no port: the address alone.
            let to = SocketAddr::new(from.ip(), 0);
            let _ = socket.send_to(&sctp::encode(&reply), to);
        }
    }
}
