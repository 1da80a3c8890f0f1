//! Operations: gRPC health and reflection, metrics that count exactly, trace
//! context across the bus, structured logs without credentials.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    ack, call, metric, nack, next, on, publish, request, subscribe, subscribe_with, unique, Broker,
    Warren,
};
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;
use warren::proto::{AckRequest, Message, ReplyRequest};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn grpc_health_and_reflection() {
    let warren = Warren::start().await;
    let channel = tonic::transport::Endpoint::from_shared(warren.grpc_addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "warren.v1.Bus"] {
        let mut status = 0;
        for _ in 0..40 {
            let answer = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            status = answer.status;
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["warren.v1.Bus", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    // The descriptors describe the Bus service's messages too (what grpcurl needs).
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("warren.v1.Bus".into())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
    warren.stop().await;
}

#[tokio::test]
async fn metrics_count_deliveries_acks_nacks_and_calls_exactly() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("metrics-sub");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let before = warren.metrics().await;
    for i in 0..6 {
        publish(&mut client, &queue, &i.to_string()).await;
    }
    let mut stream = subscribe(&mut client, &queue).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next(&mut stream).await);
    }
    client
        .ack(AckRequest {
            delivery_ids: got[..4].iter().map(|d| d.delivery_id.clone()).collect(),
        })
        .await
        .unwrap();
    nack(&mut client, &got[4], false, 0).await;
    nack(&mut client, &got[5], false, 0).await;
    let _ = client.call(call(&unique("nobody"), "", 1000)).await;
    let after = warren.metrics().await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("warren_publish_total{outcome=\"confirmed\"}"), 6.0);
    assert_eq!(delta("warren_deliveries_total"), 6.0);
    assert_eq!(delta("warren_acks_total"), 4.0);
    assert_eq!(delta("warren_nacks_total{requeue=\"false\"}"), 2.0);
    assert_eq!(delta("warren_nacks_total{requeue=\"true\"}"), 0.0);
    assert_eq!(delta("warren_dead_lettered_total"), 2.0);
    assert_eq!(delta("warren_rpc_duration_seconds_count"), 1.0);
    assert!(metric(&after, "warren_amqp_channels") >= 1.0);
    assert_eq!(metric(&after, "warren_broker_up"), 1.0);
    assert_eq!(metric(&after, "warren_circuit_breaker_state"), 0.0);
    // Buckets reach from 100 µs to 30 s.
    assert!(after.contains("warren_publish_duration_seconds_bucket{le=\"0.0001\"}"));
    assert!(after.contains("warren_rpc_duration_seconds_bucket{le=\"30\"}"));
    warren.stop().await;
}

#[tokio::test]
async fn trace_context_crosses_the_bus() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("trace");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    // gRPC publish: metadata into the AMQP headers.
    let mut traced = tonic::Request::new(request("", &queue, b""));
    traced
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    traced
        .metadata_mut()
        .insert("tracestate", "vendor=abc".parse().unwrap());
    client.publish(traced).await.unwrap();
    // HTTP publish: headers into the AMQP headers.
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"routing_key": queue, "body": "http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Out on deliveries.
    let mut stream = subscribe_with(&mut client, on(&queue, 0)).await;
    for _ in 0..2 {
        let d = next(&mut stream).await;
        let h = &d.message.as_ref().unwrap().headers;
        assert_eq!(
            h["traceparent"].kind,
            Some(Kind::StringValue(TRACEPARENT.into()))
        );
        ack(&mut client, &d).await;
    }
    // A call carries it to the responder; the reply carries the responder's.
    let responder_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let server = tokio::spawn({
        let mut client = client.clone();
        async move {
            let d = next(&mut stream).await;
            let h = d.message.as_ref().unwrap().headers.clone();
            let mut reply = tonic::Request::new(ReplyRequest {
                delivery_id: d.delivery_id,
                message: Some(Message::default()),
            });
            reply
                .metadata_mut()
                .insert("traceparent", responder_trace.parse().unwrap());
            client.reply(reply).await.unwrap();
            h
        }
    });
    let mut traced = tonic::Request::new(call(&queue, "", 5000));
    traced
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let reply = client
        .call(traced)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(
        reply.headers["traceparent"].kind,
        Some(Kind::StringValue(responder_trace.into()))
    );
    let seen = server.await.unwrap();
    assert_eq!(
        seen["traceparent"].kind,
        Some(Kind::StringValue(TRACEPARENT.into()))
    );
    // A malformed traceparent is refused.
    let mut bad = tonic::Request::new(request("", &queue, b""));
    bad.metadata_mut()
        .insert("traceparent", "00-nope".parse().unwrap());
    assert_eq!(
        client.publish(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .header("traceparent", "garbage")
        .json(&json!({"routing_key": queue, "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 400);
    warren.stop().await;
}

#[test]
fn json_logs_never_show_the_broker_password() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .env(
            "WARREN__AMQP__URL",
            "amqp://warren:hunter2-secret@127.0.0.1:1/%2f",
        )
        .env("WARREN__AMQP__CONNECT_TIMEOUT", "200ms")
        .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
        .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
        .env("WARREN__LOG__FORMAT", "json")
        .env("WARREN__LOG__LEVEL", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let lines = reader.join().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("could not connect to the broker")),
        "{lines:?}"
    );
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["message"].is_string(),
            "{line}"
        );
        assert!(!line.contains("hunter2"), "password in the log: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("warren:***@127.0.0.1")),
        "masked URL is logged"
    );
}
