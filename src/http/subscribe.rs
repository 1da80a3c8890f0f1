//! `GET /v1/subscribe/{queue}` as Server-Sent Events, `POST /v1/ack`, `POST /v1/nack`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::body::{self, JsonOut};
use super::problem::Problem;
use super::AppState;
use crate::bus::{Delivery, SubscribeRequest};
use crate::error::Error;

/// Query parameters of a subscription.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// Most unacked deliveries on this stream (0: `subscribe.default_prefetch`).
    prefetch: u32,
    /// At-most-once: the broker considers messages acked once sent.
    auto_ack: bool,
    /// Bind the queue (or, with queue `_`, a temporary one) to this exchange.
    exchange: String,
    /// Comma-separated binding keys (with `exchange`).
    binding_keys: String,
    /// Headers-exchange matching: comma-separated `name:value` pairs.
    header_match: String,
    /// With header_match: all must match (`x-match=all`), else any.
    match_all: bool,
    /// The consumer's priority (`x-priority`).
    consumer_priority: i32,
    /// Ack deadline in ms (0: none): Warren requeues a delivery not acked in time.
    ack_deadline_ms: u32,
    /// `cloudevents`: each event's data is the delivery as a structured
    /// CloudEvent; empty for Warren's delivery JSON.
    format: String,
    /// The bearer token (read by the transport's credential extraction).
    access_token: Option<String>,
}

/// A delivery as one line of JSON (an SSE event's data).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Delivery)]
pub struct JsonDelivery {
    /// The id to ack or nack it by.
    delivery_id: String,
    message: JsonOut,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    attempt: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    reply_to: String,
    queue: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    ordering_key: String,
}

impl From<Delivery> for JsonDelivery {
    fn from(d: Delivery) -> Self {
        Self {
            delivery_id: d.id,
            message: d.message.into(),
            exchange: d.exchange,
            routing_key: d.routing_key,
            redelivered: d.redelivered,
            attempt: d.attempt,
            reply_to: d.reply_to,
            queue: d.queue,
            ordering_key: d.ordering_key,
        }
    }
}

fn event(item: Result<Delivery, Error>, cloudevents: bool) -> Event {
    match item {
        Ok(delivery) => {
            let id = delivery.id.clone();
            let data = if cloudevents {
                super::cloudevents::to_structured(&delivery).to_string()
            } else {
                serde_json::to_string(&JsonDelivery::from(delivery)).unwrap_or_default()
            };
            Event::default().id(id).data(data)
        }
        // The broker ended the subscription: say why, then the stream ends.
        Err(e) => Event::default()
            .event("error")
            .data(Problem::from(e).body().to_string()),
    }
}

/// `GET /v1/subscribe/{queue}?prefetch=N&auto_ack=false`.
#[utoipa::path(
    get, path = "/v1/subscribe/{queue}", operation_id = "subscribe", tag = "subscribe",
    summary = "Stream deliveries as Server-Sent Events",
    description = "A `text/event-stream`: first a comment `: subscribed queue=<name>` once \
        the consumer is registered, then one event per delivery (`id:` the delivery id, \
        `data:` the `Delivery` as one line of JSON, or a structured CloudEvent with \
        `format=cloudevents`); an `error` event (a `Problem`) when the broker ends the \
        subscription. Queue `_` with `exchange` is a temporary queue of this stream.",
    params(
        ("queue" = String, Path, description = "The queue (or ordered group) to consume"),
        Params,
    ),
    responses(
        (status = 200, description = "The stream of deliveries", content_type = "text/event-stream", body = String),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 429, response = super::openapi::TooManyRequests),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
pub async fn subscribe(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated<true>,
    Path(queue): Path<String>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let Query(params) = params.map_err(|e| Error::InvalidArgument(e.body_text()))?;
    let temporary = queue == "_" && !params.exchange.is_empty();
    let cloudevents = match params.format.as_str() {
        "" => false,
        "cloudevents" => true,
        other => {
            return Err(Error::InvalidArgument(format!(
                "format {other:?}: give cloudevents, or nothing for Warren's JSON"
            ))
            .into())
        }
    };
    let header_match = |pairs: &str| -> Result<BTreeMap<String, String>, Error> {
        pairs
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once(':') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(Error::InvalidArgument(format!(
                    "header_match takes name:value pairs, not {pair:?}"
                ))),
            })
            .collect()
    };
    let request = SubscribeRequest {
        queue: if temporary { String::new() } else { queue },
        prefetch: params.prefetch,
        auto_ack: params.auto_ack,
        exchange: params.exchange,
        binding_keys: params
            .binding_keys
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        header_match: header_match(&params.header_match)?,
        match_all: params.match_all,
        consumer_priority: params.consumer_priority,
        ack_deadline_ms: params.ack_deadline_ms,
    };
    let subscription = state.bus.subscribe(&caller, request).await?;
    let keepalive = state.bus.config().subscribe.keepalive;
    // Ends when the client disconnects (the stream is dropped), when the
    // broker ends the subscription, or at shutdown.
    // A first comment says the consumer is registered: from now on nothing
    // published to the queue is missed.
    let hello = Event::default().comment(format!("subscribed queue={}", subscription.queue));
    let stream = futures::stream::once(async move { Ok(hello) })
        .chain(subscription.map(move |item| Ok(event(item, cloudevents))))
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// The body of `POST /v1/ack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckJson {
    #[schema(min_items = 1)]
    delivery_ids: Vec<String>,
}

/// The body of `POST /v1/nack`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackJson {
    #[schema(min_items = 1)]
    delivery_ids: Vec<String>,
    /// Retry under the queue's retry policy (else dead-letter).
    #[serde(default)]
    requeue: bool,
    /// With requeue: redeliver after this many ms (at most 30 days).
    #[serde(default, deserialize_with = "body::whole::deserialize")]
    #[schema(maximum = 2_592_000_000_u32)]
    delay_ms: u32,
}

/// How many deliveries were settled.
#[derive(Debug, Serialize, ToSchema)]
pub struct Settled {
    #[serde(skip_serializing_if = "Option::is_none")]
    acked: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nacked: Option<u32>,
}

async fn settle_request<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Problem> {
    let (request, _) = body::read_json(&state.limits, headers, body, 1024 * 1024).await?;
    Ok(request)
}

/// `POST /v1/ack` `{delivery_ids}`.
#[utoipa::path(
    post, path = "/v1/ack", operation_id = "ack", tag = "subscribe",
    summary = "Acknowledge deliveries",
    request_body(content((AckJson = "application/json"))),
    responses(
        (status = 200, description = "Acked", body = Settled),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn ack(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Settled>, Problem> {
    let request: AckJson = settle_request(&state, &headers, body).await?;
    let acked = state.bus.ack(&caller, &request.delivery_ids).await?;
    Ok(Json(Settled {
        acked: Some(acked),
        nacked: None,
    }))
}

/// `POST /v1/nack` `{delivery_ids, requeue}`.
#[utoipa::path(
    post, path = "/v1/nack", operation_id = "nack", tag = "subscribe",
    summary = "Reject deliveries: dead-letter, or retry under the retry policy",
    request_body(content((NackJson = "application/json"))),
    responses(
        (status = 200, description = "Nacked", body = Settled),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn nack(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Settled>, Problem> {
    let request: NackJson = settle_request(&state, &headers, body).await?;
    let nacked = state
        .bus
        .nack(
            &caller,
            &request.delivery_ids,
            request.requeue,
            request.delay_ms,
        )
        .await?;
    Ok(Json(Settled {
        acked: None,
        nacked: Some(nacked),
    }))
}
