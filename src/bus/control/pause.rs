//! Pausing and resuming queues, for every Warren on the vhost.
//!
//! Pausing declares the queue's marker (see the module above) and announces
//! it; every subscription of the queue then stops taking deliveries (its
//! consumer is cancelled, what the broker had sent ahead goes back to the
//! queue) while its stream stays open, and deliveries the client holds may
//! still be acked. Resuming deletes the marker and announces it.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde::Serialize;

use super::{marker, Command, EXCHANGE};
use crate::amqp::probe;
use crate::auth::{Access, Caller};
use crate::bus::{Bus, Publish};
use crate::error::Error;
use crate::message::{check_short, Message};

/// A queue as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueInfo {
    pub name: String,
    /// Ready messages (for an ordered group: in its partitions and waiting
    /// behind keys taken aside).
    pub messages: u64,
    pub consumers: u64,
    pub paused: bool,
}

impl Bus {
    /// `queue`'s depth, consumers and paused state; NOT_FOUND when neither
    /// a queue nor an ordered group has that name.
    pub async fn queue(&self, caller: &Caller, queue: &str) -> Result<QueueInfo, Error> {
        let _pass = self.enter()?;
        caller.permit(Access::Admin)?;
        self.queue_info(queue).await
    }

    /// Pauses `queue` on every Warren of the vhost, until resumed.
    pub async fn pause(&self, caller: &Caller, queue: &str) -> Result<QueueInfo, Error> {
        self.set_paused(caller, queue, true).await
    }

    /// Resumes a paused `queue` (resuming one that is not paused is a no-op).
    pub async fn resume(&self, caller: &Caller, queue: &str) -> Result<QueueInfo, Error> {
        self.set_paused(caller, queue, false).await
    }

    async fn set_paused(
        &self,
        caller: &Caller,
        queue: &str,
        paused: bool,
    ) -> Result<QueueInfo, Error> {
        let _pass = self.enter_broker()?;
        caller.permit(Access::Admin)?;
        let mut info = self.queue_info(queue).await?;
        let pool = &self.publish_pool;
        let channel = pool.open_channel().await?;
        let result = async {
            let name = marker(queue);
            if paused {
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                let declare =
                    channel.queue_declare(name.as_str().into(), durable, FieldTable::default());
                pool.op("queue.declare", declare).await?;
            } else {
                let delete =
                    channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default());
                pool.op("queue.delete", delete).await?;
            }
            super::declare_exchange(pool, &channel).await
        }
        .await;
        channel.close(pool.operation_timeout()).await;
        result?;
        self.announce(Command::Paused {
            queue: queue.to_owned(),
        })
        .await?;
        info.paused = paused;
        Ok(info)
    }

    /// Tells every Warren on the vhost (this one included).
    pub(crate) async fn announce(&self, command: Command) -> Result<(), Error> {
        let body = serde_json::to_vec(&command).expect("commands serialize");
        let publish = Publish {
            exchange: EXCHANGE.into(),
            message: Message {
                body: body.into(),
                content_type: "application/json".into(),
                transient: true,
                ..Default::default()
            },
            mandatory: false,
            ..Default::default()
        };
        self.publish_shared(publish).await.map(|_| ())
    }

    pub(super) async fn queue_info(&self, queue: &str) -> Result<QueueInfo, Error> {
        check_short("queue", queue)?;
        if queue.is_empty() {
            return Err(Error::InvalidArgument("name a queue".into()));
        }
        let parts = self.queues_of(queue);
        let mut info = QueueInfo {
            name: queue.to_owned(),
            messages: 0,
            consumers: 0,
            paused: false,
        };
        for part in &parts {
            let state = probe::queue(&self.publish_pool, &self.probe_pool, part)
                .await?
                .ok_or_else(|| Error::NotFound(format!("queue {part:?} does not exist")))?;
            info.messages += u64::from(state.messages);
            info.consumers += u64::from(state.consumers);
        }
        info.paused = self.control.is_paused(queue).await?;
        Ok(info)
    }

    /// The queues a name stands for: an ordered group's partitions, or
    /// the queue itself.
    fn queues_of(&self, name: &str) -> Vec<String> {
        let Some(group) = self.ordered.get(name) else {
            return vec![name.to_owned()];
        };
        (0..group.partitions())
            .flat_map(|p| {
                // Held messages are the blocked keys' (see their listing).
                let aside = (0..group.slots()).map(move |s| group.wait(p, s));
                std::iter::once(group.queue(p)).chain(aside)
            })
            .collect()
    }
}
