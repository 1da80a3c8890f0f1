//! Push delivery against the real broker and a real local HTTP app (an
//! axum server on port 0, scripted per test, recording every request).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use prost_types::value::Kind;
use warren::proto::{Message, PublishRequest};

/// One request the app saw.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
    /// How many requests with this `ce-id` came before (0 the first time).
    earlier: usize,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// What the app answers: a status, a `Retry-After`, a pause first.
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    pause: Duration,
}

fn ok() -> Reply {
    Reply {
        status: 200,
        retry_after: None,
        pause: Duration::ZERO,
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct Record {
    seen: Vec<Seen>,
    in_flight: usize,
    most: usize,
    keys: HashSet<String>,
    overlapping_keys: bool,
}

/// The app: its URL and what it recorded.
#[derive(Clone)]
struct App {
    url: String,
    record: Arc<Mutex<Record>>,
}

impl App {
    async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    fn serve(listener: tokio::net::TcpListener, script: Script) -> Self {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (record, router) = router(script);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, record }
    }

    /// The app over TLS, with the PKI's server certificate (for 127.0.0.1).
    async fn start_tls(pki: &tls::Pki, script: Script) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path("server-key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        let (record, router) = router(script);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self { url, record }
    }

    fn seen(&self) -> Vec<Seen> {
        self.record.lock().unwrap().seen.clone()
    }

    /// Waits until the app has seen `n` requests.
    async fn wait_for(&self, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.seen().len();
            if seen >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the app saw {seen} of {n} requests"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The app's routes and what they record.
fn router(script: Script) -> (Arc<Mutex<Record>>, axum::Router) {
    let record: Arc<Mutex<Record>> = Arc::default();
    let state = record.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let (record, script) = (state.clone(), script.clone());
        async move { answer(record, script, headers, body).await }
    };
    let router = axum::Router::new().route("/hook", axum::routing::post(handler));
    (record, router)
}

async fn answer(
    record: Arc<Mutex<Record>>,
    script: Script,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("ce-subject")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let seen = {
        let mut r = record.lock().unwrap();
        let id = headers.get("ce-id").cloned();
        let earlier = r
            .seen
            .iter()
            .filter(|s| s.headers.get("ce-id") == id.as_ref())
            .count();
        let seen = Seen {
            headers,
            body,
            at: Instant::now(),
            earlier,
        };
        r.seen.push(seen.clone());
        r.in_flight += 1;
        r.most = r.most.max(r.in_flight);
        if let Some(key) = &key {
            if !r.keys.insert(key.clone()) {
                r.overlapping_keys = true;
            }
        }
        seen
    };
    let reply = script(&seen);
    tokio::time::sleep(reply.pause).await;
    {
        let mut r = record.lock().unwrap();
        r.in_flight -= 1;
        if let Some(key) = &key {
            r.keys.remove(key);
        }
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    match reply.retry_after {
        Some(after) => (status, [("retry-after", after)]).into_response(),
        None => status.into_response(),
    }
}

/// A Warren pushing `queue` (declared with a dead-letter queue) to `url`.
async fn warren_pushing(queue: &str, url: &str, extra: &str) -> Warren {
    let toml = format!(
        "[retry]\nmax_attempts = 50\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
         [[topology.queues]]\nname = \"{queue}\"\narguments = {{ \"x-expires\" = 120000 }}\n\
         [[push]]\nqueue = \"{queue}\"\nurl = \"{url}\"\n{extra}\n"
    );
    Warren::start_with(config_toml(&toml)).await
}

fn message(queue: &str, body: &str) -> PublishRequest {
    let mut headers = std::collections::HashMap::new();
    headers.insert(
        "tenant".to_string(),
        value(Kind::StringValue("acme".into())),
    );
    PublishRequest {
        message: Some(Message {
            body: body.as_bytes().to_vec().into(),
            content_type: "application/json".into(),
            r#type: "order.created".into(),
            timestamp: 1_700_000_000,
            headers,
            ..Default::default()
        }),
        ..request("", queue, b"")
    }
}

async fn cleanup(queues: &[&str]) {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    Broker::connect().await.delete_queues(&queues).await;
}

async fn until_empty(broker: &Broker, queue: &str) {
    for _ in 0..100 {
        if broker.count(queue).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{queue} did not empty");
}

#[tokio::test]
async fn each_message_is_posted_as_a_cloudevent_and_acked() {
    let app = App::start(Arc::new(|_| ok())).await;
    let queue = unique("push.ok");
    let warren = warren_pushing(&queue, &app.url, "").await;
    let mut client = warren.grpc().await;
    let mut ids = HashMap::new();
    for i in 0..20 {
        let body = format!("{{\"n\":{i}}}");
        let id = client
            .publish(message(&queue, &body))
            .await
            .expect("confirmed")
            .into_inner()
            .message_id;
        ids.insert(id, body);
    }
    app.wait_for(20, Duration::from_secs(10)).await;
    let seen = app.seen();
    assert_eq!(seen.len(), 20);
    for s in &seen {
        let body = &ids[s.header("ce-id")];
        assert_eq!(s.body, body.as_bytes());
        assert_eq!(s.header("content-type"), "application/json");
        assert_eq!(s.header("ce-specversion"), "1.0");
        assert_eq!(s.header("ce-type"), "order.created");
        assert_eq!(s.header("ce-source"), format!("/warren/queues/{queue}"));
        assert_eq!(s.header("ce-time"), "2023-11-14T22:13:20Z");
        assert_eq!(s.header("x-warren-attempt"), "1");
        assert_eq!(s.header("x-warren-header-tenant"), "acme");
        assert!(!s.header("x-warren-delivery-id").is_empty());
    }
    let broker = Broker::connect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.count(&queue).await, 0);
    assert!(broker.is_empty(&queue).await, "nothing unacked comes back");
    let metrics = warren.metrics().await;
    assert!(metrics.contains("warren_push_total{outcome=\"delivered\"} 20"));
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn busy_answers_retry_after_the_retry_after() {
    // The first POST of each message: 503 or 429 with Retry-After: 1.
    let app = App::start(Arc::new(|s: &Seen| match (s.earlier, s.body.as_ref()) {
        (0, b"a") => Reply {
            status: 503,
            retry_after: Some("1"),
            pause: Duration::ZERO,
        },
        (0, _) => Reply {
            status: 429,
            retry_after: Some("1"),
            pause: Duration::ZERO,
        },
        _ => ok(),
    }))
    .await;
    let queue = unique("push.retry");
    let warren = warren_pushing(&queue, &app.url, "").await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "a").await;
    publish(&mut client, &queue, "b").await;
    app.wait_for(4, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = app.seen();
    assert_eq!(seen.len(), 4, "each message twice");
    for body in ["a", "b"] {
        let posts: Vec<_> = seen.iter().filter(|s| s.body == body.as_bytes()).collect();
        assert_eq!(posts.len(), 2, "{body}");
        assert_eq!(posts[0].header("x-warren-attempt"), "1");
        assert_eq!(posts[1].header("x-warren-attempt"), "2");
        let waited = posts[1].at - posts[0].at;
        assert!(
            waited >= Duration::from_millis(900),
            "{body} came back after {waited:?}"
        );
    }
    let broker = Broker::connect().await;
    until_empty(&broker, &queue).await;
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn other_client_errors_dead_letter_at_once() {
    let app = App::start(Arc::new(|_| Reply {
        status: 422,
        retry_after: None,
        pause: Duration::ZERO,
    }))
    .await;
    let queue = unique("push.dlq");
    let dlq = format!("{queue}.dlq");
    let warren = warren_pushing(&queue, &app.url, "").await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "bad").await;
    let broker = Broker::connect().await;
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = broker.bodies(&dlq, 1).await;
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead, ["bad"]);
    assert_eq!(app.seen().len(), 1, "POSTed once");
    let metrics = warren.metrics().await;
    assert!(metrics.contains("warren_push_total{outcome=\"dead_lettered\"} 1"));
    warren.stop().await;
    cleanup(&[&queue, &dlq]).await;
}

#[tokio::test]
async fn messages_wait_for_an_app_that_is_down() {
    // A free port that nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let queue = unique("push.down");
    let warren = warren_pushing(&queue, &url, "concurrency = 4").await;
    let mut client = warren.grpc().await;
    for i in 0..5 {
        publish(&mut client, &queue, &i.to_string()).await;
    }
    let down = Duration::from_secs(2);
    tokio::time::sleep(down).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = App::serve(listener, Arc::new(|_| ok()));
    app.wait_for(5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bodies: Vec<_> = app
        .seen()
        .iter()
        .map(|s| String::from_utf8(s.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["0", "1", "2", "3", "4"], "nothing lost, once each");
    // At least 100 ms between the attempts of a message: 5 messages over
    // ~2 s are at most ~100 retries, not a spin.
    let metrics = warren.metrics().await;
    let retried = metric(&metrics, "warren_push_total{outcome=\"retried\"}");
    assert!(retried >= 5.0, "each was retried: {retried}");
    assert!(retried <= 5.0 * 25.0, "no spin: {retried} retries");
    let broker = Broker::connect().await;
    until_empty(&broker, &queue).await;
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn concurrency_bounds_the_posts_in_flight() {
    let app = App::start(Arc::new(|_| Reply {
        pause: Duration::from_millis(300),
        ..ok()
    }))
    .await;
    let queue = unique("push.bound");
    let warren = warren_pushing(&queue, &app.url, "concurrency = 3").await;
    let mut client = warren.grpc().await;
    for i in 0..12 {
        publish(&mut client, &queue, &i.to_string()).await;
    }
    app.wait_for(12, Duration::from_secs(15)).await;
    let most = app.record.lock().unwrap().most;
    assert_eq!(most, 3, "at most 3 at once, and 3 reached");
    let broker = Broker::connect().await;
    until_empty(&broker, &queue).await;
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let app = App::start(Arc::new(|s: &Seen| Reply {
        pause: match s.earlier {
            0 => Duration::from_secs(2),
            _ => Duration::ZERO,
        },
        ..ok()
    }))
    .await;
    let queue = unique("push.timeout");
    let warren = warren_pushing(&queue, &app.url, "timeout = \"300ms\"").await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "slow").await;
    app.wait_for(2, Duration::from_secs(10)).await;
    let seen = app.seen();
    assert_eq!(seen[1].header("x-warren-attempt"), "2");
    let broker = Broker::connect().await;
    until_empty(&broker, &queue).await;
    let metrics = warren.metrics().await;
    assert!(metric(&metrics, "warren_push_total{outcome=\"retried\"}") >= 1.0);
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn an_ordered_group_is_pushed_in_key_order() {
    let app = App::start(Arc::new(|_| Reply {
        pause: Duration::from_millis(20),
        ..ok()
    }))
    .await;
    let group = unique("push.ordered");
    let toml = format!(
        "[retry]\nmax_attempts = 5\ninitial_backoff = \"100ms\"\nmax_backoff = \"200ms\"\n\
         [[ordered]]\nname = \"{group}\"\npartitions = 1\n\
         [[push]]\nqueue = \"{group}\"\nurl = \"{}\"\nconcurrency = 8\n",
        app.url
    );
    let warren = Warren::start_with(config_toml(&toml)).await;
    let mut client = warren.grpc().await;
    for i in 0..5 {
        for k in 0..3 {
            let r = PublishRequest {
                ordering_key: format!("key-{k}"),
                ..request(&group, "", i.to_string().as_bytes())
            };
            client.publish(r).await.expect("confirmed");
        }
    }
    app.wait_for(15, Duration::from_secs(15)).await;
    {
        let record = app.record.lock().unwrap();
        assert!(!record.overlapping_keys, "two messages of one key at once");
        for k in 0..3 {
            let key = format!("key-{k}");
            let bodies: Vec<_> = record
                .seen
                .iter()
                .filter(|s| s.header("ce-subject") == key)
                .map(|s| String::from_utf8(s.body.to_vec()).unwrap())
                .collect();
            assert_eq!(bodies, ["0", "1", "2", "3", "4"], "{key}");
        }
    }
    warren.stop().await;
    let mut queues = vec![format!("{group}.dlq"), format!("{group}.subscribers")];
    queues.push(format!("{group}.0"));
    queues.push(format!("{group}.0.handover"));
    for s in 0..32 {
        queues.push(format!("{group}.0.held.{s}"));
        queues.push(format!("{group}.0.wait.{s}"));
    }
    Broker::connect().await.delete_queues(&queues).await;
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer() {
    let app = App::start(Arc::new(|_| ok())).await;
    let queue = unique("push.token");
    let path = std::env::temp_dir().join(format!("{queue}.token"));
    std::fs::write(&path, "s3cret-token\n").unwrap();
    let extra = format!("token_file = \"{}\"", path.display());
    let warren = warren_pushing(&queue, &app.url, &extra).await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "x").await;
    app.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(app.seen()[0].header("authorization"), "Bearer s3cret-token");
    warren.stop().await;
    let _ = std::fs::remove_file(&path);
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn a_queue_that_appears_later_is_pushed_once_it_exists() {
    let app = App::start(Arc::new(|_| ok())).await;
    let queue = unique("push.later");
    let toml = format!("[[push]]\nqueue = \"{queue}\"\nurl = \"{}\"\n", app.url);
    let warren = Warren::start_with(config_toml(&toml)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let broker = Broker::connect().await;
    broker.queue(&queue).await;
    broker.fill(&queue, 3).await;
    app.wait_for(3, Duration::from_secs(15)).await;
    until_empty(&broker, &queue).await;
    warren.stop().await;
    cleanup(&[&queue]).await;
}

#[tokio::test]
async fn shutdown_waits_for_the_posts_in_flight_and_settles_them() {
    let app = App::start(Arc::new(|_| Reply {
        pause: Duration::from_millis(800),
        ..ok()
    }))
    .await;
    let queue = unique("push.drain");
    let warren = warren_pushing(&queue, &app.url, "").await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "in-flight").await;
    app.wait_for(1, Duration::from_secs(10)).await;
    warren.stop().await;
    let broker = Broker::connect().await;
    assert_eq!(
        broker.count(&queue).await,
        0,
        "acked before the channel closed"
    );
    assert_eq!(app.seen().len(), 1);
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}

#[tokio::test]
async fn an_https_app_is_trusted_by_its_ca_file_only() {
    let pki = tls::Pki::new();
    let app = App::start_tls(&pki, Arc::new(|_| ok())).await;
    let queue = unique("push.tls");
    let extra = format!("ca_file = \"{}\"", pki.path("ca.pem"));
    let warren = warren_pushing(&queue, &app.url, &extra).await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "secure").await;
    app.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(app.seen()[0].body, "secure".as_bytes());
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;

    // Another CA: the handshake fails, the message is retried, never POSTed.
    let queue = unique("push.tls.untrusted");
    let extra = format!("ca_file = \"{}\"", pki.path("other-ca.pem"));
    let warren = warren_pushing(&queue, &app.url, &extra).await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, "refused").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.seen().len(), 1, "nothing reached the app");
    let metrics = warren.metrics().await;
    assert!(metric(&metrics, "warren_push_total{outcome=\"retried\"}") >= 1.0);
    warren.stop().await;
    cleanup(&[&queue, &format!("{queue}.dlq")]).await;
}
