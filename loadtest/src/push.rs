//! `--push-compare`: push delivery beside Subscribe + Ack.
//!
//! The started Warren must push `loadtest.push` to this load test's app
//! (`--warren-config loadtest/push.toml`: url http://127.0.0.1:5699/,
//! concurrency 256). The app answers 200 at once and counts. Each round:
//! (a) a fresh quorum queue filled with `--messages` and drained through
//! gRPC `Subscribe` with `--prefetch` and acks of `--ack-batch` ids; (b)
//! `loadtest.push` paused (Warren's pause endpoint), filled with as many,
//! resumed, and timed from the resume to the app's last request. Rounds
//! alternate which goes first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker;
use crate::ordered::{drain, Drain, Settings};
use crate::scenarios::{Grpc, QueueType};

/// The queue Warren pushes (as in `loadtest/push.toml`).
pub const QUEUE: &str = "loadtest.push";
/// Where the app listens.
pub const APP: &str = "127.0.0.1:5699";

async fn app(count: Arc<AtomicU64>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(APP).await?;
    let router = axum::Router::new().fallback(axum::routing::post(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            ""
        }
    }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(())
}

fn cpu_us(pid: Option<u32>, before: Option<u64>, messages: u64) -> Option<f64> {
    let after = pid.and_then(crate::procfs::cpu_ticks)?;
    Some((after - before?) as f64 / crate::procfs::clk_tck() * 1e6 / messages as f64)
}

pub async fn run(
    conn: &lapin::Connection,
    grpc: Grpc,
    http: &str,
    s: &Settings,
) -> anyhow::Result<Vec<Drain>> {
    let count = Arc::new(AtomicU64::new(0));
    app(count.clone()).await?;
    let body = bytes::Bytes::from(vec![b'x'; s.size]);
    let admin = conn.create_channel().await?;
    broker::declare(&admin, QUEUE, QueueType::Quorum).await?;
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for round in 0..s.rounds {
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["subscribe", "push"]
        } else {
            ["push", "subscribe"]
        };
        for target in order {
            let deadline = Instant::now() + Duration::from_secs(300);
            let (seconds, cpu) = if target == "subscribe" {
                let queue = broker::unique("push-compare", "subscribe");
                broker::declare(&admin, &queue, QueueType::Quorum).await?;
                broker::fill(conn, &queue, s.messages, &body, deadline).await?;
                let (seconds, ticks) = drain(&grpc, &queue, s).await?;
                let _ = admin
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await;
                let cpu =
                    ticks.map(|t| t as f64 / crate::procfs::clk_tck() * 1e6 / s.messages as f64);
                (seconds, cpu)
            } else {
                client
                    .post(format!("{http}/v1/queues/{QUEUE}/pause"))
                    .send()
                    .await?
                    .error_for_status()?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                broker::fill(conn, QUEUE, s.messages, &body, deadline).await?;
                let start = count.load(Ordering::Relaxed);
                let before = s.pid.and_then(crate::procfs::cpu_ticks);
                let started = Instant::now();
                client
                    .post(format!("{http}/v1/queues/{QUEUE}/resume"))
                    .send()
                    .await?
                    .error_for_status()?;
                while count.load(Ordering::Relaxed) < start + s.messages {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "the app did not get every message"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (
                    started.elapsed().as_secs_f64(),
                    cpu_us(s.pid, before, s.messages),
                )
            };
            let row = Drain {
                target,
                round,
                messages: s.messages,
                seconds,
                per_second: s.messages as f64 / seconds.max(1e-9),
                cpu_us: cpu,
            };
            eprintln!("round {round} {target}: {:.0} msg/s", row.per_second);
            rows.push(row);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(rows)
}
