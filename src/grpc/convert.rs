//! Protobuf messages to and from the bus's types.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as PValue};
use serde_json::{Map, Number, Value};

use crate::bus::{Publish, Schedule};
use crate::error::Error;
use crate::message::{Headers, Message};
use crate::proto;

/// Largest integer a double holds exactly: numbers beyond it stay floats.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

fn to_json(value: PValue) -> Result<Value, Error> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
                Value::Number(Number::from(n as i64))
            } else {
                Value::Number(Number::from_f64(n).ok_or_else(|| {
                    Error::InvalidArgument(format!("header value {n} is not a finite number"))
                })?)
            }
        }
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .map(to_json)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(s)) => Value::Object(to_map(s.fields)?),
    })
}

fn to_map(fields: impl IntoIterator<Item = (String, PValue)>) -> Result<Map<String, Value>, Error> {
    fields
        .into_iter()
        .map(|(k, v)| Ok((k, to_json(v)?)))
        .collect()
}

fn from_json(value: Value) -> PValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(from_json).collect(),
        }),
        Value::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
    };
    PValue { kind: Some(kind) }
}

/// A `Struct` of headers as the bus's headers.
pub fn headers(s: Struct) -> Result<Headers, Error> {
    to_map(s.fields)
}

/// A protobuf message as a bus message.
pub fn message(m: proto::Message) -> Result<Message, Error> {
    let headers: Headers = to_map(m.headers)?;
    Ok(Message {
        body: m.body,
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        headers,
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        kind: m.r#type,
        priority: m.priority,
        expiration_ms: m.expiration_ms,
        timestamp: m.timestamp,
        app_id: m.app_id,
        transient: m.transient,
        reply_to: m.reply_to,
        user_id: m.user_id,
    })
}

/// A bus message as a protobuf message.
pub fn to_proto(m: Message) -> proto::Message {
    proto::Message {
        body: m.body,
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        headers: m
            .headers
            .into_iter()
            .map(|(k, v)| (k, from_json(v)))
            .collect(),
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        r#type: m.kind,
        priority: m.priority,
        expiration_ms: m.expiration_ms,
        timestamp: m.timestamp,
        app_id: m.app_id,
        transient: m.transient,
        reply_to: m.reply_to,
        user_id: m.user_id,
    }
}

/// A subscribe request as the bus's.
pub fn subscribe(r: proto::SubscribeRequest) -> crate::bus::SubscribeRequest {
    crate::bus::SubscribeRequest {
        queue: r.queue,
        prefetch: r.prefetch,
        auto_ack: r.auto_ack,
        exchange: r.exchange,
        binding_keys: r.binding_keys,
        header_match: r.header_match.into_iter().collect(),
        match_all: r.match_all,
        consumer_priority: r.consumer_priority,
        ack_deadline_ms: r.ack_deadline_ms,
    }
}

/// A delivery as protobuf.
pub fn delivery(d: crate::bus::Delivery) -> proto::Delivery {
    proto::Delivery {
        delivery_id: d.id,
        message: Some(to_proto(d.message)),
        exchange: d.exchange,
        routing_key: d.routing_key,
        redelivered: d.redelivered,
        attempt: d.attempt,
        reply_to: d.reply_to,
        queue: d.queue,
        ordering_key: d.ordering_key,
    }
}

/// A publish request as a bus publish.
pub fn publish(r: proto::PublishRequest) -> Result<Publish, Error> {
    Ok(Publish {
        exchange: r.exchange,
        routing_key: r.routing_key,
        message: message(r.message.unwrap_or_default())?,
        mandatory: !r.allow_unroutable,
        ordering_key: r.ordering_key,
        schedule: Schedule {
            delay_ms: r.delay_ms,
            deliver_at_ms: r.deliver_at_ms,
        },
        allow_spool: r.allow_spool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_become_integers_and_back() {
        let v = to_json(from_json(json!({"n": 3, "f": 2.5, "l": [true, null, "s"]}))).unwrap();
        assert_eq!(v, json!({"n": 3, "f": 2.5, "l": [true, null, "s"]}));
        assert!(v["n"].is_i64());
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let nan = PValue {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert!(matches!(to_json(nan), Err(Error::InvalidArgument(_))));
    }
}
