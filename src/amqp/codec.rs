//! Mapping between Warren's [`Message`] and AMQP properties, and between
//! JSON-shaped header values and typed AMQP field values.
//!
//! Integers become signed 64-bit fields (`l`), floats doubles (`d`), strings
//! long strings (`S`), arrays field arrays (`A`), objects field tables (`F`),
//! null void (`V`). On the way back every AMQP integer width, floats,
//! decimals and timestamps become JSON numbers; byte arrays become base64
//! strings; strings that are not UTF-8 are decoded lossily.

use base64::Engine;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{Map, Number, Value};

use crate::error::Error;
use crate::message::{Headers, Message};

/// Deepest nesting of tables and arrays accepted in headers.
const MAX_DEPTH: usize = 32;

/// Checks that headers can be encoded: key lengths, integer range, depth.
pub fn check_headers(headers: &Headers) -> Result<(), Error> {
    fn check(value: &Value, path: &str, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "header {path} nests deeper than {MAX_DEPTH} levels"
            )));
        }
        match value {
            Value::Number(n) if n.as_i64().is_none() && n.as_f64().is_none() => Err(
                Error::InvalidArgument(format!("header {path}: number {n} is out of range")),
            ),
            Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(Error::InvalidArgument(
                format!("header {path}: integer {n} does not fit in a signed 64-bit field"),
            )),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| check(v, &format!("{path}[{i}]"), depth + 1)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                crate::message::check_short(&format!("header key {path}.{k:.20}"), k)?;
                check(v, &format!("{path}.{k}"), depth + 1)
            }),
            _ => Ok(()),
        }
    }
    headers.iter().try_for_each(|(k, v)| check(v, k, 1))
}

/// A JSON value as an AMQP field value. Callers validate with
/// [`check_headers`] first; out-of-range values degrade instead of panicking.
pub fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(to_table(map)),
    }
}

/// A JSON object as an AMQP field table (keys over 255 bytes are skipped;
/// [`check_headers`] refuses them before this is reached).
pub fn to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            table.insert(key, to_amqp(v));
        }
    }
    table
}

/// An AMQP field value as JSON.
pub fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(from_table(table)),
        AMQPValue::ByteArray(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// An AMQP field table as a JSON object.
pub fn from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
        .collect()
}

fn short(value: &str) -> Option<ShortString> {
    if value.is_empty() {
        None
    } else {
        // Validated by Message::validate; an over-long value is dropped, never a panic.
        ShortString::try_new(value).ok()
    }
}

/// The encoded size of a header value (its type tag and payload), as AMQP
/// 0-9-1 field tables encode it.
fn value_size(value: &Value) -> usize {
    1 + match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 8,
        Value::String(s) => 4 + s.len(),
        Value::Array(items) => 4 + items.iter().map(value_size).sum::<usize>(),
        Value::Object(map) => 4 + table_size(map) - 4,
    }
}

/// The encoded size of a field table (its length prefix and entries).
pub fn table_size(map: &Headers) -> usize {
    4 + map
        .iter()
        .map(|(k, v)| 1 + k.len() + value_size(v))
        .sum::<usize>()
}

/// The encoded size of a message's properties in a content-header frame.
pub fn properties_size(message: &Message) -> usize {
    let shorts = [
        &message.content_type,
        &message.content_encoding,
        &message.correlation_id,
        &message.reply_to,
        &message.message_id,
        &message.kind,
        &message.user_id,
        &message.app_id,
    ];
    let strings: usize = shorts.iter().map(|s| 1 + s.len()).sum();
    // Flags, delivery mode, priority, timestamp, expiration as digits.
    2 + 1 + 1 + 8 + 21 + strings + table_size(&message.headers)
}

/// The AMQP properties of a message. `message.validate()` has passed.
pub fn properties(message: &Message) -> BasicProperties {
    let mut p =
        BasicProperties::default().with_delivery_mode(if message.transient { 1 } else { 2 });
    if let Some(v) = short(&message.content_type) {
        p = p.with_content_type(v);
    }
    if let Some(v) = short(&message.content_encoding) {
        p = p.with_content_encoding(v);
    }
    if !message.headers.is_empty() {
        p = p.with_headers(to_table(&message.headers));
    }
    if message.priority > 0 {
        p = p.with_priority(message.priority.min(255) as u8);
    }
    if let Some(v) = short(&message.correlation_id) {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = short(&message.reply_to) {
        p = p.with_reply_to(v);
    }
    if message.expiration_ms > 0 {
        p = p.with_expiration(message.expiration_ms.to_string().into());
    }
    if let Some(v) = short(&message.message_id) {
        p = p.with_message_id(v);
    }
    if message.timestamp > 0 {
        p = p.with_timestamp(message.timestamp as u64);
    }
    if let Some(v) = short(&message.kind) {
        p = p.with_type(v);
    }
    if let Some(v) = short(&message.user_id) {
        p = p.with_user_id(v);
    }
    if let Some(v) = short(&message.app_id) {
        p = p.with_app_id(v);
    }
    p
}

/// A message from its body and AMQP properties (as delivered or returned).
pub fn message(body: bytes::Bytes, p: &BasicProperties) -> Message {
    let s = |v: &Option<ShortString>| {
        v.as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    };
    Message {
        body,
        content_type: s(p.content_type()),
        content_encoding: s(p.content_encoding()),
        headers: p.headers().as_ref().map(from_table).unwrap_or_default(),
        message_id: s(p.message_id()),
        correlation_id: s(p.correlation_id()),
        kind: s(p.kind()),
        priority: p.priority().map(u32::from).unwrap_or(0),
        expiration_ms: p
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok())
            .unwrap_or(0),
        timestamp: p.timestamp().map(|t| t as i64).unwrap_or(0),
        app_id: s(p.app_id()),
        transient: *p.delivery_mode() == Some(1),
        reply_to: s(p.reply_to()),
        user_id: s(p.user_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_round_trip_through_amqp_types() {
        let headers = json!({
            "int": 42, "neg": -7, "float": 1.5, "bool": true, "str": "héllo", "null": null,
            "list": [1, "two", [3]], "table": {"nested": {"deep": 1}},
        });
        let map = headers.as_object().unwrap();
        check_headers(map).unwrap();
        let table = to_table(map);
        assert_eq!(table.inner()["int"], AMQPValue::LongLongInt(42));
        assert_eq!(table.inner()["float"], AMQPValue::Double(1.5));
        assert!(matches!(table.inner()["table"], AMQPValue::FieldTable(_)));
        assert_eq!(Value::Object(from_table(&table)), headers);
    }

    #[test]
    fn every_amqp_integer_width_reads_as_an_integer() {
        for v in [
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortUInt(7),
            AMQPValue::LongInt(-70_000),
            AMQPValue::LongUInt(4_000_000_000),
            AMQPValue::Timestamp(1_700_000_000),
        ] {
            assert!(from_amqp(&v).is_i64() || from_amqp(&v).is_u64(), "{v:?}");
        }
    }

    #[test]
    fn out_of_range_headers_are_refused() {
        let too_big = json!({"n": u64::MAX});
        assert!(check_headers(too_big.as_object().unwrap()).is_err());
        let long_key = json!({"t": {"k".repeat(256): 1}});
        assert!(check_headers(long_key.as_object().unwrap()).is_err());
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(check_headers(json!({"d": deep}).as_object().unwrap()).is_err());
    }

    #[test]
    fn properties_round_trip() {
        let m = Message {
            body: bytes::Bytes::from_static(b"x"),
            content_type: "text/plain".into(),
            content_encoding: "identity".into(),
            headers: json!({"a": 1}).as_object().unwrap().clone(),
            message_id: "m1".into(),
            correlation_id: "c1".into(),
            kind: "t".into(),
            priority: 5,
            expiration_ms: 60_000,
            timestamp: 1_700_000_000,
            app_id: "app".into(),
            transient: true,
            reply_to: "r".into(),
            user_id: "guest".into(),
        };
        let p = properties(&m);
        assert_eq!(*p.delivery_mode(), Some(1));
        assert_eq!(message(m.body.clone(), &p), m);
    }
}
