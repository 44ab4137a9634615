//! `meshctl lab observe` and `meshctl lab graph`: reaching every lab node's meshd for its
//! flows, and merging the nodes' flow histories by time (pure, [`merge_by_time`]).
//!
//! A node's control socket lives in its private `/run/meshd`, so each node's flows are read
//! the way `lab status` reads its status: `meshctl observe -o json` run inside the node's
//! mount and network namespaces; the lab's `meshctl` filters and prints the merged stream.

use std::process::{Command, Stdio};

use anyhow::Context as _;
use meshd::flows::filter::StreamLine;

use crate::host::meshd_pid;
use crate::plan::{node_name, node_ns};
use crate::state::{load_state, Paths};

/// A lab node's `meshctl observe -o json [--follow]`, ready to spawn with its stdout piped.
#[derive(Debug)]
pub struct NodeObserver {
    /// The node's name.
    pub node: String,
    /// The command (run it with [`Command::spawn`]).
    pub command: Command,
}

/// One [`NodeObserver`] per lab node whose meshd is running, and the names of those that are
/// not (their flows cannot be read).
pub fn node_observers(lab: &str, follow: bool) -> anyhow::Result<(Vec<NodeObserver>, Vec<String>)> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let paths = Paths::new(lab);
    let meshctl = std::env::current_exe().context("locating meshctl")?;
    let mut observers = Vec::new();
    let mut down = Vec::new();
    for n in &state.nodes {
        let i = n.index;
        if meshd_pid(lab, i).is_none() {
            down.push(node_name(i));
            continue;
        }
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount={}", paths.mnt(i).display()))
            .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
            .arg("--")
            .arg(&meshctl)
            .args(["observe", "-o", "json"]);
        if follow {
            command.arg("--follow");
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        observers.push(NodeObserver {
            node: node_name(i),
            command,
        });
    }
    Ok((observers, down))
}

/// Merge streams that are each in time order into one in time order (k-way; a tie keeps the
/// stream order: the earlier stream's line first). Pure.
pub fn merge_by_time<T: StreamLine>(streams: Vec<Vec<T>>) -> Vec<T> {
    let total = streams.iter().map(Vec::len).sum();
    let mut heads: Vec<std::iter::Peekable<std::vec::IntoIter<T>>> = streams
        .into_iter()
        .map(|s| s.into_iter().peekable())
        .collect();
    let mut heap = std::collections::BinaryHeap::new();
    for (i, head) in heads.iter_mut().enumerate() {
        if let Some(line) = head.peek() {
            heap.push(std::cmp::Reverse((line.response().time, i)));
        }
    }
    let mut out = Vec::with_capacity(total);
    while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
        if let Some(line) = heads[i].next() {
            out.push(line);
        }
        if let Some(next) = heads[i].peek() {
            heap.push(std::cmp::Reverse((next.response().time, i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use meshd::flows::record::{FlowsResponse, LostEvents, LostEventsSource, ResponseItem};
    use proptest::prelude::*;

    use super::*;

    fn line(node: usize, secs: i64) -> FlowsResponse {
        let base: jiff::Timestamp = "2026-12-06T10:00:00Z".parse().expect("time");
        FlowsResponse {
            item: ResponseItem::LostEvents(LostEvents {
                source: LostEventsSource::RingBuffer,
                num_events_lost: 1,
            }),
            node_name: format!("n{node}"),
            time: base
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .expect("time"),
        }
    }

    #[test]
    fn streams_interleave_by_time_ties_in_stream_order() {
        let merged = merge_by_time(vec![
            vec![line(1, 1), line(1, 3), line(1, 3)],
            vec![line(2, 0), line(2, 3), line(2, 9)],
            vec![],
        ]);
        let got: Vec<(String, i64)> = merged
            .iter()
            .map(|l| (l.node_name.clone(), l.time.as_second() % 60))
            .collect();
        let want: Vec<(String, i64)> = [(2, 0), (1, 1), (1, 3), (1, 3), (2, 3), (2, 9)]
            .iter()
            .map(|(n, s)| (format!("n{n}"), *s))
            .collect();
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn the_merge_is_a_sorted_permutation_of_its_streams(
            streams in proptest::collection::vec(proptest::collection::vec(0i64..50, 0..20), 0..6),
        ) {
            let streams: Vec<Vec<FlowsResponse>> = streams
                .into_iter()
                .enumerate()
                .map(|(n, mut secs)| {
                    secs.sort_unstable();
                    secs.into_iter().map(|s| line(n, s)).collect()
                })
                .collect();
            let mut expected: Vec<FlowsResponse> = streams.iter().flatten().cloned().collect();
            // A stable sort by time of the concatenation: the same order the merge promises.
            expected.sort_by_key(|l| l.time);
            prop_assert_eq!(merge_by_time(streams), expected);
        }
    }
}
