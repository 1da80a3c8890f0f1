//! Authentication and authorization against the real broker: the refusals
//! first (no credential, a bad one, an expired or foreign JWT, outside the
//! permissions, another client's delivery, over the rate, over the share),
//! each proven at the broker to have published or declared nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{unique, Broker, Warren};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Code;
use warren::proto::{
    AckRequest, CallRequest, Message, PublishRequest, ReplyRequest, SubscribeRequest,
};

const BILLING: &str = "billing-token-0123456789";
const SHIPPING: &str = "shipping-token-0123456789";
const OPS: &str = "ops-token-0123456789";
const SLOW: &str = "slow-token-0123456789";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "warren";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A key pair made by openssl (a PKCS#8 PEM private key) and its JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
}

impl Key {
    fn generate(alg: Algorithm, dir: &Path) -> Self {
        let kid = unique("kid");
        let path = dir.join(format!("{kid}.pem"));
        let args: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        let out = Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&path)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read(&path).unwrap();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        Self { kid, alg, encoding }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    };
    std::fs::write(path, serde_json::to_vec(&set).unwrap()).unwrap();
}

struct Setup {
    warren: Warren,
    /// `test.billing.<unique>`: billing may publish to and consume it.
    queue: String,
    dir: PathBuf,
    jwks: PathBuf,
    es: Key,
    rs: Key,
    _cleanup: Cleanup,
}

/// Removes the key directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup() -> Setup {
    let dir = std::env::temp_dir().join(unique("auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let (es, rs) = (
        Key::generate(Algorithm::ES256, &dir),
        Key::generate(Algorithm::RS256, &dir),
    );
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&es, &rs]);
    let toml = format!(
        r#"
[auth]
enabled = true
max_publishers_per_client = 3
max_subscriptions_per_client = 2

[[auth.clients]]
name = "billing"
token_sha256 = "{billing}"
publish = ["billing.*", "amq.default"]
consume = ["test.billing.*"]
call = ["amq.default"]

[[auth.clients]]
name = "shipping"
token_sha256 = "{shipping}"
publish = ["amq.default"]
consume = ["test.billing.*"]

[[auth.clients]]
name = "ops"
token_sha256 = "{ops}"
admin = true

[[auth.clients]]
name = "slow"
token_sha256 = "{slow}"
publish = ["amq.default"]
max_publish_rate = 5

[auth.jwt]
jwks_file = "{jwks}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_refresh = "1s"
leeway = "0s"
"#,
        billing = sha(BILLING),
        shipping = sha(SHIPPING),
        ops = sha(OPS),
        slow = sha(SLOW),
        jwks = jwks.display(),
    );
    let warren = Warren::start_with(common::config_toml(&toml)).await;
    let queue = unique("billing");
    Broker::connect().await.queue(&queue).await;
    Setup {
        warren,
        queue,
        _cleanup: Cleanup(dir.clone()),
        dir,
        jwks,
        es,
        rs,
    }
}

fn with<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn publish(exchange: &str, routing_key: &str, body: &str) -> PublishRequest {
    PublishRequest {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        message: Some(Message {
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn denied(metrics: &str, reason: &str) -> f64 {
    common::metric(
        metrics,
        &format!("warren_auth_denied_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn no_or_bad_credentials_are_unauthenticated_and_publish_nothing() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    let before = denied(&s.warren.metrics().await, "unauthenticated");
    let e = client
        .publish(publish("", &s.queue, "anonymous"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = client
        .publish(with(publish("", &s.queue, "bad"), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut basic = tonic::Request::new(publish("", &s.queue, "basic"));
    basic
        .metadata_mut()
        .insert("authorization", "Basic YTpi".parse().unwrap());
    assert_eq!(
        client.publish(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let http = reqwest::Client::new();
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic YTpi"),
        Some("Bearer "),
    ] {
        let mut request = http
            .post(s.warren.url("/v1/publish"))
            .json(&json!({"routing_key": s.queue, "body": "x"}));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"warren\"",
            "{auth:?}"
        );
        let (status, body) = common::problem(response).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(body["type"], "urn:warren:problem:unauthenticated");
    }
    // Other endpoints too, SSE included.
    let sse = http
        .get(s.warren.url(&format!("/v1/subscribe/{}", s.queue)))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 401);
    let e = client
        .subscribe(SubscribeRequest {
            queue: s.queue.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Health, readiness and (metrics_public) metrics need nothing.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            reqwest::get(s.warren.url(path)).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let metrics = s.warren.metrics().await;
    assert_eq!(denied(&metrics, "unauthenticated") - before, 9.0);
    // Nothing reached the queue; a good token still works beside them.
    client
        .publish(with(publish("", &s.queue, "good"), BILLING))
        .await
        .unwrap();
    let broker = Broker::connect().await;
    let bodies: Vec<_> = broker.bodies(&s.queue, 10).await;
    assert_eq!(bodies, ["good"]);
    s.warren.server.shutdown().await;
}

#[tokio::test]
async fn outside_its_permissions_a_client_publishes_and_declares_nothing() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    let broker = Broker::connect().await;
    // An exchange billing may not publish to, bound to billing's queue.
    let other = unique("other");
    broker.exchange(&other, lapin::ExchangeKind::Fanout).await;
    broker
        .channel
        .queue_bind(
            s.queue.as_str().into(),
            other.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let before = denied(&s.warren.metrics().await, "forbidden");
    let e = client
        .publish(with(publish(&other, "", "forbidden"), BILLING))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("billing"), "{e:?}");
    let response = reqwest::Client::new()
        .post(s.warren.url(&format!("/v1/publish/{other}/x")))
        .bearer_auth(BILLING)
        .body("forbidden")
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 403);
    // Forbidden publishes naming publishers open none: after four of them
    // (the share is three) an allowed named publisher is still had.
    for i in 0..4 {
        let mut named = with(publish(&other, "", "forbidden"), BILLING);
        named
            .metadata_mut()
            .insert("x-warren-publisher", format!("p{i}").parse().unwrap());
        let e = client.publish(named).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let mut named = with(publish("", &s.queue, "named"), BILLING);
    named
        .metadata_mut()
        .insert("x-warren-publisher", "allowed".parse().unwrap());
    client.publish(named).await.unwrap();
    // A stream: the forbidden message fails alone, the next one goes.
    let requests = vec![
        publish(&other, "", "forbidden"),
        publish("", &s.queue, "allowed"),
    ];
    let mut responses = client
        .publish_stream(with(futures::stream::iter(requests), BILLING))
        .await
        .unwrap()
        .into_inner();
    let mut codes = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        codes.push(r.code);
    }
    codes.sort();
    assert_eq!(codes, [0, Code::PermissionDenied as u32]);
    // Subscribing outside consume: nothing is declared or bound.
    let foreign = unique("shipping");
    let e = client
        .subscribe(with(
            SubscribeRequest {
                queue: foreign.clone(),
                exchange: other.clone(),
                binding_keys: vec!["#".into()],
                ..Default::default()
            },
            BILLING,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(broker.ready(&foreign).await, None, "no queue declared");
    // A temporary queue needs consume on the exchange it binds to.
    let e = client
        .subscribe(with(
            SubscribeRequest {
                exchange: other.clone(),
                ..Default::default()
            },
            BILLING,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Call outside `call`, dead letters without admin.
    let call = CallRequest {
        exchange: other.clone(),
        routing_key: "x".into(),
        message: Some(Message::default()),
        timeout_ms: 1000,
    };
    assert_eq!(
        client.call(with(call, BILLING)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let dlq = format!("/v1/dead-letters/{}.dlq", s.queue);
    let response = reqwest::Client::new()
        .get(s.warren.url(&dlq))
        .bearer_auth(BILLING)
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 403);
    let response = reqwest::Client::new()
        .post(s.warren.url(&format!("{dlq}/discard")))
        .bearer_auth(SHIPPING)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 403);
    // The operator may (the dead-letter queue does not exist: 404, not 403).
    let response = reqwest::Client::new()
        .get(s.warren.url(&dlq))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 404);
    let metrics = s.warren.metrics().await;
    assert_eq!(denied(&metrics, "forbidden") - before, 12.0);
    // Only the allowed named and stream messages reached the queue.
    let bodies: Vec<_> = broker.bodies(&s.queue, 10).await;
    assert_eq!(bodies, ["named", "allowed"]);
    s.warren.server.shutdown().await;
}

#[tokio::test]
async fn deliveries_belong_to_the_client_that_received_them() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    client
        .publish(with(publish("", &s.queue, "mine"), BILLING))
        .await
        .unwrap();
    let mut stream = client
        .subscribe(with(
            SubscribeRequest {
                queue: s.queue.clone(),
                prefetch: 1,
                ..Default::default()
            },
            BILLING,
        ))
        .await
        .unwrap()
        .into_inner();
    let delivery = common::next(&mut stream).await;
    let id = delivery.delivery_id.clone();
    // 128 random bits lead the id.
    assert!(id.split('-').next().unwrap().len() == 32, "{id}");
    // Shipping may consume billing.* too, but not settle billing's delivery.
    let ack = || AckRequest {
        delivery_ids: vec![id.clone()],
    };
    let e = client.ack(with(ack(), SHIPPING)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let reply = ReplyRequest {
        delivery_id: id.clone(),
        message: Some(Message::default()),
    };
    let e = client.reply(with(reply, SHIPPING)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let response = reqwest::Client::new()
        .post(s.warren.url("/v1/nack"))
        .bearer_auth(SHIPPING)
        .json(&json!({"delivery_ids": [id], "requeue": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(common::problem(response).await.0, 404);
    // Its own client acks it.
    let acked = client.ack(with(ack(), BILLING)).await.unwrap().into_inner();
    assert_eq!(acked.acked, 1);
    drop(stream);
    assert!(Broker::connect().await.is_empty(&s.queue).await);
    s.warren.server.shutdown().await;
}

#[tokio::test]
async fn over_its_rate_a_client_gets_resource_exhausted_with_retry_after() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    let before = denied(&s.warren.metrics().await, "rate_limited");
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..20 {
        match client
            .publish(with(publish("", &s.queue, &format!("m{i}")), SLOW))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                limited += 1;
            }
        }
    }
    assert!(limited > 0 && ok >= 1, "ok {ok}, limited {limited}");
    // Over HTTP: 429 with Retry-After (a request may slip into the next
    // slot of the 5/s; try until one is refused).
    let mut refused = false;
    for _ in 0..50 {
        let response = reqwest::Client::new()
            .post(s.warren.url("/v1/publish"))
            .bearer_auth(SLOW)
            .json(&json!({"routing_key": s.queue, "body": "http"}))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            ok += 1;
            continue;
        }
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(common::problem(response).await.0, 429);
        limited += 1;
        refused = true;
        break;
    }
    assert!(refused);
    // Another client is not slowed by it.
    for i in 0..20 {
        client
            .publish(with(publish("", &s.queue, &format!("b{i}")), BILLING))
            .await
            .unwrap();
    }
    let metrics = s.warren.metrics().await;
    assert_eq!(
        denied(&metrics, "rate_limited") - before,
        f64::from(limited)
    );
    assert_eq!(
        Broker::connect().await.count(&s.queue).await,
        ok + 20,
        "exactly the admitted messages"
    );
    s.warren.server.shutdown().await;
}

#[tokio::test]
async fn one_client_cannot_take_every_publisher_or_subscription() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
        let response = client
            .publish_stream(with(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                BILLING,
            ))
            .await
            .unwrap();
        streams.push((tx, response));
    }
    let (_tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let e = client
        .publish_stream(with(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            BILLING,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Named publishers count in the same share.
    let mut named = tonic::Request::new(publish("", &s.queue, "named"));
    named.metadata_mut().insert(
        "authorization",
        format!("Bearer {BILLING}").parse().unwrap(),
    );
    named
        .metadata_mut()
        .insert("x-warren-publisher", "p1".parse().unwrap());
    assert_eq!(
        client.publish(named).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Another client still gets one.
    let (_tx2, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    client
        .publish_stream(with(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            SHIPPING,
        ))
        .await
        .unwrap();
    // Subscriptions: two each.
    let subscribe = || {
        with(
            SubscribeRequest {
                queue: s.queue.clone(),
                ..Default::default()
            },
            BILLING,
        )
    };
    let _a = client.subscribe(subscribe()).await.unwrap();
    let _b = client.subscribe(subscribe()).await.unwrap();
    assert_eq!(
        client.subscribe(subscribe()).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Closing one gives the share back.
    drop(streams.pop());
    let mut freed = false;
    for _ in 0..50 {
        let (_tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
        if client
            .publish_stream(with(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                BILLING,
            ))
            .await
            .is_ok()
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed stream gives its share back");
    s.warren.server.shutdown().await;
}

fn jwt_claims(sub: &str, exp: u64) -> serde_json::Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": exp,
        "warren": {"publish": ["amq.default"], "consume": ["test.billing.*"]},
    })
}

#[tokio::test]
async fn jwts_are_checked_for_signature_expiry_issuer_audience_and_key_id() {
    let s = setup().await;
    let mut client = s.warren.grpc().await;
    let hour = now() + 3600;
    // ES256 and RS256 tokens with the claim's permissions.
    for key in [&s.es, &s.rs] {
        let token = key.sign(jwt_claims("svc-a", hour));
        client
            .publish(with(publish("", &s.queue, "jwt"), &token))
            .await
            .unwrap();
        let e = client
            .publish(with(publish("amq.topic", "x", "jwt"), &token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let refused = |claims: serde_json::Value| s.es.sign(claims);
    let mut wrong_aud = jwt_claims("svc-a", hour);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = jwt_claims("svc-a", hour);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_aud = jwt_claims("svc-a", hour);
    no_aud.as_object_mut().unwrap().remove("aud");
    let stranger = Key::generate(Algorithm::ES256, &s.dir);
    let forged = {
        // Signed by a key the JWKS does not have, under a known key id.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(s.es.kid.clone());
        jsonwebtoken::encode(&header, &jwt_claims("svc-a", hour), &stranger.encoding).unwrap()
    };
    let cases = [
        (
            "expired",
            refused(jwt_claims("svc-a", now() - 10)),
            "expired",
        ),
        ("wrong audience", refused(wrong_aud), "audience"),
        ("wrong issuer", refused(wrong_iss), "issuer"),
        ("no audience", refused(no_aud), "aud"),
        ("bad signature", forged, "signature"),
        (
            "unknown key id",
            stranger.sign(jwt_claims("svc-a", hour)),
            "key id",
        ),
    ];
    for (what, token, says) in cases {
        let e = client
            .publish(with(publish("", &s.queue, what), &token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(e.message().contains(says), "{what}: {e:?}");
    }
    // A key added to the JWKS later is found: an unknown key id re-reads it
    // (at most once per jwks_refresh, 1 s here).
    write_jwks(&s.jwks, &[&s.es, &s.rs, &stranger]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = stranger.sign(jwt_claims("svc-b", hour));
    client
        .publish(with(publish("", &s.queue, "rotated"), &token))
        .await
        .unwrap();
    // SSE takes the token in the query.
    let token = s.es.sign(jwt_claims("svc-a", hour));
    let sse = reqwest::get(
        s.warren
            .url(&format!("/v1/subscribe/{}?access_token={token}", s.queue)),
    )
    .await
    .unwrap();
    assert_eq!(sse.status(), 200);
    drop(sse);
    // Exactly the accepted messages are in the queue.
    let bodies: Vec<_> = Broker::connect().await.bodies(&s.queue, 10).await;
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert!(bodies.iter().all(|b| b == "jwt" || b == "rotated"));
    s.warren.server.shutdown().await;
}

#[tokio::test]
async fn a_bad_auth_configuration_stops_start_up() {
    let bad = [
        ("[auth]\nenabled = true\n", "nobody could use"),
        (
            "[auth]\nenabled = true\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"ABC\"\n",
            "token_sha256",
        ),
        (
            "[auth]\nenabled = true\n[auth.jwt]\njwks_file = \"/nonexistent/jwks.json\"\n",
            "jwks_file",
        ),
        (
            "[auth]\nenabled = true\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = [\"abc\"]\n",
            "token_sha256",
        ),
    ];
    for (toml, says) in bad {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("bad-auth")));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("--config")
            .arg(&path)
            .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
            .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(stderr.contains(says), "{toml}: {stderr}");
    }
}

/// A JWKS served over HTTP: fetched on first use, again when a token names
/// an unknown key id, and at most once per `jwks_refresh` however many such
/// tokens come.
#[tokio::test]
async fn a_jwks_url_is_fetched_for_unknown_key_ids_at_most_once_per_refresh() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = std::env::temp_dir().join(unique("jwks-url"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    let (a, b) = (
        Key::generate(Algorithm::ES256, &dir),
        Key::generate(Algorithm::RS256, &dir),
    );
    let jwks = |keys: &[&Key]| {
        serde_json::to_string(&JwkSet {
            keys: keys.iter().map(|k| k.jwk()).collect(),
        })
        .unwrap()
    };
    let served = Arc::new(Mutex::new(jwks(&[&a])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let (served, fetches) = (served.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                served.lock().unwrap().clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let toml = format!(
        r#"
[auth]
enabled = true

[auth.jwt]
jwks_url = "http://{addr}/jwks.json"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_refresh = "2s"
"#
    );
    let warren = Warren::start_with(common::config_toml(&toml)).await;
    let queue = unique("billing");
    Broker::connect().await.queue(&queue).await;
    let mut client = warren.grpc().await;
    let hour = now() + 3600;
    // The first token makes Warren fetch the set; then it is cached.
    let token = a.sign(jwt_claims("svc-a", hour));
    for _ in 0..3 {
        client
            .publish(with(publish("", &queue, "a"), &token))
            .await
            .unwrap();
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Ten tokens with a key id the set does not have: one fetch at most.
    let unknown = b.sign(jwt_claims("svc-b", hour));
    for _ in 0..10 {
        let e = client
            .publish(with(publish("", &queue, "b"), &unknown))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let after_burst = fetches.load(Ordering::SeqCst);
    assert!(after_burst <= 2, "{after_burst} fetches");
    // The issuer publishes the new key: after the refresh period the token
    // is accepted.
    *served.lock().unwrap() = jwks(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client
        .publish(with(publish("", &queue, "b"), &unknown))
        .await
        .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), after_burst + 1);
    assert_eq!(Broker::connect().await.count(&queue).await, 4);
    warren.stop().await;
}

/// A token is rotated without a second client: during the change both
/// hashes are the same client, so a delivery received with the old token is
/// acked with the new one.
#[tokio::test]
async fn a_client_with_two_token_hashes_is_one_client() {
    const OLD: &str = "rotating-old-token-0123456789";
    const NEW: &str = "rotating-new-token-0123456789";
    let toml = format!(
        r#"
[auth]
enabled = true

[[auth.clients]]
name = "rotating"
token_sha256 = ["{old}", "{new}"]
publish = ["amq.default"]
consume = ["test.billing.*"]
"#,
        old = sha(OLD),
        new = sha(NEW),
    );
    let warren = Warren::start_with(common::config_toml(&toml)).await;
    let queue = unique("billing");
    Broker::connect().await.queue(&queue).await;
    let mut client = warren.grpc().await;
    client
        .publish(with(publish("", &queue, "rotated"), NEW))
        .await
        .unwrap();
    let mut stream = client
        .subscribe(with(
            SubscribeRequest {
                queue: queue.clone(),
                prefetch: 1,
                ..Default::default()
            },
            OLD,
        ))
        .await
        .unwrap()
        .into_inner();
    let delivery = common::next(&mut stream).await;
    let ack = AckRequest {
        delivery_ids: vec![delivery.delivery_id.clone()],
    };
    assert_eq!(
        client.ack(with(ack, NEW)).await.unwrap().into_inner().acked,
        1
    );
    drop(stream);
    assert!(Broker::connect().await.is_empty(&queue).await);
    warren.stop().await;
}
