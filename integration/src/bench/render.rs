//! The human-readable report: its tables, comparisons and target verdicts as text.

use std::fmt::Write as _;

use super::{ping_interval_arg, Report, Round, Spread, PLAIN};

impl Report {
    /// The human-readable report: both tables, the comparisons and the targets.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mesh-bench: iperf3 TCP {} s per run; ping -c {} -i {}; {} CPUs; load average {}",
            self.duration_s,
            self.pings,
            ping_interval_arg(self.ping_interval_ms),
            self.cpus,
            self.load_average.as_deref().unwrap_or("?")
        );
        if !self.results.is_empty() {
            let rounds = if self.rounds > 1 {
                format!(
                    "; medians of {} rounds, each running every scenario once",
                    self.rounds
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "\nData plane (pod to pod; plain and references: two namespaces over a veth{rounds}):"
            );
            let _ = writeln!(
                s,
                "{:<14} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>13} {:>8} {:>10}  status",
                "scenario",
                "1s Gbit/s",
                "4s Gbit/s",
                "RTT ms",
                "+RTT ms",
                "x1s",
                "x4s",
                "retr 1/4",
                "RSS MiB",
                "RSS@100 pr"
            );
            for r in &self.results {
                let retr = match (r.retransmits_1, r.retransmits_4) {
                    (None, None) => "-".to_string(),
                    (a, b) => format!(
                        "{}/{}",
                        a.map_or("-".into(), |v| v.to_string()),
                        b.map_or("-".into(), |v| v.to_string())
                    ),
                };
                let _ = writeln!(
                    s,
                    "{:<14} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>13} {:>8} {:>10}  {}{}",
                    r.name,
                    opt(r.gbit_s_1, 2),
                    opt(r.gbit_s_4, 2),
                    opt(r.rtt_ms, 3),
                    opt(r.added_rtt_ms, 3),
                    opt(r.ratio_1, 3),
                    opt(r.ratio_4, 3),
                    retr,
                    opt(kib_to_mib(r.rss_kib), 1),
                    opt(kib_to_mib(r.rss_kib_100_peers), 1),
                    r.status,
                    r.version
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                );
            }
            if self.results.iter().any(|r| !r.rounds.is_empty()) {
                let _ = writeln!(s, "\nRounds (1 stream Gbit/s; RTT ms; in the order run):");
                for r in self.results.iter().filter(|r| !r.rounds.is_empty()) {
                    let each = |f: fn(&Round) -> Option<f64>, digits: usize| {
                        r.rounds
                            .iter()
                            .map(|x| match f(x) {
                                Some(v) if x.status == "ok" => format!("{v:.digits$}"),
                                _ => "-".into(),
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let _ = writeln!(
                        s,
                        "  {:<14} {};  {}",
                        r.name,
                        each(|x| x.gbit_s_1, 2),
                        each(|x| x.rtt_ms, 3)
                    );
                }
            }
        }
        if !self.peer_scale.is_empty() {
            let _ = writeln!(
                s,
                "\nPeer scale ({} peers, one device in its own namespace, no traffic; raw UAPI, median [min-max]):",
                self.scale_peers
            );
            let _ = writeln!(
                s,
                "{:<14} {:>12} {:>20} {:>20} {:>10} {:>9} {:>10}  status",
                "impl",
                "configure ms",
                "add one ms",
                "remove one ms",
                "RSS@0 MiB",
                "RSS MiB",
                "idle CPU %"
            );
            for r in &self.peer_scale {
                let _ = writeln!(
                    s,
                    "{:<14} {:>12} {:>20} {:>20} {:>10} {:>9} {:>10}  {}{}",
                    r.name,
                    opt(r.configure_ms, 0),
                    spread_text(r.add_ms),
                    spread_text(r.remove_ms),
                    opt(kib_to_mib(r.rss_kib_empty), 1),
                    opt(kib_to_mib(r.rss_kib), 1),
                    opt(r.idle_cpu_percent, 2),
                    r.status,
                    r.version
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                );
            }
        }
        let c = &self.comparisons;
        let _ = writeln!(s, "\nmeshd against the references (1 stream / 4 streams):");
        let _ = writeln!(
            s,
            "  meshd / wireguard-go:   {} / {}",
            times(c.meshd_vs_wireguard_go_1),
            times(c.meshd_vs_wireguard_go_4)
        );
        let _ = writeln!(
            s,
            "  meshd / boringtun-cli:  {} / {}",
            times(c.meshd_vs_boringtun_1),
            times(c.meshd_vs_boringtun_4)
        );
        let _ = writeln!(
            s,
            "  meshd of plain veth:    {} / {}",
            percent(c.meshd_of_plain_1),
            percent(c.meshd_of_plain_4)
        );
        let added: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.name != PLAIN)
            .filter_map(|r| r.added_rtt_ms.map(|a| format!("{} {a:+.3} ms", r.name)))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(s, "  RTT added over plain:   {}", added.join(", "));
        }
        if c.datapath_of_plain_1.is_some() {
            let _ = writeln!(
                s,
                "  meshd-wg over the references' veth: {} / {} of plain veth; {} wireguard-go, {} boringtun-cli (1 stream)",
                percent(c.datapath_of_plain_1),
                percent(c.datapath_of_plain_4),
                times(c.datapath_vs_wireguard_go_1),
                times(c.datapath_vs_boringtun_1)
            );
        }
        if c.lab_of_plain_lab_1.is_some() {
            let _ = writeln!(
                s,
                "  meshd lab of plain lab: {} / {}; RTT added over plain lab {}",
                percent(c.lab_of_plain_lab_1),
                percent(c.lab_of_plain_lab_4),
                c.lab_added_rtt_ms
                    .map_or("-".into(), |a| format!("{a:+.3} ms"))
            );
        }
        if c.ebpf_vs_routes_1.is_some() {
            let _ = writeln!(
                s,
                "  eBPF redirect / routes: {} / {}",
                times(c.ebpf_vs_routes_1),
                times(c.ebpf_vs_routes_4)
            );
        }
        let _ = writeln!(s, "\nTargets:");
        for t in &self.targets {
            let bar = format!(
                "{} {}{}",
                if t.at_least { ">=" } else { "<=" },
                number(t.limit),
                t.unit
            );
            let measured = t
                .measured
                .map(|m| format!("{}{}", number(m), t.unit))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:<36} {:>9} {:>12}  {}",
                t.target,
                bar,
                measured,
                t.verdict.label()
            );
        }
        s
    }
}

fn kib_to_mib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64 / 1024.0)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn number(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn times(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn spread_text(s: Option<Spread>) -> String {
    s.map(|s| format!("{:.3} [{:.2}-{:.2}]", s.median, s.min, s.max))
        .unwrap_or_else(|| "-".into())
}
