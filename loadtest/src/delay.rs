//! `--delay-precision`: how late scheduled messages arrive.
//!
//! For each delay (`--delays`, seconds), `--delay-messages` messages are
//! published through Warren's gRPC `Publish` with `delay_ms`, spread evenly
//! over one second (so that they fall at every phase of the broker's
//! timers), to a fresh queue that a plain lapin consumer reads. A message's
//! lateness is when it was received minus when it was due (the instant its
//! publish request was sent plus the delay). All delays run at once; the
//! report gives p50, p99 and max lateness per delay and the contract's bound
//! (1 s or 2 % of the delay, the larger) beside it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde::Serialize;

use crate::broker;
use crate::proto::{Message, PublishRequest};
use crate::scenarios::{Grpc, QueueType};

/// Lateness of one delay's messages.
#[derive(Debug, Serialize)]
pub struct Precision {
    pub delay_s: u64,
    pub messages: usize,
    pub received: usize,
    /// Milliseconds, signed (negative: early).
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
    pub min_ms: Option<i64>,
    /// The contract's bound: max(1 s, 2 % of the delay).
    pub bound_ms: i64,
    pub error: Option<String>,
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Measures every delay in `delays` (seconds) with `n` messages each.
pub async fn run(
    amqp: &lapin::Connection,
    grpc: Grpc,
    delays: &[u64],
    n: usize,
) -> anyhow::Result<Vec<Precision>> {
    let admin = amqp.create_channel().await?;
    let runs = delays.iter().map(|&delay| {
        let (grpc, admin) = (grpc.clone(), admin.clone());
        async move {
            let queue = broker::unique("delay", &delay.to_string());
            let result = match broker::declare(&admin, &queue, QueueType::Classic).await {
                Ok(()) => measure(amqp, grpc, &queue, delay, n).await,
                Err(e) => Err(e),
            };
            let _ = broker::delete(&admin, &queue).await;
            report(delay, n, result)
        }
    });
    let out = futures::future::join_all(runs).await;
    let _ = admin.close(200, "done".into()).await;
    Ok(out)
}

fn report(delay: u64, n: usize, result: anyhow::Result<Vec<i64>>) -> Precision {
    let bound_ms = 1000i64.max((delay * 20) as i64);
    let (mut late, error) = match result {
        Ok(late) => (late, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    late.sort_unstable();
    Precision {
        delay_s: delay,
        messages: n,
        received: late.len(),
        p50_ms: quantile(&late, 0.5),
        p99_ms: quantile(&late, 0.99),
        max_ms: late.last().copied(),
        min_ms: late.first().copied(),
        bound_ms,
        error,
    }
}

/// Publishes `n` messages delayed `delay` s to `queue` and returns each
/// one's lateness in ms.
async fn measure(
    amqp: &lapin::Connection,
    mut grpc: Grpc,
    queue: &str,
    delay: u64,
    n: usize,
) -> anyhow::Result<Vec<i64>> {
    let channel = amqp.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consume")?;
    let delay_d = Duration::from_secs(delay);
    let mut due = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        let at = start + Duration::from_secs(1).mul_f64(i as f64 / n as f64);
        tokio::time::sleep_until(at.into()).await;
        let sent = Instant::now();
        let request = PublishRequest {
            routing_key: queue.to_owned(),
            message: Some(Message {
                body: i.to_string().into_bytes().into(),
                ..Default::default()
            }),
            delay_ms: delay * 1000,
            ..Default::default()
        };
        grpc.publish(request)
            .await
            .with_context(|| format!("publishing message {i}"))?;
        due.insert(i.to_string(), sent + delay_d);
    }
    let deadline = start + delay_d + Duration::from_secs(30);
    let mut late = Vec::with_capacity(n);
    while late.len() < n {
        let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else {
            break;
        };
        let received = Instant::now();
        let body = String::from_utf8_lossy(&delivery.data).into_owned();
        if let Some(due) = due.remove(&body) {
            let ms = if received >= due {
                (received - due).as_millis() as i64
            } else {
                -((due - received).as_millis() as i64)
            };
            late.push(ms);
        }
    }
    let _ = channel.close(200, "done".into()).await;
    if late.len() < n {
        anyhow::bail!(
            "{} of {n} messages did not arrive within 30 s of their due time",
            n - late.len()
        );
    }
    Ok(late)
}

/// The results as a table.
pub fn table(rows: &[Precision]) -> String {
    let ms = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    let mut out = String::from(
        "| delay | messages | lateness p50 | p99 | max | min | bound (max(1 s, 2 %)) | within |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let within = match (r.max_ms, r.min_ms, &r.error) {
            (_, _, Some(e)) => format!("error: {e}"),
            (Some(max), Some(min), None) => {
                let ok = max <= r.bound_ms && min >= -r.bound_ms;
                (if ok { "yes" } else { "NO" }).to_owned()
            }
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} s | {}/{} | {} ms | {} ms | {} ms | {} ms | {} ms | {within} |\n",
            r.delay_s,
            r.received,
            r.messages,
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
            ms(r.min_ms),
            r.bound_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(quantile(&v, 0.5), Some(10));
        assert_eq!(quantile(&v, 0.99), Some(20));
        assert_eq!(quantile(&[], 0.5), None);
        let r = report(60, 3, Ok(vec![30, -5, 10]));
        assert_eq!(
            (r.p50_ms, r.max_ms, r.min_ms),
            (Some(10), Some(30), Some(-5))
        );
        assert_eq!(r.bound_ms, 1200);
        assert!(
            table(&[r]).contains("| 60 s | 3/3 | 10 ms | 30 ms | 30 ms | -5 ms | 1200 ms | yes |")
        );
    }
}
