//! `POST /v1/publish/batch`: many publishes in one request, on one publisher
//! channel of their own, in order, each answered alone.
//!
//! The body (a JSON array, or NDJSON) is read as it arrives: each entry is
//! parsed and submitted as soon as it is complete, so the body is never held
//! whole. What is held counts against `http.max_buffered_bytes`: the bytes of
//! the entry being read, and each submitted entry's bytes until its confirm.
//!
//! When the body stops being readable (not an array, truncated, over
//! `publish.max_batch_bytes` or `publish.max_batch_messages`, stalled) the
//! request fails whole with a problem if no message was published yet;
//! otherwise the answer is the results so far plus one last entry saying why
//! the rest was not read.

mod split;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::body;
use super::problem::Problem;
use super::publish::PublishJson;
use super::AppState;
use crate::bus::{Confirmed, Publish, PublisherHandle};
use crate::error::{code, Error};
use split::{Framing, Item, Splitter};

/// The answer to one entry.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BatchOutcome)]
pub struct Outcome {
    /// The id it was published with ("" when it failed).
    message_id: String,
    /// The gRPC status code: 0 once confirmed.
    code: u32,
    /// Why not, when `code` is not 0.
    error: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    request_id: String,
    /// Written to the spool, not yet confirmed by the broker.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spooled: bool,
}

impl Outcome {
    fn of(request_id: String, result: Result<Confirmed, Error>) -> Self {
        match result {
            Ok(confirmed) => Self {
                message_id: confirmed.message_id,
                code: code::OK,
                error: String::new(),
                request_id,
                spooled: confirmed.spooled,
            },
            Err(e) => Self {
                message_id: String::new(),
                code: e.code(),
                error: e.to_string(),
                request_id,
                spooled: false,
            },
        }
    }
}

/// The answer to a batch: one outcome per entry, in order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BatchResults)]
pub struct Results {
    results: Vec<Outcome>,
}

/// Why the body stopped being read: a last entry once something was
/// published, else the whole request's answer.
struct Stop {
    error: Error,
    problem: Problem,
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Self {
            problem: Problem::from(error.clone()),
            error,
        }
    }
}

fn framing(headers: &HeaderMap) -> Result<Framing, Problem> {
    let (essence, content_type) = body::media_type(headers);
    if essence == "application/x-ndjson" {
        Ok(Framing::Lines)
    } else if body::is_json(&essence) {
        Ok(Framing::Array)
    } else {
        Err(body::unsupported(
            "application/json or application/x-ndjson",
            content_type,
        ))
    }
}

/// `POST /v1/publish/batch`.
#[utoipa::path(
    post, path = "/v1/publish/batch", operation_id = "publishBatch", tag = "publish",
    summary = "Publish many messages in order, each answered alone",
    description = "A JSON array of publish objects, or NDJSON (one per line). The messages \
        go on one channel in order; each entry fails alone (its `code` is the gRPC status \
        code, 0 once confirmed). A body that stops making sense before anything was \
        published fails whole.",
    request_body(content(
        (Vec<super::publish::PublishJson> = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "One result per entry read, in order", body = Results),
        (status = 400, response = super::openapi::BadRequest),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::TooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = [])),
)]
pub async fn publish(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Results>, Problem> {
    let framing = framing(&headers)?;
    let limit = state.bus.config().publish.max_batch_bytes;
    if let Some(size) = body::declared_length(&headers).filter(|&size| size > limit) {
        return Err(Error::TooLarge {
            what: "batch body",
            size,
            limit,
        }
        .into());
    }
    let publisher = state.bus.session(&caller)?;
    let mut batch = Batch {
        window: state.bus.config().publish.stream_window,
        state: &state,
        headers: &headers,
        publisher,
        pending: FuturesOrdered::new(),
        results: Vec::new(),
        entries: 0,
        published: false,
    };
    if let Err(stop) = batch.read(body, framing).await {
        if !batch.published {
            return Err(stop.problem);
        }
        batch
            .results
            .extend(batch.pending.by_ref().collect::<Vec<_>>().await);
        batch
            .results
            .push(Outcome::of(String::new(), Err(stop.error)));
    }
    Ok(Json(batch.finish().await))
}

/// One batch being read and published.
struct Batch<'a> {
    state: &'a AppState,
    headers: &'a HeaderMap,
    publisher: PublisherHandle,
    /// Outcomes not yet collected, in entry order (failures are ready ones).
    pending: FuturesOrdered<BoxFuture<'static, Outcome>>,
    results: Vec<Outcome>,
    /// Most outcomes pending at once (`publish.stream_window`).
    window: usize,
    entries: usize,
    /// Whether a message was handed to the publisher.
    published: bool,
}

impl Batch<'_> {
    /// Reads the body to its end, publishing each entry as it completes.
    async fn read(&mut self, mut body: Body, framing: Framing) -> Result<(), Stop> {
        let config = &self.state.bus.config().publish;
        let (max_bytes, max_entries) = (config.max_batch_bytes, config.max_batch_messages);
        let limits = &self.state.limits;
        let mut splitter = Splitter::new(framing, body::json_limit(config.max_body_bytes));
        let mut held = limits.hold(0)?;
        let mut items = Vec::new();
        let mut read = 0;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.state.shutdown.cancelled() => return Err(Error::ShuttingDown.into()),
                frame = tokio::time::timeout(limits.read_timeout(), body.frame()) => frame,
            };
            let frame = match frame {
                Err(_) => {
                    return Err(Stop {
                        error: Error::DeadlineExceeded(
                            "the request body stalled (http.read_timeout)".into(),
                        ),
                        problem: limits.stalled(),
                    })
                }
                Ok(Some(Err(e))) => {
                    return Err(Error::InvalidArgument(format!(
                        "could not read the request body: {e}"
                    ))
                    .into())
                }
                Ok(None) => None,
                Ok(Some(Ok(frame))) => Some(frame),
            };
            let end = frame.is_none();
            let (result, over) = match frame {
                None => (splitter.finish(&mut items), None),
                Some(frame) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    // Only the bytes within the limit are read.
                    let within = data.len().min(max_bytes - read);
                    // (The size of the body as far as it was seen.)
                    let over = (within < data.len()).then(|| read + data.len());
                    read += within;
                    held.merge(limits.hold(within)?);
                    let result = splitter.push(&data[..within], &mut items);
                    (result, over)
                }
            };
            for item in items.drain(..) {
                if self.entries == max_entries {
                    return Err(too_many(max_entries));
                }
                let size = match &item {
                    Item::Entry(bytes) => bytes.len(),
                    Item::TooLarge(_) => 0,
                };
                let permit = held
                    .split(size.min(held.num_permits()))
                    .expect("no more than held");
                self.entry(item, permit).await;
            }
            // Keep counting only what the splitter holds.
            let spare = held.num_permits().saturating_sub(splitter.buffered());
            drop(held.split(spare));
            if let Err(malformed) = result {
                return Err(Error::InvalidArgument(malformed.to_string()).into());
            }
            if let Some(size) = over {
                return Err(Error::TooLarge {
                    what: "batch body",
                    size,
                    limit: max_bytes,
                }
                .into());
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Parses and submits one entry, `permit` counting its bytes until its
    /// confirm, once fewer than `window` outcomes are pending.
    async fn entry(&mut self, item: Item, permit: OwnedSemaphorePermit) {
        if self.pending.len() >= self.window {
            if let Some(outcome) = self.pending.next().await {
                self.results.push(outcome);
            }
        }
        self.entries += 1;
        let (request_id, publish) = match item {
            Item::TooLarge(size) => (
                String::new(),
                Err(Error::TooLarge {
                    what: "batch entry",
                    size,
                    limit: body::json_limit(self.state.bus.config().publish.max_body_bytes),
                }),
            ),
            Item::Entry(bytes) => parse(&bytes, self.headers),
        };
        let submitted = match publish {
            Ok(publish) => self.state.bus.submit(&self.publisher, publish).await,
            Err(e) => Err(e),
        };
        let outcome: BoxFuture<'static, Outcome> = match submitted {
            Ok(confirm) => {
                self.published = true;
                Box::pin(async move {
                    let result = confirm.await.unwrap_or(Err(Error::ShuttingDown));
                    drop(permit);
                    Outcome::of(request_id, result)
                })
            }
            Err(e) => Box::pin(std::future::ready(Outcome::of(request_id, Err(e)))),
        };
        self.pending.push_back(outcome);
    }

    /// Waits for the outcomes still pending.
    async fn finish(mut self) -> Results {
        while let Some(outcome) = self.pending.next().await {
            self.results.push(outcome);
        }
        Results {
            results: self.results,
        }
    }
}

/// The stop past `publish.max_batch_messages` (413 when nothing was
/// published).
fn too_many(max: usize) -> Stop {
    let detail = format!(
        "a batch holds at most {max} messages (publish.max_batch_messages): this entry and the rest were not read"
    );
    Stop {
        problem: Problem::http(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail.clone())
            .with("code", code::RESOURCE_EXHAUSTED),
        error: Error::LimitReached(detail),
    }
}

/// One entry as a publish, with its `request_id` (when it can be read).
fn parse(bytes: &[u8], headers: &HeaderMap) -> (String, Result<Publish, Error>) {
    match serde_json::from_slice::<PublishJson>(bytes) {
        Ok(request) => request.into_publish(headers),
        Err(e) => {
            #[derive(Deserialize)]
            struct Id {
                #[serde(default)]
                request_id: String,
            }
            let request_id = serde_json::from_slice::<Id>(bytes)
                .map(|id| id.request_id)
                .unwrap_or_default();
            (
                request_id,
                Err(Error::InvalidArgument(format!("invalid batch entry: {e}"))),
            )
        }
    }
}
