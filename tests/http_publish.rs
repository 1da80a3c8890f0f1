//! Publishing over HTTP: JSON and raw bodies, problem+json errors, limits.

mod common;

use std::time::Duration;

use common::{problem, unique, Broker, Warren};
use lapin::types::AMQPValue;
use reqwest::header::HeaderValue;
use serde_json::json;

#[tokio::test]
async fn json_publish_with_text_json_and_base64_bodies() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("http-json");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let bodies = [
        (
            json!({"routing_key": queue, "body": "plain text", "headers": {"n": 5, "f": 1.5, "s": "x", "b": false, "l": [1, {"k": "v"}]}, "message_id": "m-1", "priority": 3, "type": "t", "correlation_id": "c"}),
            "plain text".as_bytes().to_vec(),
            "",
        ),
        (
            json!({"routing_key": queue, "body": {"order": 17, "items": ["a"]}}),
            br#"{"items":["a"],"order":17}"#.to_vec(),
            "application/json",
        ),
        (
            json!({"routing_key": queue, "body_base64": "AP8BAg==", "content_type": "application/octet-stream", "transient": true}),
            vec![0, 255, 1, 2],
            "application/octet-stream",
        ),
    ];
    for (request, _, _) in &bodies {
        let response = http
            .post(warren.url("/v1/publish"))
            .json(request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert!(
            answer["message_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{answer}"
        );
    }
    let got = broker.take(&queue, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    for (delivery, (_, body, content_type)) in got.iter().zip(&bodies) {
        assert_eq!(&delivery.data, body);
        let ct = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        assert_eq!(ct, *content_type);
    }
    let h = got[0].properties.headers().as_ref().unwrap().inner();
    assert_eq!(h["n"], AMQPValue::LongLongInt(5));
    assert_eq!(h["f"], AMQPValue::Double(1.5));
    assert_eq!(h["b"], AMQPValue::Boolean(false));
    assert!(matches!(h["l"], AMQPValue::FieldArray(_)));
    assert_eq!(
        got[0].properties.message_id().as_ref().unwrap().as_str(),
        "m-1"
    );
    assert_eq!(*got[0].properties.priority(), Some(3));
    assert_eq!(*got[0].properties.delivery_mode(), Some(2));
    assert_eq!(*got[2].properties.delivery_mode(), Some(1));
    warren.stop().await;
}

#[tokio::test]
async fn raw_publish_keeps_bytes_and_content_type() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("http-raw");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("content-type", "image/png")
        .header("x-warren-message-id", "raw-1")
        .header("x-warren-priority", "2")
        .header("x-warren-header-tenant", "acme")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let got = broker.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].data, body);
    let p = &got[0].properties;
    assert_eq!(p.content_type().as_ref().unwrap().as_str(), "image/png");
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "raw-1");
    assert_eq!(*p.priority(), Some(2));
    assert_eq!(
        p.headers().as_ref().unwrap().inner()["tenant"],
        AMQPValue::LongString("acme".as_bytes().into())
    );
    // Through a named exchange, and refused when unroutable.
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.direct/{queue}")))
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 422, "{body}");
    warren.stop().await;
}

/// HTTP header values may carry bytes past ASCII (obs-text), UTF-8 text
/// among them. Warren takes `x-warren-header-*` values as visible ASCII only:
/// a raw publish with any other byte is refused with 400, naming the header,
/// and publishes nothing. The JSON endpoint's `headers` carry such text.
#[tokio::test]
async fn raw_publish_refuses_non_ascii_header_values() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("http-raw-utf8");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let values: [&[u8]; 3] = ["Zürich".as_bytes(), "東京".as_bytes(), b"M\xfcnchen"];
    for value in values {
        let response = http
            .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
            .header(
                "x-warren-header-city",
                HeaderValue::from_bytes(value).unwrap(),
            )
            .body("x")
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 400, "{value:?}: {body}");
        assert_eq!(body["type"], "urn:warren:problem:invalid-argument");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("x-warren-header-city"),
            "{body}"
        );
    }
    assert!(broker.is_empty(&queue).await, "nothing was published");
    let response = http
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": "x", "headers": {"city": "Zürich"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = broker.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].properties.headers().as_ref().unwrap().inner()["city"],
        AMQPValue::LongString("Zürich".as_bytes().into())
    );
    warren.stop().await;
}

#[tokio::test]
async fn errors_are_problem_json_with_contract_statuses() {
    let config = common::config_with(&[("WARREN__PUBLISH__MAX_BODY_BYTES", "1000")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("http-bad");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(warren.url("/v1/publish"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid JSON"),
        (
            json!({"routing_key": queue, "body": "a", "body_base64": "YQ=="}).to_string(),
            400,
            "not both",
        ),
        (
            json!({"routing_key": queue, "body_base64": "%%%"}).to_string(),
            400,
            "base64",
        ),
        (
            json!({"routing_key": "q".repeat(256), "body": "a"}).to_string(),
            400,
            "routing_key",
        ),
        (
            json!({"exchange": "e".repeat(256), "routing_key": queue, "body": "a"}).to_string(),
            400,
            "exchange",
        ),
        (
            json!({"routing_key": queue, "body": "a", "bodyy": 1}).to_string(),
            400,
            "unknown field",
        ),
        (
            json!({"routing_key": queue, "body": "a", "priority": "high"}).to_string(),
            400,
            "invalid JSON",
        ),
        (
            json!({"routing_key": queue, "body": "x".repeat(1001)}).to_string(),
            413,
            "exceeds",
        ),
        (
            json!({"exchange": unique("missing"), "routing_key": queue, "body": "a"}).to_string(),
            404,
            "does not exist",
        ),
        (
            json!({"routing_key": unique("nowhere"), "body": "a"}).to_string(),
            422,
            "unroutable",
        ),
    ];
    for (body, want, detail) in cases {
        let (status, problem) = problem(post(body.clone()).await.unwrap()).await;
        assert_eq!(status, want, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{body}: {problem}"
        );
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:warren:problem:"));
    }

    // Too large by Content-Length: refused before reading.
    let big = vec![b'x'; 5000];
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 413);
    // Too large without a length (chunked): refused while reading.
    let stream = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 500])));
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 413);
    // Bad raw headers.
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("x-warren-priority", "urgent")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 400);
    // Wrong method.
    let response = http.get(warren.url("/v1/publish")).send().await.unwrap();
    assert_eq!(problem(response).await.0, 405);
    // Unknown endpoint.
    let response = http.get(warren.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(problem(response).await.0, 404);

    // Nothing was published by any of these; a good publish still works.
    assert!(broker.is_empty(&queue).await);
    let response = post(json!({"routing_key": queue, "body": "ok"}).to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = broker.take(&queue, 5, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"ok");
    warren.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let warren = Warren::start().await;
    let health = reqwest::get(warren.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(warren.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(warren.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    for name in [
        "warren_publish_total",
        "warren_publish_duration_seconds",
        "warren_deliveries_total",
        "warren_acks_total",
        "warren_nacks_total",
        "warren_dead_lettered_total",
        "warren_rpc_duration_seconds",
        "warren_retries_total",
        "warren_circuit_breaker_state",
        // Two publishing, two consuming, one probe connection.
        "warren_amqp_connections 5",
        "warren_amqp_channels",
        "warren_broker_up 1",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    warren.stop().await;
}

#[tokio::test]
async fn without_a_broker_readiness_fails_and_publishes_are_unavailable_in_bounded_time() {
    // Nothing listens on port 1: the broker is unreachable.
    let config = common::config_with(&[
        (
            "WARREN__AMQP__URL",
            "amqp://guest:secret-pw@127.0.0.1:1/%2f",
        ),
        ("WARREN__AMQP__OPERATION_TIMEOUT", "500ms"),
        ("WARREN__AMQP__CONNECT_TIMEOUT", "500ms"),
    ]);
    let server = warren::server::Server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = problem(reqwest::get(format!("{base}/readyz")).await.unwrap()).await;
    assert_eq!(status, 503);
    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/publish"))
        .json(&json!({"exchange": "some-exchange", "routing_key": "k", "body": "x"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = problem(response).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains("secret-pw"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the operation timeout"
    );
    server.shutdown().await;
}
