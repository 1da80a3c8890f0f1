//! Operators' queue endpoints: `GET /v1/queues`, `GET /v1/queues/{queue}`,
//! `POST /v1/queues/{queue}/pause`, `POST /v1/queues/{queue}/resume`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::problem::Problem;
use super::AppState;
use crate::bus::control::{Listed, QueueInfo};

/// The listing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = QueueListing)]
pub struct Listing {
    queues: Vec<Listed>,
}

/// `GET /v1/queues`: every queue Warren knows.
#[utoipa::path(
    get, path = "/v1/queues", operation_id = "listQueues", tag = "queues",
    summary = "Every queue Warren knows, with depth, consumers and paused state",
    responses(
        (status = 200, description = "The queues", body = Listing),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Listing>, Problem> {
    let queues = state.bus.queues(&caller).await?;
    Ok(Json(Listing { queues }))
}

/// `GET /v1/queues/{queue}`: depth, consumers, paused.
#[utoipa::path(
    get, path = "/v1/queues/{queue}", operation_id = "getQueue", tag = "queues",
    summary = "A queue's (or ordered group's) depth, consumers and paused state",
    params(("queue" = String, Path, description = "A queue or an ordered group")),
    responses(
        (status = 200, description = "The queue", body = QueueInfo),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.queue(&caller, &queue).await?))
}

/// `POST /v1/queues/{queue}/pause`.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/pause", operation_id = "pauseQueue", tag = "queues",
    summary = "Pause a queue on every Warren of the vhost, until resumed",
    params(("queue" = String, Path, description = "A queue or an ordered group")),
    responses(
        (status = 200, description = "Paused", body = QueueInfo),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn pause(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.pause(&caller, &queue).await?))
}

/// `POST /v1/queues/{queue}/resume`.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/resume", operation_id = "resumeQueue", tag = "queues",
    summary = "Resume a paused queue",
    params(("queue" = String, Path, description = "A queue or an ordered group")),
    responses(
        (status = 200, description = "Resumed", body = QueueInfo),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn resume(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(queue): Path<String>,
) -> Result<Json<QueueInfo>, Problem> {
    Ok(Json(state.bus.resume(&caller, &queue).await?))
}
