//! The broker operations of an ordered subscriber: moves (published in
//! order and confirmed before the originals are acked), acks, gets.

use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use lapin::Confirmation;

use super::keys::{Msg, Source};
use super::TICK_HEADER;
use crate::amqp::{self};
use crate::error::Error;

use super::consumer::Task;

pub(super) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// A message that makes the partition's active subscriber read its slots.
pub fn tick() -> (bytes::Bytes, BasicProperties) {
    let mut headers = FieldTable::default();
    headers.insert(TICK_HEADER.into(), text("reload"));
    (
        bytes::Bytes::new(),
        BasicProperties::default().with_headers(headers),
    )
}

impl Task {
    /// Publishes `msgs` to `queue` in order, confirmed, then acks them on
    /// partition `p`'s channel.
    pub(super) async fn move_to(
        &mut self,
        p: u32,
        queue: &str,
        msgs: Vec<Msg>,
    ) -> Result<(), Error> {
        if msgs.is_empty() {
            return Ok(());
        }
        let copies: Vec<(bytes::Bytes, BasicProperties)> = msgs
            .iter()
            .map(|m| (m.body.clone(), m.properties.clone()))
            .collect();
        self.publish(queue, copies).await?;
        for m in msgs {
            self.ack(p, m.source).await?;
        }
        Ok(())
    }

    /// Publishes to `queue` (default exchange) in order and waits for every
    /// confirm.
    pub(super) async fn publish(
        &mut self,
        queue: &str,
        messages: Vec<(bytes::Bytes, BasicProperties)>,
    ) -> Result<(), Error> {
        if self.confirm.as_ref().is_none_or(|c| !c.is_open()) {
            self.confirm = Some(self.s.publish_pool.open_confirm_channel().await?);
        }
        let channel = self.confirm.clone().expect("opened above");
        let work = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for (body, properties) in messages {
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = channel
                    .basic_publish("".into(), queue.into(), options, &body, properties)
                    .await
                    .map_err(amqp::classify)?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(amqp::classify)? {
                    Confirmation::Ack(None) | Confirmation::NotRequested => {}
                    Confirmation::Ack(Some(_)) => {
                        return Err(Error::unavailable(format!("queue {queue:?} is missing")))
                    }
                    Confirmation::Nack(_) => {
                        return Err(Error::unavailable(format!(
                            "the broker refused a message for {queue:?}"
                        )))
                    }
                }
            }
            Ok(())
        };
        let limit = self.s.pool.operation_timeout() * 3;
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable(
                "the broker did not confirm a move in time",
            )),
        }
    }

    /// Acks a held message (sent with the next flush of acks).
    pub(super) async fn ack(&mut self, p: u32, source: Source) -> Result<(), Error> {
        self.parts[p as usize].tags.ack(source.tag());
        Ok(())
    }

    /// Sends the acks settled so far: one `multiple` ack where it can.
    pub(super) async fn flush_acks(&mut self) -> Result<(), Error> {
        for part in &mut self.parts {
            let acks = part.tags.flush();
            let Some(channel) = part.channel.as_ref() else {
                continue; // gone: the broker took them back
            };
            for (tag, multiple) in acks {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple })
                    .await
                    .map_err(amqp::classify)?;
            }
        }
        Ok(())
    }

    pub(super) async fn nack(&mut self, p: u32, tag: u64, requeue: bool) -> Result<(), Error> {
        let part = &mut self.parts[p as usize];
        part.tags.nacked(tag);
        let channel = part
            .channel
            .as_ref()
            .ok_or_else(|| Error::unavailable("the partition has no channel"))?;
        let options = BasicNackOptions {
            requeue,
            multiple: false,
        };
        channel
            .basic_nack(tag, options)
            .await
            .map_err(amqp::classify)
    }

    /// One message from `queue` on partition `p`'s channel, unacked.
    pub(super) async fn get(&mut self, p: u32, queue: &str) -> Result<Option<AmqpDelivery>, Error> {
        let channel = self.parts[p as usize]
            .channel
            .as_ref()
            .ok_or_else(|| Error::unavailable("the partition has no channel"))?;
        let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
        let got = self.s.pool.op("basic.get", get).await?.map(|m| m.delivery);
        if let Some(m) = &got {
            self.parts[p as usize].tags.held(m.delivery_tag);
        }
        Ok(got)
    }
}
