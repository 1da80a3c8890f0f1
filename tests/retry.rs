//! Consumer retries held by the broker, max attempts, dead-letter queues and
//! the operators' dead-letter endpoints.

mod common;

use std::time::{Duration, Instant};

use common::{ack, body, nack, next, next_within, publish, subscribe, unique, Broker, Warren};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{json, Value};
use warren::proto::SubscribeRequest;

/// Warren with `queue` declared from config (so it gets `<queue>.dlq`) and a
/// retry policy of its own for it.
async fn warren_with_queue(queue: &str, kind: &str, max_attempts: u32) -> Warren {
    let config = common::config_toml(&format!(
        "[[topology.queues]]\nname = \"{queue}\"\ntype = \"{kind}\"\n\n[retry.queues.\"{queue}\"]\nmax_attempts = {max_attempts}\ninitial_backoff = \"300ms\"\nmax_backoff = \"1s\"\n"
    ));
    Warren::start_with(config).await
}

#[tokio::test]
async fn requeued_messages_wait_in_the_broker_and_come_back_with_the_next_attempt() {
    let queue = unique("retry");
    let warren = warren_with_queue(&queue, "classic", 5).await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, &queue).await;
    publish(&mut client, &queue, "job").await;
    let first = next(&mut stream).await;
    assert_eq!(first.attempt, 1);
    let nacked = Instant::now();
    nack(&mut client, &first, true, 2000).await;
    // Held by the broker in a delay queue (2000 ms rounds to 2048 ms).
    let delay_queue = format!("{queue}.retry.2048");
    let mut held = false;
    for _ in 0..20 {
        if broker.ready(&delay_queue).await == Some(1) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the message waits in {delay_queue}");
    let second = next_within(&mut stream, Duration::from_secs(15)).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(1800),
        "not before its delay: {:?}",
        nacked.elapsed()
    );
    assert_eq!(second.attempt, 2);
    assert_eq!(&second.message.as_ref().unwrap().body[..], b"job");
    assert_eq!(
        second.exchange, "",
        "the original exchange and routing key are reported"
    );
    assert_eq!(second.routing_key, queue);
    let headers = &second.message.as_ref().unwrap().headers;
    assert!(
        !headers.keys().any(|k| k.starts_with("x-warren-")),
        "Warren's bookkeeping stays inside: {headers:?}"
    );
    // The policy's backoff (300 ms to 1 s) when no delay is given.
    let nacked = Instant::now();
    nack(&mut client, &second, true, 0).await;
    let third = next_within(&mut stream, Duration::from_secs(15)).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(250),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!(third.attempt, 3);
    ack(&mut client, &third).await;
    drop(stream);
    broker
        .delete_queues(&[queue.clone(), format!("{queue}.dlq")])
        .await;
    warren.stop().await;
}

#[tokio::test]
async fn poison_messages_end_in_the_dead_letter_queue_and_replay_from_it() {
    let queue = unique("poison");
    let dlq = format!("{queue}.dlq");
    let warren = warren_with_queue(&queue, "quorum", 3).await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, &queue).await;
    let id = publish(&mut client, &queue, "poison").await;
    let good = publish(&mut client, &queue, "fine").await;
    let mut attempts = Vec::new();
    loop {
        let d = next_within(&mut stream, Duration::from_secs(15)).await;
        if d.message.as_ref().unwrap().message_id == good {
            ack(&mut client, &d).await;
            continue;
        }
        attempts.push(d.attempt);
        nack(&mut client, &d, true, 100).await;
        if d.attempt == 3 {
            break;
        }
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    // The third requeue dead-lettered it instead.
    let http = reqwest::Client::new();
    let url = warren.url(&format!("/v1/dead-letters/{dlq}"));
    let mut listing = Value::Null;
    for _ in 0..50 {
        listing = http
            .get(format!("{url}?limit=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listing["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = listing["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{listing}");
    let letter = &messages[0];
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["reason"], "rejected");
    assert_eq!(letter["original_queue"], queue.as_str());
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["message"]["body"], "poison");
    // Listing does not remove.
    let again: Value = http
        .get(format!("{url}?limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["messages"].as_array().unwrap().len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err(),
        "nothing redelivered meanwhile"
    );

    // Replay with a corrected body: back on the queue, attempt 1 again.
    let replayed: Value = http
        .post(format!("{url}/replay"))
        .json(&json!({"ids": [id, "no-such-id"], "message": {"body": "cured", "headers": {"fixed-by": "ops"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert_eq!(replayed["missing"], json!(["no-such-id"]));
    let d = next_within(&mut stream, Duration::from_secs(10)).await;
    let m = d.message.as_ref().unwrap();
    assert_eq!(&m.body[..], b"cured");
    assert_eq!(m.message_id, id, "the id is kept");
    assert_eq!(d.attempt, 1, "a replayed message starts over");
    assert!(!m.headers.contains_key("x-death"));
    assert_eq!(
        m.headers["fixed-by"].kind,
        Some(prost_types::value::Kind::StringValue("ops".into()))
    );
    ack(&mut client, &d).await;
    assert_eq!(
        broker.ready(&dlq).await,
        Some(0),
        "it left the dead-letter queue"
    );
    drop(stream);
    broker.delete_queues(&[queue.clone(), dlq]).await;
    warren.stop().await;
}

#[tokio::test]
async fn discard_and_dead_letter_errors() {
    let queue = unique("discard");
    let dlq = format!("{queue}.dlq");
    let warren = warren_with_queue(&queue, "classic", 5).await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, &queue).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&mut client, &queue, &format!("m{i}")).await);
    }
    for _ in 0..3 {
        let d = next(&mut stream).await;
        nack(&mut client, &d, false, 0).await; // straight to the dead-letter queue
    }
    let http = reqwest::Client::new();
    let url = warren.url(&format!("/v1/dead-letters/{dlq}"));
    for _ in 0..50 {
        if broker.ready(&dlq).await == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let discarded: Value = http
        .post(format!("{url}/discard"))
        .json(&json!({"ids": [ids[0]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discarded["discarded"], 1);
    assert_eq!(broker.ready(&dlq).await, Some(2));
    let replayed: Value = http
        .post(format!("{url}/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 2);
    let mut back = vec![
        body(&next(&mut stream).await),
        body(&next(&mut stream).await),
    ];
    back.sort();
    assert_eq!(back, vec!["m1", "m2"]);

    let problem = |r: reqwest::Response| async move { common::problem(r).await.0 };
    assert_eq!(
        problem(
            http.get(warren.url(&format!("/v1/dead-letters/{}", unique("none"))))
                .send()
                .await
                .unwrap()
        )
        .await,
        404
    );
    assert_eq!(
        problem(
            http.get(format!("{url}?limit=100000"))
                .send()
                .await
                .unwrap()
        )
        .await,
        400
    );
    assert_eq!(
        problem(http.get(format!("{url}?limit=x")).send().await.unwrap()).await,
        400
    );
    for body in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["a"], "all": true}),
        json!({"all": true, "bogus": 1}),
    ] {
        assert_eq!(
            problem(
                http.post(format!("{url}/replay"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            400,
            "{body}"
        );
    }
    let bad_patch = json!({"all": true, "message": {"body": "a", "body_base64": "YQ=="}});
    assert_eq!(
        problem(
            http.post(format!("{url}/replay"))
                .json(&bad_patch)
                .send()
                .await
                .unwrap()
        )
        .await,
        400
    );
    assert_eq!(
        problem(
            http.post(format!("{url}/discard"))
                .json(&json!({"all": true, "message": {}}))
                .send()
                .await
                .unwrap()
        )
        .await,
        400
    );
    drop(stream);
    broker.delete_queues(&[queue.clone(), dlq]).await;
    warren.stop().await;
}

#[tokio::test]
async fn warren_declared_queues_get_dead_letter_queues_with_safe_arguments() {
    let queue = unique("declared");
    let warren = warren_with_queue(&queue, "quorum", 5).await;
    let broker = Broker::connect().await;
    // Declaring again with exactly these arguments is accepted only if they
    // are the ones Warren used.
    let mut args = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes()));
    args.insert("x-queue-type".into(), s("quorum"));
    args.insert("x-dead-letter-exchange".into(), s(""));
    args.insert(
        "x-dead-letter-routing-key".into(),
        s(&format!("{queue}.dlq")),
    );
    args.insert("x-dead-letter-strategy".into(), s("at-least-once"));
    args.insert("x-overflow".into(), s("reject-publish"));
    let channel = broker.connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("a quorum queue that dead-letters at least once to <queue>.dlq");
    assert!(broker.ready(&format!("{queue}.dlq")).await.is_some());
    // A named queue that a subscription declares gets one too.
    let named = unique("sub-declared");
    let mut client = warren.grpc().await;
    let stream = client
        .subscribe(SubscribeRequest {
            queue: named.clone(),
            exchange: "amq.direct".into(),
            binding_keys: vec![named.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(broker.ready(&format!("{named}.dlq")).await.is_some());
    drop(stream);
    broker
        .delete_queues(&[
            queue.clone(),
            format!("{queue}.dlq"),
            named.clone(),
            format!("{named}.dlq"),
        ])
        .await;
    warren.stop().await;
}
