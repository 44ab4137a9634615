//! A real kube-apiserver (v1.20.2, built by `scripts/kube-apiserver.sh build` from Debian's
//! `kubernetes` source package) with its own etcd, for the Kubernetes tests and the kubernetes
//! lab: TLS with a CA of its own, a static token file (an admin in `system:masters`, and any
//! service-account identities the caller names), `--authorization-mode=RBAC`, and an audit log
//! of every request ([`audit`]). [`KubeApiServer::start`] waits for `/readyz`; dropping the
//! value kills both processes and removes the directory (a lab [`KubeApiServer::detach`]es
//! them instead: `lab down` kills everything in the underlay namespace).
//!
//! No controller runs: nothing creates ServiceAccount token secrets or default service
//! accounts, so the `ServiceAccount` admission plugin is off and identities come from the token
//! file, the way v1.20 maps a static token to `system:serviceaccount:NS:NAME` with the groups a
//! real token would carry.

pub mod audit;
pub mod lab;
pub mod pki;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes release `scripts/kube-apiserver.sh` builds.
pub const VERSION: &str = "v1.20.2";

/// How long etcd plus the API server may take to become ready (3–4 s when idle; more on a
/// busy 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Errors starting or driving the server.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiServerError {
    /// The binary is not built.
    #[error("{path} not found: build it with `scripts/kube-apiserver.sh build` (about 4 minutes)")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file in the server's directory could not be written or read.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificates.
    #[error("making the API server's certificates")]
    Pki(#[from] pki::PkiError),
    /// A process could not be started.
    #[error("starting {program}")]
    Spawn {
        /// Which.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A process exited before the server was ready.
    #[error("{program} exited ({status}) before the API server was ready; see {log}")]
    Exited {
        /// Which.
        program: &'static str,
        /// How.
        status: std::process::ExitStatus,
        /// Its log.
        log: PathBuf,
    },
    /// `/readyz` never answered 200.
    #[error("the API server was not ready within {timeout:?} (last answer: {last}); see {log}")]
    NotReady {
        /// How long it was given.
        timeout: Duration,
        /// The last probe's outcome.
        last: String,
        /// Its log.
        log: PathBuf,
    },
    /// A request to etcd failed.
    #[error("etcd request {what} failed: {detail}")]
    Etcd {
        /// Which request.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

type Result<T> = std::result::Result<T, KubeApiServerError>;

/// A static token and the identity it authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticToken {
    /// The bearer token.
    pub token: String,
    /// The user name.
    pub user: String,
    /// The user's uid.
    pub uid: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl StaticToken {
    /// A token for service account `namespace/name`, with the user name and groups the
    /// service-account authenticator gives a real token
    /// (`system:serviceaccount:NS:NAME`; `system:serviceaccounts`,
    /// `system:serviceaccounts:NS`).
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            token: random_token(),
            user: service_account_user(namespace, name),
            uid: format!("{namespace}-{name}-uid"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        }
    }

    /// Its line in `--token-auth-file` (`token,user,uid,"group1,group2"`).
    pub fn csv_line(&self) -> String {
        format!(
            "{},{},{},\"{}\"",
            self.token,
            self.user,
            self.uid,
            self.groups.join(",")
        )
    }
}

/// The user name of service account `namespace/name`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where `scripts/kube-apiserver.sh` puts the binaries: `$MESHD_KUBE_CACHE/bin`, by default
/// `/var/cache/meshd/kube-v1.20.2/bin`.
pub fn binary_dir() -> PathBuf {
    let cache = std::env::var_os("MESHD_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/cache/meshd/kube-{VERSION}")));
    cache.join("bin")
}

/// The kube-apiserver binary, if built.
pub fn binary() -> Result<PathBuf> {
    let path = binary_dir().join("kube-apiserver");
    if path.is_file() {
        Ok(path)
    } else {
        Err(KubeApiServerError::Missing { path })
    }
}

/// Whether the kube-apiserver binary is built (labs fall back to the mock without it).
pub fn available() -> bool {
    binary().is_ok()
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The directory for certificates, etcd's data, logs and kubeconfigs (created; removed on
    /// drop unless detached).
    pub dir: PathBuf,
    /// Run both processes in this network namespace (`ip netns exec`), e.g. a lab's underlay.
    pub netns: Option<String>,
    /// The address the API server and etcd listen on.
    pub bind: IpAddr,
    /// The API server's port; `None`: a free one (only without `netns`).
    pub port: Option<u16>,
    /// Identities besides the admin.
    pub tokens: Vec<StaticToken>,
    /// More kube-apiserver flags (e.g. `--watch-cache=false`, so that watches go to etcd and
    /// its compaction answers a stale resume with `410 Gone`).
    pub extra_args: Vec<String>,
}

impl ServerConfig {
    /// On loopback, free ports, in `dir`.
    pub fn loopback(dir: PathBuf) -> Self {
        Self {
            dir,
            netns: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            tokens: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// A running etcd and kube-apiserver.
#[derive(Debug)]
pub struct KubeApiServer {
    config: ServerConfig,
    port: u16,
    etcd_port: u16,
    admin: StaticToken,
    pki: pki::Pki,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    detached: bool,
}

fn free_port(bind: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind((bind, 0)).map_err(|source| KubeApiServerError::Io {
        what: "binding a free port on",
        path: PathBuf::from(bind.to_string()),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| KubeApiServerError::Io {
            what: "reading the free port on",
            path: PathBuf::from(bind.to_string()),
            source,
        })
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| KubeApiServerError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
";

impl KubeApiServer {
    /// Starts etcd and kube-apiserver as `config` says and waits until `/readyz` answers 200.
    pub fn start(config: ServerConfig) -> Result<Self> {
        let apiserver_bin = binary()?;
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|source| KubeApiServerError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let (port, etcd_port) = match (config.port, &config.netns) {
            (Some(p), Some(_)) => (p, 2379),
            (Some(p), None) => (p, free_port(config.bind)?),
            (None, _) => (free_port(config.bind)?, free_port(config.bind)?),
        };
        let pki = pki::make(&dir, &[config.bind])?;
        let admin = StaticToken {
            token: random_token(),
            user: "admin".into(),
            uid: "admin-uid".into(),
            groups: vec!["system:masters".into()],
        };
        let tokens: Vec<String> = std::iter::once(&admin)
            .chain(&config.tokens)
            .map(StaticToken::csv_line)
            .collect();
        write(&dir.join("tokens.csv"), &(tokens.join("\n") + "\n"))?;
        write(&dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        let mut server = Self {
            config,
            port,
            etcd_port,
            admin,
            pki,
            etcd: None,
            apiserver: None,
            detached: false,
        };
        server.start_etcd()?;
        server.start_apiserver(&apiserver_bin)?;
        server.write_kubeconfig(&server.admin_kubeconfig(), &server.admin.token.clone())?;
        server.wait_ready()?;
        Ok(server)
    }

    fn command(&self, program: &Path) -> Command {
        match &self.config.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn(&self, program: &str, mut cmd: Command, log: &str) -> Result<Child> {
        let log = self.config.dir.join(log);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| KubeApiServerError::Io {
                what: "opening",
                path: log.clone(),
                source,
            })?;
        let err = file.try_clone().map_err(|source| KubeApiServerError::Io {
            what: "opening",
            path: log,
            source,
        })?;
        // A process group of its own: a lab's detached server outlives the terminal's signals
        // to `meshctl lab up`.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| KubeApiServerError::Spawn {
                program: program.into(),
                source,
            })
    }

    fn start_etcd(&mut self) -> Result<()> {
        let bind = self.url_host();
        let client = format!("http://{bind}:{}", self.etcd_port);
        // The peer port is never dialled (a single member) but must be free.
        let peer_port = if self.config.netns.is_some() {
            2380
        } else {
            free_port(self.config.bind)?
        };
        let peer = format!("http://{bind}:{peer_port}");
        let mut cmd = self.command(Path::new("etcd"));
        cmd.arg("--data-dir")
            .arg(self.config.dir.join("etcd"))
            .args(["--name", "meshd-test"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("meshd-test={peer}")])
            .args(["--log-level", "warn"]);
        self.etcd = Some(self.spawn("etcd", cmd, "etcd.log")?);
        Ok(())
    }

    fn start_apiserver(&mut self, bin: &Path) -> Result<()> {
        let d = |name: &str| self.config.dir.join(name).to_string_lossy().into_owned();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut cmd = self.command(bin);
        cmd.arg(format!(
            "--etcd-servers=http://{}:{}",
            self.url_host(),
            self.etcd_port
        ))
        .arg(format!("--bind-address={}", self.config.bind))
        .arg(format!("--advertise-address={}", self.config.bind))
        .arg(format!("--secure-port={}", self.port))
        .arg("--insecure-port=0")
        .arg(format!("--tls-cert-file={}", s(&self.pki.serving_cert)))
        .arg(format!(
            "--tls-private-key-file={}",
            s(&self.pki.serving_key)
        ))
        .arg(format!("--client-ca-file={}", s(&self.pki.ca_cert)))
        .arg(format!("--token-auth-file={}", d("tokens.csv")))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            s(&self.pki.sa_pub)
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            s(&self.pki.sa_key)
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        // Dual-stack Nodes and Pods (two podCIDRs, two podIPs) are alpha in v1.20: without the
        // gate the server keeps only the first of each.
        .arg("--feature-gates=IPv6DualStack=true")
        // No controller creates default service accounts: pods name none.
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg(format!("--audit-policy-file={}", d("audit-policy.yaml")))
        .arg(format!("--audit-log-path={}", d("audit.jsonl")))
        .arg("--audit-log-maxsize=0")
        .args(&self.config.extra_args);
        self.apiserver = Some(self.spawn("kube-apiserver", cmd, "apiserver.log")?);
        Ok(())
    }

    fn url_host(&self) -> String {
        match self.config.bind {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }

    /// `https://ADDRESS:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.url_host(), self.port)
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding logs, certificates and kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The CA certificate clients must trust.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The admin's kubeconfig (`system:masters`), written at start.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.config.dir.join("admin.kubeconfig")
    }

    /// The audit log (`audit::read_file` parses it).
    pub fn audit_log(&self) -> PathBuf {
        self.config.dir.join("audit.jsonl")
    }

    /// The API server's own log.
    pub fn log(&self) -> PathBuf {
        self.config.dir.join("apiserver.log")
    }

    /// Writes a kubeconfig authenticating with `token` to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: meshd-test
  cluster:
    server: {}
    certificate-authority: {}
users:
- name: user
  user:
    token: {token}
contexts:
- name: meshd-test
  context: {{cluster: meshd-test, user: user}}
current-context: meshd-test
",
            self.url(),
            self.pki.ca_cert.display()
        );
        write(path, &text)
    }

    /// Polls `/readyz` until it answers 200, failing early when a process exits.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (program, child, log) in [
                ("etcd", &mut self.etcd, "etcd.log"),
                ("kube-apiserver", &mut self.apiserver, "apiserver.log"),
            ] {
                if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                    return Err(KubeApiServerError::Exited {
                        program,
                        status,
                        log: self.config.dir.join(log),
                    });
                }
            }
            let last = match self.readyz() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(KubeApiServerError::NotReady {
                    timeout: READY_TIMEOUT,
                    last,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One `/readyz` probe with the admin's token (kube-rs over rustls, on a thread of its own
    /// so that callers inside a Tokio runtime may block on it).
    fn readyz(&self) -> std::result::Result<(), String> {
        let kubeconfig = self.admin_kubeconfig();
        let netns = self.config.netns.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    if let Some(ns) = netns {
                        enter_netns(&ns)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        let client = meshd::registry::kube::client::client(Some(&kubeconfig))
                            .await
                            .map_err(|e| format!("{e:#}"))?;
                        let req = http::Request::get("/readyz")
                            .body(Vec::new())
                            .map_err(|e| e.to_string())?;
                        let text =
                            tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
                                .await
                                .map_err(|_| "timed out".to_string())?
                                .map_err(|e| e.to_string())?;
                        if text.trim() == "ok" {
                            Ok(())
                        } else {
                            Err(text)
                        }
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the probe thread panicked".into()))
        })
    }

    /// etcd's current revision (the API server's resourceVersion).
    pub fn etcd_revision(&self) -> Result<u64> {
        // The range answer's header carries the store's revision.
        let body = self.etcd_post("/v3/kv/range", "{\"key\":\"AA==\"}", "range")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| KubeApiServerError::Etcd {
                what: "range",
                detail: format!("{e}: {body}"),
            })?;
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| KubeApiServerError::Etcd {
                what: "range",
                detail: format!("no revision in {body}"),
            })
    }

    /// Compacts etcd's history up to its current revision: every watch or list from an older
    /// resourceVersion that reaches etcd is then answered `410 Gone`.
    pub fn compact_etcd(&self) -> Result<u64> {
        let revision = self.etcd_revision()?;
        self.etcd_post(
            "/v3/kv/compaction",
            &format!("{{\"revision\":\"{revision}\",\"physical\":true}}"),
            "compaction",
        )?;
        Ok(revision)
    }

    /// One POST to etcd's JSON gateway (plain HTTP on the client port).
    fn etcd_post(&self, path: &str, body: &str, what: &'static str) -> Result<String> {
        let err = |detail: String| KubeApiServerError::Etcd { what, detail };
        let addr = (self.config.bind, self.etcd_port);
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .map_err(|e| err(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| err(e.to_string()))?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| err(e.to_string()))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| err(e.to_string()))?;
        let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(err(head.lines().next().unwrap_or_default().to_string()));
        }
        // The gateway may answer chunked: keep the JSON object only.
        let start = rest.find('{').unwrap_or(0);
        let end = rest.rfind('}').map_or(rest.len(), |e| e + 1);
        Ok(rest[start..end].to_string())
    }

    /// Leaves both processes running and the directory in place (a lab's server outlives the
    /// `meshctl` that started it; `lab down` kills it with the underlay namespace).
    pub fn detach(mut self) {
        self.detached = true;
        self.etcd.take();
        self.apiserver.take();
    }
}

fn enter_netns(ns: &str) -> std::result::Result<(), String> {
    let f = fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering netns {ns}: {e}"))
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // `ip netns exec` execs the program, so the child's pid is the server's.
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("MESHD_KUBE_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.config.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_tokens_carry_the_groups_a_real_token_has() {
        let t = StaticToken::service_account("meshd-system", "meshd");
        assert_eq!(t.user, "system:serviceaccount:meshd-system:meshd");
        assert_eq!(t.token.len(), 32);
        assert_eq!(
            t.csv_line(),
            format!(
                "{},system:serviceaccount:meshd-system:meshd,meshd-system-meshd-uid,\"system:serviceaccounts,system:serviceaccounts:meshd-system\"",
                t.token
            )
        );
        assert_ne!(t.token, StaticToken::service_account("a", "b").token);
    }
}
