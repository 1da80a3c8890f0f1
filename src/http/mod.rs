//! The HTTP transport: JSON, raw and batch publishing, health, readiness,
//! metrics, and the OpenAPI document of it all (`openapi.rs`).
//!
//! Like the gRPC layer it only translates: requests into bus calls, bus
//! errors into `application/problem+json` responses.

pub mod auth;
mod batch;
pub mod body;
mod cloudevents;
mod console;
mod dead_letters;
mod host;
pub mod openapi;
mod ordered;
mod problem;
mod publish;
mod queues;
mod rpc;
mod spool;
mod subscribe;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
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
    /// The budget and pace of request bodies.
    pub limits: Arc<body::Limits>,
}

/// The routes of the HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/publish", post(publish::json))
        .route("/v1/publish/batch", post(batch::publish))
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
        .route("/v1/ordered/{group}/blocked", get(ordered::blocked))
        .route(
            "/v1/ordered/{group}/blocked/{key}/retry",
            post(ordered::retry),
        )
        .route("/v1/ordered/{group}/blocked/{key}/skip", post(ordered::skip))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{queue}", get(queues::show))
        .route("/v1/queues/{queue}/pause", post(queues::pause))
        .route("/v1/queues/{queue}/resume", post(queues::resume))
        .route("/v1/spool", get(spool::status))
        .route("/v1/spool/dead", get(spool::dead))
        .route("/v1/spool/dead/replay", post(spool::replay))
        .route("/v1/spool/dead/discard", post(spool::discard))
        .route("/console", get(console::redirect))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::file))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            host::check,
        ))
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
            // (The path only: a query may hold an access token.)
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
}

/// `GET /healthz`.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "operations",
    summary = "The process is alive",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String, example = "ok\n")),
)]
async fn healthz() -> impl IntoResponse {
    "ok\n"
}

/// `GET /readyz`.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "operations",
    summary = "Connected to the broker",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String, example = "ready\n"),
        (status = 503, response = openapi::Unavailable),
    ),
)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.bus.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        // Truthful: taking publishes into the spool is not being connected.
        let reason = if state.bus.config().spool.enabled {
            "not connected to the broker (publishes that allow it are being spooled)"
        } else {
            "not connected to the broker"
        };
        Problem::from(Error::unavailable(reason)).into_response()
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations",
    summary = "Prometheus metrics (text format)",
    description = "Needs a credential only when auth is on and `auth.metrics_public` is false.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, response = openapi::Unauthorized),
    ),
)]
async fn metrics(State(state): State<AppState>, parts: axum::http::request::Parts) -> Response {
    if !state.bus.auth().metrics_public() {
        let credential = auth::credential(&parts, false);
        if let Err(e) = state.bus.authenticate(&credential).await {
            return Problem::from(e).into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.bus.metrics().render(),
    )
        .into_response()
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}

async fn not_found() -> Problem {
    Problem::from(Error::NotFound("no such endpoint".into()))
}

/// Serves HTTP on `listener` (through `tls` when set) until `shutdown` is
/// cancelled and open requests are done.
pub async fn serve(
    bus: Arc<Bus>,
    listener: TcpListener,
    tls: Option<Arc<crate::listen::Tls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let config = bus.config().http.clone();
    let app = router(AppState {
        limits: Arc::new(body::Limits::new(&config)),
        bus,
        shutdown: shutdown.clone(),
    });
    let mut conns = crate::listen::accept(
        "http",
        listener,
        config.max_connections,
        tls,
        config.read_timeout,
        shutdown.clone(),
    );
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that stalls sending its headers (or keeps a connection idle)
    // is disconnected after http.read_timeout.
    // Header blocks up to 512 KiB and 1,024 fields reach Warren's own checks
    // (which answer with a problem body: 413 when they would not fit an
    // AMQP frame); only past that does hyper refuse them itself (a bare 431).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.read_timeout)
        .max_headers(1024)
        .max_buf_size(512 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = conns.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let common_name = conn.info().common_name.clone();
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if let Some(cn) = &common_name {
                    request.extensions_mut().insert(cn.clone());
                }
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}
