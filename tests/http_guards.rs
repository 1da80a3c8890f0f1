//! What one HTTP client cannot do to the others: post a form or text as
//! JSON (415: a web page cannot publish), reach Warren through a foreign
//! host name (421: DNS rebinding), stall its headers or body (408 or
//! disconnected after `http.read_timeout`), hold more than
//! `http.max_connections` connections or `http.max_buffered_bytes` of
//! bodies. Each case checks at the broker that nothing was published and
//! that good traffic beside it still goes through.

mod common;

use std::time::{Duration, Instant};

use common::{problem, unique, Broker, Warren};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn good_publish(warren: &Warren, queue: &str, body: &str) {
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": body}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

async fn bodies(queue: &str) -> Vec<String> {
    Broker::connect().await.bodies(queue, 100).await
}

/// Reads until the peer closes (or `limit` passes): what it sent.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, tcp.read_to_end(&mut out)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn json_endpoints_take_json_only() {
    let warren = Warren::start().await;
    let queue = unique("json-only");
    Broker::connect().await.queue(&queue).await;
    let body = json!({"routing_key": queue, "body": "x"}).to_string();
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/v1/publish", Some("text/plain")),
        ("/v1/publish", Some("application/x-www-form-urlencoded")),
        ("/v1/publish", Some("multipart/form-data; boundary=x")),
        ("/v1/publish", None),
        ("/v1/call", Some("text/plain")),
        ("/v1/ack", Some("text/plain")),
        ("/v1/nack", Some("application/x-www-form-urlencoded")),
        ("/v1/reply", Some("text/plain")),
    ] {
        let mut request = http.post(warren.url(path)).body(body.clone());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let (status, detail) = problem(request.send().await.unwrap()).await;
        assert_eq!(status, 415, "{path} {content_type:?}: {detail}");
    }
    // JSON and +json types, with parameters, are taken.
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        let response = http
            .post(warren.url("/v1/publish"))
            .header("content-type", ct)
            .body(json!({"routing_key": queue, "body": ct}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{ct}");
    }
    let got = bodies(&queue).await;
    assert_eq!(got.len(), 4, "only the JSON ones: {got:?}");
    warren.stop().await;
}

#[tokio::test]
async fn foreign_host_names_are_misdirected() {
    let warren = Warren::start().await;
    let queue = unique("hosts");
    Broker::connect().await.queue(&queue).await;
    let http = reqwest::Client::new();
    let response = http
        .post(warren.url("/v1/publish"))
        .header("host", "evil.test")
        .json(&json!({"routing_key": queue, "body": "rebound"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 421, "{body}");
    for host in ["localhost", "localhost:5680", "127.0.0.1"] {
        let response = http
            .post(warren.url("/v1/publish"))
            .header("host", host)
            .json(&json!({"routing_key": queue, "body": host}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    // Probes and scrapers use the pod's address.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http
            .get(warren.url(path))
            .header("host", "10.1.2.3:5680")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(bodies(&queue).await.len(), 3);
    warren.stop().await;
    // "*" turns the check off.
    let config = common::config_with(&[("WARREN__HTTP__ALLOWED_HOSTS", "*")]);
    let warren = Warren::start_with(config).await;
    let response = http
        .post(warren.url("/v1/publish"))
        .header("host", "anything.test")
        .json(&json!({"routing_key": queue, "body": "any"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    warren.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_is_cut_off_and_harms_nobody() {
    let config = common::config_with(&[("WARREN__HTTP__READ_TIMEOUT", "700ms")]);
    let warren = Warren::start_with(config).await;
    let queue = unique("stall");
    Broker::connect().await.queue(&queue).await;
    let addr = warren.server.http_addr;
    // Headers that never end: the connection is closed.
    let mut headers = TcpStream::connect(addr).await.unwrap();
    headers
        .write_all(b"POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: applic")
        .await
        .unwrap();
    // A body that stops half-way: 408, and the connection is closed.
    let mut body = TcpStream::connect(addr).await.unwrap();
    let json = json!({"routing_key": queue, "body": "never finished"}).to_string();
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    body.write_all(head.as_bytes()).await.unwrap();
    body.write_all(&json.as_bytes()[..10]).await.unwrap();
    let started = Instant::now();
    // Meanwhile others are served.
    good_publish(&warren, &queue, "meanwhile").await;
    let answer = read_to_close(&mut body, Duration::from_secs(10))
        .await
        .expect("the stalled body's connection is closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        read_to_close(&mut headers, Duration::from_secs(10))
            .await
            .is_some(),
        "the stalled headers' connection is closed"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // A connection that says nothing is closed too, and so is one left
    // idle after a request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut idle, Duration::from_secs(10))
        .await
        .is_some());
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut kept, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    good_publish(&warren, &queue, "after").await;
    assert_eq!(bodies(&queue).await, ["meanwhile", "after"]);
    warren.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let config = common::config_with(&[
        ("WARREN__HTTP__MAX_CONNECTIONS", "4"),
        ("WARREN__GRPC__MAX_CONNECTIONS", "2"),
    ]);
    let warren = Warren::start_with(config).await;
    let queue = unique("cap");
    Broker::connect().await.queue(&queue).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(warren.server.http_addr).await.unwrap());
    }
    // Give the accept loop time to take all four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(warren.server.http_addr).await.unwrap();
    let closed = read_to_close(&mut extra, Duration::from_secs(3)).await;
    assert_eq!(closed.as_deref(), Some(""), "closed without an answer");
    // One held connection goes: a new client is served again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let response = reqwest::Client::new()
            .post(warren.url("/v1/publish"))
            .json(&json!({"routing_key": queue, "body": "served"}))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served);
    // gRPC: two connections; a third client's call fails, the first two work.
    let mut a = warren.grpc().await;
    let mut b = warren.grpc().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = warren::proto::bus_client::BusClient::connect(warren.grpc_addr.clone()).await?;
        c.publish(common::request("", &queue, b"third"))
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    assert!(
        !matches!(third, Ok(Ok(()))),
        "the third gRPC client is refused"
    );
    a.publish(common::request("", &queue, b"a")).await.unwrap();
    b.publish(common::request("", &queue, b"b")).await.unwrap();
    let mut got = bodies(&queue).await;
    got.sort();
    assert_eq!(got, ["a", "b", "served"]);
    drop(held);
    warren.stop().await;
}

#[tokio::test]
async fn bodies_past_the_buffer_budget_get_503() {
    // 64 KiB messages: a JSON request may be 192 KiB, the budget is 256 KiB.
    let config = common::config_with(&[
        ("WARREN__PUBLISH__MAX_BODY_BYTES", "65536"),
        ("WARREN__HTTP__MAX_BUFFERED_BYTES", "262144"),
        ("WARREN__HTTP__READ_TIMEOUT", "3s"),
    ]);
    let warren = Warren::start_with(config).await;
    let queue = unique("budget");
    Broker::connect().await.queue(&queue).await;
    // Two clients send 120 KiB each of a 190 KiB body, then stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(warren.server.http_addr).await.unwrap();
        let head = "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 194560\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&vec![b' '; 120 * 1024]).await.unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 240 KiB are held: a 40 KiB request does not fit.
    let big = "x".repeat(40 * 1024);
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": big}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = problem(response).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max_buffered_bytes"),
        "{body}"
    );
    // Small requests still fit.
    good_publish(&warren, &queue, "small").await;
    // Once the stalled bodies time out, their bytes are given back.
    for tcp in &mut stalled {
        read_to_close(tcp, Duration::from_secs(10)).await;
    }
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = bodies(&queue).await;
    assert_eq!(got.len(), 2, "small and big only");
    warren.stop().await;
}

#[tokio::test]
async fn many_or_large_headers_get_a_problem_not_a_bare_431() {
    let warren = Warren::start().await;
    let queue = unique("headers");
    Broker::connect().await.queue(&queue).await;
    let url = warren.url(&format!("/v1/publish/amq.default/{queue}"));
    let http = reqwest::Client::new();
    // 600 AMQP headers of 300 bytes: over the 128 KiB frame, under hyper's
    // own 512 KiB and 1,024 fields: Warren's 413, with its problem body.
    let mut request = http.post(&url).body("too many");
    for i in 0..600 {
        request = request.header(format!("x-warren-header-h{i}"), "v".repeat(300));
    }
    let (status, body) = problem(request.send().await.unwrap()).await;
    assert_eq!(status, 413, "{body}");
    // 500 small ones (beyond hyper's default of 100 fields) are published.
    let mut request = http.post(&url).body("many");
    for i in 0..500 {
        request = request.header(format!("x-warren-header-h{i}"), "v");
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let got = Broker::connect()
        .await
        .take(&queue, 10, Duration::from_millis(500))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.headers().as_ref().unwrap().inner().len(),
        500
    );
    warren.stop().await;
}
