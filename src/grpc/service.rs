//! `warren.v1.Bus` over the bus core.

use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, status};
use crate::auth::{Caller, Credential};
use crate::bus::{Bus, Confirmed};
use crate::error::{code, Error};
use crate::proto;

/// The metadata entry naming the publisher of a unary publish.
pub const PUBLISHER_METADATA: &str = "x-warren-publisher";

/// W3C trace context from a request's metadata, carried into messages.
#[derive(Clone, Default)]
struct Trace {
    parent: Option<String>,
    state: Option<String>,
}

impl Trace {
    fn of(metadata: &tonic::metadata::MetadataMap) -> Self {
        let get = |k: &str| {
            metadata
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            parent: get("traceparent"),
            state: get("tracestate"),
        }
    }

    fn apply(&self, message: &mut crate::message::Message) -> Result<(), Error> {
        message.set_trace(self.parent.as_deref(), self.state.as_deref())
    }
}

/// The `Bus` service.
pub struct Service {
    bus: Arc<Bus>,
    shutdown: CancellationToken,
}

impl Service {
    /// A service over `bus`; streams end when `shutdown` is cancelled.
    pub fn new(bus: Arc<Bus>, shutdown: CancellationToken) -> Self {
        Self { bus, shutdown }
    }

    /// The caller of `request`, as the bus authenticates its credential
    /// (`authorization` metadata, else the TLS client certificate).
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        caller(&self.bus, request).await
    }
}

/// The caller of `request`, as the bus authenticates its credential
/// (`authorization` metadata, else the TLS client certificate).
pub(super) async fn caller<T>(bus: &Bus, request: &Request<T>) -> Result<Caller, Status> {
    let credential = Credential::of(
        request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes()),
        request
            .extensions()
            .get::<crate::listen::ConnInfo>()
            .and_then(|info| info.common_name.as_ref()),
    );
    bus.authenticate(&credential).await.map_err(|e| status(&e))
}

fn response(request_id: String, result: Result<Confirmed, Error>) -> proto::PublishResponse {
    match result {
        Ok(confirmed) => proto::PublishResponse {
            request_id,
            code: code::OK,
            error: String::new(),
            message_id: confirmed.message_id,
            spooled: confirmed.spooled,
        },
        Err(e) => proto::PublishResponse {
            request_id,
            code: e.code(),
            error: e.to_string(),
            message_id: String::new(),
            spooled: false,
        },
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::bus_server::Bus for Service {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let caller = self.caller(&request).await?;
        let name = request
            .metadata()
            .get(PUBLISHER_METADATA)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::invalid_argument("x-warren-publisher must be ASCII"))
            })
            .transpose()?
            .map(str::to_owned);
        let trace = Trace::of(request.metadata());
        let request = request.into_inner();
        let request_id = request.request_id.clone();
        let result = async {
            let mut publish = convert::publish(request)?;
            trace.apply(&mut publish.message)?;
            self.bus
                .publish_unary(&caller, name.as_deref(), publish)
                .await
        }
        .await;
        match result {
            Ok(confirmed) => Ok(Response::new(response(request_id, Ok(confirmed)))),
            Err(e) => Err(status(&e)),
        }
    }

    type PublishStreamStream = ReceiverStream<Result<proto::PublishResponse, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let caller = self.caller(&request).await?;
        let publisher = self.bus.session(&caller).map_err(|e| status(&e))?;
        let window = self.bus.config().publish.stream_window;
        let (tx, rx) = mpsc::channel(window);
        let trace = Trace::of(request.metadata());
        let mut input = request.into_inner();
        let bus = self.bus.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut reading = true;
            let mut failure = None;
            while reading || !pending.is_empty() {
                let outcome = tokio::select! {
                    biased;
                    Some(outcome) = pending.next(), if !pending.is_empty() => outcome,
                    _ = shutdown.cancelled(), if reading => { reading = false; continue }
                    next = input.message(), if reading && pending.len() < window => match next {
                        Ok(Some(request)) => {
                            let request_id = request.request_id.clone();
                            let submitted = match convert::publish(request) {
                                Ok(mut publish) => match trace.apply(&mut publish.message) {
                                    Ok(()) => bus.submit(&publisher, publish).await,
                                    Err(e) => Err(e),
                                },
                                Err(e) => Err(e),
                            };
                            match submitted {
                                Ok(confirm) => {
                                    pending.push(async move {
                                        response(request_id, confirm.await.unwrap_or(Err(Error::ShuttingDown)))
                                    });
                                    continue;
                                }
                                Err(e) => response(request_id, Err(e)),
                            }
                        }
                        // The client finished sending.
                        Ok(None) => { reading = false; continue }
                        // A request that could not be read (over the size
                        // limit, malformed) ends the stream with its status,
                        // once the messages before it are answered.
                        Err(status) => {
                            reading = false;
                            failure = Some(super::size_status(status));
                            continue;
                        }
                    },
                };
                if tx.send(Ok(outcome)).await.is_err() {
                    // The client stopped listening; confirms still settle in
                    // the publisher, their outcome has nowhere to go.
                    break;
                }
            }
            if let Some(status) = failure {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = BoxStream<proto::Delivery>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.caller(&request).await?;
        let request = convert::subscribe(request.into_inner());
        let subscription = self
            .bus
            .subscribe(&caller, request)
            .await
            .map_err(|e| status(&e))?;
        // Ends with the subscription, when the client goes away (the stream is
        // dropped), or at shutdown.
        let stream = subscription
            .map(|item| item.map(convert::delivery).map_err(|e| status(&e)))
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamingSubscribeStream = BoxStream<proto::Delivery>;

    async fn streaming_subscribe(
        &self,
        request: Request<Streaming<proto::StreamingSubscribeRequest>>,
    ) -> Result<Response<Self::StreamingSubscribeStream>, Status> {
        let caller = self.caller(&request).await?;
        let subscription =
            super::streaming::subscribe(self.bus.clone(), caller, request.into_inner()).await?;
        let stream = subscription
            .map(|item| item.map(convert::delivery).map_err(|e| status(&e)))
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let caller = self.caller(&request).await?;
        let ids = request.into_inner().delivery_ids;
        let acked = self.bus.ack(&caller, &ids).await.map_err(|e| status(&e))?;
        Ok(Response::new(proto::AckResponse { acked }))
    }

    async fn nack(
        &self,
        request: Request<proto::NackRequest>,
    ) -> Result<Response<proto::NackResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let nacked = self
            .bus
            .nack(
                &caller,
                &request.delivery_ids,
                request.requeue,
                request.delay_ms,
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(proto::NackResponse { nacked }))
    }

    async fn call(
        &self,
        request: Request<proto::CallRequest>,
    ) -> Result<Response<proto::CallResponse>, Status> {
        let caller = self.caller(&request).await?;
        let deadline = super::deadline(request.metadata());
        let trace = Trace::of(request.metadata());
        let request = request.into_inner();
        let timeout_ms = request.timeout_ms;
        let mut message =
            convert::message(request.message.unwrap_or_default()).map_err(|e| status(&e))?;
        trace.apply(&mut message).map_err(|e| status(&e))?;
        let reply = self
            .bus
            .call(
                &caller,
                request.exchange,
                request.routing_key,
                message,
                timeout_ms,
                deadline,
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(proto::CallResponse {
            message: Some(convert::to_proto(reply)),
        }))
    }

    async fn reply(
        &self,
        request: Request<proto::ReplyRequest>,
    ) -> Result<Response<proto::ReplyResponse>, Status> {
        let caller = self.caller(&request).await?;
        let trace = Trace::of(request.metadata());
        let request = request.into_inner();
        let mut message =
            convert::message(request.message.unwrap_or_default()).map_err(|e| status(&e))?;
        trace.apply(&mut message).map_err(|e| status(&e))?;
        self.bus
            .reply(&caller, &request.delivery_id, message)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(proto::ReplyResponse {}))
    }
}
