//! `POST /v1/publish` (JSON) and `POST /v1/publish/{exchange}/{routing_key}` (raw).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

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

/// The JSON publish request: where to, and the message's fields.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PublishJson {
    /// "" (or absent) is the default exchange.
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    /// Publish without the mandatory flag: an unroutable message is dropped.
    #[serde(default)]
    allow_unroutable: bool,
    /// Echoed in the answer.
    #[serde(default)]
    request_id: String,
    /// Ordered groups: the key whose messages keep their order.
    #[serde(default)]
    ordering_key: String,
    /// Scheduled publish: route the message this many ms from now (at
    /// most 268435455 s).
    #[serde(default, deserialize_with = "body::whole::deserialize")]
    #[schema(maximum = 268_435_455_499_u64)]
    delay_ms: u64,
    /// Scheduled publish: route the message at this Unix time in ms (at
    /// most one of `delay_ms` and `deliver_at_ms`).
    #[serde(default, deserialize_with = "body::whole::deserialize")]
    #[schema(minimum = 0)]
    deliver_at_ms: i64,
    /// Whether it may be spooled while the broker cannot be reached (unset:
    /// the `x-warren-allow-spool` header, else `spool.default`).
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
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// The id the message was published with (assigned when absent).
    message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    request_id: String,
    /// Written to the spool (202), not yet confirmed by the broker.
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
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Target {
    /// CloudEvents only: the exchange (`amq.default` or nothing for the
    /// default exchange).
    exchange: String,
    /// CloudEvents only: the routing key.
    routing_key: String,
    /// CloudEvents only: publish without the mandatory flag.
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
#[utoipa::path(
    post, path = "/v1/publish", operation_id = "publish", tag = "publish",
    summary = "Publish a message (JSON envelope or CloudEvent)",
    description = "Answers once the broker confirmed the message. Three forms: the JSON \
        envelope (`application/json`); a structured CloudEvent \
        (`application/cloudevents+json`); a binary-mode CloudEvent (any body, with \
        `ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers; the body's \
        `Content-Type` is its `datacontenttype`). CloudEvents take the exchange and \
        routing key as query parameters; the JSON envelope takes none.",
    params(
        Target,
        ("x-warren-publisher" = Option<String>, Header, min_length = 1, max_length = 128,
            description = "The named publisher (its own channel, in order) to publish on"),
        ("x-warren-allow-spool" = Option<bool>, Header,
            description = "Allow the spool while the broker cannot be reached (`allow_spool` in the JSON wins)"),
    ),
    request_body(content(
        (PublishJson = "application/json"),
        (super::cloudevents::StructuredEvent = "application/cloudevents+json"),
    )),
    responses(
        (status = 200, description = "Confirmed by the broker", body = Published),
        (status = 202, description = "Written to the spool (the broker could not be reached; `spooled` is true), forwarded once it is back", body = Published),
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

/// A number header; absent is the default, present it must be a number
/// (an empty value too is refused: it is not the number the document says).
fn number<T: std::str::FromStr + Default>(headers: &HeaderMap, name: &str) -> Result<T, Error> {
    if !headers.contains_key(name) {
        return Ok(T::default());
    }
    let value = text(headers, name)?;
    value.trim().parse().map_err(|_| {
        Error::InvalidArgument(format!("header {name}: {value:?} is not a valid number"))
    })
}

/// A boolean header: absent is false, present `true`/`1` or `false`/`0`.
fn flag(headers: &HeaderMap, name: &str) -> Result<bool, Error> {
    if !headers.contains_key(name) {
        return Ok(false);
    }
    match text(headers, name)?.trim().to_ascii_lowercase().as_str() {
        "false" | "0" => Ok(false),
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

/// A raw publish's body: any bytes (for the OpenAPI document, whose
/// `finish` leaves it without a schema).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawBody(#[allow(dead_code)] Vec<u8>);

/// `POST /v1/publish/{exchange}/{routing_key}`: the body as is.
#[utoipa::path(
    post, path = "/v1/publish/{exchange}/{routing_key}", operation_id = "publishRaw", tag = "publish",
    summary = "Publish a raw body",
    description = "The body's bytes as they are; `Content-Type` and `Content-Encoding` are \
        kept, properties come from `x-warren-*` headers and application headers from \
        `x-warren-header-<name>` (as strings).",
    params(
        ("exchange" = String, Path, description = "The exchange; `amq.default` names the default exchange"),
        ("routing_key" = String, Path),
        ("x-warren-message-id" = Option<String>, Header),
        ("x-warren-correlation-id" = Option<String>, Header),
        ("x-warren-type" = Option<String>, Header),
        ("x-warren-priority" = Option<u8>, Header),
        ("x-warren-expiration-ms" = Option<u64>, Header, maximum = 315_360_000_000_u64),
        ("x-warren-timestamp" = Option<i64>, Header, minimum = 0),
        ("x-warren-app-id" = Option<String>, Header),
        ("x-warren-reply-to" = Option<String>, Header),
        ("x-warren-transient" = Option<bool>, Header),
        ("x-warren-allow-unroutable" = Option<bool>, Header),
        ("x-warren-ordering-key" = Option<String>, Header),
        ("x-warren-delay-ms" = Option<u64>, Header, maximum = 268_435_455_499_u64),
        ("x-warren-deliver-at-ms" = Option<i64>, Header, minimum = 0),
        ("x-warren-publisher" = Option<String>, Header, min_length = 1, max_length = 128,
            description = "The named publisher (its own channel, in order) to publish on"),
        ("x-request-id" = Option<String>, Header, description = "Echoed as `request_id`"),
        ("x-warren-allow-spool" = Option<bool>, Header,
            description = "Allow the spool while the broker cannot be reached"),
    ),
    request_body(content((RawBody = "*/*")), description = "The message body, any bytes (none: an empty one)"),
    responses(
        (status = 200, description = "Confirmed by the broker", body = Published),
        (status = 202, description = "Written to the spool (the broker could not be reached; `spooled` is true), forwarded once it is back", body = Published),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 422, response = super::openapi::Unroutable),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 503, response = super::openapi::Unavailable),
        (status = 504, response = super::openapi::GatewayTimeout),
    ),
    security(("bearer" = [])),
)]
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
