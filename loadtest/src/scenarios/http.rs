//! `publish-http`: confirmed publishes over HTTP/1.1 keep-alive connections.
//!
//! - Warren: `POST /v1/publish/amq.default/<queue>` with the raw body,
//!   `--concurrency` callers over a pool of as many connections.
//! - Warren's JSON envelope: `POST /v1/publish` with
//!   `{"routing_key": <queue>, "body_base64": ...}`, the same way.
//! - Warren's batches: `POST /v1/publish/batch`, NDJSON of [`BATCH`] such
//!   objects, from `--concurrency` / 16 callers (at least one); a message
//!   counts once its entry's result says confirmed (`"code":0`), and the
//!   latency is the batch's.
//! - mgmt-api: RabbitMQ's management API publish endpoint
//!   (`POST /api/exchanges/%2F/amq.default/publish`, JSON, base64 payload,
//!   basic auth), the same way. It answers `{"routed": true}` once routed.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;

use super::{closed_loop_phases, op, phases, Ctx, Spec};
use crate::harness::{record, Budget, Outcome};
use crate::procfs::Meter;

/// A client with a keep-alive pool of `connections`.
fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Warren's raw publish endpoint.
pub async fn warren(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &crate::harness::Progress,
) -> anyhow::Result<Outcome> {
    let url = format!("{}/v1/publish/amq.default/{}", ctx.warren_http, spec.queue);
    let body = spec.body.clone();
    post_to_warren(ctx, meter, progress, url, "application/octet-stream", body).await
}

/// Warren's JSON envelope publish endpoint (the default exchange).
pub async fn warren_json(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &crate::harness::Progress,
) -> anyhow::Result<Outcome> {
    let url = format!("{}/v1/publish", ctx.warren_http);
    let json = Bytes::from(envelope(spec)?);
    post_to_warren(ctx, meter, progress, url, "application/json", json).await
}

/// The JSON publish object of `spec`'s message, to its queue through the
/// default exchange (`POST /v1/publish`, and each entry of a batch).
fn envelope(spec: &Spec) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::json!({
        "routing_key": spec.queue,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&spec.body),
    }))
}

/// Entries per `warren-batch` request.
pub const BATCH: usize = 100;

/// Warren's batch publish endpoint: NDJSON batches of up to [`BATCH`].
pub async fn warren_batch(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &crate::harness::Progress,
) -> anyhow::Result<Outcome> {
    let callers = (ctx.args.concurrency / 16).max(1);
    let mut line = envelope(spec)?;
    line.push(b'\n');
    let batches = Batches {
        client: client(callers)?,
        url: format!("{}/v1/publish/batch", ctx.warren_http),
        full: Bytes::from(line.repeat(BATCH)),
        line: Bytes::from(line),
        token: ctx.args.token.clone(),
    };
    phases(ctx, meter, progress, |budget| {
        batches.run(callers, budget, progress)
    })
    .await
}

/// What the batch callers share.
#[derive(Clone)]
struct Batches {
    client: reqwest::Client,
    url: String,
    /// One NDJSON entry, newline included.
    line: Bytes,
    /// [`BATCH`] of them: every batch but a budget's last.
    full: Bytes,
    token: Option<String>,
}

impl Batches {
    /// `callers` posting batches until `budget` is spent.
    async fn run(
        &self,
        callers: usize,
        budget: std::sync::Arc<Budget>,
        progress: &crate::harness::Progress,
    ) -> Outcome {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (me, budget, counter) = (self.clone(), budget.clone(), progress.counter());
                tokio::spawn(async move {
                    let mut mine = Outcome::new(true);
                    let hard = tokio::time::Instant::from_std(budget.hard_deadline());
                    loop {
                        let n = (0..BATCH).take_while(|_| budget.take().is_some()).count();
                        if n == 0 {
                            break;
                        }
                        let started = std::time::Instant::now();
                        match tokio::time::timeout_at(hard, me.post(n)).await {
                            Ok(Ok(confirmed)) => {
                                mine.ok += confirmed;
                                for _ in confirmed..n as u64 {
                                    mine.error("an entry was not confirmed");
                                }
                                record(mine.latency.as_mut().expect("with latency"), started);
                            }
                            Ok(Err(e)) => (0..n).for_each(|_| mine.error(&e)),
                            Err(_) => {
                                mine.error("no answer before the hard deadline");
                                break;
                            }
                        }
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        let mut total = Outcome::new(true);
        for task in tasks {
            match task.await {
                Ok(mine) => total.merge(mine),
                Err(e) => total.error(format!("a caller panicked: {e}")),
            }
        }
        total
    }

    /// One batch of `n` entries; how many the answer says were confirmed.
    async fn post(&self, n: usize) -> Result<u64, String> {
        let body = if n == BATCH {
            self.full.clone()
        } else {
            Bytes::from(self.line.repeat(n))
        };
        let request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        let answer = send(request, self.token.as_deref()).await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        let results = answer["results"]
            .as_array()
            .ok_or("no results in the answer")?;
        if results.len() != n {
            return Err(format!("{} results for {n} entries", results.len()));
        }
        Ok(results.iter().filter(|r| r["code"] == 0).count() as u64)
    }
}

/// `--concurrency` callers POSTing `body` to Warren's `url`, each answer
/// 200 or an error.
async fn post_to_warren(
    ctx: &Ctx,
    meter: &mut Meter,
    progress: &crate::harness::Progress,
    url: String,
    content_type: &'static str,
    body: Bytes,
) -> anyhow::Result<Outcome> {
    let c = ctx.args.concurrency;
    let client = client(c)?;
    let token = ctx.args.token.clone();
    let call = op(move |_| {
        let request = client
            .post(&url)
            .header(CONTENT_TYPE, content_type)
            .body(body.clone());
        let token = token.clone();
        async move { send(request, token.as_deref()).await.map(drop) }
    });
    closed_loop_phases(ctx, meter, progress, c, call).await
}

/// Sends `request` with the `--token` as a bearer, if any, and reads the
/// answer whole (so the connection goes back to the pool): its body if
/// 200, else the status and body as the error.
async fn send(mut request: reqwest::RequestBuilder, token: Option<&str>) -> Result<Bytes, String> {
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let answer = response.bytes().await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(answer)
}

/// The management API's publish endpoint.
pub async fn mgmt(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &crate::harness::Progress,
) -> anyhow::Result<Outcome> {
    let c = ctx.args.concurrency;
    let client = client(c)?;
    let url = format!(
        "{}/api/exchanges/%2F/amq.default/publish",
        ctx.args.mgmt_url.trim_end_matches('/')
    );
    let (user, password) = ctx.args.mgmt_auth.split_once(':').expect("validated");
    let (user, password) = (user.to_owned(), password.to_owned());
    let json = serde_json::json!({
        "properties": {"delivery_mode": 2},
        "routing_key": spec.queue,
        "payload": base64::engine::general_purpose::STANDARD.encode(&spec.body),
        "payload_encoding": "base64",
    });
    let json = Bytes::from(serde_json::to_vec(&json)?);
    let call = op(move |_| {
        let request = client
            .post(&url)
            .basic_auth(&user, Some(&password))
            .header(CONTENT_TYPE, "application/json")
            .body(json.clone());
        async move {
            let answer = send(request, None).await?;
            let answer = String::from_utf8_lossy(&answer);
            if !answer.replace(' ', "").contains("\"routed\":true") {
                return Err(format!("not routed: {answer}"));
            }
            Ok(())
        }
    });
    closed_loop_phases(ctx, meter, progress, c, call).await
}

/// Whether the management API answers; else why not, with how to enable it.
pub async fn mgmt_available(mgmt_url: &str, auth: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let url = format!("{}/api/overview", mgmt_url.trim_end_matches('/'));
    match client
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) if e.is_connect() => Err(format!(
            "nothing listens at {mgmt_url}: the management plugin is off \
             (enable it with `rabbitmq-plugins enable rabbitmq_management`)"
        )),
        Err(e) => Err(format!("{url}: {e}")),
    }
}
