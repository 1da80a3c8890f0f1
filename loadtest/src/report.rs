//! Results: one row per scenario run, the ratios to the direct client, the
//! table, the targets checked against the numbers, and the JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::harness::Outcome;
use crate::procfs::Meter;
use crate::scenarios::{QueueType, Scenario, Target};

/// One scenario run against one target.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: Scenario,
    pub target: Target,
    pub size: usize,
    pub queue_type: QueueType,
    /// Measured messages that succeeded.
    pub messages: u64,
    pub errors: u64,
    /// Why the run failed, or its first failed message.
    pub error: Option<String>,
    pub seconds: f64,
    pub rate: f64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Rate over the direct client's rate in the same scenario, size and queue type.
    pub ratio: Option<f64>,
    pub warren_cpu_s: Option<f64>,
    /// Warren's CPU per measured message, in microseconds.
    pub warren_cpu_us_per_msg: Option<f64>,
    /// Peak VmRSS sampled every 50 ms during this run.
    pub warren_peak_rss_kib: Option<u64>,
    /// VmHWM after this run (the peak over Warren's whole life so far).
    pub warren_hwm_kib: Option<u64>,
    pub broker_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    /// Busy CPU of the rest of the machine (interference).
    pub other_cpu_s: Option<f64>,
    /// Cores Warren, the broker and the load generator kept busy together
    /// (their CPU seconds over the wall time): near 2 on this 2-core machine
    /// means CPU-bound; far below means waiting.
    pub busy_cores: Option<f64>,
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
}

/// Where a run's numbers come from.
pub struct RunInfo {
    pub scenario: Scenario,
    pub target: Target,
    pub size: usize,
    pub queue_type: QueueType,
}

impl Row {
    /// A row from a run's outcome (or its failure) and meters.
    pub fn new(
        info: RunInfo,
        outcome: anyhow::Result<Outcome>,
        meter: &Meter,
        peak_rss: Option<u64>,
        hwm: Option<u64>,
    ) -> Self {
        let (out, error) = match outcome {
            Ok(out) => {
                let e = out.first_error.clone();
                (Some(out), e)
            }
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let seconds = meter.elapsed.as_secs_f64();
        let messages = out.as_ref().map_or(0, |o| o.ok);
        let rate = if seconds > 0.0 {
            messages as f64 / seconds
        } else {
            0.0
        };
        let latency = out
            .as_ref()
            .and_then(|o| o.latency.clone())
            .filter(|h| !h.is_empty());
        let q = |p: f64| latency.as_ref().map(|h| h.value_at_quantile(p));
        let is_warren = info.target.is_warren();
        let warren_cpu_s = meter.cpu[0].filter(|_| is_warren);
        Self {
            scenario: info.scenario,
            target: info.target,
            size: info.size,
            queue_type: info.queue_type,
            messages,
            errors: out.as_ref().map_or(0, |o| o.errors),
            error,
            seconds,
            rate,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: latency.as_ref().map(|h| h.max()),
            ratio: None,
            warren_cpu_s,
            warren_cpu_us_per_msg: warren_cpu_s
                .filter(|_| messages > 0)
                .map(|s| s * 1e6 / messages as f64),
            warren_peak_rss_kib: peak_rss.filter(|_| is_warren),
            warren_hwm_kib: hwm.filter(|_| is_warren),
            broker_cpu_s: meter.cpu[1],
            loadgen_cpu_s: meter.cpu[2],
            other_cpu_s: meter.other_cpu(),
            busy_cores: (seconds > 0.0)
                .then(|| meter.cpu[..3].iter().flatten().sum::<f64>() / seconds),
            latency,
        }
    }

    fn same_run(&self, other: &Row) -> bool {
        self.scenario == other.scenario
            && self.size == other.size
            && self.queue_type == other.queue_type
    }

    /// The row of `target` in the same scenario, size and queue type.
    pub fn peer<'a>(&self, rows: &'a [Row], target: Target) -> Option<&'a Row> {
        rows.iter()
            .find(|r| r.same_run(self) && r.target == target && r.messages > 0)
    }

    /// A short label: `publish-stream 4096 B classic warren`.
    pub fn label(&self) -> String {
        format!(
            "{} {} B {} {}",
            self.scenario.name(),
            self.size,
            self.queue_type.as_str(),
            self.target.name()
        )
    }
}

/// Fills in each row's ratio to the direct client.
pub fn set_ratios(rows: &mut [Row]) {
    let ratios: Vec<Option<f64>> = rows
        .iter()
        .map(|r| {
            let direct = r.peer(rows, Target::Direct)?;
            (direct.rate > 0.0 && r.messages > 0).then(|| r.rate / direct.rate)
        })
        .collect();
    for (row, ratio) in rows.iter_mut().zip(ratios) {
        row.ratio = ratio;
    }
}

/// Microseconds as milliseconds, `-` when not measured.
pub fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |u| format!("{:.3}", u as f64 / 1000.0))
}

/// A figure to `digits` decimals, `-` when not measured.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// KiB as MiB, `-` when not measured.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// A count, `-` when not measured.
pub fn count<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// An errors cell: how many, and the first one's text.
pub fn errors(n: u64, first: Option<&str>) -> String {
    match first {
        Some(e) => format!("{n}: {e}"),
        None => n.to_string(),
    }
}

/// A Markdown table of `head` and `rows`.
pub fn markdown(head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for cells in rows {
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

/// The results table, Markdown-compatible.
pub fn table(rows: &[Row]) -> String {
    let head = [
        "scenario",
        "size",
        "queue",
        "target",
        "msgs",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "ratio",
        "W cpu s",
        "W µs/msg",
        "W rss MiB",
        "broker cpu s",
        "gen cpu s",
        "other cpu s",
        "cores",
        "errors",
    ];
    let rows = rows.iter().map(|r| {
        vec![
            r.scenario.name().to_owned(),
            r.size.to_string(),
            r.queue_type.as_str().to_owned(),
            r.target.name().to_owned(),
            r.messages.to_string(),
            format!("{:.0}", r.rate),
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            opt(r.ratio, 2),
            opt(r.warren_cpu_s, 2),
            opt(r.warren_cpu_us_per_msg, 0),
            mib(r.warren_peak_rss_kib),
            opt(r.broker_cpu_s, 2),
            opt(r.loadgen_cpu_s, 2),
            opt(r.other_cpu_s, 2),
            opt(r.busy_cores, 2),
            if r.error.is_some() {
                format!("{} (see below)", r.errors)
            } else {
                r.errors.to_string()
            },
        ]
    });
    markdown(&head, rows)
}

/// One of the targets, checked.
#[derive(Debug, Serialize)]
pub struct Check {
    pub target: String,
    pub run: String,
    pub measured: String,
    pub met: bool,
}

fn ratio_check(rows: &[Row], scenario: Scenario, min: f64, what: &str, out: &mut Vec<Check>) {
    for r in rows
        .iter()
        .filter(|r| r.scenario == scenario && r.target == Target::Warren)
    {
        if let Some(ratio) = r.ratio {
            out.push(Check {
                target: format!("{what} >= {min:.2} of direct"),
                run: r.label(),
                measured: format!("{ratio:.3}"),
                met: ratio >= min,
            });
        }
    }
}

/// The targets against the measured rows.
pub fn checks(rows: &[Row], idle_rss_kib: Option<u64>) -> Vec<Check> {
    let mut out = Vec::new();
    ratio_check(
        rows,
        Scenario::PublishStream,
        0.90,
        "PublishStream",
        &mut out,
    );
    ratio_check(
        rows,
        Scenario::PublishUnary,
        0.70,
        "unary Publish",
        &mut out,
    );
    ratio_check(rows, Scenario::PublishHttp, 0.60, "HTTP publish", &mut out);
    ratio_check(rows, Scenario::Subscribe, 0.80, "Subscribe", &mut out);
    for r in rows
        .iter()
        .filter(|r| r.scenario == Scenario::PublishHttp && r.target == Target::Warren)
    {
        if let Some(mgmt) = r.peer(rows, Target::MgmtApi).filter(|m| m.rate > 0.0) {
            let x = r.rate / mgmt.rate;
            out.push(Check {
                target: "HTTP publish >= 15x the management API".into(),
                run: r.label(),
                measured: format!("{x:.1}x"),
                met: x >= 15.0,
            });
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.scenario == Scenario::Latency1 && r.target == Target::Warren)
    {
        let direct = r.peer(rows, Target::Direct).and_then(|d| d.p50_us);
        if let (Some(w), Some(d)) = (r.p50_us, direct) {
            let added = w as i64 - d as i64;
            out.push(Check {
                target: "concurrency 1: Warren adds <= 150 µs to p50".into(),
                run: r.label(),
                measured: format!("{added} µs ({w} vs {d} µs)"),
                met: added <= 150,
            });
        }
    }
    let peak = rows.iter().filter_map(|r| r.warren_peak_rss_kib).max();
    if let Some(peak) = peak {
        out.push(Check {
            target: "Warren RSS <= 64 MiB under load".into(),
            run: "peak over all runs".into(),
            measured: format!("{:.1} MiB", peak as f64 / 1024.0),
            met: peak <= 64 * 1024,
        });
    }
    if let Some(idle) = idle_rss_kib {
        out.push(Check {
            target: "idle RSS <= 20 MiB".into(),
            run: "after start, before load".into(),
            measured: format!("{:.1} MiB", idle as f64 / 1024.0),
            met: idle <= 20 * 1024,
        });
    }
    out
}

/// The checks as a Markdown table.
pub fn checks_table(checks: &[Check]) -> String {
    let mut s = String::from("| target | run | measured | met |\n|---|---|---|---|\n");
    for c in checks {
        let met = if c.met { "yes" } else { "NO" };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", c.target, c.run, c.measured);
    }
    s
}

/// Extra lines: latency added at concurrency 1, HTTP versus the management API.
pub fn notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    for r in rows.iter().filter(|r| r.target == Target::Warren) {
        if r.scenario == Scenario::Subscribe {
            if let Some(s) = r
                .peer(rows, Target::WarrenStreaming)
                .filter(|s| s.rate > 0.0)
            {
                notes.push(format!(
                    "{}: StreamingSubscribe is {:.2}x Subscribe + Ack ({:.0} vs {:.0} msg/s)",
                    r.label(),
                    s.rate / r.rate.max(1e-9),
                    s.rate,
                    r.rate
                ));
            }
        }
        if r.scenario == Scenario::PublishHttp {
            if let Some(m) = r.peer(rows, Target::MgmtApi).filter(|m| m.rate > 0.0) {
                notes.push(format!(
                    "{}: {:.1}x the management API ({:.0} vs {:.0} msg/s)",
                    r.label(),
                    r.rate / m.rate,
                    r.rate,
                    m.rate
                ));
            }
        }
        if r.scenario == Scenario::Latency1 {
            if let (Some(w), Some(d)) = (
                r.p50_us,
                r.peer(rows, Target::Direct).and_then(|d| d.p50_us),
            ) {
                notes.push(format!(
                    "{}: Warren adds {} µs to the p50 of a confirmed publish ({w} vs {d} µs)",
                    r.label(),
                    w as i64 - d as i64
                ));
            }
        }
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        notes.push(format!(
            "{}: {} error(s): {}",
            r.label(),
            r.errors,
            r.error.as_deref().unwrap_or_default()
        ));
    }
    notes
}
