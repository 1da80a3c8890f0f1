//! Queue arguments Warren sets: dead-lettering, delay queues and the
//! levels of the scheduled-publish chain.

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

/// Arguments that dead-letter a queue's expired (or rejected) messages to
/// `exchange`, keeping their routing key; at least once from a quorum queue.
pub fn dead_letter_via(args: &mut FieldTable, exchange: &str, kind: QueueKind) {
    args.insert("x-dead-letter-exchange".into(), string(exchange));
    if kind == QueueKind::Quorum {
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
    }
}

/// Arguments of one level of the scheduled-publish chain: every message
/// waits `wait`, then dead-letters to `next` with its routing key.
pub fn delay_level(wait: Duration, next: &str, kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(wait.as_millis() as i64),
    );
    if kind == QueueKind::Quorum {
        args.insert("x-queue-type".into(), string("quorum"));
    }
    dead_letter_via(&mut args, next, kind);
    args
}

/// Arguments of a queue of `kind` that dead-letters to `dlq` (a quorum
/// queue's over-limit redeliveries, or rejections).
pub fn dead_lettering_queue(dlq: &str, kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    if kind == QueueKind::Quorum {
        args.insert("x-queue-type".into(), string("quorum"));
    }
    dead_letter_to(&mut args, dlq, kind);
    args
}
