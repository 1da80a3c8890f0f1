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
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::body::{self, JsonOut};
use super::problem::Problem;
use super::AppState;
use crate::bus::ordered::Blocked;
use crate::error::Error;

/// One blocked key as JSON.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BlockedKey)]
pub struct JsonBlocked {
    key: String,
    /// The held message.
    message: JsonOut,
    reason: String,
    /// When it was blocked, Unix epoch ms.
    since_ms: i64,
    /// Messages of the key waiting behind it.
    waiting: u32,
}

/// The blocked keys of a group.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BlockedListing)]
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
#[utoipa::path(
    get, path = "/v1/ordered/{group}/blocked", operation_id = "listBlockedKeys", tag = "ordered",
    summary = "An ordered group's blocked keys",
    params(("group" = String, Path, description = "An ordered group")),
    responses(
        (status = 200, description = "The blocked keys, oldest first", body = Listing),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
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

/// The optional body of a retry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryJson {
    /// Fields that replace the held message's.
    #[serde(default, deserialize_with = "body::object")]
    message: Option<super::dead_letters::PatchJson>,
}

/// A key let go.
#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    key: String,
    /// How: `retry` or `skip`.
    #[schema(value_type = String)]
    released: &'static str,
}

/// `POST /v1/ordered/{group}/blocked/{key}/retry`: no body, or JSON.
#[utoipa::path(
    post, path = "/v1/ordered/{group}/blocked/{key}/retry", operation_id = "retryBlockedKey", tag = "ordered",
    summary = "Deliver a blocked key's held message again, first (optionally corrected)",
    params(
        ("group" = String, Path, description = "An ordered group"),
        ("key" = String, Path, description = "A blocked ordering key"),
    ),
    request_body(content((RetryJson = "application/json")),
        description = "Optional: no body retries the message as it is"),
    responses(
        (status = 200, description = "Released", body = Released),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    post, path = "/v1/ordered/{group}/blocked/{key}/skip", operation_id = "skipBlockedKey", tag = "ordered",
    summary = "Dead-letter a blocked key's held message; the key goes on",
    params(
        ("group" = String, Path, description = "An ordered group"),
        ("key" = String, Path, description = "A blocked ordering key"),
    ),
    responses(
        (status = 200, description = "Released", body = Released),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
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
