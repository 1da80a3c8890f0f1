//! `warren-floor`: the transport alone, as a peer for the load test.
//!
//! It speaks Warren's wire interface (gRPC `Publish` and `PublishStream`,
//! HTTP `POST /v1/publish/{exchange}/{routing_key}`, `GET /readyz`) on the
//! ports Warren would take (`WARREN__GRPC__LISTEN`, `WARREN__HTTP__LISTEN`),
//! and answers every publish at once with success, without a broker. Run the
//! load test against it (`--warren-bin target/release/warren-floor`) and its
//! rows show what the gRPC or HTTP hop alone costs on this machine: the
//! server CPU per message, the round-trip latency, and the throughput with
//! no AMQP work at all. That bounds what any gateway built on tonic and hyper
//! can reach here. It is a measuring instrument, not a Warren: nothing is
//! published.

use std::net::SocketAddr;
use std::pin::Pin;

use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

mod proto {
    tonic::include_proto!("warren.v1");
}

use proto::bus_server::{Bus, BusServer};
use proto::{PublishRequest, PublishResponse};

#[derive(Default)]
struct Floor;

type Responses = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send + 'static>>;

fn answer(request: &PublishRequest) -> PublishResponse {
    PublishResponse {
        request_id: request.request_id.clone(),
        code: 0,
        error: String::new(),
        message_id: uuid::Uuid::new_v4().to_string(),
        spooled: false,
    }
}

#[tonic::async_trait]
impl Bus for Floor {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        Ok(Response::new(answer(request.get_ref())))
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let input = request.into_inner();
        let output = input.map(|request| request.map(|r| answer(&r)));
        Ok(Response::new(Box::pin(output)))
    }
}

fn listen(key: &str, default: &str) -> anyhow::Result<SocketAddr> {
    let value = std::env::var(key).unwrap_or_else(|_| default.to_owned());
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{key}={value}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let grpc = listen("WARREN__GRPC__LISTEN", "127.0.0.1:50051")?;
    let http = listen("WARREN__HTTP__LISTEN", "127.0.0.1:8080")?;
    let http = TcpListener::bind(http).await?;
    let grpc = TcpListener::bind(grpc).await?;
    let app = axum::Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route(
            "/v1/publish/{exchange}/{routing_key}",
            post(|_body: axum::body::Bytes| async {
                (
                    [("content-type", "application/json")],
                    format!(r#"{{"message_id":"{}"}}"#, uuid::Uuid::new_v4()),
                )
            }),
        );
    // Warren's HTTP listener sets TCP_NODELAY too.
    let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = async move { axum::serve(http, app).await };
    let grpc = tonic::transport::Server::builder()
        .add_service(BusServer::new(Floor))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
        );
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = http => r?,
        r = grpc => r?,
        r = stop => r?,
    }
    Ok(())
}
