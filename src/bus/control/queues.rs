//! The queues Warren knows, as operators see them: the configured
//! topology's queues and their dead-letter queues, the ordered groups (each
//! one entry, its depth summed over its partitions) and theirs, the pushed
//! queues, and the delay queues this Warren declared for retries.
//!
//! Each is looked at with a passive declare on a channel of its own (see
//! `amqp::probe`), so that a missing one closes no channel anyone shares; a
//! configured queue that is missing is listed with `exists: false`, a delay
//! queue that expired is left out.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::QueueInfo;
use crate::amqp::topology::dead_letter_queue;
use crate::auth::{Access, Caller};
use crate::bus::Bus;
use crate::config::Queue;
use crate::error::Error;

/// Queues looked at at once.
const CONCURRENCY: usize = 8;

/// What a listed queue is to Warren.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = QueueKind)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A queue of `[topology]` or `[[push]]`.
    Queue,
    /// Where another queue's failed messages go.
    DeadLetter,
    /// A delay queue holding messages until their next attempt.
    Retry,
    /// An ordered group (`[[ordered]]`), its partitions summed.
    OrderedGroup,
}

impl Kind {
    /// Its name, as in the JSON listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::DeadLetter => "dead_letter",
            Kind::Retry => "retry",
            Kind::OrderedGroup => "ordered_group",
        }
    }
}

/// One entry of the listing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = ListedQueue)]
pub struct Listed {
    #[serde(flatten)]
    pub info: QueueInfo,
    pub kind: Kind,
    /// Where its failed messages go, when Warren knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
    /// False for a configured queue the broker does not have (deleted
    /// since Warren declared it).
    pub exists: bool,
}

impl Bus {
    /// Every queue Warren knows, with depth, consumers and paused state.
    pub async fn queues(&self, caller: &Caller) -> Result<Vec<Listed>, Error> {
        let _pass = self.enter()?;
        caller.permit(Access::Admin)?;
        let known = self.known_queues();
        futures::stream::iter(known)
            .map(|(name, kind, dlq)| async move {
                match self.queue_info(&name).await {
                    Ok(info) => Ok(Some(Listed {
                        info,
                        kind,
                        dead_letter_queue: dlq,
                        exists: true,
                    })),
                    Err(Error::NotFound(_)) if kind == Kind::Retry => Ok(None),
                    Err(Error::NotFound(_)) => Ok(Some(Listed {
                        info: QueueInfo {
                            name,
                            messages: 0,
                            consumers: 0,
                            paused: false,
                        },
                        kind,
                        dead_letter_queue: dlq,
                        exists: false,
                    })),
                    Err(e) => Err(e),
                }
            })
            .buffered(CONCURRENCY)
            .try_filter_map(|listed| async move { Ok(listed) })
            .try_collect()
            .await
    }

    /// Names, kinds and dead-letter queues, in configuration order, each
    /// name once.
    fn known_queues(&self) -> Vec<(String, Kind, Option<String>)> {
        let mut known: Vec<(String, Kind, Option<String>)> = Vec::new();
        let mut add = |name: String, kind: Kind, dlq: Option<String>| {
            if !known.iter().any(|(n, ..)| *n == name) {
                known.push((name, kind, dlq));
            }
        };
        for queue in &self.config.topology.queues {
            let dlq = dead_letter_queue(queue).or_else(|| own_dead_letter_queue(queue));
            add(queue.name.clone(), Kind::Queue, dlq.clone());
            if let Some(dlq) = dlq {
                add(dlq, Kind::DeadLetter, None);
            }
        }
        for config in &self.config.ordered {
            if let Some(group) = self.ordered.get(&config.name) {
                add(config.name.clone(), Kind::OrderedGroup, Some(group.dlq()));
                add(group.dlq(), Kind::DeadLetter, None);
            }
        }
        for push in &self.config.push {
            add(push.queue.clone(), Kind::Queue, None);
        }
        for name in self.retrier.delay_queues() {
            add(name, Kind::Retry, None);
        }
        known
    }
}

/// The dead-letter queue a configured queue's own arguments name: the
/// default exchange and a routing key.
fn own_dead_letter_queue(queue: &Queue) -> Option<String> {
    let exchange = queue.arguments.get("x-dead-letter-exchange")?.as_str()?;
    let key = queue.arguments.get("x-dead-letter-routing-key")?.as_str()?;
    (exchange.is_empty() && !key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(json: serde_json::Value) -> Queue {
        serde_json::from_value(json).expect("a queue")
    }

    #[test]
    fn dead_letter_queues_are_warrens_or_the_queues_own() {
        let plain = queue(serde_json::json!({"name": "a"}));
        assert_eq!(dead_letter_queue(&plain).as_deref(), Some("a.dlq"));
        let own = queue(serde_json::json!({"name": "b", "arguments": {
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "b.failed"}}));
        assert_eq!(dead_letter_queue(&own), None);
        assert_eq!(own_dead_letter_queue(&own).as_deref(), Some("b.failed"));
        let elsewhere = queue(serde_json::json!({"name": "c",
            "arguments": {"x-dead-letter-exchange": "dlx"}}));
        assert_eq!(own_dead_letter_queue(&elsewhere), None);
    }

    #[test]
    fn entries_serialize_flat() {
        let listed = Listed {
            info: QueueInfo {
                name: "q".into(),
                messages: 3,
                consumers: 1,
                paused: true,
            },
            kind: Kind::OrderedGroup,
            dead_letter_queue: Some("q.dlq".into()),
            exists: true,
        };
        assert_eq!(
            serde_json::to_value(&listed).unwrap(),
            serde_json::json!({"name": "q", "messages": 3, "consumers": 1, "paused": true,
                "kind": "ordered_group", "dead_letter_queue": "q.dlq", "exists": true})
        );
        for kind in [
            Kind::Queue,
            Kind::DeadLetter,
            Kind::Retry,
            Kind::OrderedGroup,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
