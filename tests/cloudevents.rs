//! CloudEvents over HTTP: binary and structured publishing, the AMQP
//! binding's headers on the broker, and `?format=cloudevents` on SSE.

mod common;

use std::time::Duration;

use common::*;
use lapin::types::AMQPValue;
use serde_json::{json, Value};

fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn binary_and_structured_events_map_to_the_amqp_binding() {
    let broker = Broker::connect().await;
    let queue = unique("ce");
    broker.queue(&queue).await;
    let warren = Warren::start().await;
    let http = reqwest::Client::new();
    let url = warren.url(&format!("/v1/publish?routing_key={queue}"));
    let binary = http
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "evt-1")
        .header("ce-source", "/shop")
        .header("ce-type", "order.created")
        .header("ce-tenant", "acme")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 200);
    let answer: Value = binary.json().await.unwrap();
    assert_eq!(answer["message_id"], "evt-1");
    let structured = http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "evt-2", "source": "/shop", "type": "order.paid",
                   "subject": "42", "data": {"total": 9.5}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(structured.status(), 200);

    let got = broker.take(&queue, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].data[..], b"hello");
    assert_eq!(header(&got[0], "cloudEvents:id").as_deref(), Some("evt-1"));
    assert_eq!(
        header(&got[0], "cloudEvents:source").as_deref(),
        Some("/shop")
    );
    assert_eq!(
        header(&got[0], "cloudEvents:tenant").as_deref(),
        Some("acme")
    );
    assert_eq!(
        got[0]
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("text/plain")
    );
    assert_eq!(&got[1].data[..], br#"{"total":9.5}"#);
    assert_eq!(
        header(&got[1], "cloudEvents:subject").as_deref(),
        Some("42")
    );
    assert_eq!(
        got[1].properties.message_id().as_ref().map(|c| c.as_str()),
        Some("evt-2")
    );
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

#[tokio::test]
async fn deliveries_come_back_as_structured_events() {
    let broker = Broker::connect().await;
    let queue = unique("ce-sse");
    broker.queue(&queue).await;
    let warren = Warren::start().await;
    let http = reqwest::Client::new();
    http.post(warren.url(&format!("/v1/publish?routing_key={queue}")))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "evt-3", "source": "/shop", "type": "order.paid",
                   "datacontenttype": "application/json", "data": {"total": 1}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    // A plain message gets attributes made up from it.
    broker.fill_text(&queue, &[b"plain"]).await;
    let mut sse =
        Sse::open(&warren.url(&format!("/v1/subscribe/{queue}?format=cloudevents"))).await;
    let (id, event) = sse.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], "evt-3");
    assert_eq!(event["source"], "/shop");
    assert_eq!(event["type"], "order.paid");
    assert_eq!(event["data"], json!({"total": 1}));
    assert_eq!(event["warrendeliveryid"], id.as_str());
    assert_eq!(event["warrenattempt"], 1);
    let (_, plain) = sse.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(plain["type"], "warren.delivery");
    assert_eq!(plain["source"], format!("/warren/queues/{queue}"));
    assert_eq!(plain["data"], "plain");
    assert!(
        plain["id"].as_str().is_some_and(|i| !i.is_empty()),
        "{plain}"
    );
    let acked = http
        .post(warren.url("/v1/ack"))
        .json(&json!({"delivery_ids": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    let bad = reqwest::get(warren.url(&format!("/v1/subscribe/{queue}?format=xml")))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

#[tokio::test]
async fn invalid_events_publish_nothing() {
    let broker = Broker::connect().await;
    let queue = unique("ce-bad");
    broker.queue(&queue).await;
    let warren = Warren::start().await;
    let http = reqwest::Client::new();
    let url = warren.url(&format!("/v1/publish?routing_key={queue}"));
    let no_type = http
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/s")
        .body("b")
        .send()
        .await
        .unwrap();
    let (status, _) = problem(no_type).await;
    assert_eq!(status, 400);
    for body in [
        json!({"id": "x", "source": "/s", "type": "t"}).to_string(),
        json!({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "data": 1, "data_base64": "AA=="}).to_string(),
        "{not json".to_string(),
    ] {
        let response = http
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, _) = problem(response).await;
        assert_eq!(status, 400, "{body}");
    }
    // Query parameters are for CloudEvents only.
    let stray = http
        .post(&url)
        .json(&json!({"routing_key": queue, "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 400);
    assert!(broker.is_empty(&queue).await);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}
