//! Measurements: parsing what iperf3, ping and `/proc` print, and the statistics over rounds.

use std::time::Duration;

use serde::Serialize;

use super::BenchError;

/// One iperf3 client run, from its `-J` output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IperfRun {
    /// Received rate (the sum over streams), bits per second.
    pub bits_per_second: f64,
    /// TCP retransmits of the sender, when reported.
    pub retransmits: Option<u64>,
}

impl IperfRun {
    /// The received rate in Gbit/s.
    pub fn gbit_s(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Parses `iperf3 -J` client output: the receiver's rate and the sender's retransmits.
pub fn parse_iperf(json: &str) -> Result<IperfRun, BenchError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        let head: String = json.chars().take(200).collect();
        BenchError::Iperf(format!("not JSON ({e}): {head:?}"))
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(BenchError::Iperf(e.to_string()));
    }
    let end = v
        .get("end")
        .ok_or_else(|| BenchError::Iperf("no \"end\" section".into()))?;
    let bits_per_second = end
        .pointer("/sum_received/bits_per_second")
        .or_else(|| end.pointer("/sum/bits_per_second"))
        .and_then(|b| b.as_f64())
        .ok_or_else(|| BenchError::Iperf("no bits_per_second".into()))?;
    let retransmits = end
        .pointer("/sum_sent/retransmits")
        .and_then(|r| r.as_u64());
    Ok(IperfRun {
        bits_per_second,
        retransmits,
    })
}

// === ping ===

/// The summary of a `ping -q` run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// Minimum RTT, ms.
    pub min_ms: f64,
    /// Average RTT, ms.
    pub avg_ms: f64,
    /// Maximum RTT, ms.
    pub max_ms: f64,
}

/// Parses iputils `ping` output (the `packets transmitted` and `rtt min/avg/max/mdev` lines).
pub fn parse_ping(out: &str) -> Result<PingStats, BenchError> {
    let counts = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| BenchError::Ping(format!("no statistics in {out:?}")))?;
    let count_before = |word: &str| -> Option<u32> {
        counts
            .split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let transmitted = count_before("transmitted")
        .ok_or_else(|| BenchError::Ping(format!("bad line {counts:?}")))?;
    let received =
        count_before("received").ok_or_else(|| BenchError::Ping(format!("bad line {counts:?}")))?;
    if received == 0 {
        return Err(BenchError::Ping(format!("no replies ({transmitted} sent)")));
    }
    let rtt = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| BenchError::Ping(format!("no rtt line in {out:?}")))?;
    let nums: Vec<f64> = rtt
        .split('=')
        .nth(1)
        .map(|s| {
            s.trim()
                .trim_end_matches("ms")
                .trim()
                .split('/')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if nums.len() < 3 {
        return Err(BenchError::Ping(format!("bad rtt line {rtt:?}")));
    }
    Ok(PingStats {
        transmitted,
        received,
        min_ms: nums[0],
        avg_ms: nums[1],
        max_ms: nums[2],
    })
}

// === /proc ===

/// The first number of a `Name:  value …` line of `/proc/PID/status` (`VmRSS` is in KiB).
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks, all threads) from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces and parentheses, so
/// fields are counted after its last `)`: field 3 (state) is the first there, utime and stime
/// are fields 14 and 15.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use in percent of one core: `ticks` clock ticks spent over `elapsed`.
pub fn cpu_percent(ticks: u64, ticks_per_second: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if ticks_per_second == 0 || secs <= 0.0 {
        return None;
    }
    Some(ticks as f64 / ticks_per_second as f64 / secs * 100.0)
}

fn read_proc(pid: u32, file: &str) -> Result<String, BenchError> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(|e| BenchError::Proc {
        what: e.to_string(),
        path,
    })
}

/// VmRSS of process `pid`, KiB.
pub fn read_rss_kib(pid: u32) -> Result<u64, BenchError> {
    let s = read_proc(pid, "status")?;
    status_field(&s, "VmRSS").ok_or_else(|| BenchError::Proc {
        path: format!("/proc/{pid}/status"),
        what: "no VmRSS".into(),
    })
}

/// utime + stime of process `pid` (all its threads), clock ticks.
pub fn read_cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let s = read_proc(pid, "stat")?;
    stat_cpu_ticks(&s).ok_or_else(|| BenchError::Proc {
        path: format!("/proc/{pid}/stat"),
        what: "no utime/stime".into(),
    })
}

// === statistics ===

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// The [`Spread`] of `values` (NaNs ignored); `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The `p`-th percentile of `values` by nearest rank (`p` in 0..=100; NaNs ignored): the
/// smallest value at or above which lie `p` % of the sample. `None` for an empty sample.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// `x / base`, when both are known and `base` is positive.
pub fn ratio(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

/// `x - base`, when both are known.
pub fn difference(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    Some(x? - base?)
}

/// `ping -i` argument for an interval in ms (seconds, as ping wants it).
pub fn ping_interval_arg(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}
