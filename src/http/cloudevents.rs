//! CloudEvents over HTTP: publishing one in binary or structured mode, and
//! delivering messages as structured CloudEvents (`?format=cloudevents`).
//!
//! Attributes travel in AMQP as the CloudEvents AMQP binding has them:
//! application properties (AMQP 0-9-1 headers) named `cloudEvents:<name>`,
//! with `datacontenttype` as the message's content type and the data as its
//! body. Warren also sets the message's `message_id` to the event's `id` and
//! its `type` to the event's `type`. Structured events are parsed and
//! checked by the `cloudevents-sdk` crate (required attributes, spec version,
//! `data` / `data_base64`); binary-mode headers are read here.

use axum::http::{header, HeaderMap};
use base64::Engine;
use cloudevents::{AttributesReader, Data, Event};
use serde_json::{Map, Value};

use crate::bus::Delivery;
use crate::error::Error;
use crate::message::Message;

/// The AMQP binding's prefix of attribute headers.
pub const PREFIX: &str = "cloudEvents:";

/// The structured-mode media type.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// Whether a request is a binary-mode CloudEvent (`ce-specversion` set).
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
}

/// Whether a request is a structured-mode CloudEvent.
pub fn is_structured(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(STRUCTURED))
}

/// A structured-mode CloudEvent (spec 1.0) as `POST /v1/publish` takes it,
/// for the OpenAPI document: the request itself is parsed and checked by
/// `cloudevents-sdk`'s `Event`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StructuredEvent {
    #[schema(pattern = "^1\\.0$")]
    specversion: String,
    #[schema(min_length = 1)]
    id: String,
    /// A URI-reference.
    #[schema(min_length = 1)]
    source: String,
    #[schema(min_length = 1)]
    r#type: String,
    subject: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    time: Option<String>,
    datacontenttype: Option<String>,
    /// A URI.
    dataschema: Option<String>,
    /// The data as JSON (or text), or else:
    #[schema(value_type = Option<Value>)]
    data: Option<Value>,
    /// The data as base64 bytes.
    #[schema(format = Byte)]
    data_base64: Option<String>,
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("not a valid CloudEvent: {what}"))
}

fn attribute(message: &mut Message, name: &str, value: String) {
    message
        .headers
        .insert(format!("{PREFIX}{name}"), Value::String(value));
}

/// A binary-mode CloudEvent (`ce-*` headers, the body as its data) as a
/// message.
pub fn from_binary(headers: &HeaderMap, body: bytes::Bytes) -> Result<Message, Error> {
    let mut message = Message {
        body,
        ..Default::default()
    };
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| invalid(format!("header {name} is not visible ASCII")))?
            .to_owned();
        if attr.is_empty()
            || !attr
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(format!("{attr:?} is not an attribute name")));
        }
        match attr {
            "specversion" if value != "1.0" => {
                return Err(invalid(format!("specversion {value:?} (Warren takes 1.0)")))
            }
            "id" => message.message_id = value.clone(),
            "type" => message.kind = value.clone(),
            "time" => message.timestamp = seconds(&value)?,
            _ => {}
        }
        attribute(&mut message, attr, value);
    }
    for required in ["id", "source", "type"] {
        let present = message
            .headers
            .get(&format!("{PREFIX}{required}"))
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty());
        if !present {
            return Err(invalid(format!("ce-{required} is missing")));
        }
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        message.content_type = ct.to_owned();
    }
    Ok(message)
}

fn seconds(time: &str) -> Result<i64, Error> {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| t.timestamp())
        .map_err(|e| invalid(format!("time {time:?}: {e}")))
}

/// A structured-mode CloudEvent (JSON) as a message.
pub fn from_structured(json: &[u8]) -> Result<Message, Error> {
    let event: Event = serde_json::from_slice(json).map_err(invalid)?;
    let mut message = Message {
        message_id: event.id().to_owned(),
        kind: event.ty().to_owned(),
        ..Default::default()
    };
    attribute(&mut message, "specversion", event.specversion().to_string());
    attribute(&mut message, "id", event.id().to_owned());
    attribute(&mut message, "source", event.source().to_string());
    attribute(&mut message, "type", event.ty().to_owned());
    if let Some(subject) = event.subject() {
        attribute(&mut message, "subject", subject.to_owned());
    }
    if let Some(time) = event.time() {
        attribute(&mut message, "time", time.to_rfc3339());
        message.timestamp = time.timestamp();
    }
    if let Some(schema) = event.dataschema() {
        attribute(&mut message, "dataschema", schema.to_string());
    }
    for (name, value) in event.iter_extensions() {
        attribute(&mut message, name, value.to_string());
    }
    let content_type = event.datacontenttype().map(str::to_owned);
    message.body = match event.data() {
        None => bytes::Bytes::new(),
        Some(Data::Binary(b)) => b.clone().into(),
        Some(Data::String(s)) => s.clone().into_bytes().into(),
        Some(Data::Json(v)) => serde_json::to_vec(v).expect("JSON serializes").into(),
    };
    message.content_type = match (content_type, event.data()) {
        (Some(ct), _) => ct,
        (None, Some(Data::Json(_))) => "application/json".into(),
        _ => String::new(),
    };
    Ok(message)
}

/// A delivery as a structured CloudEvent: its `cloudEvents:*` headers when
/// it was published as one, else attributes made up from the message (`id`
/// its message id, or the delivery id when it has none, `source` `/warren/queues/<queue>`, `type` its type or
/// `warren.delivery`). Warren's own extensions `warrendeliveryid` and
/// `warrenattempt` say how to settle it.
pub fn to_structured(d: &Delivery) -> Value {
    let m = &d.message;
    let mut event = Map::new();
    let mut others = Map::new();
    for (name, value) in &m.headers {
        match name.strip_prefix(PREFIX) {
            Some(attr) => {
                event.insert(attr.to_owned(), value.clone());
            }
            None => {
                others.insert(name.clone(), value.clone());
            }
        }
    }
    let mut default = |k: &str, v: String| {
        event.entry(k.to_owned()).or_insert(Value::String(v));
    };
    default("specversion", "1.0".into());
    // A message published without an id gets its delivery's (ids are
    // required).
    let id = if m.message_id.is_empty() {
        &d.id
    } else {
        &m.message_id
    };
    default("id", id.clone());
    default("source", format!("/warren/queues/{}", d.queue));
    default(
        "type",
        if m.kind.is_empty() {
            "warren.delivery".into()
        } else {
            m.kind.clone()
        },
    );
    if !m.content_type.is_empty() {
        event.insert(
            "datacontenttype".into(),
            Value::String(m.content_type.clone()),
        );
    }
    event.insert("warrendeliveryid".into(), Value::String(d.id.clone()));
    event.insert("warrenattempt".into(), Value::from(d.attempt));
    let json = m.content_type.split(';').next().is_some_and(|t| {
        let t = t.trim();
        t == "application/json" || t.ends_with("+json")
    });
    match (json, serde_json::from_slice::<Value>(&m.body)) {
        (true, Ok(value)) => {
            event.insert("data".into(), value);
        }
        _ => match std::str::from_utf8(&m.body) {
            Ok(text) if !m.body.is_empty() => {
                event.insert("data".into(), Value::String(text.to_owned()));
            }
            Ok(_) => {}
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&m.body);
                event.insert("data_base64".into(), Value::String(encoded));
            }
        },
    }
    if !others.is_empty() {
        // Application headers that are no attributes, as Warren's extension.
        event.insert("warrenheaders".into(), Value::Object(others));
    }
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_events_become_messages_with_the_bindings_headers() {
        let event = json!({"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.created",
            "subject": "42", "time": "2026-12-02T10:00:00Z", "datacontenttype": "application/json",
            "tenant": "acme", "data": {"qty": 1}});
        let m = from_structured(event.to_string().as_bytes()).unwrap();
        assert_eq!(
            (m.message_id.as_str(), m.kind.as_str()),
            ("e-1", "order.created")
        );
        assert_eq!(m.content_type, "application/json");
        assert_eq!(&m.body[..], br#"{"qty":1}"#);
        assert_eq!(m.headers["cloudEvents:source"], "/orders");
        assert_eq!(m.headers["cloudEvents:tenant"], "acme");
        assert_eq!(m.timestamp, 1_796_205_600);
        for bad in [
            json!({"id": "x", "source": "/s", "type": "t"}),
            json!({"specversion": "1.0", "source": "/s", "type": "t"}),
            json!({"specversion": "0.9", "id": "x", "source": "/s", "type": "t"}),
        ] {
            assert!(matches!(
                from_structured(bad.to_string().as_bytes()),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn binary_mode_needs_the_required_attributes() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "e-2".parse().unwrap());
        h.insert("ce-source", "/s".parse().unwrap());
        assert!(from_binary(&h, bytes::Bytes::new()).is_err(), "no type");
        h.insert("ce-type", "t".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let m = from_binary(&h, bytes::Bytes::from_static(b"hi")).unwrap();
        assert_eq!(
            (m.message_id.as_str(), m.content_type.as_str()),
            ("e-2", "text/plain")
        );
        h.insert("ce-specversion", "0.3".parse().unwrap());
        assert!(from_binary(&h, bytes::Bytes::new()).is_err());
    }
}
