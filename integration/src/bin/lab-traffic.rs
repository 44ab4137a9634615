//! `lab-traffic`: traffic generators and sinks run inside lab pod namespaces.
//!
//! Prints one JSON line of results on stdout. Exit code 0 on success, 1 when a
//! check failed (TCP digest mismatch, UDP thresholds exceeded), 2 on error.
//! Sinks print `listening on ADDR` on stderr once bound.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use integration::traffic;

#[derive(Parser, Debug)]
#[command(name = "lab-traffic", about = "Traffic generators for the meshd lab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accept N connections; for each read to EOF and reply with byte count and SHA-256.
    TcpSink {
        /// Address to listen on, e.g. 0.0.0.0:5000 or [::]:5000.
        #[arg(long)]
        listen: SocketAddr,
        /// Connections to serve.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Give up if the connections have not all been served within this time.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Send N bytes of a marker-embedding pattern and verify the sink's digest.
    TcpSend {
        /// Sink address, e.g. 10.244.2.2:5000 or [fd00:244:2::2]:5000.
        #[arg(long)]
        to: SocketAddr,
        /// Bytes to send.
        #[arg(long)]
        bytes: u64,
        /// Marker string embedded repeatedly in the data.
        #[arg(long, default_value = traffic::DEFAULT_MARKER)]
        marker: String,
        /// Pace the stream to this many kilobytes per second (default: as fast as possible).
        #[arg(long)]
        rate_kbyte_s: Option<u64>,
        /// I/O timeout in seconds.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// End the stream early (before `--bytes`) once this file exists.
        #[arg(long)]
        until_file: Option<std::path::PathBuf>,
    },
    /// Receive sequence-numbered datagrams and report loss, duplicates, reordering, gaps.
    UdpSink {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Maximum time to listen.
        #[arg(long)]
        duration_s: f64,
        /// Stop after this many quiet seconds once traffic was seen.
        #[arg(long)]
        idle_exit_s: Option<f64>,
        /// Check: fail (exit 1) if more than this many datagrams were lost.
        #[arg(long)]
        max_lost: Option<u64>,
        /// Check: fail (exit 1) if the largest arrival gap exceeds this (ms).
        #[arg(long)]
        max_gap_ms: Option<f64>,
        /// Check: fail (exit 1) if fewer than this many datagrams arrived.
        #[arg(long)]
        min_received: Option<u64>,
    },
    /// Send sequence-numbered datagrams at a fixed interval.
    UdpSend {
        /// Destination address.
        #[arg(long)]
        to: SocketAddr,
        /// Interval between datagrams in milliseconds (fractions allowed).
        #[arg(long)]
        interval_ms: f64,
        /// How long to send, seconds.
        #[arg(long)]
        duration_s: f64,
        /// Datagram size in bytes (minimum 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Padding string (repeated after the 16-byte header).
        #[arg(long, default_value = "")]
        marker: String,
    },
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid duration {s}"))
}

/// Runs the command: Ok(true) success, Ok(false) check failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.cmd {
        Cmd::TcpSink {
            listen,
            count,
            timeout_s,
        } => {
            let l = traffic::tcp_listen(listen)?;
            eprintln!("listening on {}", l.local_addr()?);
            let r = traffic::tcp_sink(&l, count, Duration::from_secs(timeout_s))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(true)
        }
        Cmd::TcpSend {
            to,
            bytes,
            marker,
            rate_kbyte_s,
            timeout_s,
            until_file,
        } => {
            let r = traffic::tcp_send_until(
                to,
                bytes,
                &marker,
                Duration::from_secs(timeout_s),
                rate_kbyte_s.map(|k| k * 1000),
                until_file.as_deref(),
            )?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(r.ok)
        }
        Cmd::UdpSink {
            listen,
            duration_s,
            idle_exit_s,
            max_lost,
            max_gap_ms,
            min_received,
        } => {
            let sock = traffic::udp_bind(listen)?;
            eprintln!("listening on {}", sock.local_addr()?);
            let idle = idle_exit_s.map(secs).transpose()?;
            let r = traffic::udp_sink(&sock, secs(duration_s)?, idle)?;
            println!("{}", serde_json::to_string(&r)?);
            let ok = max_lost.is_none_or(|m| r.lost <= m)
                && max_gap_ms.is_none_or(|m| r.max_gap_ms <= m)
                && min_received.is_none_or(|m| r.received >= m);
            Ok(ok)
        }
        Cmd::UdpSend {
            to,
            interval_ms,
            duration_s,
            size,
            marker,
        } => {
            let cfg = traffic::UdpSendConfig {
                to,
                interval: secs(interval_ms / 1000.0)?,
                duration: secs(duration_s)?,
                size,
                marker: marker.into_bytes(),
            };
            let r = traffic::udp_send(&cfg)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lab-traffic: error: {e:#}");
            println!(
                "{}",
                serde_json::json!({ "ok": false, "error": format!("{e:#}") })
            );
            ExitCode::from(2)
        }
    }
}
