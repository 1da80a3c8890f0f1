//! The spool's endpoints (operators'): `GET /v1/spool`, and the dead-letter
//! spool: `GET /v1/spool/dead?limit=N`, `POST /v1/spool/dead/replay`,
//! `POST /v1/spool/dead/discard` (the same selection as dead letters).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;

use super::auth::Authenticated;
use super::body::JsonOut;
use super::dead_letters::{
    partial, patch, select_request, selection, Discarded, ListParams, Replayed,
};
use super::problem::Problem;
use super::AppState;
use crate::bus::spool::{Dead, Status};
use crate::bus::DeadLetterOutcome;
use crate::error::Error;

/// `GET /v1/spool`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    enabled: bool,
    messages: u64,
    bytes: u64,
    max_bytes: u64,
    oldest_seconds: Option<f64>,
    dead: u64,
    /// Whether Warren is connected to the broker (and so forwarding).
    broker_connected: bool,
}

/// One message of the dead-letter spool.
#[derive(Debug, Serialize)]
pub struct DeadJson {
    id: String,
    message: JsonOut,
    reason: String,
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
#[derive(Debug, Serialize)]
pub struct Listing {
    messages: Vec<DeadJson>,
}

/// `GET /v1/spool`: depth, bytes, age of the oldest, the dead-letter spool.
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
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Replayed>, Problem> {
    let request = select_request(&state, &headers, body).await?;
    let selection = selection(&request)?;
    let patch = request.message.map(patch).transpose()?.unwrap_or_default();
    let outcome = state.bus.spool_replay(&caller, &selection, &patch).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "replayed")?;
    Ok(Json(Replayed {
        replayed: done,
        missing,
    }))
}

/// `POST /v1/spool/dead/discard`.
pub async fn discard(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Discarded>, Problem> {
    let request = select_request(&state, &headers, body).await?;
    if request.message.is_some() {
        return Err(Error::InvalidArgument("message belongs to replay".into()).into());
    }
    let selection = selection(&request)?;
    let outcome = state.bus.spool_discard(&caller, &selection).await?;
    let DeadLetterOutcome { done, missing, .. } = partial(outcome, "discarded")?;
    Ok(Json(Discarded {
        discarded: done,
        missing,
    }))
}
