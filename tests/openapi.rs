//! `GET /openapi.json`: an OpenAPI 3.1 document of every route the HTTP
//! router registers (read from `src/http/mod.rs`, so that a new route
//! without its annotation fails here), with problem+json errors, the bearer
//! scheme, and the schemas of what Warren really answers.

mod common;

use std::collections::BTreeSet;

use common::{unique, Broker, Warren};
use serde_json::{json, Value};

async fn document(warren: &Warren) -> Value {
    let response = reqwest::get(warren.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    response.json().await.unwrap()
}

/// The (path, method) pairs `router()` registers, from its source.
fn routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/http/mod.rs");
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let call: String = rest
            .chars()
            .take_while(|c| *c != ')')
            .filter(|c| !c.is_whitespace())
            .collect();
        let (path, handler) = call.split_once(',').expect("route(path, handler)");
        let path = path.trim_matches('"').to_owned();
        for method in handler.split('.') {
            let method = method.split('(').next().unwrap();
            if ["get", "post", "put", "delete", "patch"].contains(&method) {
                routes.insert((path.clone(), method.to_owned()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_document_is_openapi_3_1_of_every_route() {
    let warren = Warren::start().await;
    let doc = document(&warren).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Warren");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let routes = routes();
    assert!(routes.len() >= 22, "{routes:?}");
    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((path.clone(), method.clone()));
            let id = operation["operationId"].as_str().expect("an operationId");
            assert!(operation_ids.insert(id.to_owned()), "{id} twice");
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "308"),
                "{method} {path}: a success (or the console's redirect)"
            );
            assert!(responses.contains_key("421"), "{method} {path}: 421");
            if operation.get("security").is_some() {
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
            }
        }
    }
    assert_eq!(
        documented, routes,
        "every route of src/http/mod.rs is documented, and nothing else"
    );

    // Errors are problem+json, with Retry-After where the contract says.
    let responses = &doc["components"]["responses"];
    for name in ["BadRequest", "NotFound", "Unavailable", "TooManyRequests"] {
        assert_eq!(
            responses[name]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{name}"
        );
    }
    assert!(responses["Unavailable"]["headers"]["Retry-After"].is_object());
    assert!(responses["Unauthorized"]["headers"]["WWW-Authenticate"].is_object());
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "retryable"] {
        assert!(problem["properties"][field].is_object(), "{field}");
    }
    let status_of = |path: &str, method: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    // Per the contract: 422 unroutable, 413 too large, 415 not JSON, 504.
    let publish = status_of("/v1/publish", "post");
    for status in ["400", "404", "413", "415", "422", "429", "503", "504"] {
        assert!(publish.contains(status), "publish {status}");
    }
    assert!(status_of("/v1/call", "post").contains("504"));
    assert!(status_of("/readyz", "get").contains("503"));

    // The bearer scheme, and ?access_token= on the SSE endpoint.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["access_token"]["in"], "query");
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    let subscribe = &doc["paths"]["/v1/subscribe/{queue}"]["get"];
    assert!(subscribe["responses"]["200"]["content"]["text/event-stream"].is_object());

    // Request types that refuse unknown fields say so, flattened or not.
    let schemas = &doc["components"]["schemas"];
    for name in [
        "PublishJson",
        "CallJson",
        "ReplyJson",
        "AckJson",
        "NackJson",
        "ReplayJson",
    ] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
        assert!(schemas[name].get("allOf").is_none() || name != "ListedQueue");
    }
    assert!(schemas["PublishJson"]["properties"]["body_base64"].is_object());
    assert!(schemas["PublishJson"]["properties"]["exchange"].is_object());
    assert!(schemas["ListedQueue"]["properties"]["messages"].is_object());
    // The limit this Warren is configured with.
    let limit = doc["paths"]["/v1/dead-letters/{dlq}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(limit["schema"]["maximum"], 1000);
    warren.stop().await;
}

/// What Warren answers has the fields the document's schemas list as
/// required, and nothing they leave out.
#[tokio::test]
async fn answers_match_their_schemas() {
    let queue = unique("openapi");
    let warren = Warren::start_with(common::config_toml(&format!(
        "[[topology.queues]]\nname = \"{queue}\"\ntype = \"classic\"\n"
    )))
    .await;
    let doc = document(&warren).await;
    let schemas = &doc["components"]["schemas"];
    let http = reqwest::Client::new();
    let check = |name: &str, answer: &Value| {
        let schema = &schemas[name];
        let properties = schema["properties"].as_object().unwrap();
        let answer = answer.as_object().unwrap();
        for key in answer.keys() {
            assert!(properties.contains_key(key), "{name}: {key} not documented");
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(
                answer.contains_key(required.as_str().unwrap()),
                "{name}: {required} missing in {answer:?}"
            );
        }
    };
    let published: Value = http
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": {"n": 1}, "request_id": "r1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check("Published", &published);
    let info: Value = http
        .get(warren.url(&format!("/v1/queues/{queue}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check("QueueInfo", &info);
    let listing: Value = http
        .get(warren.url("/v1/queues"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check("QueueListing", &listing);
    for entry in listing["queues"].as_array().unwrap() {
        check("ListedQueue", entry);
    }
    let response = http
        .post(warren.url("/v1/ack"))
        .json(&json!({"delivery_ids": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    check("Problem", &problem);
    // A whole number written as a float is an integer, as JSON Schema says.
    let response = http
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": "x", "priority": 3.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": queue, "body": "x", "priority": 3.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A correction names only what can be corrected (as gRPC's MessagePatch).
    let response = http
        .post(warren.url(&format!("/v1/dead-letters/{queue}.dlq/replay")))
        .json(&json!({"all": true, "message": {"message_id": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A numeric header that is there holds a number.
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("x-warren-priority", "")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An array is not a request object.
    let response = http
        .post(warren.url("/v1/nack"))
        .json(&json!([["id"], false, 0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    warren.stop().await;
    Broker::connect()
        .await
        .delete_queues(&[queue.clone(), format!("{queue}.dlq")])
        .await;
}

/// With auth on the document needs a credential, like every endpoint but
/// health, readiness and public metrics.
#[tokio::test]
async fn with_auth_on_the_document_needs_a_credential() {
    use sha2::{Digest, Sha256};
    let token = "openapi-token-0123456789";
    let warren = Warren::start_with(common::config_toml(&format!(
        "[auth]\nenabled = true\n[[auth.clients]]\nname = \"reader\"\ntoken_sha256 = \"{}\"\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    )))
    .await;
    let url = warren.url("/openapi.json");
    let http = reqwest::Client::new();
    let (status, _) = common::problem(http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 401);
    let response = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "any client may read it");
    warren.stop().await;
}
