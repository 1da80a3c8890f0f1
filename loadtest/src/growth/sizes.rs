//! `--growth sizes`: what a body of each size costs Warren in memory.
//!
//! For each size of `--growth-sizes`, each in-flight count of
//! `--growth-in-flight` and each path (PublishStream with that window,
//! unary Publish with that many callers, HTTP raw publish likewise,
//! Subscribe with that prefetch from a queue filled directly), the
//! scenario's own code runs [`messages`] messages on a fresh queue while
//! VmRSS is sampled every 50 ms. The peak minus the RSS just before,
//! divided by size x in flight, is how many copies of each body Warren held
//! at the peak (allocator slack included: small sizes are mostly noise).
//!
//! Each run gets a freshly started Warren (when the load test started it):
//! memory freed by a run is mostly kept by the allocator, so on one Warren
//! the next run would find it and grow less, and its "copies" would read
//! low. An attached Warren (`--warren-url-*`) is used as it is, and says so.

use std::time::Duration;

use serde::Serialize;

use super::connection;
use crate::broker;
use crate::cli::Args;
use crate::harness::Progress;
use crate::procfs::{self, Meter, RssSampler};
use crate::report::{errors, markdown, mib, opt};
use crate::scenarios::{self, Ctx, QueueType, Scenario, Spec, Target};
use crate::warren::Warren;

/// The paths measured, in order.
const PATHS: [Scenario; 4] = [
    Scenario::PublishStream,
    Scenario::PublishUnary,
    Scenario::PublishHttp,
    Scenario::Subscribe,
];

/// Messages per run: 64 MiB worth, 20 to 100, and two rounds of the
/// messages in flight at least.
pub fn messages(size: usize, in_flight: usize) -> u64 {
    let by_volume = (64 * 1024 * 1024 / size.max(1)).clamp(20, 100);
    by_volume.max(2 * in_flight) as u64
}

/// One path at one size and in-flight count.
#[derive(Debug, Serialize)]
pub struct Run {
    pub path: &'static str,
    pub size: usize,
    pub in_flight: usize,
    pub messages: u64,
    pub rate: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    /// (peak - before) / (size x in flight).
    pub copies: Option<f64>,
    pub warren_cpu_us_per_msg: Option<f64>,
    /// Whether the run had a Warren of its own, freshly started.
    pub fresh_warren: bool,
    pub errors: u64,
    pub error: Option<String>,
}

pub async fn run(args: &Args, warren: &mut Warren) -> anyhow::Result<Vec<Run>> {
    let fresh = warren.restartable();
    if !fresh {
        eprintln!(
            "note: an attached Warren is not restarted between runs: each run's RSS before \
             holds what the runs before it left"
        );
    }
    let mut first = true;
    let mut sizes = args.growth_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut runs = Vec::new();
    let amqp = broker::connect(&args.amqp_url, "warren-loadtest-growth").await?;
    let admin = amqp.create_channel().await?;
    let mut ctx = Ctx {
        args: args.clone(),
        amqp,
        grpc: vec![
            connection(args, warren).await?,
            connection(args, warren).await?,
        ],
        warren_http: warren.http.clone(),
    };
    eprintln!(
        "growth sizes: {sizes:?} B, in flight {:?}",
        args.growth_in_flight
    );
    for &size in &sizes {
        let body = scenarios::body(size);
        for &in_flight in &args.growth_in_flight {
            let n = messages(size, in_flight);
            ctx.args = settings(args, n, in_flight);
            for scenario in PATHS {
                let spec = Spec {
                    scenario,
                    target: Target::Warren,
                    queue_type: QueueType::Classic,
                    queue: broker::unique("growth-sizes", scenario.name()),
                    body: body.clone(),
                };
                if fresh && !first {
                    if let Some(ended) = warren.restart().await? {
                        if !ended.contains("exit status: 0") {
                            eprintln!("note: Warren before {} {size} B: {ended}", scenario.name());
                        }
                    }
                    ctx.grpc = vec![
                        connection(args, warren).await?,
                        connection(args, warren).await?,
                    ];
                    ctx.warren_http = warren.http.clone();
                }
                first = false;
                let mut run = one(&ctx, &admin, &spec, in_flight, warren.pid).await;
                run.fresh_warren = fresh;
                eprintln!(
                    "{} {size} B x {in_flight}: {} msgs, {} copies{}",
                    run.path,
                    run.messages,
                    run.copies.map_or("-".into(), |c| format!("{c:.2}")),
                    run.error
                        .as_deref()
                        .map_or(String::new(), |e| format!(", error: {e}"))
                );
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// The options a run goes by: `n` messages, no warm-up, `in_flight` callers,
/// window and prefetch.
fn settings(args: &Args, n: u64, in_flight: usize) -> Args {
    let mut a = args.clone();
    a.messages = n;
    a.warmup = Some(0);
    a.duration = a.duration.max(60.0);
    a.concurrency = in_flight;
    a.window = in_flight;
    a.prefetch = u16::try_from(in_flight).unwrap_or(u16::MAX);
    a.ack_batch = (in_flight / 2).max(1);
    a
}

async fn one(
    ctx: &Ctx,
    admin: &lapin::Channel,
    spec: &Spec,
    in_flight: usize,
    pid: Option<u32>,
) -> Run {
    let size = spec.body.len();
    let mut run = Run {
        path: spec.scenario.name(),
        size,
        in_flight,
        messages: 0,
        rate: 0.0,
        rss_before_kib: None,
        rss_peak_kib: None,
        copies: None,
        warren_cpu_us_per_msg: None,
        fresh_warren: false,
        errors: 0,
        error: None,
    };
    if let Err(e) = broker::declare(admin, &spec.queue, spec.queue_type).await {
        run.error = Some(format!("{e:#}"));
        return run;
    }
    // Let what the run before freed go back first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.rss_before_kib = pid.and_then(|p| procfs::status_kib(p, "VmRSS"));
    let sampler = pid.map(RssSampler::start);
    let mut meter = Meter::new(pid, None);
    let label = format!("{} {size} B x {in_flight}", spec.scenario.name());
    let progress = Progress::start(label, ctx.args.messages);
    let outcome = scenarios::run(ctx, spec, &mut meter, &progress).await;
    progress.finish().await;
    if let Some(sampler) = sampler {
        run.rss_peak_kib = Some(sampler.finish().await);
    }
    let _ = broker::delete(admin, &spec.queue).await;
    match outcome {
        Ok(out) => {
            run.messages = out.ok;
            run.errors = out.errors;
            run.error = out.first_error;
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    let seconds = meter.elapsed.as_secs_f64();
    if seconds > 0.0 {
        run.rate = run.messages as f64 / seconds;
    }
    run.warren_cpu_us_per_msg = meter.cpu[0]
        .filter(|_| run.messages > 0)
        .map(|s| s * 1e6 / run.messages as f64);
    if let (Some(before), Some(peak)) = (run.rss_before_kib, run.rss_peak_kib) {
        let grown = peak.saturating_sub(before) as f64 * 1024.0;
        run.copies = Some(grown / (size * in_flight) as f64);
    }
    run
}

/// The runs as a Markdown table.
pub fn table(runs: &[Run]) -> String {
    let head = [
        "path",
        "size",
        "in flight",
        "msgs",
        "msg/s",
        "W rss before MiB",
        "W rss peak MiB",
        "grown MiB",
        "copies",
        "W µs/msg",
        "errors",
    ];
    let rows = runs.iter().map(|r| {
        let grown = r
            .rss_before_kib
            .zip(r.rss_peak_kib)
            .map(|(b, p)| p.saturating_sub(b));
        vec![
            r.path.to_owned(),
            r.size.to_string(),
            r.in_flight.to_string(),
            r.messages.to_string(),
            format!("{:.0}", r.rate),
            mib(r.rss_before_kib),
            mib(r.rss_peak_kib),
            mib(grown),
            opt(r.copies, 2),
            opt(r.warren_cpu_us_per_msg, 0),
            errors(r.errors, r.error.as_deref()),
        ]
    });
    markdown(&head, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_counts() {
        assert_eq!(messages(1024, 1), 100);
        assert_eq!(messages(16 << 20, 1), 20);
        assert_eq!(messages(16 << 20, 16), 32);
        assert_eq!(messages(1 << 20, 16), 64);
    }
}
