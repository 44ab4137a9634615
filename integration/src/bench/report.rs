//! The report's data: per-scenario and peer-scale results, merging rounds, the comparisons
//! against the references and the targets with their verdicts.

use serde::Serialize;

use super::{
    difference, ratio, spread, Spread, BORINGTUN, MESHD, MESHD_ROUTES, MESHD_WG, MESHD_WG_VETH,
    PLAIN, PLAIN_LAB, WIREGUARD_GO,
};

/// Throughput and RTT of one data-plane scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    /// Scenario name ([`PLAIN`], [`WIREGUARD_GO`], …).
    pub name: String,
    /// `--version` of the tunnel implementation, when it has one.
    pub version: Option<String>,
    /// "ok", or "unavailable: …" / "error: …".
    pub status: String,
    /// iperf3 TCP, 1 stream, Gbit/s.
    pub gbit_s_1: Option<f64>,
    /// iperf3 TCP, 4 streams, Gbit/s.
    pub gbit_s_4: Option<f64>,
    /// Average ping RTT, ms.
    pub rtt_ms: Option<f64>,
    /// RTT added over plain veth, ms.
    pub added_rtt_ms: Option<f64>,
    /// 1-stream throughput relative to plain veth.
    pub ratio_1: Option<f64>,
    /// 4-stream throughput relative to plain veth.
    pub ratio_4: Option<f64>,
    /// RTT relative to plain veth.
    pub ratio_rtt: Option<f64>,
    /// Resident memory of meshd + meshd-wg on node 1, KiB (meshd scenarios).
    pub rss_kib: Option<u64>,
    /// The same with 100 peers programmed (99 synthetic records added), KiB.
    pub rss_kib_100_peers: Option<u64>,
    /// Retransmits reported by iperf3, 1 stream.
    pub retransmits_1: Option<u64>,
    /// Retransmits reported by iperf3, 4 streams.
    pub retransmits_4: Option<u64>,
    /// With `--rounds N` > 1: each round's own numbers (the fields above are their medians).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Round>,
}

/// One round of a data-plane scenario (`--rounds`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// "ok", or why the round failed.
    pub status: String,
    /// iperf3 TCP, 1 stream, Gbit/s.
    pub gbit_s_1: Option<f64>,
    /// iperf3 TCP, 4 streams, Gbit/s.
    pub gbit_s_4: Option<f64>,
    /// Average ping RTT, ms.
    pub rtt_ms: Option<f64>,
}

fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    spread(&v).map(|s| s.median)
}

fn median_u64(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut v: Vec<u64> = values.flatten().collect();
    v.sort_unstable();
    // The lower median; none of an empty list.
    v.len()
        .checked_sub(1)
        .and_then(|last| v.get(last / 2))
        .copied()
}

/// One scenario's result from the results of its rounds (in order): each number is the
/// median over the rounds that succeeded, and every round is listed in
/// [`ScenarioResult::rounds`]. One round is returned as it is; if none succeeded, the last.
pub fn merge_rounds(mut rounds: Vec<ScenarioResult>) -> ScenarioResult {
    if rounds.len() <= 1 {
        return rounds.pop().unwrap_or_default();
    }
    let listed: Vec<Round> = rounds
        .iter()
        .map(|r| Round {
            status: r.status.clone(),
            gbit_s_1: r.gbit_s_1,
            gbit_s_4: r.gbit_s_4,
            rtt_ms: r.rtt_ms,
        })
        .collect();
    let ok: Vec<&ScenarioResult> = rounds.iter().filter(|r| r.status == "ok").collect();
    let Some(first) = ok.first() else {
        let mut last = rounds.pop().unwrap_or_default();
        last.rounds = listed;
        return last;
    };
    ScenarioResult {
        name: first.name.clone(),
        version: first.version.clone(),
        status: "ok".into(),
        gbit_s_1: median_of(ok.iter().map(|r| r.gbit_s_1)),
        gbit_s_4: median_of(ok.iter().map(|r| r.gbit_s_4)),
        rtt_ms: median_of(ok.iter().map(|r| r.rtt_ms)),
        rss_kib: median_u64(ok.iter().map(|r| r.rss_kib)),
        rss_kib_100_peers: median_u64(ok.iter().map(|r| r.rss_kib_100_peers)),
        retransmits_1: median_u64(ok.iter().map(|r| r.retransmits_1)),
        retransmits_4: median_u64(ok.iter().map(|r| r.retransmits_4)),
        rounds: listed,
        ..Default::default()
    }
}

/// One implementation's peer-scale numbers: one device, `peers` peers, no traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleResult {
    /// Implementation name ([`WIREGUARD_GO`], [`BORINGTUN`], [`MESHD_WG`]).
    pub name: String,
    /// Its `--version`, when it has one.
    pub version: Option<String>,
    /// "ok", or "unavailable: …" / "error: …".
    pub status: String,
    /// Peers configured.
    pub peers: u32,
    /// Wall time to configure all of them over raw UAPI (batches of 1,000), ms.
    pub configure_ms: Option<f64>,
    /// Adding one peer with `peers` present, raw UAPI `set=1`, ms.
    pub add_ms: Option<Spread>,
    /// Removing one peer with `peers` present, raw UAPI `set=1`, ms.
    pub remove_ms: Option<Spread>,
    /// VmRSS of the process before any peer was configured, KiB.
    pub rss_kib_empty: Option<u64>,
    /// VmRSS of the process with `peers` peers, KiB.
    pub rss_kib: Option<u64>,
    /// CPU of the process (all threads) while idle with `peers` peers, % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Seconds over which the idle CPU was taken.
    pub idle_s: Option<f64>,
}

/// How meshd compares with the references, from the data-plane scenarios.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparisons {
    /// meshd / wireguard-go, 1 stream.
    pub meshd_vs_wireguard_go_1: Option<f64>,
    /// meshd / wireguard-go, 4 streams.
    pub meshd_vs_wireguard_go_4: Option<f64>,
    /// meshd / boringtun-cli, 1 stream.
    pub meshd_vs_boringtun_1: Option<f64>,
    /// meshd / boringtun-cli, 4 streams.
    pub meshd_vs_boringtun_4: Option<f64>,
    /// meshd / plain veth, 1 stream.
    pub meshd_of_plain_1: Option<f64>,
    /// meshd / plain veth, 4 streams.
    pub meshd_of_plain_4: Option<f64>,
    /// meshd (eBPF steering) / meshd (route steering), 1 stream.
    pub ebpf_vs_routes_1: Option<f64>,
    /// meshd (eBPF steering) / meshd (route steering), 4 streams.
    pub ebpf_vs_routes_4: Option<f64>,
    /// meshd-wg over the references' veth / wireguard-go, 1 stream.
    pub datapath_vs_wireguard_go_1: Option<f64>,
    /// meshd-wg over the references' veth / boringtun-cli, 1 stream.
    pub datapath_vs_boringtun_1: Option<f64>,
    /// meshd-wg over the references' veth / plain veth, 1 stream.
    pub datapath_of_plain_1: Option<f64>,
    /// meshd-wg over the references' veth / plain veth, 4 streams.
    pub datapath_of_plain_4: Option<f64>,
    /// meshd's lab / the same lab with encryption disabled, 1 stream.
    pub lab_of_plain_lab_1: Option<f64>,
    /// meshd's lab / the same lab with encryption disabled, 4 streams.
    pub lab_of_plain_lab_4: Option<f64>,
    /// RTT meshd's lab adds over the same lab with encryption disabled, ms.
    pub lab_added_rtt_ms: Option<f64>,
}

/// The bars meshd's user-space datapath is held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// meshd at least this many times wireguard-go's 1-stream throughput.
    pub min_vs_wireguard_go: f64,
    /// meshd at least this many times boringtun-cli's 1-stream throughput.
    pub min_vs_boringtun: f64,
    /// meshd at least this fraction of plain veth's 1-stream throughput.
    pub min_of_plain: f64,
    /// meshd adds at most this RTT over plain veth, ms.
    pub max_added_rtt_ms: f64,
    /// meshd-wg's RSS at most this many MiB with the peer-scale peer count.
    pub max_rss_mib: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            min_vs_wireguard_go: 5.0,
            min_vs_boringtun: 3.0,
            min_of_plain: 0.25,
            max_added_rtt_ms: 0.2,
            max_rss_mib: 48.0,
        }
    }
}

/// The outcome of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Met.
    Pass,
    /// Missed.
    Fail,
    /// An input was not measured (scenario skipped or failed).
    NotMeasured,
}

impl Verdict {
    /// PASS, FAIL or n/a.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One target, the value measured for it and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is held to the bar.
    pub target: String,
    /// The measured value, in the unit of `limit`.
    pub measured: Option<f64>,
    /// The bar.
    pub limit: f64,
    /// True: `measured >= limit` passes; false: `measured <= limit` passes.
    pub at_least: bool,
    /// Unit of `measured` and `limit` ("x", "%", "ms", "MiB").
    pub unit: String,
    /// The outcome.
    pub verdict: Verdict,
}

pub(super) fn check(
    target: &str,
    measured: Option<f64>,
    limit: f64,
    at_least: bool,
    unit: &str,
) -> TargetCheck {
    let verdict = match measured {
        None => Verdict::NotMeasured,
        Some(m) if (at_least && m >= limit) || (!at_least && m <= limit) => Verdict::Pass,
        Some(_) => Verdict::Fail,
    };
    TargetCheck {
        target: target.to_string(),
        measured,
        limit,
        at_least,
        unit: unit.to_string(),
        verdict,
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Seconds per iperf3 run.
    pub duration_s: u64,
    /// Pings per RTT measurement.
    pub pings: u32,
    /// Interval between pings, ms.
    pub ping_interval_ms: u64,
    /// Rounds of the data-plane scenarios (each round runs every scenario once, in order);
    /// with more than one the reported numbers are medians.
    pub rounds: u32,
    /// CPUs of the machine.
    pub cpus: usize,
    /// `/proc/loadavg` when the run started.
    pub load_average: Option<String>,
    /// The data-plane scenarios.
    pub results: Vec<ScenarioResult>,
    /// Peers configured in the peer-scale runs.
    pub scale_peers: u32,
    /// The peer-scale runs.
    pub peer_scale: Vec<ScaleResult>,
    /// meshd against the references.
    pub comparisons: Comparisons,
    /// The targets, with verdicts.
    pub targets: Vec<TargetCheck>,
}

impl Report {
    /// The data-plane scenario `name`, if it ran successfully.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.results
            .iter()
            .find(|r| r.name == name && r.status == "ok")
    }

    /// The peer-scale run of `name`, if it ran successfully.
    pub fn scale(&self, name: &str) -> Option<&ScaleResult> {
        self.peer_scale
            .iter()
            .find(|r| r.name == name && r.status == "ok")
    }

    /// Fills in everything derived: ratios and added RTT against plain veth, the
    /// comparisons, and the target verdicts.
    pub fn finish(&mut self, targets: &Targets) {
        let plain = self.scenario(PLAIN).cloned();
        for r in &mut self.results {
            if r.status != "ok" {
                continue;
            }
            let p = plain.as_ref();
            r.ratio_1 = ratio(r.gbit_s_1, p.and_then(|p| p.gbit_s_1));
            r.ratio_4 = ratio(r.gbit_s_4, p.and_then(|p| p.gbit_s_4));
            r.ratio_rtt = ratio(r.rtt_ms, p.and_then(|p| p.rtt_ms));
            r.added_rtt_ms = difference(r.rtt_ms, p.and_then(|p| p.rtt_ms));
        }
        let get =
            |name: &str, f: fn(&ScenarioResult) -> Option<f64>| self.scenario(name).and_then(f);
        let one = |r: &ScenarioResult| r.gbit_s_1;
        let four = |r: &ScenarioResult| r.gbit_s_4;
        let comparisons = Comparisons {
            meshd_vs_wireguard_go_1: ratio(get(MESHD, one), get(WIREGUARD_GO, one)),
            meshd_vs_wireguard_go_4: ratio(get(MESHD, four), get(WIREGUARD_GO, four)),
            meshd_vs_boringtun_1: ratio(get(MESHD, one), get(BORINGTUN, one)),
            meshd_vs_boringtun_4: ratio(get(MESHD, four), get(BORINGTUN, four)),
            meshd_of_plain_1: ratio(get(MESHD, one), get(PLAIN, one)),
            meshd_of_plain_4: ratio(get(MESHD, four), get(PLAIN, four)),
            ebpf_vs_routes_1: ratio(get(MESHD, one), get(MESHD_ROUTES, one)),
            ebpf_vs_routes_4: ratio(get(MESHD, four), get(MESHD_ROUTES, four)),
            datapath_vs_wireguard_go_1: ratio(get(MESHD_WG_VETH, one), get(WIREGUARD_GO, one)),
            datapath_vs_boringtun_1: ratio(get(MESHD_WG_VETH, one), get(BORINGTUN, one)),
            datapath_of_plain_1: ratio(get(MESHD_WG_VETH, one), get(PLAIN, one)),
            datapath_of_plain_4: ratio(get(MESHD_WG_VETH, four), get(PLAIN, four)),
            lab_of_plain_lab_1: ratio(get(MESHD, one), get(PLAIN_LAB, one)),
            lab_of_plain_lab_4: ratio(get(MESHD, four), get(PLAIN_LAB, four)),
            lab_added_rtt_ms: difference(get(MESHD, |r| r.rtt_ms), get(PLAIN_LAB, |r| r.rtt_ms)),
        };
        let added_rtt = get(MESHD, |r| r.added_rtt_ms);
        let datapath_added_rtt = get(MESHD_WG_VETH, |r| r.added_rtt_ms);
        let rss_mib = self
            .scale(MESHD_WG)
            .and_then(|s| s.rss_kib)
            .map(|k| k as f64 / 1024.0);
        self.comparisons = comparisons;
        let c = &self.comparisons;
        self.targets = vec![
            check(
                "meshd vs wireguard-go, 1 stream",
                c.meshd_vs_wireguard_go_1,
                targets.min_vs_wireguard_go,
                true,
                "x",
            ),
            check(
                "meshd vs boringtun-cli, 1 stream",
                c.meshd_vs_boringtun_1,
                targets.min_vs_boringtun,
                true,
                "x",
            ),
            check(
                "meshd of plain veth, 1 stream",
                c.meshd_of_plain_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd RTT added over plain veth",
                added_rtt,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
            check(
                &format!("meshd-wg RSS with {} peers", self.scale_peers),
                rss_mib,
                targets.max_rss_mib,
                false,
                "MiB",
            ),
            // Like for like: the datapath over the references' veth, and the lab against
            // itself unencrypted.
            check(
                "meshd-wg (veth) of plain veth, 1 stream",
                c.datapath_of_plain_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd-wg (veth) RTT added over plain veth",
                datapath_added_rtt,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
            check(
                "meshd lab of plain lab, 1 stream",
                c.lab_of_plain_lab_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd lab RTT added over plain lab",
                c.lab_added_rtt_ms,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
        ];
    }
}
