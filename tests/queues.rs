//! `GET /v1/queues`: the queues Warren knows, against the real broker.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warren::proto::PublishRequest;

async fn listing(warren: &Warren) -> Vec<Value> {
    let response = reqwest::get(warren.url("/v1/queues")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["queues"]
        .as_array()
        .cloned()
        .expect("a list of queues")
}

fn entry<'a>(queues: &'a [Value], name: &str) -> &'a Value {
    queues
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {queues:?}"))
}

/// Configured queues and their dead-letter queues (Warren's `.dlq` or a
/// queue's own), an ordered group as one entry with its partitions summed,
/// and the delay queue a retry made: depth, consumers, paused; a configured
/// queue deleted behind Warren's back is still listed, as missing.
#[tokio::test]
async fn lists_what_warren_knows() {
    let base = unique("listing");
    let (plain, own, own_dlq, bare, group) = (
        format!("{base}.plain"),
        format!("{base}.own"),
        format!("{base}.own.failed"),
        format!("{base}.bare"),
        format!("{base}.group"),
    );
    let toml = format!(
        r#"
[retry]
initial_backoff = "30s"
max_backoff = "30s"

[[topology.queues]]
name = "{plain}"

[[topology.queues]]
name = "{own}"
arguments = {{ x-dead-letter-exchange = "", x-dead-letter-routing-key = "{own_dlq}" }}

[[topology.queues]]
name = "{own_dlq}"

[[topology.queues]]
name = "{bare}"
dead_letter_queue = false

[[ordered]]
name = "{group}"
partitions = 2
max_blocked_keys = 2
"#
    );
    let warren = Warren::start_with(config_toml(&toml)).await;
    let mut client = warren.grpc().await;
    for body in ["a", "b", "c"] {
        publish(&mut client, &plain, body).await;
    }
    for key in ["k1", "k2", "k3"] {
        let keyed = PublishRequest {
            ordering_key: key.into(),
            ..request(&group, "", b"x")
        };
        client.publish(keyed).await.expect("confirmed");
    }
    // One delivery held by a subscriber, then retried: a delay queue.
    let mut stream = subscribe_with(&mut client, on(&plain, 1)).await;
    let first = next(&mut stream).await;
    nack(&mut client, &first, true, 0).await;

    // (The move into the delay queue happens after the nack is answered.)
    let mut queues = listing(&warren).await;
    for _ in 0..50 {
        if queues
            .iter()
            .any(|q| q["kind"] == "retry" && q["messages"] == 1)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        queues = listing(&warren).await;
    }
    let p = entry(&queues, &plain);
    assert_eq!(p["kind"], "queue");
    assert_eq!(p["dead_letter_queue"], format!("{plain}.dlq"));
    assert_eq!(p["consumers"], 1, "{p}");
    assert_eq!(p["paused"], false);
    assert_eq!(p["exists"], true);
    let d = entry(&queues, &format!("{plain}.dlq"));
    assert_eq!(d["kind"], "dead_letter");
    assert_eq!(d["messages"], 0);
    assert_eq!(entry(&queues, &own)["dead_letter_queue"], own_dlq.as_str());
    assert_eq!(
        entry(&queues, &own_dlq)["kind"],
        "dead_letter",
        "a queue's own dead-letter queue is one, though configured too"
    );
    assert!(entry(&queues, &bare).get("dead_letter_queue").is_none());
    let g = entry(&queues, &group);
    assert_eq!(g["kind"], "ordered_group");
    assert_eq!(g["messages"], 3, "summed over the partitions: {g}");
    assert_eq!(g["dead_letter_queue"], format!("{group}.dlq"));
    assert_eq!(
        entry(&queues, &format!("{group}.dlq"))["kind"],
        "dead_letter"
    );
    assert!(
        !queues.iter().any(|q| q["name"] == format!("{group}.0")),
        "partitions are the group's"
    );
    let retry = queues
        .iter()
        .find(|q| q["kind"] == "retry")
        .expect("the delay queue of the retry");
    assert!(
        retry["name"].as_str().unwrap().starts_with(&plain),
        "{retry}"
    );
    assert_eq!(retry["messages"], 1);
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    let mut once = names.clone();
    once.dedup();
    assert_eq!(names.len(), once.len(), "each queue once: {names:?}");

    // Paused state and a missing queue.
    let paused = reqwest::Client::new()
        .post(warren.url(&format!("/v1/queues/{bare}/pause")))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let broker = Broker::connect().await;
    broker.delete_queues(std::slice::from_ref(&own)).await;
    let queues = listing(&warren).await;
    assert_eq!(entry(&queues, &bare)["paused"], true);
    let gone = entry(&queues, &own);
    assert_eq!(gone["exists"], false, "{gone}");
    assert_eq!(gone["messages"], 0);
    // The listing's probes closed no channel Warren shares: it still publishes.
    publish(&mut client, &plain, "still here").await;
    assert_eq!(entry(&listing(&warren).await, &plain)["consumers"], 1);

    drop(stream);
    warren.stop().await;
    let retry_name = retry["name"].as_str().unwrap().to_owned();
    let mut leftovers = vec![
        plain.clone(),
        format!("{plain}.dlq"),
        own_dlq,
        bare.clone(),
        format!("warren.paused.{bare}"),
        retry_name,
        format!("{group}.dlq"),
        format!("{group}.subscribers"),
    ];
    for p in 0..2 {
        leftovers.push(format!("{group}.{p}"));
        leftovers.push(format!("{group}.{p}.handover"));
        leftovers.push(format!("{group}.{p}.held.0"));
        leftovers.push(format!("{group}.{p}.wait.0"));
    }
    broker.delete_queues(&leftovers).await;
}

/// With auth on, the listing is an operators' call: no token 401, a
/// client without admin 403, an admin 200.
#[tokio::test]
async fn listing_needs_admin() {
    let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let toml = format!(
        r#"
[auth]
enabled = true

[[auth.clients]]
name = "app"
token_sha256 = "{app}"
publish = ["*"]
consume = ["*"]

[[auth.clients]]
name = "ops"
token_sha256 = "{ops}"
admin = true
"#,
        app = sha("app-token-0123456789"),
        ops = sha("ops-token-0123456789"),
    );
    let warren = Warren::start_with(config_toml(&toml)).await;
    let http = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let mut request = http.get(warren.url("/v1/queues"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let (status, body) = problem(get(None).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = problem(get(Some("app-token-0123456789")).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    let ok = get(Some("ops-token-0123456789")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body, json!({"queues": []}), "nothing configured");
    warren.stop().await;
}

/// The listing is read-only: other methods are refused.
#[tokio::test]
async fn listing_is_read_only() {
    let warren = Warren::start().await;
    let response = reqwest::Client::new()
        .post(warren.url("/v1/queues"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, _) = problem(response).await;
    assert_eq!(status, 405);
    warren.stop().await;
}
