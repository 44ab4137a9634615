//! `meshctl`: the operator CLI of meshd — this node's status, key rotation, flows
//! (`observe`) and mesh graph through the control socket, the compliance audit of a lab or a
//! cluster — and the driver of the local multi-node lab (crate `meshd-lab`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod audit;
mod cli;
mod graph;
mod lab;
mod lab_observe;
mod node;
mod observe;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("meshctl: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Status {
            output,
            all,
            socket,
        } => node::status(&socket, output, all),
        Cmd::RotateKey { socket, output } => node::rotate_key(&socket, output),
        Cmd::Audit(args) => audit::run(args),
        Cmd::Observe { args, socket } => observe::run(&args, &socket),
        Cmd::Graph { args, socket } => graph::run_node(&args, &socket),
        Cmd::Lab { command } => lab::run(command),
    }
}
