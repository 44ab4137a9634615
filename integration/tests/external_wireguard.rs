//! `--wireguard-mode external` in a lab: a node's two user-space devices are run by `meshd-wg`
//! processes that meshd did not start (as the `wireguard` containers of
//! deploy/components/userspace-wireguard run them, started after meshd); meshd waits for them,
//! adopts them, and a killed meshd leaves them, and the traffic, running. Needs root; the lab
//! is uniquely named and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use integration::lab::{ping, pod_addrs, Lab};
use integration::netns;

/// The pids of the `meshd-wg` processes in network namespace `ns`, by device.
fn helpers(ns: &str) -> Vec<(String, u32)> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    let mut found = Vec::new();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("/meshd-wg")) {
            let device = args
                .iter()
                .skip_while(|a| *a != "--interface")
                .nth(1)
                .cloned()
                .unwrap_or_default();
            found.push((device, pid.parse().unwrap()));
        }
    }
    found.sort();
    found
}

#[test]
fn meshd_adopts_devices_run_by_another_process_and_a_killed_meshd_leaves_them_running() {
    if !netns::root_or_skip() {
        return;
    }
    let lab = Lab::up_with(2, 1, &["--node-wireguard-mode", "n2=external"]).unwrap();
    let st = lab.status_json().unwrap();
    let n2 = &st["nodes"][1];
    let n2_ns = n2["namespace"].as_str().unwrap().to_string();
    assert_eq!(n2["mode"], "userspace", "{n2:#}");
    assert_eq!(n2["status"]["adopted_device"], true, "{n2:#}");
    // Both devices are served by processes of their own, not by meshd's children.
    let before = helpers(&n2_ns);
    assert_eq!(
        before.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        ["meshd0", "meshd0b"],
        "{before:?}"
    );
    let meshd_pid = n2["meshd_pid"].as_u64().unwrap();
    for (_, pid) in &before {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u64 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(ppid, meshd_pid, "meshd-wg {pid} was spawned by meshd");
    }
    let typed = lab.status().unwrap();
    let from = typed.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(typed.pods_on("n2").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));

    // meshd dies (a container restart): the devices, and the traffic through them, stay.
    lab.meshctl(&["lab", "kill-node", "n2"]).unwrap();
    assert_eq!(helpers(&n2_ns), before);
    assert!(ping(&from, &dst4.to_string(), 3));

    // The next meshd adopts the same devices; nothing new is spawned.
    lab.meshctl(&["lab", "start-node", "n2"]).unwrap();
    lab.wait_for(
        "n2's meshd to converge again",
        Duration::from_secs(30),
        |s| {
            let n2 = &s["nodes"][1];
            n2["running"] == true
                && n2["status"]["converged"] == true
                && n2["status"]["adopted_device"] == true
        },
    )
    .unwrap();
    assert_eq!(helpers(&n2_ns), before, "the same helpers, no new ones");
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
}
