//! `POST /v1/publish/batch`: JSON arrays and NDJSON, in order on one
//! channel, each entry answered alone, limits, framing errors.

mod common;

use common::{config_with, problem, unique, Broker, Warren};
use serde_json::{json, Value};

/// Posts `body` as `content_type` to the batch endpoint.
async fn post(
    warren: &Warren,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(warren.url("/v1/publish/batch"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("warren answers")
}

/// The results of a 200 answer.
async fn answered(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON answer");
    answer["results"].as_array().expect("results").clone()
}

fn codes(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["code"].as_u64().unwrap())
        .collect()
}

/// A body sent in chunks, without a Content-Length.
fn chunked(chunks: Vec<Vec<u8>>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

fn entries(queue: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"routing_key": queue, "body": format!("m{i}"), "request_id": format!("r{i}")}))
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn a_json_array_arrives_in_order() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch-array");
    broker.queue(&queue).await;
    let body = serde_json::to_vec(&entries(&queue, 100)).unwrap();
    let results = answered(post(&warren, "application/json", body).await).await;
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["code"], 0, "{r}");
        assert_eq!(r["error"], "", "{r}");
        assert_eq!(r["request_id"], format!("r{i}"));
        assert!(r["message_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert_eq!(broker.bodies(&queue, 100).await, expected(100));
    // An empty array is an empty answer.
    let results = answered(post(&warren, "application/json", " [ ] ").await).await;
    assert!(results.is_empty());
    warren.stop().await;
}

#[tokio::test]
async fn ndjson_arrives_in_order() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch-ndjson");
    broker.queue(&queue).await;
    let mut body = String::new();
    for entry in entries(&queue, 100) {
        body.push_str(&entry.to_string());
        body.push('\n');
    }
    let results = answered(post(&warren, "application/x-ndjson", body).await).await;
    assert_eq!(codes(&results), vec![0; 100]);
    assert_eq!(results[99]["request_id"], "r99");
    assert_eq!(broker.bodies(&queue, 100).await, expected(100));
    warren.stop().await;
}

#[tokio::test]
async fn each_entry_fails_alone_and_the_others_arrive() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch-failures");
    broker.queue(&queue).await;
    let ok = |i: usize| json!({"routing_key": queue, "body": format!("m{i}")});
    let batch = json!([
        ok(0),
        {"exchange": unique("missing"), "routing_key": "k", "body": "x", "request_id": "missing"},
        ok(1),
        {"exchange": "amq.direct", "routing_key": unique("nobody"), "body": "x"},
        ok(2),
        {"routing_key": queue, "body": "x", "bodyy": "typo", "request_id": "typo"},
        ok(3),
        {"routing_key": queue, "body": "x", "headers": {"x-warren-mine": "1"}},
        ok(4),
        {"routing_key": queue, "priority": "high", "request_id": "bad-type"},
        ok(5),
    ]);
    let results = answered(post(&warren, "application/json", batch.to_string()).await).await;
    // 5 NOT_FOUND, 9 FAILED_PRECONDITION (unroutable), 3 INVALID_ARGUMENT.
    assert_eq!(
        codes(&results),
        [0, 5, 0, 9, 0, 3, 0, 3, 0, 3, 0],
        "{results:?}"
    );
    assert_eq!(results[1]["request_id"], "missing");
    assert_eq!(results[5]["request_id"], "typo");
    assert_eq!(results[9]["request_id"], "bad-type");
    for i in [1, 3, 5, 7, 9] {
        assert!(!results[i]["error"].as_str().unwrap().is_empty());
        assert_eq!(results[i]["message_id"], "");
    }
    assert!(results[7]["error"].as_str().unwrap().contains("x-warren-"));
    assert_eq!(broker.bodies(&queue, 7).await, expected(6));

    // NDJSON: a line that is not JSON fails alone.
    let body = format!("{}\n{{\"routing_key\": \n{}\n", ok(6), ok(7));
    let results = answered(post(&warren, "application/x-ndjson", body).await).await;
    assert_eq!(codes(&results), [0, 3, 0], "{results:?}");
    assert_eq!(broker.bodies(&queue, 3).await, ["m6", "m7"]);
    warren.stop().await;
}

#[tokio::test]
async fn other_content_types_are_415() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch-415");
    broker.queue(&queue).await;
    let body = serde_json::to_vec(&entries(&queue, 1)).unwrap();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let (status, _) = problem(post(&warren, content_type, body.clone()).await).await;
        assert_eq!(status, 415, "{content_type}");
    }
    assert!(broker.bodies(&queue, 1).await.is_empty());
    warren.stop().await;
}

#[tokio::test]
async fn over_the_limits() {
    let warren = Warren::start_with(config_with(&[
        ("WARREN__PUBLISH__MAX_BATCH_BYTES", "2000"),
        ("WARREN__PUBLISH__MAX_BATCH_MESSAGES", "5"),
    ]))
    .await;
    let broker = Broker::connect().await;
    let queue = unique("batch-limits");
    broker.queue(&queue).await;

    // A declared length over max_batch_bytes: 413 before anything is read.
    let big = serde_json::to_vec(&vec![
        json!({"routing_key": queue, "body": "x".repeat(100)});
        30
    ])
    .unwrap();
    assert!(big.len() > 2000);
    let (status, body) = problem(post(&warren, "application/json", big.clone()).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], 8);
    assert!(broker.bodies(&queue, 1).await.is_empty());

    // Sent without a length: the entries within the limit go, then one
    // RESOURCE_EXHAUSTED entry ends the results.
    let small = |i: usize| format!(r#"{{"routing_key":"{queue}","body":"m{i}"}}"#);
    let mut chunks = vec![b"[".to_vec()];
    for i in 0..4 {
        chunks.push(format!("{},", small(i)).into_bytes());
    }
    chunks.push(
        format!(
            r#"{{"routing_key":"{queue}","body":"{}"}}]"#,
            "x".repeat(2000)
        )
        .into_bytes(),
    );
    let results = answered(post(&warren, "application/json", chunked(chunks)).await).await;
    assert_eq!(codes(&results), [0, 0, 0, 0, 8], "{results:?}");
    assert!(results[4]["error"].as_str().unwrap().contains("2000"));
    assert_eq!(broker.bodies(&queue, 5).await, expected(4));

    // Past max_batch_messages: five go, the sixth entry says why the rest
    // was not read.
    let body = serde_json::to_vec(&entries(&queue, 8)).unwrap();
    let results = answered(post(&warren, "application/json", body).await).await;
    assert_eq!(codes(&results), [0, 0, 0, 0, 0, 8], "{results:?}");
    assert!(results[5]["error"]
        .as_str()
        .unwrap()
        .contains("publish.max_batch_messages"));
    assert_eq!(broker.bodies(&queue, 8).await, expected(5));

    // When nothing was published, the whole request is 413.
    let bad = vec![json!({"bodyy": 1}); 6];
    let (status, _) = problem(
        post(
            &warren,
            "application/json",
            serde_json::to_vec(&bad).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(status, 413);
    warren.stop().await;
}

#[tokio::test]
async fn a_truncated_or_malformed_array() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch-truncated");
    broker.queue(&queue).await;

    // Not an array, or cut before anything was published: 400.
    for body in [
        r#"{"routing_key": "q", "body": "x"}"#.to_string(),
        String::new(),
        format!(r#"[{{"routing_key": "{queue}", "bo"#),
        r#"[{"bodyy": 1}, {"routing_key": "q""#.to_string(),
    ] {
        let (status, problem) =
            problem(post(&warren, "application/json", body.clone()).await).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(problem["code"], 3);
    }
    assert!(broker.bodies(&queue, 1).await.is_empty());

    // Cut after two entries were published: their results, then one
    // INVALID_ARGUMENT entry for the rest.
    let body = format!(
        r#"[{{"routing_key": "{queue}", "body": "m0"}}, {{"routing_key": "{queue}", "body": "m1"}}, {{"routing_key": "{queue}", "bo"#
    );
    let results = answered(post(&warren, "application/json", body).await).await;
    assert_eq!(codes(&results), [0, 0, 3], "{results:?}");
    assert!(results[2]["error"].as_str().unwrap().contains("truncated"));
    // Data after the array, once something was published: the same.
    let body = format!(r#"[{{"routing_key": "{queue}", "body": "m2"}}] {{}}"#);
    let results = answered(post(&warren, "application/json", body).await).await;
    assert_eq!(codes(&results), [0, 3], "{results:?}");
    assert_eq!(broker.bodies(&queue, 4).await, ["m0", "m1", "m2"]);
    warren.stop().await;
}

#[tokio::test]
async fn a_large_batch_is_not_held_whole() {
    // The body (~400 KB) is larger than all Warren may hold of request
    // bodies at once (200 KB): it is read and published as it arrives.
    let warren = Warren::start_with(config_with(&[
        ("WARREN__PUBLISH__MAX_BODY_BYTES", "1024"),
        ("WARREN__HTTP__MAX_BUFFERED_BYTES", "200000"),
    ]))
    .await;
    let broker = Broker::connect().await;
    let queue = unique("batch-large");
    broker.queue(&queue).await;
    let n = 5000;
    let padding = "p".repeat(20);
    let mut chunks = vec![b"[".to_vec()];
    let mut chunk = Vec::new();
    for i in 0..n {
        let sep = if i + 1 == n { "]" } else { "," };
        chunk.extend_from_slice(
            format!(r#"{{"routing_key":"{queue}","body":"m{i}","app_id":"{padding}"}}{sep}"#)
                .as_bytes(),
        );
        // Chunks that cut entries anywhere.
        if chunk.len() > 1000 + i % 7 {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    chunks.push(chunk);
    let total: usize = chunks.iter().map(Vec::len).sum();
    assert!(total > 300_000, "{total}");
    let results = answered(post(&warren, "application/json", chunked(chunks)).await).await;
    assert_eq!(results.len(), n);
    assert!(results.iter().all(|r| r["code"] == 0));
    // Every message once, in order, and nothing more: read them first (the
    // reader waits for stragglers), then the queue must be empty. A count
    // read straight after the answer can lag on a loaded broker.
    let got = broker.bodies(&queue, n).await;
    assert_eq!(got.len(), n);
    assert_eq!(got, expected(n));
    assert_eq!(broker.count(&queue).await, 0, "more than {n} messages");
    warren.stop().await;
}

#[tokio::test]
async fn permissions_and_rate_apply_per_message() {
    use sha2::{Digest, Sha256};
    let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let (token, slow) = ("batch-token-0123456789", "batch-slow-token-0123456789");
    let warren = Warren::start_with(common::config_toml(&format!(
        r#"
[auth]
enabled = true

[[auth.clients]]
name = "batcher"
token_sha256 = "{}"
publish = ["amq.default"]

[[auth.clients]]
name = "slow"
token_sha256 = "{}"
publish = ["amq.default"]
max_publish_rate = 5
"#,
        sha(token),
        sha(slow)
    )))
    .await;
    let broker = Broker::connect().await;
    let queue = unique("batch-auth");
    broker.queue(&queue).await;
    let send = |token: Option<&str>, body: Vec<u8>| {
        let mut request = reqwest::Client::new()
            .post(warren.url("/v1/publish/batch"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let batch = json!([
        {"routing_key": queue, "body": "m0"},
        {"exchange": "amq.direct", "routing_key": queue, "body": "x"},
        {"routing_key": queue, "body": "m1"},
    ]);
    let body = serde_json::to_vec(&batch).unwrap();
    // No credential: 401 for the whole request.
    let (status, _) = problem(send(None, body.clone()).await.unwrap()).await;
    assert_eq!(status, 401);
    // 7 PERMISSION_DENIED for the entry outside the client's exchanges.
    let results = answered(send(Some(token), body).await.unwrap()).await;
    assert_eq!(codes(&results), [0, 7, 0], "{results:?}");
    assert_eq!(broker.bodies(&queue, 3).await, ["m0", "m1"]);
    // Over the client's rate: the entries past it are RESOURCE_EXHAUSTED.
    let body = serde_json::to_vec(&entries(&queue, 20)).unwrap();
    let results = answered(send(Some(slow), body).await.unwrap()).await;
    let codes = codes(&results);
    assert_eq!(codes.len(), 20);
    assert_eq!(codes[0], 0);
    assert!(codes.iter().all(|&c| c == 0 || c == 8), "{codes:?}");
    let published = codes.iter().filter(|&&c| c == 0).count();
    assert!(published < 20, "{codes:?}");
    assert_eq!(broker.bodies(&queue, 20).await.len(), published);
    warren.stop().await;
}
