//! Bad input that the broker would answer by closing a channel or the whole
//! connection is refused up front, for that request alone: each case runs
//! beside a stream of good publishes, which must all be confirmed and stored
//! exactly once, with the breaker still closed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{metric, problem, unique, Broker, Warren};
use serde_json::{json, Value};
use tonic::Code;
use warren::proto::SubscribeRequest;

/// Good publishes on the shared channels while `bad` runs, `n` of them.
async fn beside_good_traffic<F, Fut>(warren: &Warren, n: usize, bad: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let broker = Broker::connect().await;
    let queue = unique("bad-beside");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let good = {
        let (http, url, queue) = (http.clone(), warren.url("/v1/publish"), queue.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..n {
                let body = format!("good-{i}");
                let r = http
                    .post(&url)
                    .json(&json!({"routing_key": queue, "body": body}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                sent.push(body);
            }
            sent
        })
    };
    bad(queue.clone()).await;
    let sent = good.await.unwrap();
    let got = broker.take(&queue, n * 2, Duration::from_secs(2)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in &got {
        *counts
            .entry(String::from_utf8_lossy(&d.data).into_owned())
            .or_default() += 1;
    }
    for body in &sent {
        assert_eq!(counts.get(body), Some(&1), "{body} stored exactly once");
    }
    assert_eq!(got.len(), sent.len(), "nothing else reached the queue");
    let metrics = warren.metrics().await;
    assert_eq!(metric(&metrics, "warren_circuit_breaker_state"), 0.0);
}

async fn publish(warren: &Warren, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(response).await
}

#[tokio::test]
async fn headers_over_the_frame_size_are_413_and_harm_nobody() {
    let warren = Warren::start().await;
    beside_good_traffic(&warren, 200, async |queue| {
        // One header of 140 KB, and 20,000 small ones: both over 128 KiB.
        let big = json!({"routing_key": queue, "body": "x", "headers": {"h": "y".repeat(140_000)}});
        let many: serde_json::Map<String, Value> =
            (0..20_000).map(|i| (format!("h{i}"), json!("v"))).collect();
        let many = json!({"routing_key": queue, "body": "x", "headers": many});
        for _ in 0..5 {
            for bad in [&big, &many] {
                let (status, body) = publish(&warren, bad.clone()).await;
                assert_eq!(status, 413, "{body}");
                assert!(body["detail"].as_str().unwrap().contains("frame"), "{body}");
            }
        }
    })
    .await;
    warren.stop().await;
}

#[tokio::test]
async fn an_expiration_beyond_the_broker_limit_is_400_and_harms_nobody() {
    let warren = Warren::start().await;
    beside_good_traffic(&warren, 200, async |queue| {
        for _ in 0..20 {
            let bad =
                json!({"routing_key": queue, "body": "x", "expiration_ms": 315_360_000_001u64});
            let (status, body) = publish(&warren, bad).await;
            assert_eq!(status, 400, "{body}");
            assert!(body["detail"].as_str().unwrap().contains("expiration_ms"));
        }
        // The limit itself is fine.
        let ok = reqwest::Client::new()
            .post(warren.url("/v1/publish"))
            .json(
                &json!({"exchange": "amq.direct", "routing_key": "nobody", "body": "x",
                "expiration_ms": 315_360_000_000u64, "allow_unroutable": true}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    })
    .await;
    warren.stop().await;
}

#[tokio::test]
async fn warren_header_names_are_refused() {
    let warren = Warren::start().await;
    let queue = unique("bad-reserved");
    Broker::connect().await.queue(&queue).await;
    for name in [
        "x-warren-attempt",
        "X-Warren-Original-Exchange",
        "x-warren-anything",
    ] {
        let bad = json!({"routing_key": queue, "body": "x", "headers": {name: 5}});
        let (status, body) = publish(&warren, bad).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("Warren's own"));
    }
    assert!(Broker::connect().await.is_empty(&queue).await);
    warren.stop().await;
}

#[tokio::test]
async fn an_oversized_header_match_is_refused_before_the_broker() {
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    // A healthy subscriber beside it keeps its stream.
    let broker = Broker::connect().await;
    let queue = unique("bad-match-ok");
    broker.queue(&queue).await;
    let mut healthy = common::subscribe(&mut client, &queue).await;
    let header_match = (0..1000)
        .map(|i| (format!("k{i}"), "v".repeat(200)))
        .collect();
    let e = client
        .subscribe(SubscribeRequest {
            exchange: "amq.headers".into(),
            header_match,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let r = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d = tokio::time::timeout(Duration::from_secs(10), healthy.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.unwrap().body[..], b"still here");
    warren.stop().await;
}

#[tokio::test]
async fn a_nack_delay_over_thirty_days_is_refused() {
    let warren = Warren::start().await;
    let r = reqwest::Client::new()
        .post(warren.url("/v1/nack"))
        .json(&json!({"delivery_ids": ["1-1-0-1"], "requeue": true, "delay_ms": 4_294_967_295u32}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("delay_ms"));
    warren.stop().await;
}

#[tokio::test]
async fn a_replay_patch_may_not_set_warren_headers() {
    let warren = Warren::start().await;
    let dlq = unique("bad-replay.dlq");
    Broker::connect().await.queue(&dlq).await;
    let r = reqwest::Client::new()
        .post(warren.url(&format!("/v1/dead-letters/{dlq}/replay")))
        .json(&json!({"all": true, "message": {"headers": {"x-warren-attempt": 1}}}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Warren's own"));
    warren.stop().await;
}

/// Sends bytes as they are: a request that is not valid protobuf.
#[derive(Clone, Default)]
struct Raw;

struct RawCoder;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let warren = Warren::start().await;
    let channel = tonic::transport::Endpoint::new(warren.grpc_addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for method in ["Publish", "Call", "Ack", "Subscribe"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = format!("/warren.v1.Bus/{method}").parse().unwrap();
        // A field 1 of wire type 2 whose length runs past the end.
        let garbage = vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01];
        let e = if method == "Subscribe" {
            grpc.server_streaming(tonic::Request::new(garbage), path, Raw)
                .await
                .map(|_| ())
                .unwrap_err()
        } else {
            grpc.unary(tonic::Request::new(garbage), path, Raw)
                .await
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(e.code(), Code::InvalidArgument, "{method}: {e:?}");
        assert!(
            e.message().contains("not a valid protobuf"),
            "{method}: {e:?}"
        );
    }
    // The server is fine afterwards.
    let mut client = warren.grpc().await;
    let queue = unique("bad-proto");
    Broker::connect().await.queue(&queue).await;
    common::publish(&mut client, &queue, "ok").await;
    warren.stop().await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_problem() {
    let warren = Warren::start().await;
    for path in ["/v1/publish/%FF%FE/key", "/v1/dead-letters/%C3%28/replay"] {
        let r = reqwest::Client::new()
            .post(warren.url(path))
            .body("x")
            .send()
            .await
            .unwrap();
        let (status, body) = problem(r).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    warren.stop().await;
}
