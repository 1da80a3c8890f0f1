//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! by `utoipa` from the handlers' own annotations and the request and
//! response types they parse and serialize, so that it follows the code.
//!
//! A few things are added after generation, in [`finish`]: the answers
//! every operation may give whatever it is (421 for a `Host` outside
//! `http.allowed_hosts`; 401 and 403 where a credential is needed when auth
//! is on); flattened types (`#[serde(flatten)]`, which utoipa writes as
//! `allOf`) merged into one object, so that a request type that refuses
//! unknown fields can say so (`additionalProperties: false`); the rules
//! between fields that serde's types cannot say (a selection is `ids` or
//! `all`; `body` or `body_base64`; `delay_ms` or `deliver_at_ms`); and the
//! limits this Warren is configured with.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::auth::Authenticated;

/// Problem responses, one component each, referred to by the handlers'
/// `responses(...)`.
macro_rules! problems {
    ($($name:ident = $desc:literal $(, $header:literal : $hdesc:literal)*;)*) => {$(
        #[doc = $desc]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                #[allow(unused_mut)]
                let mut builder = ResponseBuilder::new().description($desc).content(
                    "application/problem+json",
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                );
                $(
                    builder = builder.header(
                        $header,
                        HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::String))
                            .description(Some($hdesc))
                            .build(),
                    );
                )*
                (stringify!($name), builder.build().into())
            }
        }
    )*};
}

problems! {
    BadRequest = "Bad input (INVALID_ARGUMENT): malformed JSON, an unknown field, a bad name, property or header";
    Unauthorized = "Auth on: no credential, or one that does not check out (UNAUTHENTICATED)",
        "WWW-Authenticate": "`Bearer realm=\"warren\"`";
    Forbidden = "Auth on: outside the client's permissions, or refused by the broker (PERMISSION_DENIED)";
    NotFound = "A missing exchange, queue, group, key or delivery id (NOT_FOUND)";
    RequestTimeout = "The client paused sending the body longer than `http.read_timeout`";
    TooLarge = "Over a size limit (RESOURCE_EXHAUSTED): the body, or properties and headers that would not fit a frame";
    UnsupportedMediaType = "A JSON endpoint got another `Content-Type`";
    MisdirectedRequest = "A `Host` outside `http.allowed_hosts` (DNS rebinding)";
    Unroutable = "The message is unroutable: no queue is bound for it (FAILED_PRECONDITION)";
    Unprocessable = "Not in a state to do this: a reply to a delivery without `reply_to` (FAILED_PRECONDITION)";
    TooManyRequests = "Over a count limit or the client's `max_publish_rate` (RESOURCE_EXHAUSTED)",
        "Retry-After": "Seconds to wait before trying again";
    Unavailable = "The broker is unreachable, the circuit is open, Warren is shutting down, or request bodies are over `http.max_buffered_bytes` (UNAVAILABLE)",
        "Retry-After": "Seconds to wait before trying again";
    GatewayTimeout = "The deadline or `timeout_ms` passed (DEADLINE_EXCEEDED)";
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren",
        description = "A sidecar that lets any program use a RabbitMQ (AMQP 0-9-1) bus over \
            HTTP (and gRPC). Errors are `application/problem+json` (RFC 9457). When \
            `auth.enabled` is on, every operation that names a security requirement needs a \
            bearer token (or a client certificate); otherwise none is needed.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::publish::json,
        super::publish::raw,
        super::batch::publish,
        super::subscribe::subscribe,
        super::subscribe::ack,
        super::subscribe::nack,
        super::rpc::call,
        super::rpc::reply,
        super::dead_letters::list,
        super::dead_letters::replay,
        super::dead_letters::discard,
        super::ordered::blocked,
        super::ordered::retry,
        super::ordered::skip,
        super::queues::list,
        super::queues::show,
        super::queues::pause,
        super::queues::resume,
        super::spool::status,
        super::spool::dead,
        super::spool::replay,
        super::spool::discard,
        super::console::redirect,
        super::console::index,
        super::console::file,
        super::healthz,
        super::readyz,
        super::metrics,
        document,
    ),
    components(
        schemas(super::subscribe::JsonDelivery, super::problem::Body),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, RequestTimeout, TooLarge,
            UnsupportedMediaType, MisdirectedRequest, Unroutable, Unprocessable,
            TooManyRequests, Unavailable, GatewayTimeout,
        ),
    ),
    modifiers(&Security),
    tags(
        (name = "publish", description = "Publishing: JSON, raw bodies, CloudEvents, batches"),
        (name = "subscribe", description = "Deliveries as Server-Sent Events; acks and nacks"),
        (name = "rpc", description = "Request/reply over the bus"),
        (name = "dead letters", description = "Operators: list, replay, discard (admin)"),
        (name = "ordered", description = "Operators: blocked keys of ordered groups (admin)"),
        (name = "queues", description = "Operators: queues, pause and resume (admin)"),
        (name = "spool", description = "Operators: the spool and its dead letters (admin)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "console", description = "The operators' web console: its page and files (no credential)"),
    ),
)]
struct Doc;

/// The security schemes: a bearer token (a configured client's token or a
/// JWT), and `?access_token=` on the SSE endpoint.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Auth on: a configured client's token, or a JWT signed by the JWKS",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "Auth on, SSE only (EventSource cannot set headers): the bearer token",
            ))),
        );
    }
}

/// Request types that refuse unknown fields but are written with a
/// flattened part (so utoipa cannot say it).
const CLOSED: &[&str] = &["JsonMessage", "PublishJson", "CallJson", "ReplyJson"];

/// The document as a Warren with `config` serves it.
pub fn openapi(config: &crate::config::Config) -> Value {
    let doc = serde_json::to_value(Doc::openapi()).expect("the document serializes");
    let mut doc = finish(doc);
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    // Listings of dead letters, the broker's or the spool's.
    for path in ["/v1/dead-letters/{dlq}", "/v1/spool/dead"] {
        let parameters = &mut doc["paths"][path]["get"]["parameters"];
        if let Some(limit) = parameters
            .as_array_mut()
            .and_then(|ps| ps.iter_mut().find(|p| p["name"] == "limit"))
        {
            limit["schema"]["maximum"] = json!(config.dead_letters.max_list);
        }
    }
    doc
}

/// Rules between fields, by schema: a selection is a non-empty `ids` or
/// `all: true` (`bus::Selection::new`); a message has `body` or
/// `body_base64`, not both (`JsonMessage::into_message`); a publish has
/// `delay_ms` or `deliver_at_ms`, not both (`bus::schedule`).
fn rules(name: &str) -> Vec<(&'static str, Value)> {
    let selection = json!([
        {"required": ["ids"], "properties": {
            "ids": {"type": "array", "minItems": 1}, "all": {"const": false}}},
        {"required": ["all"], "properties": {"ids": {"type": "null"}, "all": {"const": true}}},
    ]);
    // (Each as "one of the two is absent or empty", `properties` holding
    // only for members that are there.)
    let one_body = json!({"anyOf": [
        {"properties": {"body": {"type": "null"}}},
        {"properties": {"body_base64": {"type": "null"}}},
    ]});
    let one_schedule = json!({"anyOf": [
        {"properties": {"delay_ms": {"const": 0}}},
        {"properties": {"deliver_at_ms": {"const": 0}}},
    ]});
    match name {
        "ReplayJson" | "DiscardJson" => vec![("oneOf", selection)],
        "JsonMessage" | "PatchJson" | "CallJson" | "ReplyJson" => {
            vec![("allOf", json!([one_body]))]
        }
        "PublishJson" => vec![("allOf", json!([one_body, one_schedule]))],
        _ => vec![],
    }
}

/// Request bodies that may be left out (utoipa writes `Option<T>` as a
/// nullable body instead): a raw publish's (an empty message), a retry's
/// (no correction).
const OPTIONAL_BODIES: &[&str] = &[
    "/v1/publish/{exchange}/{routing_key}",
    "/v1/ordered/{group}/blocked/{key}/retry",
];

/// The additions after generation (see the module's doc).
fn finish(mut doc: Value) -> Value {
    for path in OPTIONAL_BODIES {
        doc["paths"][path]["post"]["requestBody"]["required"] = json!(false);
    }
    // A raw body is bytes of any type: no schema describes it (utoipa has
    // no way to say so).
    if let Some(raw) = doc["paths"]["/v1/publish/{exchange}/{routing_key}"]["post"]["requestBody"]
        ["content"]["*/*"]
        .as_object_mut()
    {
        raw.remove("schema");
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.remove("RawBody");
    }
    let schemas = doc["components"]["schemas"].clone();
    if let Some(map) = doc["components"]["schemas"].as_object_mut() {
        for (name, schema) in map.iter_mut() {
            if schema.get("allOf").is_some() {
                *schema = merged(schema, &schemas);
            }
            if CLOSED.contains(&name.as_str()) {
                schema["additionalProperties"] = json!(false);
            }
            for (keyword, rule) in rules(name) {
                schema[keyword] = rule;
            }
        }
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in operation.values_mut() {
                let secured = operation.get("security").is_some();
                let Some(responses) = operation["responses"].as_object_mut() else {
                    continue;
                };
                let mut add = |status: &str, name: &str| {
                    responses.insert(
                        status.into(),
                        json!({"$ref": format!("#/components/responses/{name}")}),
                    );
                };
                add("421", "MisdirectedRequest");
                if secured {
                    add("401", "Unauthorized");
                    add("403", "Forbidden");
                }
            }
        }
    }
    doc
}

/// An `allOf` of objects (inline or `$ref`s to component schemas) as one
/// object with every property.
fn merged(schema: &Value, schemas: &Value) -> Value {
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    let parts = schema["allOf"].as_array().cloned().unwrap_or_default();
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                let target = &schemas[name];
                if target.get("allOf").is_some() {
                    merged(target, schemas)
                } else {
                    target.clone()
                }
            }
            None => part,
        };
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        if let Some(r) = part["required"].as_array() {
            required.extend(r.iter().cloned());
        }
    }
    let mut object = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        object["required"] = Value::Array(required);
    }
    if let Some(description) = schema.get("description") {
        object["description"] = description.clone();
    }
    object
}

/// `GET /openapi.json`.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    description = "Like every endpoint but health, readiness and (public) metrics, it needs a \
        credential when auth is on (any client's; no permission is asked).",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
    security(("bearer" = [])),
)]
pub async fn document(
    State(state): State<super::AppState>,
    Authenticated(_): Authenticated,
) -> impl IntoResponse {
    Json(openapi(state.bus.config()))
}
