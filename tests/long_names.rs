//! A missing exchange or queue whose name is long multi-byte UTF-8: the
//! broker's close reason, cut to 255 bytes, no longer parses as UTF-8. It
//! must still be NOT_FOUND for that request alone.

mod common;

use std::time::Duration;

use common::{problem, unique, Broker, Warren};
use serde_json::json;
use tonic::Code;
use warren::proto::{CallRequest, Message, SubscribeRequest};

/// 228 to 255 bytes of two-byte characters.
fn names() -> Vec<String> {
    [114, 120, 127].iter().map(|n| "é".repeat(*n)).collect()
}

#[tokio::test]
async fn long_multibyte_names_of_missing_things_are_not_found_and_harm_nobody() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("long-names-good");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let good = {
        let (http, url, queue) = (http.clone(), warren.url("/v1/publish"), queue.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let r = http
                    .post(&url)
                    .json(&json!({"routing_key": queue, "body": format!("good-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        })
    };
    let mut client = warren.grpc().await;
    for name in names() {
        assert!(name.len() >= 228 && name.len() <= 255);
        let r = http
            .post(warren.url("/v1/publish"))
            .json(&json!({"exchange": name, "routing_key": "k", "body": "x"}))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(r).await;
        assert_eq!(status, 404, "{body}");
        let e = client
            .call(CallRequest {
                exchange: name.clone(),
                routing_key: "k".into(),
                message: Some(Message::default()),
                timeout_ms: 1000,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = client
            .subscribe(SubscribeRequest {
                exchange: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = client
            .subscribe(SubscribeRequest {
                queue: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    good.await.unwrap();
    let got = broker.take(&queue, 400, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 300, "every good publish stored once");
    warren.stop().await;
}
