//! Declares the configured exchanges, queues and bindings.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

use super::args::{dead_letter_to, string};
use lapin::ExchangeKind;

use super::Channel;
use serde_json::{Map, Value};
use tracing::info;

use crate::config::{self, DestinationKind, QueueKind, Topology};

/// A declaration the broker refused, naming what was declared.
#[derive(Debug, thiserror::Error)]
#[error("declaring {what} failed: {reason}")]
pub struct Refused {
    /// `exchange "orders"`, `queue "work"`, `binding "a" -> "b"`.
    pub what: String,
    /// The broker's reason.
    pub reason: String,
}

fn arguments(args: &config::Arguments) -> FieldTable {
    let map: Map<String, Value> = args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    super::codec::to_table(&map)
}

/// The dead-letter queue Warren gives a queue it declares: `<queue>.dlq`,
/// unless the queue has a dead-letter exchange of its own, opts out, or is a
/// stream (streams do not dead-letter).
pub fn dead_letter_queue(q: &config::Queue) -> Option<String> {
    let own = q.arguments.contains_key("x-dead-letter-exchange");
    (q.dead_letter_queue && !own && q.kind != QueueKind::Stream).then(|| format!("{}.dlq", q.name))
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// Declares everything in `topology` on `channel`, in order: exchanges,
/// queues, bindings. Stops at the first refusal (the channel is then closed).
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), Refused> {
    let refused = |what: String| {
        move |e: lapin::Error| Refused {
            what,
            reason: e.to_string(),
        }
    };
    for e in &topology.exchanges {
        let options = ExchangeDeclareOptions {
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            ..Default::default()
        };
        channel
            .exchange_declare(
                e.name.as_str().into(),
                exchange_kind(&e.kind),
                options,
                arguments(&e.arguments),
            )
            .await
            .map_err(refused(format!("exchange {:?}", e.name)))?;
    }
    for q in &topology.queues {
        let mut args = arguments(&q.arguments);
        args.insert("x-queue-type".into(), string(q.kind.as_str()));
        if let Some(dlq) = dead_letter_queue(q) {
            let dlq_options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let mut dlq_args = FieldTable::default();
            dlq_args.insert("x-queue-type".into(), string(q.kind.as_str()));
            channel
                .queue_declare(dlq.as_str().into(), dlq_options, dlq_args)
                .await
                .map_err(refused(format!(
                    "queue {dlq:?} (the dead-letter queue of {:?})",
                    q.name
                )))?;
            dead_letter_to(&mut args, &dlq, q.kind);
        }
        let options = QueueDeclareOptions {
            durable: q.durable,
            auto_delete: q.auto_delete,
            ..Default::default()
        };
        channel
            .queue_declare(q.name.as_str().into(), options, args)
            .await
            .map_err(refused(format!("queue {:?}", q.name)))?;
    }
    for b in &topology.bindings {
        let what = format!("binding {:?} -> {:?}", b.source, b.destination);
        let args = arguments(&b.arguments);
        let key = b.routing_key.as_str().into();
        match b.destination_type {
            DestinationKind::Queue => channel
                .queue_bind(
                    b.destination.as_str().into(),
                    b.source.as_str().into(),
                    key,
                    QueueBindOptions::default(),
                    args,
                )
                .await
                .map_err(refused(what))?,
            DestinationKind::Exchange => channel
                .exchange_bind(
                    b.destination.as_str().into(),
                    b.source.as_str().into(),
                    key,
                    ExchangeBindOptions::default(),
                    args,
                )
                .await
                .map_err(refused(what))?,
        }
    }
    info!(
        exchanges = topology.exchanges.len(),
        queues = topology.queues.len(),
        bindings = topology.bindings.len(),
        "topology declared"
    );
    Ok(())
}
