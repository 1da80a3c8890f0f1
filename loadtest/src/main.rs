//! `warren-loadtest`: drives Warren and, in the same run, the broker directly
//! with lapin doing the same work, and prints one table: throughput, latency
//! percentiles, the ratio to the direct client, and what Warren cost (CPU
//! seconds, peak RSS). See `BENCHMARKS.md` at the repository root.
//!
//! By default it starts Warren itself (`--warren-bin`) on free loopback ports
//! and stops it with SIGTERM at the end; `--warren-url-http/--warren-url-grpc
//! [--warren-pid]` target a running one instead.
//!
//! `--delay-precision` measures scheduled publish instead: how late messages
//! published with a delay arrive ([`delay`]).
//!
//! Modules: [`cli`] options · [`warren`] the process under test · [`broker`]
//! lapin helpers · [`scenarios`] the workloads · [`delay`] scheduled-publish
//! precision · [`harness`] bounds, latency
//! histograms, progress · [`procfs`] CPU and memory from `/proc` ·
//! [`report`] table, targets, JSON · [`plot`] the optional SVG chart.

mod broker;
mod cli;
mod compare;
mod delay;
mod harness;
mod ordered;
mod plot;
mod procfs;
mod push;
mod report;
mod scenarios;
mod spool;
mod warren;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use cli::Args;
use harness::Progress;
use procfs::{Meter, RssSampler};
use report::{Row, RunInfo};
use scenarios::{Ctx, Scenario, Spec, Target};
use warren::Warren;

/// The gRPC client generated from `proto/warren/v1/bus.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("warren.v1");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("warren-loadtest: {e:#}");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("\r\x1b[2Kwarren-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What one session measured besides the rows.
#[derive(Default, Serialize)]
pub(crate) struct WarrenInfo {
    binary: Option<String>,
    http: String,
    grpc: String,
    pid: Option<u32>,
    /// VmRSS one second after ready, before any load.
    idle_rss_kib: Option<u64>,
    /// VmRSS two seconds after the last run.
    rss_after_kib: Option<u64>,
    /// VmHWM at the end: the peak over Warren's whole life.
    hwm_kib: Option<u64>,
    exit: Option<String>,
    log: Option<String>,
    log_problem_lines: usize,
    log_problems: Vec<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: serde_json::Value,
    command: Vec<String>,
    amqp_url: String,
    broker_pid: Option<u32>,
    settings: serde_json::Value,
    warren: &'a WarrenInfo,
    results: &'a [Row],
    checks: Vec<report::Check>,
    notes: &'a [String],
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let amqp = broker::connect(&args.amqp_url, "warren-loadtest").await?;
    let relay = match args.spool_compare {
        true => Some(spool::Relay::start(&args.amqp_url).await?),
        false => None,
    };
    let mut warren = match (&args.warren_url_http, &args.warren_url_grpc) {
        (Some(http), Some(grpc)) => Warren::attach(http, grpc, args.warren_pid).await?,
        _ => {
            let config = args.warren_config.as_deref();
            let (env, amqp_url) = match &relay {
                Some(relay) => (spool_env(&args.warren_env), relay.url.clone()),
                None => (args.warren_env.clone(), args.amqp_url.clone()),
            };
            Warren::start(&args.warren_bin, config, &env, &amqp_url, &args.warren_log).await?
        }
    };
    let mut info = WarrenInfo {
        binary: warren
            .log
            .as_ref()
            .map(|_| args.warren_bin.display().to_string()),
        http: warren.http.clone(),
        grpc: warren.grpc.clone(),
        pid: warren.pid,
        log: warren.log.as_ref().map(|p| p.display().to_string()),
        ..Default::default()
    };
    eprintln!(
        "warren: pid {}, {} (HTTP), {} (gRPC)",
        warren.pid.map_or("unknown".into(), |p| p.to_string()),
        warren.http,
        warren.grpc
    );
    if args.delay_precision {
        let measured = tokio::select! {
            rows = delay_session(&args, &warren, &amqp) => rows,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        info.exit = warren.stop().await;
        let rows = measured?;
        println!("{}", delay::table(&rows));
        if let Some(exit) = &info.exit {
            println!("Warren {exit}");
        }
        if let Some(path) = &args.json {
            let report = serde_json::json!({
                "machine": machine(),
                "command": std::env::args().collect::<Vec<_>>(),
                "delay_precision": rows,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(rows.iter().all(|r| r.error.is_none()));
    }
    if let Some(relay) = &relay {
        return spool::run(&args, &mut warren, &mut info, &amqp, relay).await;
    }
    if args.push_compare || args.ordered_compare {
        return compare::run(&args, &mut warren, &mut info, &amqp).await;
    }
    let mut notes = Vec::new();
    let session = tokio::select! {
        rows = session(&args, &warren, amqp, &mut info, &mut notes) => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    info.hwm_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmHWM"));
    info.exit = warren.stop().await;
    (info.log_problem_lines, info.log_problems) = warren.log_problems();
    let mut rows = session?;
    report::set_ratios(&mut rows);
    notes.extend(report::notes(&rows));
    let checks = report::checks(&rows, info.idle_rss_kib);

    println!("{}", report::table(&rows));
    println!("{}", report::checks_table(&checks));
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "Warren idle RSS {}, RSS 2 s after the load {}, lifetime peak (VmHWM) {}",
        mib(info.idle_rss_kib),
        mib(info.rss_after_kib),
        mib(info.hwm_kib)
    );
    if let Some(exit) = &info.exit {
        println!("Warren {exit}");
    }
    if info.log_problem_lines > 0 {
        println!(
            "Warren logged {} warning/error line(s) (in {}), first: {}",
            info.log_problem_lines,
            info.log.as_deref().unwrap_or("its log"),
            info.log_problems.first().map_or("", String::as_str)
        );
    }
    for note in &notes {
        println!("note: {note}");
    }
    if let Some(path) = &args.json {
        let report = Report {
            machine: machine(),
            command: std::env::args().collect(),
            amqp_url: broker::mask(&args.amqp_url),
            broker_pid: procfs::find_broker(),
            settings: serde_json::json!({
                "messages": args.messages, "duration_s": args.duration, "warmup": args.warmup(),
                "concurrency": args.concurrency, "window": args.window, "prefetch": args.prefetch,
                "ack_batch": args.ack_batch, "grpc_connections": args.grpc_connections,
                "warren_env": args.warren_env, "ld_preload": std::env::var("LD_PRELOAD").ok(),
            }),
            warren: &info,
            results: &rows,
            checks,
            notes: &notes,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        match plot::svg(&rows, path) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("no plot: {e:#}"),
        }
    }
    Ok(rows.iter().all(|r| r.error.is_none()))
}

/// A gRPC client of `warren` that sends `--token`.
pub(crate) async fn grpc_client(args: &Args, warren: &Warren) -> anyhow::Result<scenarios::Grpc> {
    let channel = tonic::transport::Endpoint::from_shared(warren.grpc.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(proto::bus_client::BusClient::with_interceptor(
        channel,
        scenarios::Bearer::new(args.token.as_deref())?,
    ))
}

/// The spool on, in a directory of this run, besides `env`.
fn spool_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(broker::unique("spool", "dir"));
    let mut env = env.to_vec();
    env.push(("WARREN__SPOOL__ENABLED".into(), "true".into()));
    env.push(("WARREN__SPOOL__DIR".into(), dir.display().to_string()));
    env
}

/// `--delay-precision`: every delay of `--delays` at once.
async fn delay_session(
    args: &Args,
    warren: &Warren,
    amqp: &lapin::Connection,
) -> anyhow::Result<Vec<delay::Precision>> {
    let grpc = grpc_client(args, warren).await?;
    eprintln!(
        "delay precision: {} messages for each of {:?} s",
        args.delay_messages, args.delays
    );
    delay::run(amqp, grpc, &args.delays, args.delay_messages).await
}

/// Runs every selected scenario, size and queue type; one row per run.
async fn session(
    args: &Args,
    warren: &Warren,
    amqp: lapin::Connection,
    info: &mut WarrenInfo,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    info.idle_rss_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmRSS"));
    let broker_pid = procfs::find_broker();
    if broker_pid.is_none() {
        notes.push("no beam.smp process found: broker CPU not measured".into());
    }
    let scenarios = args.scenarios();
    let mut mgmt = args.wants(Target::MgmtApi) && scenarios.contains(&Scenario::PublishHttp);
    if mgmt {
        if let Err(why) = scenarios::mgmt_available(&args.mgmt_url, &args.mgmt_auth).await {
            eprintln!("note: skipping the mgmt-api peer: {why}");
            notes.push(format!("mgmt-api peer skipped: {why}"));
            mgmt = false;
        }
    }
    let mut grpc = Vec::new();
    for _ in 0..args.grpc_connections {
        let channel = tonic::transport::Endpoint::from_shared(warren.grpc.clone())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        grpc.push(proto::bus_client::BusClient::with_interceptor(
            channel,
            scenarios::Bearer::new(args.token.as_deref())?,
        ));
    }
    let admin = amqp.create_channel().await?;
    let ctx = Ctx {
        args: args.clone(),
        amqp,
        grpc,
        warren_http: warren.http.clone(),
    };
    let mut rows = Vec::new();
    for &size in &args.size {
        let body = scenarios::body(size);
        for &queue_type in &args.queue_type {
            for &scenario in &scenarios {
                for &target in scenario.targets() {
                    if !args.wants(target) || (target == Target::MgmtApi && !mgmt) {
                        continue;
                    }
                    let pids = [warren.pid, broker_pid];
                    let row =
                        run_quietly(&ctx, &admin, (scenario, target, queue_type), &body, pids)
                            .await;
                    eprintln!(
                        "{}: {} msgs, {:.0} msg/s, p50 {} µs{}",
                        row.label(),
                        row.messages,
                        row.rate,
                        row.p50_us.map_or("-".into(), |p| p.to_string()),
                        row.error
                            .as_deref()
                            .map_or(String::new(), |e| format!(", error: {e}"))
                    );
                    rows.push(row);
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    info.rss_after_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmRSS"));
    Ok(rows)
}

/// Other processes' CPU (in cores) above which a run counts as disturbed.
const DISTURBED: f64 = 0.25;

/// [`run_one`] on a quiet machine: waits for quiet first, and runs again
/// (up to `--retries` times) when other work disturbed it; keeps the least
/// disturbed run.
async fn run_quietly(
    ctx: &Ctx,
    admin: &lapin::Channel,
    (scenario, target, queue_type): (Scenario, Target, scenarios::QueueType),
    body: &bytes::Bytes,
    [warren_pid, broker_pid]: [Option<u32>; 2],
) -> Row {
    let me = Some(std::process::id());
    let disturbance = |r: &Row| r.other_cpu_s.unwrap_or(0.0) / r.seconds.max(1e-3);
    let mut best: Option<Row> = None;
    for attempt in 0..=ctx.args.retries {
        let max_wait = Duration::from_secs(ctx.args.quiet_wait);
        if let Some(load) = procfs::wait_quiet(&[warren_pid, broker_pid, me], 0.2, max_wait).await {
            eprintln!("\r\x1b[2Knote: the machine is still busy ({load:.2} cores of other work): running anyway");
        }
        if let Some(pid) = warren_pid.filter(|&p| target == Target::Warren && !procfs::alive(p)) {
            let info = RunInfo {
                scenario,
                target,
                size: body.len(),
                queue_type,
            };
            let gone = anyhow::anyhow!("Warren (pid {pid}) is no longer running");
            return Row::new(info, Err(gone), &Meter::default(), None, None);
        }
        let spec = Spec {
            scenario,
            target,
            queue_type,
            queue: broker::unique(scenario.name(), target.name()),
            body: body.clone(),
        };
        let row = run_one(ctx, admin, &spec, body.len(), warren_pid, broker_pid).await;
        let disturbed = disturbance(&row);
        if best.as_ref().is_none_or(|b| disturbed < disturbance(b)) {
            best = Some(row);
        }
        if disturbed <= DISTURBED || row_failed(best.as_ref()) {
            break;
        }
        if attempt < ctx.args.retries {
            eprintln!(
                "\r\x1b[2Knote: {} {} {}: other processes used {disturbed:.2} cores during the run: running it again",
                scenario.name(),
                body.len(),
                target.name()
            );
        }
    }
    best.expect("at least one attempt")
}

fn row_failed(row: Option<&Row>) -> bool {
    row.is_some_and(|r| r.error.is_some() && r.messages == 0)
}

/// One scenario against one target, on a fresh queue deleted afterwards.
async fn run_one(
    ctx: &Ctx,
    admin: &lapin::Channel,
    spec: &Spec,
    size: usize,
    warren_pid: Option<u32>,
    broker_pid: Option<u32>,
) -> Row {
    let info = RunInfo {
        scenario: spec.scenario,
        target: spec.target,
        size,
        queue_type: spec.queue_type,
    };
    let mut meter = Meter::new(warren_pid, broker_pid);
    if let Err(e) = broker::declare(admin, &spec.queue, spec.queue_type).await {
        return Row::new(info, Err(e), &meter, None, None);
    }
    let sampler = warren_pid.map(RssSampler::start);
    let label = format!(
        "{} {size} B {} {}",
        spec.scenario.name(),
        spec.queue_type.as_str(),
        spec.target.name()
    );
    let progress = Progress::start(label, ctx.args.messages);
    let outcome = scenarios::run(ctx, spec, &mut meter, &progress).await;
    progress.finish().await;
    let peak = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let hwm = warren_pid.and_then(|p| procfs::status_kib(p, "VmHWM"));
    if let Err(e) = broker::delete(admin, &spec.queue).await {
        eprintln!("note: {e:#} (it expires on its own)");
    }
    Row::new(info, outcome, &meter, peak, hwm)
}

/// What this machine is.
pub(crate) fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": model,
        "mem_total_kib": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
