//! One row per (scenario, rate) of `--paced`, and their table (the columns
//! of the scenario table where they mean the same).

use serde::Serialize;

use crate::harness::Outcome;
use crate::report::{errors, markdown, ms, opt};
use crate::scenarios::Scenario;

/// One scenario at one rate, through Warren.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: Scenario,
    pub size: usize,
    pub queue_type: &'static str,
    pub target: &'static str,
    /// The rate asked for, messages per second.
    pub paced: f64,
    /// Measured messages that succeeded.
    pub messages: u64,
    pub errors: u64,
    pub error: Option<String>,
    pub seconds: f64,
    /// The rate achieved: messages over the measured phase.
    pub rate: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    pub warren_cpu_s: Option<f64>,
    pub warren_cpu_us_per_msg: Option<f64>,
    /// Voluntary + involuntary context switches of all Warren's threads.
    pub warren_ctx_switches: Option<u64>,
    pub warren_ctx_switches_per_msg: Option<f64>,
}

/// What a measured phase got.
pub struct Measured {
    pub out: Outcome,
    pub seconds: f64,
    pub cpu_s: Option<f64>,
    pub switches: Option<u64>,
}

impl Row {
    /// A row from a phase (or why it failed).
    pub fn new(
        scenario: Scenario,
        size: usize,
        paced: f64,
        measured: anyhow::Result<Measured>,
    ) -> Self {
        let mut row = Self {
            scenario,
            size,
            queue_type: "classic",
            target: "warren",
            paced,
            messages: 0,
            errors: 0,
            error: None,
            seconds: 0.0,
            rate: 0.0,
            p50_us: None,
            p99_us: None,
            max_us: None,
            warren_cpu_s: None,
            warren_cpu_us_per_msg: None,
            warren_ctx_switches: None,
            warren_ctx_switches_per_msg: None,
        };
        let m = match measured {
            Ok(m) => m,
            Err(e) => {
                row.error = Some(format!("{e:#}"));
                return row;
            }
        };
        let n = m.out.ok;
        row.messages = n;
        row.errors = m.out.errors;
        row.error = m.out.first_error.clone();
        row.seconds = m.seconds;
        if m.seconds > 0.0 {
            row.rate = n as f64 / m.seconds;
        }
        if let Some(h) = m.out.latency.as_ref().filter(|h| !h.is_empty()) {
            row.p50_us = Some(h.value_at_quantile(0.50));
            row.p99_us = Some(h.value_at_quantile(0.99));
            row.max_us = Some(h.max());
        }
        let per = |v: f64| (n > 0).then(|| v / n as f64);
        row.warren_cpu_s = m.cpu_s;
        row.warren_cpu_us_per_msg = m.cpu_s.and_then(|s| per(s * 1e6));
        row.warren_ctx_switches = m.switches;
        row.warren_ctx_switches_per_msg = m.switches.and_then(|c| per(c as f64));
        row
    }

    /// The progress line printed after the run.
    pub fn line(&self) -> String {
        format!(
            "{} at {:.0}/s: {} msgs, {:.0} msg/s, {} µs/msg, p99 {} µs{}",
            self.scenario.name(),
            self.paced,
            self.messages,
            self.rate,
            self.warren_cpu_us_per_msg
                .map_or("-".into(), |c| format!("{c:.0}")),
            self.p99_us.map_or("-".into(), |p| p.to_string()),
            self.error
                .as_deref()
                .map_or(String::new(), |e| format!(", error: {e}"))
        )
    }
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let head = [
        "scenario",
        "size",
        "queue",
        "target",
        "paced msg/s",
        "msgs",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "W cpu s",
        "W µs/msg",
        "W csw/msg",
        "errors",
    ];
    let rows = rows.iter().map(|r| {
        vec![
            r.scenario.name().to_owned(),
            r.size.to_string(),
            r.queue_type.to_owned(),
            r.target.to_owned(),
            format!("{:.0}", r.paced),
            r.messages.to_string(),
            format!("{:.0}", r.rate),
            ms(r.p50_us),
            ms(r.p99_us),
            opt(r.warren_cpu_s, 2),
            opt(r.warren_cpu_us_per_msg, 0),
            opt(r.warren_ctx_switches_per_msg, 2),
            errors(r.errors, r.error.as_deref()),
        ]
    });
    markdown(&head, rows)
}
