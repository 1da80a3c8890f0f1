//! The spool's endpoints (operators'): `GET /v1/spool`, and the dead-letter
//! spool: `GET /v1/spool/dead?limit=N`, `POST /v1/spool/dead/replay`,
//! `POST /v1/spool/dead/discard` (the same selection as dead letters).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::body::JsonOut;
use super::dead_letters::{
    partial, patch, select_request, DiscardJson, Discarded, ListParams, ReplayJson, Replayed,
};
use super::problem::Problem;
use super::AppState;
use crate::bus::spool::{Dead, Status};
use crate::bus::{DeadLetterOutcome, Selection};
use crate::error::Error;

/// The spool's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusJson {
    /// Always true: with the spool off, `GET /v1/spool` answers 404.
    enabled: bool,
    /// Messages waiting to be forwarded.
    messages: u64,
    /// Their bytes on disk.
    bytes: u64,
    /// `spool.max_bytes`.
    max_bytes: u64,
    /// Age of the oldest waiting message, in seconds (null when empty).
    oldest_seconds: Option<f64>,
    /// Messages in the dead-letter spool.
    dead: u64,
    /// Whether Warren is connected to the broker (and so forwarding).
    broker_connected: bool,
}

/// One message of the dead-letter spool.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadJson {
    /// The message's `message_id` (what a selection names).
    id: String,
    message: JsonOut,
    /// Why the broker refused it on forwarding.
    reason: String,
    /// Where it was published to.
    exchange: String,
    routing_key: String,
}

impl From<Dead> for DeadJson {
    fn from(d: Dead) -> Self {
        Self {
            id: d.id,
            reason: d.reason,
            exchange: d.publish.exchange,
            routing_key: d.publish.routing_key,
            message: d.publish.message.into(),
        }
    }
}

/// The dead-letter spool's listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing {
    messages: Vec<DeadJson>,
}

/// `GET /v1/spool`: depth, bytes, age of the oldest, the dead-letter spool.
#[utoipa::path(
    get, path = "/v1/spool", operation_id = "spoolStatus", tag = "spool",
    summary = "The spool's state",
    responses(
        (status = 200, description = "The spool's state", body = StatusJson),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("bearer" = [])),
)]
pub async fn status(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<StatusJson>, Problem> {
    let Status {
        messages,
        bytes,
        max_bytes,
        oldest_seconds,
        dead,
    } = state.bus.spool_status(&caller).await?;
    Ok(Json(StatusJson {
        enabled: true,
        messages,
        bytes,
        max_bytes,
        oldest_seconds,
        dead,
        broker_connected: state.bus.is_ready(),
    }))
}

/// `GET /v1/spool/dead?limit=N`: without removing them.
#[utoipa::path(
    get, path = "/v1/spool/dead", operation_id = "listSpoolDead", tag = "spool",
    summary = "Messages the broker refused on forwarding, oldest first, left in place",
    params(ListParams),
    responses(
        (status = 200, description = "The dead-letter spool", body = Listing),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("bearer" = [])),
)]
pub async fn dead(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Listing>, Problem> {
    let Query(params) = params.map_err(|e| Error::InvalidArgument(e.body_text()))?;
    let dead = state.bus.spool_dead(&caller, params.limit).await?;
    Ok(Json(Listing {
        messages: dead.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /v1/spool/dead/replay`: back into the spool (optionally corrected),
/// to be forwarded again.
#[utoipa::path(
    post, path = "/v1/spool/dead/replay", operation_id = "replaySpoolDead", tag = "spool",
    summary = "Send messages of the dead-letter spool back to the end of the spool, optionally corrected",
    request_body(content((ReplayJson = "application/json"))),
    responses(
        (status = 200, description = "Back in the spool", body = Replayed),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 429, response = super::openapi::TooManyRequests),
    ),
    security(("bearer" = [])),
)]
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Replayed>, Problem> {
    let request: ReplayJson = select_request(&state, &headers, body).await?;
    let (ids, all, message) = request.into_parts();
    let selection = Selection::new(ids, all)?;
    let patch = message.map(patch).transpose()?.unwrap_or_default();
    let outcome = state.bus.spool_replay(&caller, &selection, &patch).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "replayed")?;
    Ok(Json(Replayed {
        replayed: done,
        missing,
    }))
}

/// `POST /v1/spool/dead/discard`.
#[utoipa::path(
    post, path = "/v1/spool/dead/discard", operation_id = "discardSpoolDead", tag = "spool",
    summary = "Remove messages of the dead-letter spool for good",
    request_body(content((DiscardJson = "application/json"))),
    responses(
        (status = 200, description = "Discarded", body = Discarded),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
    ),
    security(("bearer" = [])),
)]
pub async fn discard(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Discarded>, Problem> {
    let request: DiscardJson = select_request(&state, &headers, body).await?;
    let (ids, all) = request.into_parts();
    let selection = Selection::new(ids, all)?;
    let outcome = state.bus.spool_discard(&caller, &selection).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "discarded")?;
    Ok(Json(Discarded {
        discarded: done,
        missing,
    }))
}
