//! The gRPC transport: `warren.v1.Bus`, `warren.v1.Admin`, health and
//! reflection on one port.
//!
//! It translates requests into calls on [`crate::bus::Bus`] and bus errors
//! into status codes; nothing more.

pub mod admin;
pub mod codec;
mod convert;
mod service;
mod streaming;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::error::Error;
use crate::proto::admin_server::AdminServer;
use crate::proto::bus_server::BusServer;

pub use service::Service;

/// The encoded descriptors of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/warren_descriptor.bin"));

/// The gRPC status for a bus error.
pub fn status(error: &Error) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(error.code() as i32), error.to_string())
}

/// The caller's deadline from the `grpc-timeout` header, if any, less a
/// little (a tenth, at most 50 ms): tonic's own deadline layer answers CANCELLED when the full time is
/// up, and the caller should see DEADLINE_EXCEEDED from Warren first.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let full = header_timeout(metadata)?;
    Some(full.saturating_sub((full / 10).min(Duration::from_millis(50))))
}

fn header_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Serves gRPC on `listener` until `shutdown` is cancelled and in-flight
/// calls are done.
pub async fn serve(
    bus: Arc<Bus>,
    listener: TcpListener,
    tls: Option<Arc<crate::listen::Tls>>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // (Warren's own accept loop: the connection cap and TLS reloads.)
    let handshake_timeout = bus.config().http.read_timeout;
    let conns = crate::listen::accept(
        "grpc",
        listener,
        bus.config().grpc.max_connections,
        tls,
        handshake_timeout,
        shutdown.clone(),
    );
    let incoming = tokio_stream::wrappers::ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(bus.clone(), health, shutdown.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptors compiled by build.rs are valid");
    // Room for the largest body plus its properties; bigger requests are
    // refused by the bus with RESOURCE_EXHAUSTED when within this margin.
    let max_message = bus.config().publish.max_body_bytes + 1024 * 1024;
    let admin = AdminServer::new(admin::Service::new(bus.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let service = BusServer::new(Service::new(bus, shutdown.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A span per call, named by its method, around what the bus logs.
        .trace_fn(|request| tracing::debug_span!("grpc", method = %request.uri().path()))
        .layer(tower::util::MapResponseLayer::new(
            too_large_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// A stream's request over tonic's decoding limit as RESOURCE_EXHAUSTED.
pub fn size_status(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        tonic::Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

/// tonic refuses a request over its decoding limit with OUT_OF_RANGE; the
/// contract says RESOURCE_EXHAUSTED for anything over a size limit.
fn too_large_is_resource_exhausted<B>(
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    response
}

/// Keeps `grpc.health.v1` in step with the broker connection: SERVING for
/// the whole server (""), `warren.v1.Bus` and `warren.v1.Admin` only while
/// ready.
async fn report_health(
    bus: Arc<Bus>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                health.set_not_serving::<BusServer<Service>>().await;
                health.set_not_serving::<AdminServer<admin::Service>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
            _ = tick.tick() => {}
        }
        let ready = bus.is_ready();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status("warren.v1.Bus", status).await;
            health.set_service_status("warren.v1.Admin", status).await;
            last = Some(ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline(&m), None);
        m.insert("grpc-timeout", "1S".parse().unwrap());
        assert_eq!(
            deadline(&m),
            Some(Duration::from_millis(950)),
            "answers before tonic cancels"
        );
        for (v, d) in [
            ("250m", Duration::from_millis(250)),
            ("3S", Duration::from_secs(3)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(header_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&m), None);
    }
}
