//! `--growth streams|publishers|sizes`: how Warren's cost grows with what
//! it holds open.
//!
//! - [`streams`]: open gRPC `Subscribe` streams in steps (`--growth-steps`),
//!   idle or trickled to (`--growth-trickle`), then all closed.
//! - [`publishers`]: named publishers (`x-warren-publisher`), one publish per
//!   name per step, then released by Warren's `amqp.idle_timeout`.
//! - [`sizes`]: message sizes through each path, the peak RSS over the body
//!   size times the messages in flight: the copies of a body held at peak.
//!
//! At each step Warren's VmRSS, open fds, threads (all from `/proc`) and
//! its `warren_amqp_channels` gauge (from its `/metrics`) are sampled.

mod plot;
mod publishers;
mod sizes;
mod streams;

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::cli::Args;
use crate::procfs;
use crate::report::{count, errors, markdown, mib, opt};
use crate::scenarios::Grpc;
use crate::warren::Warren;
use crate::{machine, WarrenInfo};

/// A `--growth` mode.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Growth {
    /// Open `Subscribe` streams.
    Streams,
    /// Named publishers (`x-warren-publisher`).
    Publishers,
    /// Message sizes through each path.
    Sizes,
}

impl Growth {
    fn name(self) -> &'static str {
        match self {
            Growth::Streams => "streams",
            Growth::Publishers => "publishers",
            Growth::Sizes => "sizes",
        }
    }
}

/// The steps of `--growth streams|publishers`: `--growth-steps` or the
/// mode's default, ascending.
pub fn steps(args: &Args, mode: Growth) -> Vec<usize> {
    let mut steps = match (args.growth_steps.is_empty(), mode) {
        (false, _) => args.growth_steps.clone(),
        (true, Growth::Publishers) => vec![1, 10, 100, 1000, 5000],
        (true, _) => vec![1, 10, 100, 500, 1000, 2000],
    };
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The environment of the started Warren: what the mode needs (room for
/// its streams, channels or bodies) under `--warren-env`, which wins.
pub fn env(args: &Args) -> Vec<(String, String)> {
    let Some(mode) = args.growth else {
        return args.warren_env.clone();
    };
    let most = steps(args, mode).last().copied().unwrap_or(1);
    let mut env: Vec<(String, String)> = match mode {
        Growth::Streams => vec![(
            "WARREN__SUBSCRIBE__MAX_SUBSCRIPTIONS".into(),
            (most + 64).to_string(),
        )],
        Growth::Publishers => vec![
            ("WARREN__AMQP__IDLE_TIMEOUT".into(), "5s".into()),
            (
                "WARREN__AMQP__MAX_CHANNELS".into(),
                (most + 100).max(8000).to_string(),
            ),
            ("WARREN__AMQP__POOL_SIZE".into(), "4".into()),
        ],
        Growth::Sizes => {
            let largest = args.growth_sizes.iter().copied().max().unwrap_or(1);
            let in_flight = args.growth_in_flight.iter().copied().max().unwrap_or(1);
            let body = (largest + 64 * 1024).max(20_000_000);
            // Every HTTP request in flight holds its body; a JSON one may
            // take twice (Warren's own rule for the floor).
            let buffered = (2 * largest * in_flight + 64 * 1024 * 1024).max(2 * body + 65536);
            vec![
                ("WARREN__PUBLISH__MAX_BODY_BYTES".into(), body.to_string()),
                (
                    "WARREN__HTTP__MAX_BUFFERED_BYTES".into(),
                    buffered.max(256 * 1024 * 1024).to_string(),
                ),
            ]
        }
    };
    env.extend(args.warren_env.iter().cloned());
    env
}

/// What Warren holds at one moment of a streams or publishers run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Step {
    /// `idle` (before the first step), `step`, or `after release`.
    pub phase: &'static str,
    /// Streams or publishers open.
    pub count: usize,
    /// How long opening them took, in seconds.
    pub open_s: f64,
    pub rss_kib: Option<u64>,
    /// (VmRSS - idle VmRSS) / count.
    pub per_item_kib: Option<f64>,
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    /// Warren's `warren_amqp_channels` gauge.
    pub channels: Option<u64>,
    /// Consumers the broker shows on the run's queues (streams).
    pub consumers: Option<u64>,
    /// Deliveries received while the step was held (`--growth-trickle`).
    pub deliveries: u64,
    /// Warren's CPU (utime + stime) over the hold, per delivery.
    pub cpu_us_per_delivery: Option<f64>,
    /// The first failure of the step, and how many there were.
    pub errors: u64,
    pub error: Option<String>,
}

impl Step {
    /// Samples Warren now: RSS, fds, threads, channels.
    pub async fn sample(phase: &'static str, count: usize, warren: &Warren) -> Self {
        let pid = warren.pid;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok();
        let channels = match &http {
            Some(http) => warren.metric(http, "warren_amqp_channels").await.ok(),
            None => None,
        };
        Self {
            phase,
            count,
            rss_kib: pid.and_then(|p| procfs::status_kib(p, "VmRSS")),
            fds: pid.and_then(procfs::open_fds),
            threads: pid.and_then(procfs::threads),
            channels: channels.map(|c| c as u64),
            ..Default::default()
        }
    }

    /// Sets the per-item cost against the idle sample.
    pub fn against(mut self, idle: Option<u64>) -> Self {
        if let (Some(rss), Some(idle), true) = (self.rss_kib, idle, self.count > 0) {
            self.per_item_kib = Some((rss as f64 - idle as f64) / self.count as f64);
        }
        self
    }

    /// Counts one failure.
    pub fn failed(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error.is_none() {
            self.error = Some(e.to_string());
        }
    }
}

/// A gRPC client of Warren on a connection of its own, taking bodies up to
/// 64 MiB either way.
pub async fn connection(args: &Args, warren: &Warren) -> anyhow::Result<Grpc> {
    const LARGEST: usize = 65 * 1024 * 1024;
    Ok(crate::grpc_client(args, warren)
        .await?
        .max_decoding_message_size(LARGEST)
        .max_encoding_message_size(LARGEST))
}

/// Runs `--growth`; whether every step went through.
pub async fn run(
    args: &Args,
    mode: Growth,
    warren: &mut Warren,
    info: &mut WarrenInfo,
    amqp: &lapin::Connection,
) -> anyhow::Result<bool> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let measured = async {
        match mode {
            Growth::Streams => streams::run(args, warren, amqp).await.map(Outcome::Steps),
            Growth::Publishers => publishers::run(args, warren, amqp)
                .await
                .map(Outcome::Steps),
            Growth::Sizes => sizes::run(args, &mut *warren).await.map(Outcome::Sizes),
        }
    };
    let measured = tokio::select! {
        rows = measured => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    info.hwm_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmHWM"));
    info.exit = warren.stop().await;
    (info.log_problem_lines, info.log_problems) = warren.log_problems();
    let outcome = measured?;
    let (table, ok, rows) = match &outcome {
        Outcome::Steps(steps) => (
            steps_table(mode, steps),
            steps.iter().all(|s| s.error.is_none()),
            serde_json::to_value(steps)?,
        ),
        Outcome::Sizes(runs) => (
            sizes::table(runs),
            runs.iter().all(|r| r.error.is_none()),
            serde_json::to_value(runs)?,
        ),
    };
    println!("{table}");
    if let Some(line) = summary(mode, &outcome) {
        println!("{line}");
    }
    info.print_end();
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "machine": machine(),
            "command": std::env::args().collect::<Vec<_>>(),
            "warren_env": env(args),
            "warren": info,
            "growth": mode,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let drawn = match &outcome {
            Outcome::Steps(steps) => plot::steps(mode.name(), steps, path),
            Outcome::Sizes(runs) => plot::sizes(runs, path),
        };
        match drawn {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("no plot: {e:#}"),
        }
    }
    Ok(ok)
}

enum Outcome {
    Steps(Vec<Step>),
    Sizes(Vec<sizes::Run>),
}

/// The per-item cost at the largest step, and what release gave back.
fn summary(mode: Growth, outcome: &Outcome) -> Option<String> {
    let Outcome::Steps(steps) = outcome else {
        return None;
    };
    let idle = steps.iter().find(|s| s.phase == "idle")?;
    let largest = steps.iter().rev().find(|s| s.phase == "step")?;
    let after = steps.iter().find(|s| s.phase == "after release");
    let in_mib = |k: Option<u64>| k.map_or("-".into(), |_| format!("{} MiB", mib(k)));
    let item = match mode {
        Growth::Streams => "stream",
        _ => "publisher",
    };
    Some(format!(
        "idle RSS {}; at {} {item}s {} = {} KiB per {item}; after release {}",
        in_mib(idle.rss_kib),
        largest.count,
        in_mib(largest.rss_kib),
        opt(largest.per_item_kib, 1),
        in_mib(after.and_then(|a| a.rss_kib)),
    ))
}

/// The steps as a Markdown table (publishers have no consumers or
/// deliveries: those columns are for streams).
fn steps_table(mode: Growth, steps: &[Step]) -> String {
    let streams = mode == Growth::Streams;
    let mut head = vec![
        "phase",
        mode.name(),
        if streams {
            "open s"
        } else {
            "open s / release s"
        },
        "W rss MiB",
        "KiB each",
        "fds",
        "threads",
        "channels",
    ];
    if streams {
        head.extend(["consumers", "deliveries", "W µs/delivery"]);
    }
    head.push("errors");
    let rows = steps.iter().map(|r| {
        let mut cells = vec![
            r.phase.to_owned(),
            r.count.to_string(),
            format!("{:.2}", r.open_s),
            mib(r.rss_kib),
            opt(r.per_item_kib, 1),
            count(r.fds),
            count(r.threads),
            count(r.channels),
        ];
        if streams {
            cells.extend([
                count(r.consumers),
                r.deliveries.to_string(),
                opt(r.cpu_us_per_delivery, 0),
            ]);
        }
        cells.push(errors(r.errors, r.error.as_deref()));
        cells
    });
    markdown(&head, rows)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["warren-loadtest"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn default_steps_by_mode() {
        let a = args(&["--growth", "publishers"]);
        assert_eq!(steps(&a, Growth::Publishers), [1, 10, 100, 1000, 5000]);
        assert_eq!(steps(&a, Growth::Streams), [1, 10, 100, 500, 1000, 2000]);
        let a = args(&["--growth", "streams", "--growth-steps", "50,1,10,10"]);
        assert_eq!(steps(&a, Growth::Streams), [1, 10, 50]);
    }

    #[test]
    fn warren_env_has_room_and_the_user_wins() {
        let a = args(&[
            "--growth",
            "publishers",
            "--warren-env",
            "WARREN__AMQP__IDLE_TIMEOUT=9s",
        ]);
        let vars = super::env(&a);
        let last = |k: &str| {
            vars.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("WARREN__AMQP__IDLE_TIMEOUT"), Some("9s"));
        assert_eq!(last("WARREN__AMQP__MAX_CHANNELS"), Some("8000"));
        let a = args(&[
            "--growth",
            "sizes",
            "--growth-sizes",
            "16m",
            "--growth-in-flight",
            "16",
        ]);
        let vars = super::env(&a);
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.parse::<usize>().unwrap())
        };
        assert!(get("WARREN__PUBLISH__MAX_BODY_BYTES").unwrap() > 16 << 20);
        assert!(get("WARREN__HTTP__MAX_BUFFERED_BYTES").unwrap() >= 2 * 16 * (16 << 20));
        assert_eq!(super::env(&args(&[])), Vec::new());
    }
}
