//! The operators' dead-letter endpoints:
//! `GET /v1/dead-letters/{dlq}?limit=N`,
//! `POST /v1/dead-letters/{dlq}/replay`, `POST /v1/dead-letters/{dlq}/discard`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::body::{self, JsonMessage, JsonOut};
use super::problem::Problem;
use super::AppState;
use crate::bus::{DeadLetter, DeadLetterOutcome, Patch, Selection};
use crate::error::Error;

/// `?limit=N` (default 100).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// At most this many (default 100, at most `dead_letters.max_list`).
    #[serde(default = "default_limit")]
    #[param(default = 100, minimum = 0)]
    pub(super) limit: usize,
}

fn default_limit() -> usize {
    crate::bus::dead_letters::DEFAULT_LIST_LIMIT
}

/// One dead letter as JSON.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeadLetter)]
pub struct JsonDeadLetter {
    /// The message's `message_id`.
    id: String,
    message: JsonOut,
    /// Why it was dead-lettered (`rejected`, `expired`, `maxlen`, ...).
    reason: String,
    /// The queue it was dead-lettered from, where a replay sends it.
    original_queue: String,
    /// The deliveries it had.
    attempts: u32,
}

/// The listing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeadLetterListing)]
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
#[utoipa::path(
    get, path = "/v1/dead-letters/{dlq}", operation_id = "listDeadLetters", tag = "dead letters",
    summary = "List dead letters without removing them",
    params(("dlq" = String, Path, description = "A dead-letter queue"), ListParams),
    responses(
        (status = 200, description = "The dead letters", body = Listing),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
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

/// The body of a replay: `ids` (a non-empty list) or `all`, and optional
/// corrections.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayJson {
    /// The message ids to take.
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// Take them all (up to `dead_letters.max_scan`), instead of `ids`.
    #[serde(default)]
    all: bool,
    /// Fields that replace the stored ones.
    #[serde(default, deserialize_with = "body::object")]
    message: Option<PatchJson>,
}

impl ReplayJson {
    /// Its ids, `all` and corrections.
    pub(super) fn into_parts(self) -> (Option<Vec<String>>, bool, Option<PatchJson>) {
        (self.ids, self.all, self.message)
    }
}

impl DiscardJson {
    /// Its ids and `all`.
    pub(super) fn into_parts(self) -> (Option<Vec<String>>, bool) {
        (self.ids, self.all)
    }
}

/// The body of a discard: `ids` (a non-empty list) or `all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardJson {
    /// The message ids to take.
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// Take them all (up to `dead_letters.max_scan`), instead of `ids`.
    #[serde(default)]
    all: bool,
}

/// Corrections of a stored message: the fields given replace the stored
/// ones (`body` or `body_base64`, `content_type`, `content_encoding`,
/// `headers`, which replaces the application headers).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchJson {
    /// The new body: a string is sent as its UTF-8 bytes, anything else as
    /// compact JSON (`null`: no correction of the body).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    body: Option<Value>,
    /// The new body as base64 bytes, instead of `body`.
    #[serde(default)]
    #[schema(format = Byte)]
    body_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
}

/// The corrections given as `message`: only the fields present apply.
pub(super) fn patch(fields: PatchJson) -> Result<Patch, Error> {
    let (body, ct, ce, headers) = (
        fields.body.is_some() || fields.body_base64.is_some(),
        fields.content_type.is_some(),
        fields.content_encoding.is_some(),
        fields.headers.is_some(),
    );
    let parsed = JsonMessage {
        body: fields.body,
        body_base64: fields.body_base64,
        content_type: fields.content_type.unwrap_or_default(),
        content_encoding: fields.content_encoding.unwrap_or_default(),
        headers: fields.headers.unwrap_or_default(),
        ..Default::default()
    };
    let message = parsed.into_message()?;
    Ok(Patch {
        body: body.then_some(message.body),
        content_type: ct.then_some(message.content_type),
        content_encoding: ce.then_some(message.content_encoding),
        headers: headers.then_some(message.headers),
    })
}

/// What a replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub(super) replayed: u32,
    /// Requested ids that were not in the dead-letter queue.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) missing: Vec<String>,
}

/// What a discard did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Discarded {
    pub(super) discarded: u32,
    /// Requested ids that were not in the dead-letter queue.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) missing: Vec<String>,
}

pub(super) async fn select_request<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let (request, _) = body::read_json(&state.limits, headers, body, body::json_limit(max)).await?;
    Ok(request)
}

/// `POST /v1/dead-letters/{dlq}/replay`.
#[utoipa::path(
    post, path = "/v1/dead-letters/{dlq}/replay", operation_id = "replayDeadLetters", tag = "dead letters",
    summary = "Send dead letters back to their original queues, optionally corrected",
    description = "Each is confirmed on its original queue before it leaves the dead-letter \
        queue. A failure part-way answers its problem with `replayed`: how many were \
        replayed before it.",
    params(("dlq" = String, Path, description = "A dead-letter queue")),
    request_body(content((ReplayJson = "application/json"))),
    responses(
        (status = 200, description = "Replayed", body = Replayed),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::Unroutable),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(dlq): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Replayed>, Problem> {
    let request: ReplayJson = select_request(&state, &headers, body).await?;
    let selection = Selection::new(request.ids, request.all)?;
    let patch = request.message.map(patch).transpose()?.unwrap_or_default();
    let outcome = state.bus.replay(&caller, &dlq, &selection, &patch).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "replayed")?;
    Ok(Json(Replayed {
        replayed: done,
        missing,
    }))
}

/// `POST /v1/dead-letters/{dlq}/discard`.
#[utoipa::path(
    post, path = "/v1/dead-letters/{dlq}/discard", operation_id = "discardDeadLetters", tag = "dead letters",
    summary = "Remove dead letters for good",
    params(("dlq" = String, Path, description = "A dead-letter queue")),
    request_body(content((DiscardJson = "application/json"))),
    responses(
        (status = 200, description = "Discarded", body = Discarded),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn discard(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(dlq): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Discarded>, Problem> {
    let request: DiscardJson = select_request(&state, &headers, body).await?;
    let selection = Selection::new(request.ids, request.all)?;
    let outcome = state.bus.discard(&caller, &dlq, &selection).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "discarded")?;
    Ok(Json(Discarded {
        discarded: done,
        missing,
    }))
}

/// An operation stopped by a failure part-way: the failure's problem, with
/// how many messages were done before it (`replayed` / `discarded`).
pub(super) fn partial(
    outcome: DeadLetterOutcome,
    done: &str,
) -> Result<DeadLetterOutcome, Problem> {
    match outcome.stopped {
        Some(e) => Err(Problem::from(e).with(done, outcome.done)),
        None => Ok(outcome),
    }
}
