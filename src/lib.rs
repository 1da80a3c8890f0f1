//! Warren: a sidecar that lets any program use a RabbitMQ (AMQP 0-9-1) bus
//! over gRPC or HTTP, with confirms, retries and the rest done once, well.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, layered defaults < file < environment.
//! - [`bus`]: the core, one folder per concern with each `Bus` method beside
//!   it: [`bus::publish`], [`bus::subscribe`], [`bus::rpc`], [`bus::retry`],
//!   [`bus::schedule`] (scheduled publish: the broker-held delay and its
//!   forwarder), [`bus::dead_letters`], [`bus::ordered`] (per-key FIFO
//!   groups), [`bus::push`] (`[[push]]`: queues POSTed to an app),
//!   [`bus::control`] (pausing, announced to every Warren); the
//!   exchange cache, the breaker, and the one drain gate every call passes.
//! - [`amqp`]: the AMQP plumbing: supervised connection pools, the channel
//!   handle and its ledger, the reopening slot, the timeout wrapper, queue
//!   arguments, topology, and the codec between Warren's
//!   [`message::Message`] and AMQP properties.
//! - [`auth`]: authentication and authorization, asked by the bus before
//!   anything reaches the broker; the transports only extract credentials.
//! - [`listen`]: accepting connections for both listeners: the cap, TLS and
//!   its reloads, client certificates.
//! - [`grpc`], [`http`]: thin transports; they translate requests into bus
//!   calls and [`error::Error`]s into status codes. `http` also serves the
//!   operators' web console (`/console/`, its files compiled in).
//! - [`error`]: the one error type (kind, origin, retryable, cause) and its
//!   one mapping to gRPC codes and HTTP statuses.
//! - [`metrics`]: the Prometheus registry.
//! - [`server`]: starts the whole thing and stops it in order (drain, linger,
//!   stop listeners, close).
//! - [`telemetry`]: logging set-up.

#![forbid(unsafe_code)]

pub mod amqp;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod message;
pub mod metrics;
pub mod server;
pub mod telemetry;

/// Code generated from `proto/warren/v1/bus.proto` and `admin.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("warren.v1");
}
