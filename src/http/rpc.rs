//! `POST /v1/call` and `POST /v1/reply`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::body::{self, JsonMessage, JsonOut};
use super::problem::Problem;
use super::AppState;

/// The body of `POST /v1/call`: where to, the message, the timeout.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallJson {
    /// "" (or absent) is the default exchange.
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    /// How long to wait for the reply (0: `rpc.default_timeout`).
    #[serde(default, deserialize_with = "body::whole::deserialize")]
    timeout_ms: u32,
    #[serde(flatten)]
    message: JsonMessage,
}

/// `POST /v1/call` -> the reply message; 504 when no reply came in time.
#[utoipa::path(
    post, path = "/v1/call", operation_id = "call", tag = "rpc",
    summary = "Request/reply over the bus",
    request_body(content((CallJson = "application/json"))),
    responses(
        (status = 200, description = "The reply message", body = JsonOut),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::Unroutable),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 503, response = super::openapi::Unavailable),
        (status = 504, response = super::openapi::GatewayTimeout),
    ),
    security(("bearer" = [])),
)]
pub async fn call(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<JsonOut>, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let (request, _buffered): (CallJson, _) =
        body::read_json(&state.limits, &headers, body, body::json_limit(max)).await?;
    let mut message = request.message.into_message()?;
    body::trace(&headers, &mut message)?;
    let reply = state
        .bus
        .call(
            &caller,
            request.exchange,
            request.routing_key,
            message,
            request.timeout_ms,
            None,
        )
        .await?;
    Ok(Json(reply.into()))
}

/// The body of `POST /v1/reply`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReplyJson {
    /// The delivered request being answered.
    delivery_id: String,
    #[serde(flatten)]
    message: JsonMessage,
}

/// What a reply answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replied {
    replied: bool,
}

/// `POST /v1/reply`: answers a delivered request and acks it.
#[utoipa::path(
    post, path = "/v1/reply", operation_id = "reply", tag = "rpc",
    summary = "Answer a delivered request (to its reply_to) and ack it",
    request_body(content((ReplyJson = "application/json"))),
    responses(
        (status = 200, description = "Replied and acked", body = Replied),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn reply(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Replied>, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let (request, _buffered): (ReplyJson, _) =
        body::read_json(&state.limits, &headers, body, body::json_limit(max)).await?;
    let mut message = request.message.into_message()?;
    body::trace(&headers, &mut message)?;
    state
        .bus
        .reply(&caller, &request.delivery_id, message)
        .await?;
    Ok(Json(Replied { replied: true }))
}
