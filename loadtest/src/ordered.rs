//! `--ordered-compare`: an ordered group beside a plain quorum queue.
//!
//! The started Warren must have the group `--ordered-group` in its
//! configuration (`loadtest/ordered.toml`: 8 partitions). Each round fills a
//! fresh plain quorum queue, and the group (through its exchange, as a plain
//! AMQP publisher: routing key `crc32(key) % partitions`, the key in
//! `x-warren-ordering-key`, keys spread round-robin over `--ordered-keys`),
//! with `--messages` messages of `--size`, then drains each through Warren's
//! gRPC `Subscribe` with the same `--prefetch` and `--ack-batch`, timing
//! from the first delivery to the last ack. Rounds alternate the order
//! (plain first, then ordered first) so that neither always runs warm.

use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::broker;
use crate::proto::{AckRequest, SubscribeRequest};
use crate::scenarios::{Grpc, QueueType};

/// One drain.
#[derive(Debug, Serialize)]
pub struct Drain {
    pub target: &'static str,
    pub round: usize,
    pub messages: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Warren's CPU (user + system) per message, µs.
    pub cpu_us: Option<f64>,
}

pub struct Settings {
    pub group: String,
    pub partitions: u32,
    pub keys: u32,
    pub messages: u64,
    pub size: usize,
    pub prefetch: u16,
    pub ack_batch: usize,
    pub rounds: usize,
    pub pid: Option<u32>,
}

async fn fill_group(
    conn: &lapin::Connection,
    s: &Settings,
    body: &bytes::Bytes,
) -> anyhow::Result<()> {
    let channel = broker::confirm_channel(conn).await?;
    let mut pending = FuturesUnordered::new();
    for i in 0..s.messages {
        let key = format!("key-{}", i % u64::from(s.keys));
        let partition = crc32fast::hash(key.as_bytes()) % s.partitions;
        let mut headers = FieldTable::default();
        headers.insert(
            "x-warren-ordering-key".into(),
            AMQPValue::LongString(LongString::from(key.into_bytes())),
        );
        let properties = broker::persistent().with_headers(headers);
        let (channel, body, group) = (channel.clone(), body.clone(), s.group.clone());
        pending.push(async move {
            let key = partition.to_string();
            broker::publish_stored(&channel, &group, &key, &body, properties).await
        });
        if pending.len() >= 512 {
            if let Some(Err(e)) = pending.next().await {
                anyhow::bail!("filling the group: {e}");
            }
        }
    }
    while let Some(result) = pending.next().await {
        result.map_err(|e| anyhow::anyhow!("filling the group: {e}"))?;
    }
    Ok(())
}

/// Drains `queue` through Warren; seconds from the first delivery to the
/// last ack, and Warren's CPU ticks meanwhile.
pub async fn drain(grpc: &Grpc, queue: &str, s: &Settings) -> anyhow::Result<(f64, Option<u64>)> {
    let mut client = grpc.clone();
    let request = SubscribeRequest {
        queue: queue.to_owned(),
        prefetch: u32::from(s.prefetch),
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await?.into_inner();
    let (ack_tx, mut ack_rx) = mpsc::channel::<Vec<String>>(1024);
    let mut acker_client = grpc.clone();
    let acker = tokio::spawn(async move {
        while let Some(ids) = ack_rx.recv().await {
            acker_client.ack(AckRequest { delivery_ids: ids }).await?;
        }
        Ok::<_, tonic::Status>(())
    });
    let mut batch = Vec::with_capacity(s.ack_batch);
    let (mut started, mut ticks) = (None, None);
    for received in 0..s.messages {
        let delivery = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no delivery within 60 s after {received}"))??
            .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
        if started.is_none() {
            started = Some(Instant::now());
            ticks = s.pid.and_then(crate::procfs::cpu_ticks);
        }
        batch.push(delivery.delivery_id);
        if batch.len() >= s.ack_batch {
            ack_tx.send(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        ack_tx.send(batch).await?;
    }
    drop(ack_tx);
    acker.await??;
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let used = match (ticks, s.pid.and_then(crate::procfs::cpu_ticks)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((seconds, used))
}

/// Every round, both targets.
pub async fn run(conn: &lapin::Connection, grpc: Grpc, s: &Settings) -> anyhow::Result<Vec<Drain>> {
    let body = bytes::Bytes::from(vec![b'x'; s.size]);
    let admin = conn.create_channel().await?;
    let mut rows = Vec::new();
    for round in 0..s.rounds {
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["plain", "ordered"]
        } else {
            ["ordered", "plain"]
        };
        for target in order {
            let queue = if target == "plain" {
                let queue = broker::unique("ordered-compare", "plain");
                broker::declare(&admin, &queue, QueueType::Quorum).await?;
                let deadline = Instant::now() + Duration::from_secs(300);
                broker::fill(conn, &queue, s.messages, &body, deadline).await?;
                queue
            } else {
                fill_group(conn, s, &body).await?;
                s.group.clone()
            };
            let (seconds, ticks) = drain(&grpc, &queue, s).await?;
            if target == "plain" {
                let _ = admin
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await;
            }
            let cpu_us =
                ticks.map(|t| t as f64 / crate::procfs::clk_tck() * 1e6 / s.messages as f64);
            let row = Drain {
                target,
                round,
                messages: s.messages,
                seconds,
                per_second: s.messages as f64 / seconds.max(1e-9),
                cpu_us,
            };
            eprintln!(
                "round {round} {target}: {:.0} msg/s, {}",
                row.per_second,
                row.cpu_us
                    .map_or("-".into(), |c| format!("{c:.1} µs CPU/msg"))
            );
            rows.push(row);
            // Let the broker settle between drains.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(rows)
}

/// The rows and the median ratio of `other` to `base`, as a Markdown table.
pub fn table(rows: &[Drain], base: &str, other: &str) -> String {
    let median = |target: &str| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.per_second)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut out =
        String::from("| round | target | msg/s | Warren CPU µs/msg |\n|---|---|---|---|\n");
    for r in rows {
        out += &format!(
            "| {} | {} | {:.0} | {} |\n",
            r.round,
            r.target,
            r.per_second,
            r.cpu_us.map_or("-".into(), |c| format!("{c:.1}"))
        );
    }
    let (b, o) = (median(base), median(other));
    out += &format!(
        "\nmedian: {base} {b:.0} msg/s, {other} {o:.0} msg/s, ratio {:.2}\n",
        o / b.max(1e-9)
    );
    out
}
