//! The HTTP transport: JSON and raw publishing, health, readiness, metrics.
//!
//! Like the gRPC layer it only translates: requests into bus calls, bus
//! errors into `application/problem+json` responses.

pub mod body;
mod dead_letters;
mod problem;
mod publish;
mod rpc;
mod subscribe;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::error::Error;

pub use problem::Problem;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The bus core.
    pub bus: Arc<Bus>,
    /// Cancelled at shutdown: long-lived responses end.
    pub shutdown: CancellationToken,
}

/// The routes of the HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/publish", post(publish::json))
        .route("/v1/publish/{exchange}/{routing_key}", post(publish::raw))
        .route("/v1/subscribe/{queue}", get(subscribe::subscribe))
        .route("/v1/ack", post(subscribe::ack))
        .route("/v1/nack", post(subscribe::nack))
        .route("/v1/call", post(rpc::call))
        .route("/v1/reply", post(rpc::reply))
        .route("/v1/dead-letters/{dlq}", get(dead_letters::list))
        .route("/v1/dead-letters/{dlq}/replay", post(dead_letters::replay))
        .route(
            "/v1/dead-letters/{dlq}/discard",
            post(dead_letters::discard),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Rejections of axum's own extractors (a path segment that is not
        // UTF-8, ...) become problems too.
        .layer(axum::middleware::map_response(
            problem::every_error_a_problem,
        ))
        // A span per request (method, path) around what the bus logs.
        // (5xx answers are logged at DEBUG: a 503 from /readyz during an
        // outage is expected, and the bus logs the outage itself.)
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.bus.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        Problem::from(Error::unavailable("not connected to the broker")).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.bus.metrics().render(),
    )
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}

async fn not_found() -> Problem {
    Problem::from(Error::NotFound("no such endpoint".into()))
}

/// Serves HTTP on `listener` until `shutdown` is cancelled and open requests
/// are done.
pub async fn serve(
    bus: Arc<Bus>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(AppState {
        bus,
        shutdown: shutdown.clone(),
    });
    // Small responses (confirms, SSE events) must not wait for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
