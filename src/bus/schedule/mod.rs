//! Scheduled publish: a message confirmed now into a delay held by the
//! broker, and routed to its exchange and routing key when due.
//!
//! No plugin and nothing in Warren's memory: the delay is a chain of 28
//! levels (see `topology`), level `n` a queue whose messages all wait
//! 2^n s. A delay of D whole seconds is written as the routing key
//! `b27.b26.….b0`, the bits of D; each level's exchange sends a message
//! into its queue when its bit is 1 and on to the next level when it is 0,
//! and a queue's expired messages dead-letter to the next level with their
//! routing key. So a message waits exactly the levels of its set bits and
//! leaves level 0 into the exit queue `warren.scheduled`, where the
//! forwarder (`forward`) of any Warren on the vhost republishes it to its
//! target. Every message of one level queue has the same TTL, so expiry
//! order is arrival order: no message waits behind a later one.
//!
//! This module is the request side: the plan (`delay_ms` or `deliver_at_ms`
//! to whole seconds, the limits), the checks on the target at publish time,
//! and the rewrite of the publish into the chain's entry.
//! - `topology`: the levels, the exit and its dead-letter queue.
//! - `due`: what a due message becomes: its target, the properties it is
//!   forwarded or dead-lettered with.
//! - `forward`: the forwarder, a competing consumer of the exit queue.

mod due;
mod forward;
mod topology;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::publish::{Publish, Schedule};
use super::Bus;
use crate::amqp::probe::{self, Kind};
use crate::error::Error;

pub(crate) use forward::Forwarder;
pub(crate) use topology::Topology;
pub use topology::{DEAD_LETTER_QUEUE, ENTRY, EXIT, LEVELS};

/// The longest delay, in whole seconds: every level once (about 8.5 years).
pub const MAX_DELAY_SECS: u64 = (1 << LEVELS) - 1;

/// Prefix of the headers in which a scheduled message carries its target.
pub const HEADER_PREFIX: &str = "x-warren-scheduled-";
/// The exchange the message goes to when due.
pub const EXCHANGE_HEADER: &str = "x-warren-scheduled-exchange";
/// Its routing key then.
pub const ROUTING_KEY_HEADER: &str = "x-warren-scheduled-routing-key";
/// When it is due (Unix epoch ms); for operators and logs.
pub const DUE_HEADER: &str = "x-warren-scheduled-due-ms";
/// Whether it must be routable when due (false: `allow_unroutable`).
pub const MANDATORY_HEADER: &str = "x-warren-scheduled-mandatory";
/// Its `expiration_ms`: it counts from the due time, in the target queue
/// (in the chain it would cut the delay short).
pub const EXPIRATION_HEADER: &str = "x-warren-scheduled-expiration-ms";
/// Set when the message is transient: it waits persistent, so that a broker
/// restart does not lose it, and is forwarded transient.
pub const TRANSIENT_HEADER: &str = "x-warren-scheduled-transient";

/// Room in the content-header frame for what the chain adds: Warren's
/// headers above, and the broker's `x-death` entry for each level the
/// message waits in (at most 28 of about 200 bytes, plus the
/// `x-first-death-*` and `x-last-death-*` headers). Over the frame size, the
/// broker could not hand the message to the forwarder.
pub const CHAIN_HEADROOM: usize = 8 * 1024;

/// A delay the chain holds: whole seconds from now, and the due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// Whole seconds, 1 to [`MAX_DELAY_SECS`].
    pub secs: u64,
    /// When due, in Unix epoch ms.
    pub due_ms: i64,
}

/// The current time in Unix epoch ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What `schedule` asks for at `now_ms`: `None` to publish at once (no
/// schedule, a due time already past, or a delay that rounds to 0 s), else
/// the delay in whole seconds (the remaining ms rounded to the nearest
/// second). INVALID_ARGUMENT for both fields set, a negative
/// `deliver_at_ms`, or a delay over [`MAX_DELAY_SECS`].
pub fn plan(schedule: Schedule, now_ms: i64) -> Result<Option<Delay>, Error> {
    let Schedule {
        delay_ms,
        deliver_at_ms,
    } = schedule;
    if delay_ms != 0 && deliver_at_ms != 0 {
        return Err(Error::InvalidArgument(
            "set delay_ms or deliver_at_ms, not both".into(),
        ));
    }
    if deliver_at_ms < 0 {
        return Err(Error::InvalidArgument(format!(
            "deliver_at_ms {deliver_at_ms} is before the Unix epoch"
        )));
    }
    let remaining_ms = if delay_ms != 0 {
        delay_ms
    } else if deliver_at_ms != 0 {
        deliver_at_ms.saturating_sub(now_ms).max(0) as u64
    } else {
        return Ok(None);
    };
    let secs = remaining_ms.saturating_add(500) / 1000;
    if secs == 0 {
        return Ok(None);
    }
    if secs > MAX_DELAY_SECS {
        return Err(Error::InvalidArgument(format!(
            "a delay of {remaining_ms} ms is above the maximum of {MAX_DELAY_SECS} s (about 8.5 years)"
        )));
    }
    Ok(Some(Delay {
        secs,
        due_ms: now_ms.saturating_add(remaining_ms as i64),
    }))
}

/// The chain's routing key for a delay of `secs`: 28 words `0` or `1`, the
/// bits of `secs` from 2^27 down to 2^0.
pub fn routing_key(secs: u64) -> String {
    let mut key = String::with_capacity(2 * LEVELS as usize);
    for n in (0..LEVELS).rev() {
        key.push(if (secs >> n) & 1 == 1 { '1' } else { '0' });
        if n > 0 {
            key.push('.');
        }
    }
    key
}

/// Rewrites a validated publish into the chain's entry: its target goes
/// into Warren's headers, and what would change the wait (a per-message
/// TTL) or not survive it (transient delivery) into headers too. Client
/// headers starting `x-warren-` were refused, so these are Warren's own.
pub fn rewrite(publish: &mut Publish, delay: Delay) {
    let message = &mut publish.message;
    let headers = &mut message.headers;
    let exchange = std::mem::replace(&mut publish.exchange, ENTRY.to_owned());
    let routing_key = std::mem::replace(&mut publish.routing_key, routing_key(delay.secs));
    headers.insert(EXCHANGE_HEADER.into(), Value::String(exchange));
    headers.insert(ROUTING_KEY_HEADER.into(), Value::String(routing_key));
    headers.insert(DUE_HEADER.into(), Value::from(delay.due_ms));
    headers.insert(MANDATORY_HEADER.into(), Value::Bool(publish.mandatory));
    if message.expiration_ms > 0 {
        headers.insert(
            EXPIRATION_HEADER.into(),
            Value::from(std::mem::take(&mut message.expiration_ms)),
        );
    }
    if std::mem::take(&mut message.transient) {
        headers.insert(TRANSIENT_HEADER.into(), Value::Bool(true));
    }
    // The chain always routes (when it is whole): a return means it is not.
    publish.mandatory = true;
}

impl Bus {
    /// Checks the target of a scheduled publish (its exchange exists: the
    /// caller checked), declares the chain if this process has not, and
    /// rewrites the publish into it.
    ///
    /// For the default exchange the queue the routing key names must exist
    /// (unless unroutable messages are allowed). For a named exchange AMQP
    /// cannot tell whether a routing key would route without delivering
    /// the message, so routability is checked when the message is due: an
    /// unroutable one goes to [`DEAD_LETTER_QUEUE`] then.
    pub(crate) async fn schedule(&self, publish: &mut Publish, delay: Delay) -> Result<(), Error> {
        if publish.exchange.is_empty() && publish.mandatory {
            let queue = &publish.routing_key;
            let exists = !queue.is_empty()
                && probe::exists(&self.publish_pool, &self.probe_pool, Kind::Queue, queue).await?;
            if !exists {
                return Err(Error::Unroutable {
                    exchange: String::new(),
                    routing_key: queue.clone(),
                });
            }
        }
        self.scheduled.ensure().await?;
        rewrite(publish, delay);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    const NOW: i64 = 1_700_000_000_000;

    fn delay(ms: u64) -> Result<Option<Delay>, Error> {
        plan(
            Schedule {
                delay_ms: ms,
                deliver_at_ms: 0,
            },
            NOW,
        )
    }

    fn at(ms: i64) -> Result<Option<Delay>, Error> {
        plan(
            Schedule {
                delay_ms: 0,
                deliver_at_ms: ms,
            },
            NOW,
        )
    }

    #[test]
    fn delays_round_to_whole_seconds() {
        assert_eq!(delay(0).unwrap(), None, "no schedule");
        assert_eq!(delay(499).unwrap(), None, "rounds to now");
        let d = delay(500).unwrap().unwrap();
        assert_eq!((d.secs, d.due_ms), (1, NOW + 500));
        assert_eq!(delay(1_499).unwrap().unwrap().secs, 1);
        assert_eq!(delay(1_500).unwrap().unwrap().secs, 2);
        assert_eq!(delay(30 * 86_400_000).unwrap().unwrap().secs, 2_592_000);
        let max = delay(MAX_DELAY_SECS * 1000).unwrap().unwrap();
        assert_eq!(max.secs, MAX_DELAY_SECS);
    }

    #[test]
    fn due_times_count_from_now() {
        assert_eq!(at(NOW + 2_000).unwrap().unwrap().secs, 2);
        assert_eq!(at(NOW + 2_000).unwrap().unwrap().due_ms, NOW + 2_000);
        assert_eq!(at(NOW - 1).unwrap(), None, "past: at once");
        assert_eq!(at(1).unwrap(), None, "long past: at once");
        assert_eq!(at(NOW + 200).unwrap(), None, "rounds to now");
    }

    #[test]
    fn bad_schedules_are_invalid() {
        let both = plan(
            Schedule {
                delay_ms: 1_000,
                deliver_at_ms: NOW + 1_000,
            },
            NOW,
        );
        assert!(matches!(both, Err(Error::InvalidArgument(_))));
        assert!(matches!(at(-1), Err(Error::InvalidArgument(_))));
        let over = delay(MAX_DELAY_SECS * 1000 + 500);
        match over {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("268435455"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(delay(u64::MAX), Err(Error::InvalidArgument(_))));
        assert!(matches!(at(i64::MAX), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn routing_keys_are_the_bits_high_to_low() {
        let key = routing_key(1);
        assert_eq!(key.split('.').count(), 28);
        assert_eq!(key, format!("{}1", "0.".repeat(27)));
        assert_eq!(routing_key(0), format!("{}0", "0.".repeat(27)));
        assert_eq!(routing_key(MAX_DELAY_SECS), format!("{}1", "1.".repeat(27)));
        let five = routing_key(5);
        assert!(five.ends_with("0.1.0.1"), "{five}");
        // Word i (from the left) is bit 27 - i.
        let secs = 2_592_000u64;
        for (i, word) in routing_key(secs).split('.').enumerate() {
            let bit = (secs >> (27 - i)) & 1;
            assert_eq!(word, bit.to_string());
        }
    }

    #[test]
    fn the_headroom_holds_every_level_s_trace() {
        // What the broker adds as a message expires through all 28 levels
        // (RabbitMQ's x-death entry: count, reason, queue, time, exchange,
        // routing-keys), with Warren's headers for the longest names.
        let key = routing_key(MAX_DELAY_SECS);
        let deaths: Vec<Value> = (0..LEVELS)
            .map(|n| {
                serde_json::json!({
                    "count": 1, "reason": "expired", "queue": topology::level(n),
                    "time": NOW / 1000, "exchange": topology::level(n),
                    "routing-keys": [key],
                })
            })
            .collect();
        let mut publish = Publish {
            exchange: "e".repeat(255),
            routing_key: "k".repeat(255),
            message: Message {
                expiration_ms: 1,
                transient: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let before = crate::amqp::codec::properties_size(&publish.message);
        let delay = Delay {
            secs: MAX_DELAY_SECS,
            due_ms: i64::MAX,
        };
        rewrite(&mut publish, delay);
        let headers = &mut publish.message.headers;
        headers.insert("x-death".into(), Value::Array(deaths));
        for which in ["first", "last"] {
            for (field, value) in [
                ("queue", "warren.delay.27"),
                ("reason", "expired"),
                ("exchange", "warren.delay.27"),
            ] {
                headers.insert(format!("x-{which}-death-{field}"), value.into());
            }
        }
        let added = crate::amqp::codec::properties_size(&publish.message) - before;
        assert!(added <= CHAIN_HEADROOM, "{added} bytes");
    }

    #[test]
    fn the_rewrite_moves_the_target_and_ttl_into_headers() {
        let mut publish = Publish {
            exchange: "shop".into(),
            routing_key: "orders.new".into(),
            message: Message {
                expiration_ms: 60_000,
                transient: true,
                message_id: "m1".into(),
                ..Default::default()
            },
            mandatory: false,
            ..Default::default()
        };
        rewrite(
            &mut publish,
            Delay {
                secs: 3,
                due_ms: NOW + 3_000,
            },
        );
        assert_eq!(publish.exchange, ENTRY);
        assert_eq!(publish.routing_key, routing_key(3));
        assert!(publish.mandatory, "the chain always routes");
        let m = &publish.message;
        assert_eq!((m.expiration_ms, m.transient), (0, false));
        assert_eq!(m.message_id, "m1");
        assert_eq!(m.headers[EXCHANGE_HEADER], "shop");
        assert_eq!(m.headers[ROUTING_KEY_HEADER], "orders.new");
        assert_eq!(m.headers[DUE_HEADER], NOW + 3_000);
        assert_eq!(m.headers[MANDATORY_HEADER], false);
        assert_eq!(m.headers[EXPIRATION_HEADER], 60_000);
        assert_eq!(m.headers[TRANSIENT_HEADER], true);
        assert!(m.headers.keys().all(|k| k.starts_with(HEADER_PREFIX)));
    }
}
