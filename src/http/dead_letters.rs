//! The operators' dead-letter endpoints:
//! `GET /v1/dead-letters/{dlq}?limit=N`,
//! `POST /v1/dead-letters/{dlq}/replay`, `POST /v1/dead-letters/{dlq}/discard`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Authenticated;
use super::body::{self, JsonMessage, JsonOut};
use super::problem::Problem;
use super::AppState;
use crate::bus::{DeadLetter, DeadLetterOutcome, Patch, Selection};
use crate::error::Error;

/// `?limit=N` (default 100).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    crate::bus::dead_letters::DEFAULT_LIST_LIMIT
}

/// One dead letter as JSON.
#[derive(Debug, Serialize)]
pub struct JsonDeadLetter {
    id: String,
    message: JsonOut,
    reason: String,
    original_queue: String,
    attempts: u32,
}

/// The listing.
#[derive(Debug, Serialize)]
pub struct Listing {
    messages: Vec<JsonDeadLetter>,
}

impl From<DeadLetter> for JsonDeadLetter {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            message: d.message.into(),
            reason: d.reason,
            original_queue: d.original_queue,
            attempts: d.attempts,
        }
    }
}

/// `GET /v1/dead-letters/{dlq}?limit=N`: without removing them.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(dlq): Path<String>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Listing>, Problem> {
    let Query(params) = params.map_err(|e| Error::InvalidArgument(e.body_text()))?;
    let letters = state.bus.dead_letters(&caller, &dlq, params.limit).await?;
    Ok(Json(Listing {
        messages: letters.into_iter().map(Into::into).collect(),
    }))
}

/// The body of replay and discard.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectJson {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    /// Replay only: fields that replace the stored ones.
    #[serde(default)]
    message: Option<Map<String, Value>>,
}

fn selection(request: &SelectJson) -> Result<Selection, Error> {
    Selection::new(request.ids.clone(), request.all)
}

/// The corrections given as `message`: only the fields present apply.
pub(super) fn patch(fields: Map<String, Value>) -> Result<Patch, Error> {
    let has = |k: &str| fields.contains_key(k);
    let (body, ct, ce, headers) = (
        has("body") || has("body_base64"),
        has("content_type"),
        has("content_encoding"),
        has("headers"),
    );
    let parsed: JsonMessage = serde_json::from_value(Value::Object(fields))
        .map_err(|e| Error::InvalidArgument(format!("invalid message: {e}")))?;
    let message = parsed.into_message()?;
    Ok(Patch {
        body: body.then_some(message.body),
        content_type: ct.then_some(message.content_type),
        content_encoding: ce.then_some(message.content_encoding),
        headers: headers.then_some(message.headers),
    })
}

#[derive(Debug, Serialize)]
pub struct Replayed {
    replayed: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Discarded {
    discarded: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

async fn select_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<SelectJson, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let (request, _) = body::read_json(&state.limits, headers, body, body::json_limit(max)).await?;
    Ok(request)
}

/// `POST /v1/dead-letters/{dlq}/replay`.
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(dlq): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Replayed>, Problem> {
    let request = select_request(&state, &headers, body).await?;
    let selection = selection(&request)?;
    let patch = request.message.map(patch).transpose()?.unwrap_or_default();
    let outcome = state.bus.replay(&caller, &dlq, &selection, &patch).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "replayed")?;
    Ok(Json(Replayed {
        replayed: done,
        missing,
    }))
}

/// `POST /v1/dead-letters/{dlq}/discard`.
pub async fn discard(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(dlq): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Discarded>, Problem> {
    let request = select_request(&state, &headers, body).await?;
    if request.message.is_some() {
        return Err(Error::InvalidArgument("message belongs to replay".into()).into());
    }
    let selection = selection(&request)?;
    let outcome = state.bus.discard(&caller, &dlq, &selection).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "discarded")?;
    Ok(Json(Discarded {
        discarded: done,
        missing,
    }))
}

/// An operation stopped by a failure part-way: the failure's problem, with
/// how many messages were done before it (`replayed` / `discarded`).
fn partial(outcome: DeadLetterOutcome, done: &str) -> Result<DeadLetterOutcome, Problem> {
    match outcome.stopped {
        Some(e) => Err(Problem::from(e).with(done, outcome.done)),
        None => Ok(outcome),
    }
}
