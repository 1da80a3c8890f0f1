//! The spool against the real broker: Warren reaches it through a relay that
//! a test cuts (the broker "goes away" for that Warren alone) and restores.
//! Publishes that allow it are answered `spooled` while it is away and
//! arrive, in order, once it is back; refusals land in the dead-letter spool;
//! bad input and a full spool are refused without writing anything.

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::{metric, problem, unique, Broker, Warren};
use serde_json::{json, Value};
use warren::proto::admin_client::AdminClient;
use warren::proto::{
    DiscardSpoolDeadRequest, GetSpoolRequest, ListSpoolDeadRequest, ReplaySpoolDeadRequest,
};

/// A Warren with the spool on, reaching the broker through `proxy`.
async fn warren(proxy: &Proxy, extra: &[(&str, &str)]) -> (Warren, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique("spool"));
    let dir_text = dir.to_string_lossy().into_owned();
    let url = proxy.url();
    let mut env = vec![
        ("WARREN__AMQP__URL", url.as_str()),
        ("WARREN__SPOOL__ENABLED", "true"),
        ("WARREN__SPOOL__DIR", dir_text.as_str()),
    ];
    env.extend_from_slice(extra);
    (Warren::start_with(common::config_with(&env)).await, dir)
}

/// Waits until Warren knows the broker is away.
async fn until_down(warren: &Warren) {
    let down = async {
        while warren.server.bus().is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), down)
        .await
        .expect("warren sees the broker gone");
}

async fn publish(
    http: &reqwest::Client,
    warren: &Warren,
    body: Value,
    allow: Option<&str>,
) -> (u16, Value) {
    let mut request = http.post(warren.url("/v1/publish")).json(&body);
    if let Some(allow) = allow {
        request = request.header("x-warren-allow-spool", allow);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn spool_status(http: &reqwest::Client, warren: &Warren) -> Value {
    http.get(warren.url("/v1/spool"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `queue` holds `n` messages.
async fn until_count(broker: &Broker, queue: &str, n: u32) {
    let full = async {
        while broker.count(queue).await < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), full)
        .await
        .is_err()
    {
        panic!(
            "{queue} holds {} of {n} messages",
            broker.count(queue).await
        );
    }
}

#[tokio::test]
async fn spooled_while_the_broker_is_away_and_delivered_in_order_once_it_is_back() {
    let broker = Broker::connect().await;
    let queue = unique("spool.order");
    broker.queue(&queue).await;
    let proxy = Proxy::to_broker().await;
    let (warren, _dir) = warren(&proxy, &[]).await;
    let http = reqwest::Client::new();

    proxy.cut();
    until_down(&warren).await;
    // Without allowing it, a publish still fails fast.
    let (status, _) = publish(
        &http,
        &warren,
        json!({"routing_key": queue, "body": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 503);
    let mut client = warren.grpc().await;
    let mut sent = Vec::new();
    for i in 0..100 {
        let body = format!("m{i:03}");
        let spooled = if i % 2 == 0 {
            let (status, answer) = publish(
                &http,
                &warren,
                json!({"routing_key": queue, "body": body, "allow_spool": true}),
                None,
            )
            .await;
            assert_eq!(status, 202, "{answer}");
            assert!(answer["message_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()));
            answer["spooled"].as_bool().unwrap()
        } else {
            let mut request = common::request("", &queue, body.as_bytes());
            request.allow_spool = Some(true);
            let answer = client.publish(request).await.unwrap().into_inner();
            assert_eq!(answer.code, 0, "{}", answer.error);
            answer.spooled
        };
        assert!(spooled, "message {i} spooled");
        sent.push(body);
    }
    let status = spool_status(&http, &warren).await;
    assert_eq!(status["messages"], 100, "{status}");
    assert_eq!(status["broker_connected"], false, "{status}");
    assert!(status["oldest_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        metric(&warren.metrics().await, "warren_spool_messages"),
        100.0
    );
    assert!(metric(&warren.metrics().await, "warren_spool_bytes") > 0.0);
    // Nothing reached the broker yet; readiness says so.
    assert_eq!(broker.count(&queue).await, 0);
    let ready = http.get(warren.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await.unwrap().contains("spooled"));

    proxy.restore();
    // Publishes that allow spooling keep their place behind the spooled
    // ones, however quickly they follow the broker's return.
    for i in 100..150 {
        let body = format!("m{i:03}");
        let (status, answer) = loop {
            let (status, answer) = publish(
                &http,
                &warren,
                json!({"routing_key": queue, "body": body}),
                Some("true"),
            )
            .await;
            if status != 503 {
                break (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status == 200 || status == 202, "{status} {answer}");
        sent.push(body);
    }
    until_count(&broker, &queue, 150).await;
    assert_eq!(broker.bodies(&queue, 150).await, sent, "in publish order");
    // Removed once confirmed: the commit follows the confirms closely.
    let drained = async {
        loop {
            let status = spool_status(&http, &warren).await;
            if (status["messages"].as_u64(), status["bytes"].as_u64()) == (Some(0), Some(0)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the spool empties once everything is confirmed");
    assert_eq!(
        metric(&warren.metrics().await, "warren_spool_oldest_seconds"),
        0.0
    );
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

#[tokio::test]
async fn refusals_on_forwarding_go_to_the_dead_letter_spool_to_replay_or_discard() {
    let broker = Broker::connect().await;
    let queue = unique("spool.dead");
    let proxy = Proxy::to_broker().await;
    let (warren, _dir) = warren(&proxy, &[("WARREN__SPOOL__DEFAULT", "true")]).await;
    let http = reqwest::Client::new();
    proxy.cut();
    until_down(&warren).await;
    let missing_exchange = unique("spool.nowhere");
    let (status, gone) = publish(
        &http,
        &warren,
        json!({"exchange": missing_exchange, "routing_key": "k", "body": "lost"}),
        None,
    )
    .await;
    assert_eq!(status, 202, "spool.default allows it: {gone}");
    // No queue yet: unroutable once forwarded.
    let (status, late) = publish(
        &http,
        &warren,
        json!({"routing_key": queue, "body": {"n": 1}}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{late}");
    // Asked not to be spooled: refused.
    let (status, _) = publish(
        &http,
        &warren,
        json!({"routing_key": queue, "body": "no", "allow_spool": false}),
        None,
    )
    .await;
    assert_eq!(status, 503);
    proxy.restore();

    let listed = async {
        loop {
            let dead: Value = http
                .get(warren.url("/v1/spool/dead"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if dead["messages"].as_array().unwrap().len() == 2 {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let dead = tokio::time::timeout(Duration::from_secs(30), listed)
        .await
        .expect("both refused and listed");
    let messages = dead["messages"].as_array().unwrap();
    let by_id = |id: &Value| messages.iter().find(|m| &m["id"] == id).unwrap().clone();
    let lost = by_id(&gone["message_id"]);
    assert!(
        lost["reason"].as_str().unwrap().contains("not-found"),
        "{lost}"
    );
    assert_eq!(lost["message"]["body"], "lost");
    let unroutable = by_id(&late["message_id"]);
    assert!(
        unroutable["reason"]
            .as_str()
            .unwrap()
            .contains("unroutable"),
        "{unroutable}"
    );
    assert_eq!(spool_status(&http, &warren).await["dead"], 2);

    // Bad selections change nothing.
    let bad = http
        .post(warren.url("/v1/spool/dead/replay"))
        .json(&json!({"ids": [], "all": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(bad).await.0, 400);
    // Bad corrections are refused as a publish's fields would be.
    for message in [
        json!({"headers": {"x-warren-attempt": 1}}),
        json!({"body_base64": "not base64!"}),
        json!({"body": "x", "body_base64": "eA=="}),
        json!({"routing_key": "elsewhere"}),
    ] {
        let refused = http
            .post(warren.url("/v1/spool/dead/replay"))
            .json(&json!({"ids": [late["message_id"]], "message": message}))
            .send()
            .await
            .unwrap();
        assert_eq!(problem(refused).await.0, 400, "{message}");
    }
    assert_eq!(
        spool_status(&http, &warren).await["dead"],
        2,
        "nothing replayed"
    );
    // The queue exists now: replay the unroutable one, corrected.
    broker.queue(&queue).await;
    let replayed: Value = http
        .post(warren.url("/v1/spool/dead/replay"))
        .json(&json!({"ids": [late["message_id"], "nope"], "message": {"body": {"n": 2}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert_eq!(replayed["missing"], json!(["nope"]));
    until_count(&broker, &queue, 1).await;
    assert_eq!(broker.bodies(&queue, 1).await, [r#"{"n":2}"#]);
    let discarded: Value = http
        .post(warren.url("/v1/spool/dead/discard"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discarded["discarded"], 1, "{discarded}");
    assert_eq!(spool_status(&http, &warren).await["dead"], 0);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

#[tokio::test]
async fn bad_input_and_a_full_spool_are_refused_without_writing() {
    let proxy = Proxy::to_broker().await;
    let (warren, _dir) = warren(&proxy, &[("WARREN__SPOOL__MAX_BYTES", "65536")]).await;
    let http = reqwest::Client::new();
    let queue = unique("spool.full");
    proxy.cut();
    until_down(&warren).await;
    for (bad, status) in [
        (
            json!({"routing_key": queue, "body": "x", "headers": {"x-warren-attempt": 1}}),
            400,
        ),
        (
            json!({"routing_key": queue, "body": "x", "delay_ms": 1, "deliver_at_ms": 1}),
            400,
        ),
        (
            json!({"routing_key": queue, "body": "x", "priority": 300}),
            400,
        ),
        (
            json!({"routing_key": queue, "body": "x", "allow_spool": "yes"}),
            400,
        ),
    ] {
        let (got, answer) = publish(&http, &warren, bad.clone(), Some("true")).await;
        assert_eq!(got, status, "{bad} -> {answer}");
    }
    let bad_header = http
        .post(warren.url("/v1/publish"))
        .header("x-warren-allow-spool", "perhaps")
        .json(&json!({"routing_key": queue, "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(bad_header).await.0, 400);
    assert_eq!(spool_status(&http, &warren).await["messages"], 0);

    let body = "x".repeat(4096);
    let mut spooled = 0;
    let full = loop {
        let response = http
            .post(warren.url("/v1/publish"))
            .header("x-warren-allow-spool", "true")
            .json(&json!({"routing_key": queue, "body": body}))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() != 202 {
            break response;
        }
        spooled += 1;
        assert!(spooled < 100, "64 KiB took {spooled} messages of 4 KiB");
    };
    assert!(spooled >= 10, "{spooled}");
    let retry_after = full.headers().get("retry-after").cloned();
    let (status, detail) = problem(full).await;
    assert_eq!(status, 429, "{detail}");
    assert!(retry_after.is_some(), "Retry-After given");
    assert!(
        detail["detail"].as_str().unwrap().contains("spool is full"),
        "{detail}"
    );
    let state = spool_status(&http, &warren).await;
    assert_eq!(state["messages"], spooled);
    assert!(state["bytes"].as_u64().unwrap() <= 65536);
    warren.stop().await;
}

#[tokio::test]
async fn without_the_spool_its_endpoints_are_not_found() {
    let warren = Warren::start().await;
    let http = reqwest::Client::new();
    let response = http.get(warren.url("/v1/spool")).send().await.unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("spool.enabled"));
    let mut admin = AdminClient::connect(warren.grpc_addr.clone())
        .await
        .unwrap();
    let off = admin.get_spool(GetSpoolRequest {}).await.unwrap_err();
    assert_eq!(off.code(), tonic::Code::NotFound);
    warren.stop().await;
}

#[tokio::test]
async fn the_admin_service_sees_and_works_the_dead_letter_spool() {
    let proxy = Proxy::to_broker().await;
    let (warren, _dir) = warren(&proxy, &[]).await;
    let http = reqwest::Client::new();
    proxy.cut();
    until_down(&warren).await;
    let nowhere = unique("spool.admin.nowhere");
    let (status, spooled) = publish(
        &http,
        &warren,
        json!({"exchange": nowhere, "routing_key": "k", "body": "b", "allow_spool": true}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let mut admin = AdminClient::connect(warren.grpc_addr.clone())
        .await
        .unwrap();
    let state = admin
        .get_spool(GetSpoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.messages, state.broker_connected), (1, false));
    proxy.restore();
    let refused = async {
        loop {
            let listed = admin
                .list_spool_dead(ListSpoolDeadRequest { limit: 0 })
                .await
                .unwrap()
                .into_inner();
            if let Some(first) = listed.messages.first() {
                return first.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let dead = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("refused on forwarding");
    assert_eq!(dead.id, spooled["message_id"].as_str().unwrap());
    assert_eq!(dead.exchange, nowhere);
    assert!(dead.reason.contains("not-found"), "{}", dead.reason);
    // Bad selections: INVALID_ARGUMENT, nothing changed.
    let empty = admin
        .discard_spool_dead(DiscardSpoolDeadRequest {
            ids: vec![],
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let both = admin
        .replay_spool_dead(ReplaySpoolDeadRequest {
            ids: vec![dead.id.clone()],
            all: true,
            message: None,
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    let too_many = admin
        .list_spool_dead(ListSpoolDeadRequest { limit: 1_000_000 })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let discarded = admin
        .discard_spool_dead(DiscardSpoolDeadRequest {
            ids: vec![dead.id.clone()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(discarded.discarded, 1);
    let state = admin
        .get_spool(GetSpoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.messages, state.dead), (0, 0));
    warren.stop().await;
}

#[tokio::test]
async fn scheduled_and_ordered_publishes_keep_their_meaning_through_the_spool() {
    let broker = Broker::connect().await;
    let queue = unique("spool.later");
    broker.queue(&queue).await;
    let proxy = Proxy::to_broker().await;
    let group = unique("spool.group");
    let dir = std::env::temp_dir().join(unique("spool"));
    let dir_text = dir.to_string_lossy().into_owned();
    let url = proxy.url();
    let config = common::config_toml_with(
        &format!("[[ordered]]\nname = \"{group}\"\npartitions = 1\n"),
        &[
            ("WARREN__AMQP__URL", url.as_str()),
            ("WARREN__SPOOL__ENABLED", "true"),
            ("WARREN__SPOOL__DIR", dir_text.as_str()),
        ],
    );
    let warren = Warren::start_with(config).await;
    let http = reqwest::Client::new();
    proxy.cut();
    until_down(&warren).await;
    let published = std::time::Instant::now();
    let (status, _) = publish(
        &http,
        &warren,
        json!({"routing_key": queue, "body": "later", "delay_ms": 3000, "allow_spool": true}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = publish(
        &http,
        &warren,
        json!({"exchange": group, "ordering_key": "k1", "body": "keyed", "allow_spool": true}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    // A publish to an ordered group still needs its key, broker or not.
    let (status, _) = publish(
        &http,
        &warren,
        json!({"exchange": group, "body": "no key", "allow_spool": true}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    proxy.restore();

    // The keyed message went to its partition, with its key.
    let partition = format!("{group}.0");
    until_count(&broker, &partition, 1).await;
    let got = broker.take(&partition, 1, Duration::from_secs(2)).await;
    let headers = got[0].properties.headers().clone().unwrap_or_default();
    let key = headers.inner().get("x-warren-ordering-key").cloned();
    assert_eq!(key, Some(lapin::types::AMQPValue::LongString("k1".into())));
    // The scheduled one is routed at its time, counted from the publish.
    until_count(&broker, &queue, 1).await;
    let after = published.elapsed();
    assert!(
        after >= Duration::from_millis(2400),
        "routed after {after:?}, due after 3 s"
    );
    assert_eq!(broker.bodies(&queue, 1).await, ["later"]);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
