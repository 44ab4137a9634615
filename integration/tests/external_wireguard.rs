//! `--wireguard-mode external` in a lab: a node's two user-space devices are run by `meshd-wg`
//! processes that meshd did not start (as the `wireguard` containers of
//! deploy/components/userspace-wireguard run them, started after meshd); meshd waits for them,
//! adopts them, and a killed meshd leaves them, and the traffic, running. Needs root; the lab
//! is uniquely named and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use integration::lab::{self, ping, pod_addrs, Lab};
use testkit::netns;

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
    testkit::require_tools(lab::TOOLS);
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

    // A device's own container dies. meshd does not bring it back itself, and its loop does
    // not stall waiting for it: within seconds it reports the mesh not converged (a stalled
    // loop would keep reporting the last, converged, status).
    let (_, wg0) = before.iter().find(|(d, _)| d == "meshd0").unwrap().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wg0 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    lab.wait_for(
        "n2 to report the lost device",
        Duration::from_secs(8),
        |s| s["nodes"][1]["status"]["converged"] == false,
    )
    .unwrap();
    assert!(
        helpers(&n2_ns).iter().all(|(d, _)| d != "meshd0"),
        "meshd spawned a device it was told another process runs"
    );
    // The container comes back: meshd adopts the new device and the mesh converges again.
    let helper = integration::lab::bin("meshd-wg");
    let mnt = n2["mount_namespace"].as_str().unwrap();
    let mut restarted = std::process::Command::new("nsenter");
    restarted
        .arg(format!("--mount={mnt}"))
        .arg(format!("--net=/run/netns/{n2_ns}"))
        .arg("--")
        .arg(&helper)
        .args(["--interface", "meshd0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _helper = netns::ChildGuard(Some(restarted.spawn().unwrap()));
    lab.wait_for(
        "n2 to adopt the new device and converge",
        Duration::from_secs(20),
        |s| s["nodes"][1]["status"]["converged"] == true,
    )
    .unwrap();
    // The new device has no session yet: n2's first packet starts the handshake (n1 would
    // only notice its old session is dead after WireGuard's rekey timeout).
    let back = typed.pods_on("n2").next().unwrap().clone();
    let (src4, _) = pod_addrs(&from).unwrap();
    assert!(
        ping(&back, &src4.to_string(), 3),
        "n2 -> n1 after the new device"
    );
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
}
