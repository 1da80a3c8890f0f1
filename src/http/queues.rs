//! Operators' queue endpoints: `GET /v1/queues`, `GET /v1/queues/{queue}`,
//! `POST /v1/queues/{queue}/pause`, `POST /v1/queues/{queue}/resume`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use super::auth::Authenticated;
use super::problem::Problem;
use super::AppState;
use crate::bus::control::{Listed, QueueInfo};

/// The listing.
#[derive(Debug, Serialize)]
pub struct Listing {
    queues: Vec<Listed>,
}

/// `GET /v1/queues`: every queue Warren knows.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Listing>, Problem> {
    let queues = state.bus.queues(&caller).await?;
    Ok(Json(Listing { queues }))
}

/// `GET /v1/queues/{queue}`: depth, consumers, paused.
pub async fn show(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.queue(&caller, &queue).await?))
}

/// `POST /v1/queues/{queue}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.pause(&caller, &queue).await?))
}

/// `POST /v1/queues/{queue}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.resume(&caller, &queue).await?))
}
