//! Root test of two attachers on one pod veth at once: the CNI plugin's ADD
//! ([`PodDatapath::attach_pod`]) and the daemon's backstop ([`Datapath::attach_to_pod`],
//! [`Datapath::attach_from_pod`]) attach the pod programs to the same host veth over and over
//! while a third thread watches the records. Re-attaching must never leave a moment without
//! `link_ingress_<veth>` or `link_egress_<veth>` (the daemon's pass and the plugin read them:
//! a record missing for an instant was the `cni_scale` flake), and afterwards the records and
//! the attached programs agree, also when the two attach different programs (a plugin started
//! before a meshd upgrade holds the old one). A DEL racing the daemon's attachment leaves no
//! record of the deleted veth behind. A veth in a namespace the test creates; nothing
//! is sent.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ebpf_redirect::{forget_pod_records, remove_pins, Datapath, PodDatapath, TcAttachType};
use testkit::{unique_name, NetnsGuard};

/// Rounds of each attacher.
const ROUNDS: usize = 300;
const VETH: &str = "arace0";

struct Fixture {
    netns: NetnsGuard,
    pin_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}

fn ipn(ns: &str, args: &str) {
    testkit::netns::ip_n(ns, args).unwrap();
}

fn records_present(pin_dir: &Path) -> (bool, bool) {
    (
        pin_dir.join(format!("link_ingress_{VETH}")).exists(),
        pin_dir.join(format!("link_egress_{VETH}")).exists(),
    )
}

#[test]
fn concurrent_plugin_and_daemon_attachments_never_leave_a_veth_without_its_records() {
    testkit::require_root();
    testkit::require_tool("ip");
    let fx = Fixture {
        netns: NetnsGuard::new(&unique_name("ar", "race")).unwrap(),
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/ebpf-redirect-attach-race-{}",
            std::process::id()
        )),
    };
    let ns = fx.netns.name().to_string();
    ipn(&ns, &format!("link add {VETH} type veth peer name arace1"));
    ipn(&ns, &format!("link set {VETH} up"));

    let mut dp = Datapath::load(&fx.pin_dir).expect("load");
    let mut plugin = PodDatapath::open(&fx.pin_dir).expect("open the pins as the plugin does");
    // The first attachment, as an ADD makes it.
    testkit::netns::within(&ns, || plugin.attach_pod(VETH))
        .unwrap()
        .unwrap();
    assert_eq!(records_present(&fx.pin_dir), (true, true));

    let done = AtomicBool::new(false);
    let missing = AtomicUsize::new(0);
    let looks = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let (ingress, egress) = records_present(&fx.pin_dir);
                if !ingress || !egress {
                    missing.fetch_add(1, Ordering::SeqCst);
                }
                looks.fetch_add(1, Ordering::SeqCst);
            }
        });
        let daemon = s.spawn(|| {
            testkit::netns::within(&ns, || {
                for _ in 0..ROUNDS {
                    dp.attach_to_pod(VETH).unwrap();
                    dp.attach_from_pod(VETH).unwrap();
                }
            })
            .unwrap()
        });
        let cni = s.spawn(|| {
            testkit::netns::within(&ns, || {
                for _ in 0..ROUNDS {
                    plugin.attach_pod(VETH).unwrap();
                }
            })
            .unwrap()
        });
        daemon.join().unwrap();
        cni.join().unwrap();
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
    });
    let looks = looks.into_inner();
    assert!(looks > 0, "the watcher never looked");
    assert_eq!(
        missing.into_inner(),
        0,
        "a record of {VETH} was missing in some of {looks} looks while both attachers ran"
    );
    // The records and the filters agree: one program each, the pinned one.
    let (from_pod, to_pod) = testkit::netns::within(&ns, || {
        (
            dp.from_pod_attached(VETH).unwrap(),
            dp.to_pod_attached(VETH).unwrap(),
        )
    })
    .unwrap();
    assert_eq!((from_pod, to_pod), (Some(true), true));
    assert_eq!(
        dp.pinned_links(TcAttachType::Ingress).unwrap(),
        vec![VETH.to_string()]
    );
    let egress = dp.pinned_links(TcAttachType::Egress).unwrap();
    assert_eq!(egress, vec![VETH.to_string()]);
    // No temporary pin is left behind.
    let names: Vec<String> = std::fs::read_dir(&fx.pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(VETH))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Detaching still removes both.
    testkit::netns::within(&ns, || plugin.detach_pod(VETH))
        .unwrap()
        .unwrap();
    assert_eq!(records_present(&fx.pin_dir), (false, false));
}

/// The id of the program pinned at `path`.
fn pinned_prog_id(path: &Path) -> u32 {
    aya::programs::ProgramInfo::from_pin(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .id()
}

#[test]
fn whoever_attaches_last_is_recorded_even_with_a_different_program() {
    testkit::require_root();
    testkit::require_tool("ip");
    let fx = Fixture {
        netns: NetnsGuard::new(&unique_name("ar", "last")).unwrap(),
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/ebpf-redirect-attach-last-{}",
            std::process::id()
        )),
    };
    let ns = fx.netns.name().to_string();
    ipn(&ns, &format!("link add {VETH} type veth peer name arace1"));
    let old = Datapath::load(&fx.pin_dir).expect("load");
    // A plugin started before the upgrade holds the old programs ...
    let mut plugin = PodDatapath::open(&fx.pin_dir).unwrap();
    drop(old);
    // ... and the upgraded meshd loads new ones over the same pins.
    let mut dp = Datapath::load(&fx.pin_dir).expect("reload");
    let prog = |name: &str| pinned_prog_id(&fx.pin_dir.join(format!("prog_{name}")));
    let (new_from_pod, new_to_pod) = (prog("from_pod"), prog("to_pod"));
    let mut mismatches = Vec::new();
    for round in 0..300 {
        std::thread::scope(|s| {
            let cni = s.spawn(|| {
                testkit::netns::within(&ns, || plugin.attach_pod(VETH))
                    .unwrap()
                    .unwrap()
            });
            testkit::netns::within(&ns, || {
                dp.attach_to_pod(VETH).unwrap();
                dp.attach_from_pod(VETH).unwrap();
            })
            .unwrap();
            cni.join().unwrap();
        });
        let (from_pod_new, to_pod_new) = testkit::netns::within(&ns, || {
            (
                dp.from_pod_attached(VETH).unwrap() == Some(true),
                dp.to_pod_attached(VETH).unwrap(),
            )
        })
        .unwrap();
        let (_, egress) = records_present(&fx.pin_dir);
        assert!(egress);
        let ingress_id = pinned_prog_id(&fx.pin_dir.join(format!("link_ingress_{VETH}")));
        let egress_id = pinned_prog_id(&fx.pin_dir.join(format!("link_egress_{VETH}")));
        if (ingress_id == new_from_pod) != from_pod_new || (egress_id == new_to_pod) != to_pod_new {
            mismatches.push(round);
        }
    }
    assert!(
        mismatches.is_empty(),
        "the record and the attached program disagreed after rounds {mismatches:?}"
    );
}

#[test]
fn a_del_racing_the_backstop_leaves_no_record_of_the_deleted_veth() {
    testkit::require_root();
    testkit::require_tool("ip");
    let fx = Fixture {
        netns: NetnsGuard::new(&unique_name("ar", "del")).unwrap(),
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/ebpf-redirect-attach-del-{}",
            std::process::id()
        )),
    };
    let ns = fx.netns.name().to_string();
    let mut dp = Datapath::load(&fx.pin_dir).expect("load");
    let mut plugin = PodDatapath::open(&fx.pin_dir).unwrap();
    let mut left = Vec::new();
    for round in 0..40 {
        ipn(&ns, &format!("link add {VETH} type veth peer name arace1"));
        testkit::netns::within(&ns, || plugin.attach_pod(VETH))
            .unwrap()
            .unwrap();
        std::thread::scope(|s| {
            // The daemon's backstop re-attaches while the DEL runs (and fails, harmlessly,
            // once the veth is gone).
            let daemon = s.spawn(|| {
                testkit::netns::within(&ns, || {
                    for _ in 0..20 {
                        let _ = dp.attach_to_pod(VETH);
                        let _ = dp.attach_from_pod(VETH);
                    }
                })
                .unwrap()
            });
            // The DEL: detach, delete the veth, drop what was recorded meanwhile.
            testkit::netns::within(&ns, || plugin.detach_pod(VETH))
                .unwrap()
                .unwrap();
            ipn(&ns, &format!("link del {VETH}"));
            testkit::netns::within(&ns, || forget_pod_records(&fx.pin_dir, VETH))
                .unwrap()
                .unwrap();
            daemon.join().unwrap();
        });
        if records_present(&fx.pin_dir) != (false, false) {
            left.push(round);
        }
    }
    assert!(
        left.is_empty(),
        "records of the deleted veth left after rounds {left:?}"
    );
}
