//! `publish-http`: confirmed publishes over HTTP/1.1 keep-alive connections.
//!
//! - Warren: `POST /v1/publish/amq.default/<queue>` with the raw body,
//!   `--concurrency` callers over a pool of as many connections.
//! - Warren's JSON envelope: `POST /v1/publish` with
//!   `{"routing_key": <queue>, "body_base64": ...}`, the same way.
//! - mgmt-api: RabbitMQ's management API publish endpoint
//!   (`POST /api/exchanges/%2F/amq.default/publish`, JSON, base64 payload,
//!   basic auth), the same way. It answers `{"routed": true}` once routed.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;

use super::{closed_loop_phases, op, Ctx, Spec};
use crate::harness::Outcome;
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
    let json = serde_json::json!({
        "routing_key": spec.queue,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&spec.body),
    });
    let json = Bytes::from(serde_json::to_vec(&json)?);
    post_to_warren(ctx, meter, progress, url, "application/json", json).await
}

/// `--concurrency` callers POSTing `body` to Warren's `url` (with the
/// `--token`, if any), each answer 200 or an error.
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
        let mut request = client
            .post(&url)
            .header(CONTENT_TYPE, content_type)
            .body(body.clone());
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the answer whole so the connection goes back to the pool.
            let answer = response.bytes().await.map_err(|e| e.to_string())?;
            if status != StatusCode::OK {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
            }
            Ok(())
        }
    });
    closed_loop_phases(ctx, meter, progress, c, call).await
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
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let answer = response.bytes().await.map_err(|e| e.to_string())?;
            let answer = String::from_utf8_lossy(&answer);
            if status != StatusCode::OK {
                return Err(format!("{status}: {answer}"));
            }
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
