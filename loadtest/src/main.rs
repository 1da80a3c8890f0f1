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
//! published with a delay arrive ([`delay`]). `--growth
//! streams|publishers|sizes` measures how Warren's memory, fds, threads and
//! channels grow with what it holds open ([`growth`]); `--paced RATES` its
//! CPU and context switches per message at fixed rates ([`paced`]).
//!
//! Modules: [`cli`] options · [`warren`] the process under test · [`broker`]
//! lapin helpers · [`session`] the scenarios run one by one on a quiet
//! machine · [`scenarios`] the workloads · [`spool`] `--spool-compare` · [`delay`] scheduled-publish
//! precision · [`growth`] `--growth` · [`paced`] `--paced` · [`harness`] bounds, latency
//! histograms, progress · [`procfs`] CPU and memory from `/proc` ·
//! [`report`] table, targets, JSON · [`plot`] the optional SVG chart.

mod broker;
mod cli;
mod compare;
mod delay;
mod growth;
mod harness;
mod ordered;
mod paced;
mod plot;
mod procfs;
mod push;
mod report;
mod scenarios;
mod session;
mod spool;
mod warren;

use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use cli::Args;
use report::Row;
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

impl WarrenInfo {
    /// How the Warren under test ended, and the first problem it logged.
    fn print_end(&self) {
        if let Some(exit) = &self.exit {
            println!("Warren {exit}");
        }
        if self.log_problem_lines > 0 {
            println!(
                "Warren logged {} warning/error line(s) (in {}), first: {}",
                self.log_problem_lines,
                self.log.as_deref().unwrap_or("its log"),
                self.log_problems.first().map_or("", String::as_str)
            );
        }
    }
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
                Some(relay) => (spool::env(&args.warren_env), relay.url.clone()),
                None => (growth::env(&args), args.amqp_url.clone()),
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
    if let Some(mode) = args.growth {
        return growth::run(&args, mode, &mut warren, &mut info, &amqp).await;
    }
    if !args.paced.is_empty() {
        return paced::run(&args, &mut warren, &mut info, &amqp).await;
    }
    if args.push_compare || args.ordered_compare {
        return compare::run(&args, &mut warren, &mut info, &amqp).await;
    }
    let mut notes = Vec::new();
    let session = tokio::select! {
        rows = session::run(&args, &warren, amqp, &mut info, &mut notes) => rows,
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
    info.print_end();
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
