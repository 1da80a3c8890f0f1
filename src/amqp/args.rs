//! Queue arguments Warren sets: dead-lettering and delay queues.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::config::QueueKind;

/// An AMQP long string.
pub fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// Arguments that dead-letter a queue's rejected messages to `dlq`. Quorum
/// queues dead-letter at least once (confirmed by the target), which needs
/// `overflow=reject-publish`; plain dead-lettering is not confirmed and can
/// lose messages.
pub fn dead_letter_to(args: &mut FieldTable, dlq: &str, kind: QueueKind) {
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(dlq));
    if kind == QueueKind::Quorum {
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
    }
}

/// Arguments of a delay queue: its messages expire after `delay` and
/// dead-letter back to `target`; the queue itself goes after `idle` unused.
pub fn delay_queue(delay: Duration, target: &str, idle: Duration, kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay.as_millis() as i64),
    );
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt((delay + idle).as_millis() as i64),
    );
    if kind == QueueKind::Quorum {
        args.insert("x-queue-type".into(), string("quorum"));
    }
    // Dead-lettering out of a quorum queue is confirmed only at least once.
    dead_letter_to(&mut args, target, kind);
    args
}
