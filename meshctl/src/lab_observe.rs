//! `meshctl lab observe`: every lab node's flows, each read inside its node
//! (`meshd_lab::node_observers`), merged by time, filtered and printed like `meshctl observe`.
//! With `--follow` the nodes' live lines interleave as they arrive.

use std::io::BufReader;
use std::process::{Child, ExitCode, Stdio};
use std::sync::mpsc;

use anyhow::{bail, Context as _};
use meshd::flows::filter::{FlowFilter, LastWindow};
use meshd_lab as lab;

use crate::cli::ObserveArgs;
use crate::observe::{follow, parse_line, pump, quiet_on_broken_pipe, Printer, Received};

/// `meshctl lab observe`.
pub(crate) fn run(name: &str, args: &ObserveArgs) -> anyhow::Result<ExitCode> {
    let filter = FlowFilter::from_flags(&args.filter_flags(), jiff::Timestamp::now())?;
    let (observers, down) = lab::node_observers(name, args.follow)?;
    for node in &down {
        eprintln!("meshctl: {node}: meshd is not running, its flows are not shown");
    }
    if observers.is_empty() {
        bail!("no node of lab {name} runs meshd");
    }
    let stdout = std::io::stdout();
    let result = observe_nodes(observers, args, filter, stdout.lock());
    quiet_on_broken_pipe(result)
}

/// Run every node's observer, and print their merged (or, following, interleaved) lines
/// through `filter` on `out`.
fn observe_nodes(
    observers: Vec<lab::NodeObserver>,
    args: &ObserveArgs,
    filter: FlowFilter,
    out: impl std::io::Write,
) -> anyhow::Result<()> {
    let mut children: Vec<(String, Child)> = Vec::new();
    for mut o in observers {
        if !args.follow {
            // Its errors go into ours, naming the node.
            o.command.stderr(Stdio::piped());
        }
        let child = o
            .command
            .spawn()
            .with_context(|| format!("{}: starting meshctl observe inside the node", o.node))?;
        children.push((o.node, child));
    }
    let mut printer = Printer::new(out, args.output);
    let result = if args.follow {
        let (send, lines) = mpsc::channel();
        for (node, child) in &mut children {
            let Some(out) = child.stdout.take() else {
                continue;
            };
            let send = send.clone();
            let source_name = format!("node {node}");
            std::thread::spawn(move || pump(BufReader::new(out), &source_name, &send));
        }
        drop(send);
        follow(lines, filter, &mut printer)
    } else {
        let mut streams = Vec::new();
        let mut failures = Vec::new();
        for (node, child) in &mut children {
            match read_history(node, child) {
                Ok(lines) => streams.push(lines),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if streams.is_empty() {
            bail!("no node's flows could be read: {}", failures.join("; "));
        }
        for failure in &failures {
            eprintln!("meshctl: {failure}; its flows are not shown");
        }
        let mut window = LastWindow::new(filter.last);
        for line in lab::merge_by_time(streams) {
            if filter.matches(&line) {
                window.push(line);
            }
        }
        printer.print(&window.finish()).map_err(Into::into)
    };
    // Following, every node's stream has ended when `follow` returns: each child has exited.
    let mut failed = 0;
    for (_, child) in &mut children {
        let _ = child.kill();
        if !child.wait().is_ok_and(|s| s.success()) {
            failed += 1;
        }
    }
    if args.follow && result.is_ok() && failed == children.len() {
        bail!("no node's flows could be read (each node's error is above)");
    }
    result
}

/// A node's whole history (its `meshctl observe -o json` output), checked line by line.
fn read_history(node: &str, child: &mut Child) -> anyhow::Result<Vec<Received>> {
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut text)
            .with_context(|| format!("node {node}: reading its flows"))?;
    }
    let mut errors = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut errors);
    }
    let status = child.wait()?;
    if !status.success() {
        let said = errors.trim().trim_start_matches("meshctl: ");
        bail!("node {node}: meshctl observe failed ({status}): {said}");
    }
    let source_name = format!("node {node}");
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(&source_name, i + 1, l))
        .collect::<Result<Vec<_>, _>>()?;
    // meshd keeps its history in the order events were decoded, not quite by time (an
    // aggregate carries the end of its interval): the merge wants each stream by time.
    lines.sort_by_key(|l| l.line.time);
    Ok(lines)
}

#[cfg(test)]
mod tests;
