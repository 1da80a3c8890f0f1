//! Operators' endpoints for ordered groups' blocked keys:
//! `GET /v1/ordered/{group}/blocked`,
//! `POST /v1/ordered/{group}/blocked/{key}/retry` (optionally
//! `{"message": {...}}`: fields that replace the held message's) and
//! `POST /v1/ordered/{group}/blocked/{key}/skip`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Authenticated;
use super::body::{self, JsonOut};
use super::problem::Problem;
use super::AppState;
use crate::bus::ordered::Blocked;
use crate::error::Error;

/// One blocked key as JSON.
#[derive(Debug, Serialize)]
pub struct JsonBlocked {
    key: String,
    message: JsonOut,
    reason: String,
    since_ms: i64,
    waiting: u32,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    blocked: Vec<JsonBlocked>,
}

impl From<Blocked> for JsonBlocked {
    fn from(b: Blocked) -> Self {
        Self {
            key: b.key,
            message: b.message.into(),
            reason: b.reason,
            since_ms: b.since_ms,
            waiting: b.waiting,
        }
    }
}

/// `GET /v1/ordered/{group}/blocked`.
pub async fn blocked(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(group): Path<String>,
) -> Result<Json<Listing>, Problem> {
    let blocked = state.bus.blocked(&caller, &group).await?;
    Ok(Json(Listing {
        blocked: blocked.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryJson {
    #[serde(default)]
    message: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct Released {
    key: String,
    released: &'static str,
}

/// `POST /v1/ordered/{group}/blocked/{key}/retry`: no body, or JSON.
pub async fn retry(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((group, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Released>, Problem> {
    let request: RetryJson = if headers.contains_key(header::CONTENT_TYPE) {
        let max = state.bus.config().publish.max_body_bytes;
        body::read_json(&state.limits, &headers, body, body::json_limit(max))
            .await?
            .0
    } else {
        let empty = body::read(&state.limits, &headers, body, 0).await?;
        if !empty.is_empty() {
            return Err(Error::InvalidArgument(
                "a body needs Content-Type: application/json".into(),
            )
            .into());
        }
        RetryJson::default()
    };
    let patch = request
        .message
        .map(super::dead_letters::patch)
        .transpose()?
        .unwrap_or_default();
    state
        .bus
        .retry_blocked(&caller, &group, &key, &patch)
        .await?;
    Ok(Json(Released {
        key,
        released: "retry",
    }))
}

/// `POST /v1/ordered/{group}/blocked/{key}/skip`.
pub async fn skip(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((group, key)): Path<(String, String)>,
) -> Result<Json<Released>, Problem> {
    state.bus.skip_blocked(&caller, &group, &key).await?;
    Ok(Json(Released {
        key,
        released: "skip",
    }))
}
