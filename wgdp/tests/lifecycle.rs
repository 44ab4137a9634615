//! Root tests of `meshd-wg`'s life: SIGHUP is ignored, SIGTERM and the removal of its UAPI
//! socket stop it cleanly, and a second device of the same name is refused.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{helper, ifname, run, Impl, Netns};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn device_exits_on_sigterm_and_when_its_socket_is_removed() {
    testkit::require_tools(&["wg", "ip"]);
    let mut ns = Netns::new();
    let (i1, i2) = (ifname(), ifname());
    let p1 = ns.start_device(&i1, Impl::Wgdp, 2);
    let p2 = ns.start_device(&i2, Impl::Wgdp, 1);
    // SIGHUP is ignored.
    kill(Pid::from_raw(p1), Signal::SIGHUP).expect("hup");
    std::thread::sleep(Duration::from_millis(300));
    assert!(ns.wg(&["show", &i1]).contains("interface"));
    let exited = |ns: &mut Netns, pid: i32| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            for c in &mut ns.children {
                if c.id() == u32::try_from(pid).expect("pid") {
                    if let Ok(Some(st)) = c.try_wait() {
                        return Some(st);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    kill(Pid::from_raw(p1), Signal::SIGTERM).expect("term");
    let st = exited(&mut ns, p1).expect("exits on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!PathBuf::from(format!("/var/run/wireguard/{i1}.sock")).exists());
    std::fs::remove_file(format!("/var/run/wireguard/{i2}.sock")).expect("rm socket");
    let st = exited(&mut ns, p2).expect("exits without its socket");
    assert!(st.success(), "{st}");
    let links = ns.ip(&["link", "show"]);
    assert!(!links.contains(&i1) && !links.contains(&i2), "{links}");
    // A second device of the same name is refused while the first lives.
    let p3 = ns.start_device(&i1, Impl::Wgdp, 1);
    let out = run(ns
        .cmd(helper().to_str().expect("utf-8"))
        .args(["--interface", &i1]));
    assert!(
        !out.status.success(),
        "second device with the same socket refused"
    );
    assert!(ns.wg(&["show", &i1]).contains("interface"));
    let _ = p3;
}
