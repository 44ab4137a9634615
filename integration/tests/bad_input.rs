//! Bad input at meshd's local surfaces in a running lab (issue 19): hostile files in the
//! directory registry (a FIFO, a symlink to /dev/zero, a 100 MB file, 10,000 junk records), a
//! 1 GB line on the control socket, and 10,000 idle connections to the metrics port. Each gets
//! a clear error or is shed, meshd keeps serving its status and the mesh, and nothing else
//! changes. Needs root (namespaces) and python3 (the clients run inside a node's namespaces);
//! the lab is torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use integration::lab::{self, peer_names, ping, pod_addrs, Lab};

/// Each node's programmed peers with their allowed IPs (what must not change).
fn peering(st: &serde_json::Value) -> BTreeMap<String, String> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["status"]["peers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| format!("{}={}", p["name"], p["allowed_ips"]))
                    .collect::<Vec<_>>()
                    .join(";"),
            )
        })
        .collect()
}

/// Node `node`'s malformed records: name → error.
fn malformed(st: &serde_json::Value, node: &str) -> BTreeMap<String, String> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == node)
        .flat_map(|n| {
            n["status"]["malformed"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|m| {
            (
                m["node"].as_str().unwrap().to_string(),
                m["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pods_reach_across(lab: &Lab, when: &str) {
    let typed = lab.status().unwrap();
    for from in &typed.pods {
        for to in typed.pods.iter().filter(|p| p.node != from.node) {
            let (a4, _) = pod_addrs(to).unwrap();
            assert!(
                ping(from, &a4.to_string(), 2),
                "{when}: {} cannot reach {}",
                from.name,
                to.name
            );
        }
    }
}

fn write_hostile_files(registry: &Path) {
    nix::unistd::mkfifo(
        &registry.join("fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", registry.join("zero.json")).unwrap();
    let tmp = registry.join(".huge.tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    std::fs::rename(&tmp, registry.join("huge.json")).unwrap();
    for i in 0..10_000 {
        let tmp = registry.join(format!(".junk{i}.tmp"));
        std::fs::write(&tmp, format!("{{\"junk\":{i}}}")).unwrap();
        std::fs::rename(&tmp, registry.join(format!("junk{i}.json"))).unwrap();
    }
}

/// Inside a node: a control-socket client sending a 1 GiB line. Prints how much it could send
/// and what the daemon answered.
const HUGE_LINE: &str = r#"
import socket, threading
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/meshd/meshd.sock")
sent = [0]
def write():
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(1024):
            s.sendall(chunk)
            sent[0] += len(chunk)
    except OSError:
        pass
t = threading.Thread(target=write)
t.start()
answer = b""
try:
    while True:
        b = s.recv(4096)
        if not b:
            break
        answer += b
except OSError:
    pass
t.join()
print(sent[0])
print(answer.decode(errors="replace"))
"#;

/// Inside a node: 10,000 idle connections to the metrics port, then (holding them) a fresh
/// client asks for /metrics until answered. Prints the connections opened and seconds taken.
const IDLE_FLOOD: &str = r#"
import os, resource, signal, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard == resource.RLIM_INFINITY or hard > 30000:
    hard = 30000
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
per_child = max(hard - 64, 100)
total, children, opened = 10000, [], 0
while opened < total:
    n = min(per_child, total - opened)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        idle = []
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", 9108))
            except BlockingIOError:
                pass
            idle.append(c)
        os.write(w, str(len(idle)).encode())
        os.close(w)
        time.sleep(300)
        os._exit(0)
    os.close(w)
    opened += int(os.read(r, 32).decode() or 0)
    os.close(r)
    children.append(pid)
time.sleep(1)
start = time.time()
ok = False
while time.time() - start < 30 and not ok:
    try:
        f = socket.create_connection(("127.0.0.1", 9108), timeout=2)
        f.settimeout(2)
        f.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = f.recv(65536)
            if not b:
                break
            data += b
        ok = data.startswith(b"HTTP/1.1 200")
        f.close()
    except OSError:
        time.sleep(0.2)
took = round(time.time() - start, 1)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(opened)
print(ok, took)
"#;

#[test]
fn hostile_local_input_is_refused_and_the_mesh_keeps_working() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("python3");
    let lab = Lab::up(2, 1).unwrap();
    let raw = lab.status_json().unwrap();
    let registry = std::path::PathBuf::from(raw["registry_dir"].as_str().unwrap());
    let before = lab
        .wait_for("both nodes to peer", Duration::from_secs(20), |s| {
            ["n1", "n2"].iter().all(|n| peer_names(s, n).len() == 1)
        })
        .unwrap();
    let honest = peering(&before);
    pods_reach_across(&lab, "before");

    // The registry: each hostile file is that node's malformed record, with a reason.
    write_hostile_files(&registry);
    let st = lab
        .wait_for(
            "every node to report every hostile file",
            Duration::from_secs(120),
            |s| {
                ["n1", "n2"].iter().all(|n| {
                    let m = malformed(s, n);
                    ["fifo", "zero", "huge", "junk0", "junk9999"]
                        .iter()
                        .all(|f| m.contains_key(*f))
                })
            },
        )
        .unwrap();
    let m = malformed(&st, "n1");
    assert!(m["fifo"].contains("a FIFO"), "{}", m["fifo"]);
    assert!(m["zero"].contains("symbolic link"), "{}", m["zero"]);
    assert!(m["huge"].contains("larger than"), "{}", m["huge"]);
    assert_eq!(m.keys().filter(|k| k.starts_with("junk")).count(), 10_000);
    assert_eq!(
        peering(&st),
        honest,
        "the hostile files changed the peering"
    );
    pods_reach_across(&lab, "with the hostile files");

    // The control socket: a 1 GiB line is refused after a few bytes, with a reason.
    let out = lab.exec("n1", &["python3", "-c", HUGE_LINE]).unwrap();
    let mut lines = out.lines();
    let sent: u64 = lines.next().unwrap().parse().unwrap();
    let answer = lines.collect::<Vec<_>>().join("\n");
    assert!(sent < 64 << 20, "meshd read {sent} bytes of one line");
    assert!(answer.contains("longer than 256 bytes"), "{answer}");

    // The metrics port: 10,000 idle connections do not keep a fresh client out for long.
    let out = lab.exec("n1", &["python3", "-c", IDLE_FLOOD]).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("10000"), "{out}");
    let verdict = lines.next().unwrap_or_default();
    assert!(
        verdict.starts_with("True"),
        "no /metrics answer under the flood: {out}"
    );

    // meshd still serves its status and the mesh, unchanged.
    let after = lab.status_json().unwrap();
    assert_eq!(peering(&after), honest);
    pods_reach_across(&lab, "after");
}

/// Node `node`'s reconcile count.
fn reconciles(st: &serde_json::Value, node: &str) -> u64 {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["status"]["counters"]["reconciles"].as_u64())
        .unwrap_or(0)
}

/// The lab's API server process, found by its kubeconfig path (unique to the lab).
fn apiserver_pid(kubeconfig: &str) -> nix::unistd::Pid {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("fake-apiserver"))
            && args.iter().any(|a| a == kubeconfig)
        {
            return nix::unistd::Pid::from_raw(pid);
        }
    }
    panic!("no fake-apiserver for {kubeconfig}");
}

/// Resumes the frozen API server whatever happens (the lab's teardown needs it).
struct Frozen(nix::unistd::Pid);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// An API server that accepts TCP and never answers (stopped: the kernel still completes
/// connections) while meshd publishes (a key rotation's new record): meshd's loop keeps
/// running (its passes go on, and a command reaches a pass within seconds: publishing is a task
/// of its own, not awaited by the loop), it keeps serving its status, and the mesh keeps
/// working; once the server answers again the mesh settles.
#[test]
fn a_silent_api_server_does_not_stop_the_loop_status_or_mesh() {
    testkit::require_tools(lab::TOOLS);
    // The mock: the test freezes fake-apiserver (a server that accepts and never answers).
    let lab = Lab::up_with(2, 1, &["--registry", "kubernetes", "--apiserver", "mock"]).unwrap();
    lab.wait_for("both nodes to peer", Duration::from_secs(30), |s| {
        ["n1", "n2"].iter().all(|n| peer_names(s, n).len() == 1)
    })
    .unwrap();
    pods_reach_across(&lab, "before");
    let js = lab.status_json().unwrap();
    let kubeconfig = js["kubeconfig"].as_str().unwrap().to_string();
    let frozen = Frozen(apiserver_pid(&kubeconfig));
    nix::sys::signal::kill(frozen.0, nix::sys::signal::Signal::SIGSTOP).unwrap();

    // Ask n1 to rotate its keys: publishing the new record hangs on the silent server.
    let mut rotate = std::process::Command::new(lab::bin("meshctl"))
        .args(["lab", "exec", "--name", lab.name(), "n1", "--"])
        .arg(lab::bin("meshctl"))
        .arg("rotate-key")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let first = reconciles(&lab.status_json().unwrap(), "n1");
    // Passes go on (the 30 s resync at least) while the server stays silent.
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    let mut last = first;
    while std::time::Instant::now() < deadline && last < first + 2 {
        std::thread::sleep(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let st = lab.status_json().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status took {:?}",
            started.elapsed()
        );
        last = reconciles(&st, "n1");
    }
    assert!(
        last >= first + 2,
        "n1's loop is stuck behind the silent API server: reconciles {first} → {last}"
    );
    // While the new record cannot be written, every command still reaches a pass at once
    // (a publish awaited by the loop would hold each pass for the client's 15 s timeout).
    let n1_meshctl = || {
        let mut c = std::process::Command::new(lab::bin("meshctl"));
        c.args(["lab", "exec", "--name", lab.name(), "n1", "--"])
            .arg(lab::bin("meshctl"))
            .arg("rotate-key")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    for attempt in 0..3 {
        let before = reconciles(&lab.status_json().unwrap(), "n1");
        let mut again = n1_meshctl().spawn().unwrap();
        let asked = std::time::Instant::now();
        let mut now = before;
        while now <= before && asked.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(250));
            now = reconciles(&lab.status_json().unwrap(), "n1");
        }
        let _ = again.kill();
        let _ = again.wait();
        assert!(
            now > before,
            "attempt {attempt}: a command waited {:?} for a pass behind the silent API server",
            asked.elapsed()
        );
    }
    pods_reach_across(&lab, "while the API server is silent");
    let _ = rotate.kill();
    let _ = rotate.wait();
    drop(frozen);
    // The server answers again: the records land and the mesh is whole.
    lab.wait_for("both nodes to peer again", Duration::from_secs(90), |s| {
        ["n1", "n2"].iter().all(|n| peer_names(s, n).len() == 1)
    })
    .unwrap();
    pods_reach_across(&lab, "after the API server answers again");
}
