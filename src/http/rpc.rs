//! `POST /v1/call` and `POST /v1/reply`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Authenticated;
use super::body::{self, JsonMessage, JsonOut};
use super::problem::Problem;
use super::AppState;

/// The body of `POST /v1/call`: where to, the message, the timeout.
#[derive(Debug, Deserialize)]
pub struct CallJson {
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    timeout_ms: u32,
    #[serde(flatten)]
    message: JsonMessage,
}

/// `POST /v1/call` -> the reply message; 504 when no reply came in time.
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
#[derive(Debug, Deserialize)]
pub struct ReplyJson {
    delivery_id: String,
    #[serde(flatten)]
    message: JsonMessage,
}

/// What a reply answers.
#[derive(Debug, Serialize)]
pub struct Replied {
    replied: bool,
}

/// `POST /v1/reply`: answers a delivered request and acks it.
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
