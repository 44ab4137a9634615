//! The prober against a verdict change this test makes itself: two namespaces over a veth, a
//! TCP listener in one, and the return path blackholed (closed: SYN-ACKs vanish, as a BPF drop
//! makes SYNs vanish) or not (open). The prober must see each change, at about the moment it
//! was made. Needs root and `ip`.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testkit::netns::{self, NetnsGuard};

use crate::prober::{probe_until, ProbeTiming};
use crate::stats::enforced_after;

const CLIENT: &str = "198.18.231.1";
const SERVER: &str = "198.18.231.2";

fn pair() -> (NetnsGuard, NetnsGuard) {
    let c = NetnsGuard::new(&netns::unique_name("pbt", "c")).unwrap();
    let s = NetnsGuard::new(&netns::unique_name("pbt", "s")).unwrap();
    c.run(&[
        "ip",
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        s.name(),
    ])
    .unwrap();
    c.run(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "veth0"])
        .unwrap();
    s.run(&["ip", "addr", "add", &format!("{SERVER}/24"), "dev", "veth1"])
        .unwrap();
    c.run(&["ip", "link", "set", "veth0", "up"]).unwrap();
    s.run(&["ip", "link", "set", "veth1", "up"]).unwrap();
    (c, s)
}

/// Runs the prober in `client` for `want` while `change` (the verdict change) runs at `t0`;
/// the measured time and how long `change` took.
fn flip(client: &NetnsGuard, want: bool, change: impl FnOnce()) -> (Option<Duration>, Duration) {
    let timing = ProbeTiming {
        interval: Duration::from_millis(2),
        timeout: Duration::from_millis(100),
        settle: 5,
        max_wait: Duration::from_secs(5),
    };
    let (t0, ready, stop) = (
        OnceLock::new(),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let to: SocketAddr = format!("{SERVER}:9090").parse().unwrap();
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            client
                .within(|| probe_until(to, want, timing, &t0, &ready, &stop))
                .unwrap()
                .unwrap()
        });
        while !ready.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let start = Instant::now();
        t0.set(start).unwrap();
        change();
        let took = start.elapsed();
        let attempts = prober.join().unwrap();
        (enforced_after(start, &attempts, want), took)
    })
}

#[test]
fn the_prober_sees_a_path_open_and_close_when_it_happens() {
    testkit::require_root();
    testkit::require_tool("ip");
    let (client, server) = pair();
    let listener = server
        .within(|| TcpListener::bind(format!("{SERVER}:9090")).unwrap())
        .unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            listener.set_nonblocking(true).unwrap();
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        let blackhole = ["ip", "route", "add", "blackhole", &format!("{CLIENT}/32")];
        let unblock = ["ip", "route", "del", "blackhole", &format!("{CLIENT}/32")];
        for _ in 0..3 {
            // Closing: measured from t0 to the send time of the first failure that stays,
            // which cannot be before the route exists nor long after.
            let (closed, took) = flip(&client, false, || {
                server.run(&blackhole).unwrap();
            });
            let closed = closed.expect("the closing change was not seen");
            assert!(
                closed <= took + Duration::from_millis(50),
                "{closed:?} vs {took:?}"
            );
            // Opening: the first success that stays comes after the route is gone.
            let (opened, took) = flip(&client, true, || {
                server.run(&unblock).unwrap();
            });
            let opened = opened.expect("the opening change was not seen");
            assert!(
                opened <= took + Duration::from_millis(50),
                "{opened:?} vs {took:?}"
            );
        }
        // A change that does not happen is never seen.
        let (never, _) = flip(&client, false, || {});
        assert_eq!(never, None);
        done.store(true, Ordering::SeqCst);
    });
}
