//! `--paced RATES`: Warren at fixed rates instead of flat out.
//!
//! For each of publish-unary, publish-http, subscribe and rpc (those picked
//! with `--scenario`) and each rate, one request is started per tick of a
//! `tokio::time::interval` (missed ticks burst, so the average rate holds;
//! below a millisecond the ticks come in small bursts), up to
//! `--concurrency` outstanding, for `--duration` seconds or `--messages`,
//! whichever is fewer, after a warm-up of half a second's worth. Latency is
//! from the tick the request was due at to its completion, so a tool that
//! falls behind shows it. Per message: Warren's CPU (utime + stime from
//! `/proc/PID/stat`) and context switches (voluntary + involuntary, summed
//! over `/proc/PID/task/*`), over the measured phase.
//!
//! - publish-unary: gRPC `Publish`; publish-http: `POST
//!   /v1/publish/amq.default/<queue>` with the raw body.
//! - subscribe: published directly (lapin, confirmed) at the rate; Warren
//!   delivers over one `Subscribe` and each delivery is acked (every id
//!   waiting in one `Ack`); latency is publish tick to delivery.
//! - rpc: gRPC `Call`, answered by a responder on `Subscribe` + `Reply`
//!   through Warren as well (so both sides of a call are Warren's cost).

mod drive;
mod report;

use std::time::Duration;

use crate::cli::Args;
use crate::procfs;
use crate::scenarios::{self, QueueType, Scenario};
use crate::warren::Warren;
use crate::{broker, machine, WarrenInfo};

/// The scenarios `--paced` runs, in order.
const SCENARIOS: [Scenario; 4] = [
    Scenario::PublishUnary,
    Scenario::PublishHttp,
    Scenario::Subscribe,
    Scenario::Rpc,
];

/// Runs every picked scenario at every rate; whether all went through.
pub async fn run(
    args: &Args,
    warren: &mut Warren,
    info: &mut WarrenInfo,
    amqp: &lapin::Connection,
) -> anyhow::Result<bool> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    info.idle_rss_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmRSS"));
    let picked = args.scenarios();
    let skipped: Vec<&str> = picked
        .iter()
        .filter(|s| !SCENARIOS.contains(s))
        .map(|s| s.name())
        .collect();
    let measured = async {
        let admin = amqp.create_channel().await?;
        let grpc = crate::grpc_client(args, warren).await?;
        let size = args.size.first().copied().unwrap_or(1024);
        let body = scenarios::body(size);
        let mut rows = Vec::new();
        for scenario in SCENARIOS.into_iter().filter(|s| picked.contains(s)) {
            for &rate in &args.paced {
                let queue = broker::unique("paced", scenario.name());
                broker::declare(&admin, &queue, QueueType::Classic).await?;
                let setup = drive::Setup {
                    args,
                    warren,
                    amqp,
                    grpc: grpc.clone(),
                    queue: queue.clone(),
                    body: body.clone(),
                    rate,
                };
                let row = drive::run(scenario, &setup).await;
                let _ = broker::delete(&admin, &queue).await;
                eprintln!("{}", row.line());
                rows.push(row);
            }
        }
        anyhow::Ok(rows)
    };
    let measured = tokio::select! {
        rows = measured => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    info.hwm_kib = warren.pid.and_then(|p| procfs::status_kib(p, "VmHWM"));
    info.exit = warren.stop().await;
    (info.log_problem_lines, info.log_problems) = warren.log_problems();
    let rows = measured?;
    println!("{}", report::table(&rows));
    if !skipped.is_empty() {
        println!("note: not paced (no paced form): {}", skipped.join(", "));
    }
    info.print_end();
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "machine": machine(),
            "command": std::env::args().collect::<Vec<_>>(),
            "warren": info,
            "paced": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(rows.iter().all(|r| r.error.is_none()))
}
