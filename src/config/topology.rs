//! `[topology]`: exchanges, queues and bindings that Warren declares at start-up.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, Error};

/// Everything declared at start-up, in this order: exchanges, queues, bindings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topology {
    /// `[[topology.exchanges]]`.
    pub exchanges: Vec<Exchange>,
    /// `[[topology.queues]]`.
    pub queues: Vec<Queue>,
    /// `[[topology.bindings]]`.
    pub bindings: Vec<Binding>,
}

/// Arguments as given in TOML: integers, floats, booleans, strings, arrays, tables.
pub type Arguments = BTreeMap<String, serde_json::Value>;

/// An exchange to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// Exchange name (1 to 255 bytes, not starting with `amq.`).
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`, or a plugin's type
    /// (`x-delayed-message`, ...).
    #[serde(rename = "type", default = "default_exchange_type")]
    pub kind: String,
    /// Survives a broker restart.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted when its last binding is removed.
    #[serde(default)]
    pub auto_delete: bool,
    /// Only reachable through exchange-to-exchange bindings.
    #[serde(default)]
    pub internal: bool,
    /// Arguments such as `alternate-exchange`.
    #[serde(default)]
    pub arguments: Arguments,
}

fn default_exchange_type() -> String {
    "direct".into()
}

fn yes() -> bool {
    true
}

/// The kind of a queue (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A classic queue.
    #[default]
    Classic,
    /// A replicated quorum queue.
    Quorum,
    /// An append-only stream.
    Stream,
}

impl QueueKind {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }
}

/// A queue to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Queue name (1 to 255 bytes, not starting with `amq.`).
    pub name: String,
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type", default)]
    pub kind: QueueKind,
    /// Survives a broker restart (quorum queues and streams always do).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted when its last consumer goes away (classic only).
    #[serde(default)]
    pub auto_delete: bool,
    /// Arguments such as `x-message-ttl`, `x-max-length`,
    /// `x-dead-letter-exchange`.
    #[serde(default)]
    pub arguments: Arguments,
    /// Give the queue a dead-letter queue `<name>.dlq` (unless `arguments`
    /// set a dead-letter exchange of their own). Not for streams.
    #[serde(default = "yes")]
    pub dead_letter_queue: bool,
}

/// What a binding's destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// Exchange to queue.
    #[default]
    Queue,
    /// Exchange to exchange.
    Exchange,
}

/// A binding to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange messages come from.
    pub source: String,
    /// The queue or exchange they go to.
    pub destination: String,
    /// `queue` (default) or `exchange`.
    #[serde(default)]
    pub destination_type: DestinationKind,
    /// Binding key (for direct and topic exchanges).
    #[serde(default)]
    pub routing_key: String,
    /// Binding arguments (for headers exchanges: `x-match` and the headers).
    #[serde(default)]
    pub arguments: Arguments,
}

const EXCHANGE_TYPES: [&str; 4] = ["direct", "fanout", "topic", "headers"];

fn check_name(key: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 255 {
        return Err(invalid(key, name, "must be 1 to 255 bytes"));
    }
    if name.starts_with("amq.") {
        return Err(invalid(
            key,
            name,
            "names starting with amq. are reserved by the broker",
        ));
    }
    Ok(())
}

impl Topology {
    /// Checks names and types; the broker checks the rest at declaration.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, exchange) in self.exchanges.iter().enumerate() {
            check_name(&format!("topology.exchanges[{i}].name"), &exchange.name)?;
            let plugin_type = exchange.kind.starts_with("x-");
            if !EXCHANGE_TYPES.contains(&exchange.kind.as_str()) && !plugin_type {
                return Err(invalid(
                    format!("topology.exchanges[{i}].type"),
                    &exchange.kind,
                    "expected direct, fanout, topic, headers or a plugin type x-...",
                ));
            }
        }
        for (i, queue) in self.queues.iter().enumerate() {
            check_name(&format!("topology.queues[{i}].name"), &queue.name)?;
            if queue.kind != QueueKind::Classic && (!queue.durable || queue.auto_delete) {
                return Err(invalid(
                    format!("topology.queues[{i}].type"),
                    queue.kind.as_str(),
                    "quorum queues and streams must be durable and not auto-delete",
                ));
            }
            let overflow = queue.arguments.get("x-overflow").and_then(|v| v.as_str());
            let warren_dlq =
                queue.dead_letter_queue && !queue.arguments.contains_key("x-dead-letter-exchange");
            if queue.kind == QueueKind::Quorum
                && warren_dlq
                && overflow.is_some_and(|o| o != "reject-publish")
            {
                return Err(invalid(
                    format!("topology.queues[{i}].arguments"),
                    overflow.unwrap_or_default(),
                    "a quorum queue dead-letters at least once only with x-overflow = reject-publish (or set dead_letter_queue = false)",
                ));
            }
            if queue.arguments.contains_key("x-queue-type") {
                return Err(invalid(
                    format!("topology.queues[{i}].arguments"),
                    "x-queue-type",
                    "set the queue's type with `type`",
                ));
            }
        }
        for (i, binding) in self.bindings.iter().enumerate() {
            // The default exchange takes no bindings, hence no empty source.
            check_name(&format!("topology.bindings[{i}].source"), &binding.source).or_else(
                |e| {
                    if binding.source.starts_with("amq.") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                },
            )?;
            check_name(
                &format!("topology.bindings[{i}].destination"),
                &binding.destination,
            )
            .or_else(|e| {
                let exchange = binding.destination_type == DestinationKind::Exchange;
                if exchange && binding.destination.starts_with("amq.") {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            if binding.routing_key.len() > 255 {
                return Err(invalid(
                    format!("topology.bindings[{i}].routing_key"),
                    &binding.routing_key,
                    "must be at most 255 bytes",
                ));
            }
        }
        Ok(())
    }
}
