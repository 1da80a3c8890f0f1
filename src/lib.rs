//! Warren: a sidecar that lets any program use a RabbitMQ (AMQP 0-9-1) bus
//! over gRPC or HTTP, with confirms, retries and the rest done once, well.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, layered defaults < file < environment.
//! - [`bus`]: the core. Publishing (publishers, confirms, channel recovery)
//!   and everything else the transports offer, as plain async calls.
//! - [`amqp`]: the AMQP side: supervised connection pools, topology, the
//!   codec between Warren's [`message::Message`] and AMQP properties.
//! - [`grpc`], [`http`]: thin transports; they translate requests into bus
//!   calls and [`error::Error`]s into status codes.
//! - [`error`]: the bus's failures and their one mapping to gRPC and HTTP.
//! - [`metrics`]: the Prometheus registry.
//! - [`server`]: starts the whole thing and stops it gracefully.
//! - [`telemetry`]: logging set-up.

#![forbid(unsafe_code)]

pub mod amqp;
pub mod bus;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod message;
pub mod metrics;
pub mod server;
pub mod telemetry;

/// Code generated from `proto/warren/v1/bus.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("warren.v1");
}
