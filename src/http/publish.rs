//! `POST /v1/publish` (JSON) and `POST /v1/publish/{exchange}/{routing_key}` (raw).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Authenticated;
use super::body::{self, JsonMessage};
use super::problem::Problem;
use super::AppState;
use crate::auth::Caller;
use crate::bus::{Confirmed, Publish, Schedule};
use crate::error::Error;
use crate::message::Message;

/// The header naming the publisher (its own channel) of a publish.
pub const PUBLISHER_HEADER: &str = "x-warren-publisher";

/// The JSON publish request.
#[derive(Debug, Deserialize)]
pub struct PublishJson {
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    allow_unroutable: bool,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    ordering_key: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    deliver_at_ms: i64,
    /// Unset: the `x-warren-allow-spool` header, else `spool.default`.
    #[serde(default)]
    allow_spool: Option<bool>,
    #[serde(flatten)]
    message: JsonMessage,
}

impl PublishJson {
    /// The request's id and its publish, with the trace context of the
    /// request's `headers`.
    pub(super) fn into_publish(self, headers: &HeaderMap) -> (String, Result<Publish, Error>) {
        let publish = (|| {
            let mut message = self.message.into_message()?;
            body::trace(headers, &mut message)?;
            Ok(Publish {
                exchange: self.exchange,
                routing_key: self.routing_key,
                message,
                mandatory: !self.allow_unroutable,
                ordering_key: self.ordering_key,
                schedule: Schedule {
                    delay_ms: self.delay_ms,
                    deliver_at_ms: self.deliver_at_ms,
                },
                allow_spool: match self.allow_spool {
                    Some(allow) => Some(allow),
                    None => allow_spool(headers)?,
                },
            })
        })();
        (self.request_id, publish)
    }
}

/// What a confirmed publish answers: 200, or 202 with `spooled` when the
/// spool took it.
#[derive(Debug, Serialize)]
pub struct Published {
    message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    request_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spooled: bool,
}

impl Published {
    fn new(confirmed: Confirmed, request_id: String) -> Self {
        Self {
            message_id: confirmed.message_id,
            request_id,
            spooled: confirmed.spooled,
        }
    }
}

impl IntoResponse for Published {
    fn into_response(self) -> Response {
        let status = if self.spooled {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        (status, Json(self)).into_response()
    }
}

/// The header that allows (or not) a publish into the spool.
pub const ALLOW_SPOOL_HEADER: &str = "x-warren-allow-spool";

/// What `x-warren-allow-spool` says, when present.
fn allow_spool(headers: &HeaderMap) -> Result<Option<bool>, Error> {
    match headers.contains_key(ALLOW_SPOOL_HEADER) {
        true => flag(headers, ALLOW_SPOOL_HEADER).map(Some),
        false => Ok(None),
    }
}

fn publisher_name(headers: &HeaderMap) -> Result<Option<String>, Error> {
    headers
        .get(PUBLISHER_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Error::InvalidArgument("x-warren-publisher must be ASCII".into()))
        })
        .transpose()
}

async fn publish(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    publish: Publish,
) -> Result<Confirmed, Error> {
    let name = publisher_name(headers)?;
    state
        .bus
        .publish_unary(caller, name.as_deref(), publish)
        .await
}

/// Where a CloudEvent goes: `?exchange=&routing_key=` (and
/// `allow_unroutable`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Target {
    exchange: String,
    routing_key: String,
    allow_unroutable: bool,
}

/// `POST /v1/publish` with a CloudEvent, binary or structured.
async fn cloudevent(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    target: Target,
    body: Body,
) -> Result<Published, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let mut message = if super::cloudevents::is_binary(headers) {
        let buffered = body::read(&state.limits, headers, body, max).await?;
        super::cloudevents::from_binary(headers, bytes::Bytes::clone(&buffered))?
    } else {
        let buffered = body::read(&state.limits, headers, body, body::json_limit(max)).await?;
        super::cloudevents::from_structured(&buffered)?
    };
    body::trace(headers, &mut message)?;
    let exchange = if target.exchange == "amq.default" {
        String::new()
    } else {
        target.exchange
    };
    let request = Publish {
        exchange,
        routing_key: target.routing_key,
        message,
        mandatory: !target.allow_unroutable,
        ordering_key: text(headers, "x-warren-ordering-key")?,
        allow_spool: allow_spool(headers)?,
        ..Default::default()
    };
    let confirmed = publish(state, caller, headers, request).await?;
    Ok(Published::new(confirmed, text(headers, "x-request-id")?))
}

/// `POST /v1/publish`: the JSON envelope, or a CloudEvent.
pub async fn json(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Result<Query<Target>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Published, Problem> {
    let Query(target) = target.map_err(|e| Error::InvalidArgument(e.body_text()))?;
    if super::cloudevents::is_binary(&headers) || super::cloudevents::is_structured(&headers) {
        return cloudevent(&state, &caller, &headers, target, body).await;
    }
    if !target.exchange.is_empty() || !target.routing_key.is_empty() {
        return Err(Error::InvalidArgument(
            "exchange and routing_key go in the JSON body (query parameters are for CloudEvents)"
                .into(),
        )
        .into());
    }
    let max = state.bus.config().publish.max_body_bytes;
    let (request, _buffered): (PublishJson, _) =
        body::read_json(&state.limits, &headers, body, body::json_limit(max)).await?;
    let (request_id, publish_request) = request.into_publish(&headers);
    let confirmed = publish(&state, &caller, &headers, publish_request?).await?;
    Ok(Published::new(confirmed, request_id))
}

fn text(headers: &HeaderMap, name: &str) -> Result<String, Error> {
    match headers.get(name) {
        None => Ok(String::new()),
        Some(v) => v
            .to_str()
            .map(str::to_owned)
            .map_err(|_| Error::InvalidArgument(format!("header {name} must be visible ASCII"))),
    }
}

fn number<T: std::str::FromStr + Default>(headers: &HeaderMap, name: &str) -> Result<T, Error> {
    let value = text(headers, name)?;
    if value.is_empty() {
        return Ok(T::default());
    }
    value.parse().map_err(|_| {
        Error::InvalidArgument(format!("header {name}: {value:?} is not a valid number"))
    })
}

fn flag(headers: &HeaderMap, name: &str) -> Result<bool, Error> {
    match text(headers, name)?.to_ascii_lowercase().as_str() {
        "" | "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        other => Err(Error::InvalidArgument(format!(
            "header {name}: {other:?} is not true or false"
        ))),
    }
}

/// Prefix of HTTP headers that become AMQP application headers (as strings).
pub const HEADER_PREFIX: &str = "x-warren-header-";

fn raw_message(headers: &HeaderMap, body: bytes::Bytes) -> Result<Message, Error> {
    let mut amqp_headers = serde_json::Map::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) {
            let value = value.to_str().map_err(|_| {
                Error::InvalidArgument(format!("header {name} must be visible ASCII"))
            })?;
            amqp_headers.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    }
    Ok(Message {
        body,
        content_type: text(headers, header::CONTENT_TYPE.as_str())?,
        content_encoding: text(headers, header::CONTENT_ENCODING.as_str())?,
        headers: amqp_headers,
        message_id: text(headers, "x-warren-message-id")?,
        correlation_id: text(headers, "x-warren-correlation-id")?,
        kind: text(headers, "x-warren-type")?,
        priority: number(headers, "x-warren-priority")?,
        expiration_ms: number(headers, "x-warren-expiration-ms")?,
        timestamp: number(headers, "x-warren-timestamp")?,
        app_id: text(headers, "x-warren-app-id")?,
        transient: flag(headers, "x-warren-transient")?,
        reply_to: text(headers, "x-warren-reply-to")?,
        user_id: text(headers, "x-warren-user-id")?,
    })
}

/// `POST /v1/publish/{exchange}/{routing_key}`: the body as is.
pub async fn raw(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((exchange, routing_key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Published, Problem> {
    let max = state.bus.config().publish.max_body_bytes;
    let buffered = body::read(&state.limits, &headers, body, max).await?;
    let mut message = raw_message(&headers, bytes::Bytes::clone(&buffered))?;
    body::trace(&headers, &mut message)?;
    let exchange = if exchange == "amq.default" {
        String::new()
    } else {
        exchange
    };
    let publish_request = Publish {
        exchange,
        routing_key,
        message,
        mandatory: !flag(&headers, "x-warren-allow-unroutable")?,
        ordering_key: text(&headers, "x-warren-ordering-key")?,
        schedule: Schedule {
            delay_ms: number(&headers, "x-warren-delay-ms")?,
            deliver_at_ms: number(&headers, "x-warren-deliver-at-ms")?,
        },
        allow_spool: allow_spool(&headers)?,
    };
    let confirmed = publish(&state, &caller, &headers, publish_request).await?;
    Ok(Published::new(confirmed, text(&headers, "x-request-id")?))
}
