//! How a key's messages flow: the next head handed to the client, filed on
//! arrival, taken aside when busy,
//! the next one made the head when the last is settled, slots read when a
//! subscriber becomes a partition's active one.

use crate::amqp::codec;
use crate::bus::subscribe::{Delivery, DeliveryId};
use crate::message::RESERVED_PREFIX;
use lapin::message::Delivery as AmqpDelivery;
use tracing::info;

use super::keys::{header, Msg, Source};
use super::{KEY_HEADER, RELEASED_HEADER, TICK_HEADER};
use crate::error::Error;

use super::consumer::Task;

impl Task {
    /// The next ready head as a client delivery.
    pub(super) fn next_delivery(&mut self) -> Option<Delivery> {
        while let Some((p, name)) = self.ready.pop_front() {
            let group = self.s.group.name().to_owned();
            let part = &mut self.parts[p as usize];
            if part.stalled.is_some() || part.releasing {
                // Nothing leaves a stalled partition until it has a slot.
                self.stalled.push((p, name));
                continue;
            }
            let Some(key) = part.keys.get_mut(&name) else {
                continue;
            };
            let Some(msg) = key.current.as_ref() else {
                continue;
            };
            if key.sent.is_some() || key.retry.is_some() || key.blocked {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            key.sent = Some(seq);
            let mut message = codec::message(msg.body.clone(), &msg.properties);
            message
                .headers
                .retain(|k, _| !k.starts_with(RESERVED_PREFIX));
            let id = DeliveryId {
                subscription: self.s.key,
                generation: self.generation,
                tag: seq,
            };
            let delivery = Delivery {
                id: id.to_string(),
                reply_to: message.reply_to.clone(),
                message,
                exchange: group.clone(),
                routing_key: p.to_string(),
                redelivered: msg.redelivered || msg.attempt > 1,
                attempt: msg.attempt,
                queue: group,
                ordering_key: name.clone(),
            };
            self.sent.insert(seq, (p, name));
            self.deadlines.start(seq);
            self.s.metrics.deliveries_total.inc();
            return Some(delivery);
        }
        None
    }

    /// A delivery from partition `p`.
    pub(super) async fn arrived(&mut self, p: u32, d: AmqpDelivery) -> Result<(), Error> {
        self.parts[p as usize].tags.held(d.delivery_tag);
        if !self.parts[p as usize].loaded {
            // The first delivery since this subscriber became the partition's
            // active consumer: what the last one handed over, and what is
            // aside in the slots, comes first.
            self.load(p).await?;
        }
        self.file(p, d, Source::Partition).await
    }

    /// Files a message from the partition (or its handover queue) under its key.
    pub(super) async fn file(
        &mut self,
        p: u32,
        d: AmqpDelivery,
        source: fn(u64) -> Source,
    ) -> Result<(), Error> {
        let name = header(&d.properties, KEY_HEADER).unwrap_or_default();
        let msg = Msg {
            source: source(d.delivery_tag),
            seq: self.next_seq,
            attempt: super::keys::attempt(&d.properties, d.redelivered),
            redelivered: d.redelivered,
            body: d.data.into(),
            properties: d.properties,
        };
        self.next_seq += 1;
        if header(&msg.properties, TICK_HEADER).is_some() {
            // A nudge to read the slots again (an operator released a key,
            // or a subscriber started): not for the client.
            self.ack(p, msg.source).await?;
            return self.reload(p).await;
        }
        let part = &mut self.parts[p as usize];
        let key = part.keys.entry(name.clone()).or_default();
        if let Some(slot) = key.slot {
            // Taken aside: it joins the rest of its key in the slot.
            let wait = self.s.group.wait(p, slot);
            return self.move_to(p, &wait, vec![msg]).await;
        }
        if key.current.is_none() {
            key.current = Some(msg);
            self.ready.push_back((p, name));
            return Ok(());
        }
        // Behind its head; taken aside when the head is settled, if by then
        // it is busy (see `advance`).
        key.pending.push_back(msg);
        Ok(())
    }

    /// Moves a busy key's waiting messages into a slot of its own (its head
    /// is settled: nothing of it stays unacked in the partition).
    pub(super) async fn take_aside(&mut self, p: u32, name: &str) -> Result<(), Error> {
        let part = &mut self.parts[p as usize];
        let Some(slot) = part.claim(name) else {
            return Ok(());
        };
        let key = part.keys.get_mut(name).expect("the key is known");
        key.slot = Some(slot);
        let moved: Vec<Msg> = key.pending.drain(..).collect();
        let wait = self.s.group.wait(p, slot);
        self.s
            .metrics
            .ordered_events
            .with_label_values(&["taken_aside"])
            .inc();
        info!(
            group = self.s.group.name(),
            partition = p,
            slot,
            waiting = moved.len(),
            "a busy key is taken aside"
        );
        self.move_to(p, &wait, moved).await
    }

    /// Reads partition `p`'s slots: which keys are aside, which blocked.
    pub(super) async fn load(&mut self, p: u32) -> Result<(), Error> {
        let mut found = Vec::new();
        for slot in 0..self.s.group.slots() {
            let held = self.s.group.held(p, slot);
            let wait = self.s.group.wait(p, slot);
            let (peeked, blocked) = match self.get(p, &held).await? {
                Some(m) => {
                    let released = header(&m.properties, RELEASED_HEADER).is_some();
                    (Some(m), !released)
                }
                None => (self.get(p, &wait).await?, false),
            };
            let Some(m) = peeked else { continue };
            let name = header(&m.properties, KEY_HEADER).unwrap_or_default();
            if header(&m.properties, RELEASED_HEADER).is_some() {
                // Kept to be the key's head: given back, it could be out of
                // sight (a listing holding it) when the key looks again.
                found.push((slot, name, false, Some(m)));
            } else {
                self.nack(p, m.delivery_tag, true).await?;
                found.push((slot, name, blocked, None));
            }
        }
        let part = &mut self.parts[p as usize];
        part.loaded = true;
        let mut resume = Vec::new();
        for (slot, name, blocked, released) in found {
            part.slots[slot] = Some(name.clone());
            let key = part.keys.entry(name.clone()).or_default();
            key.slot = Some(slot);
            key.blocked = blocked;
            if !blocked {
                resume.push((name, released));
            }
        }
        if !resume.is_empty() || part.slots.iter().any(Option::is_some) {
            info!(
                group = self.s.group.name(),
                partition = p,
                aside = part.slots.iter().flatten().count(),
                "serving a partition with keys aside"
            );
        }
        for (name, released) in resume {
            self.advance_from(p, &name, released).await?;
        }
        self.take_over(p).await?;
        Ok(())
    }

    /// An operator changed partition `p`: blocked keys may be free to go.
    pub(super) async fn reload(&mut self, p: u32) -> Result<(), Error> {
        let Some(part) = self.parts.get(p as usize) else {
            return Ok(());
        };
        if !part.loaded {
            return Ok(());
        }
        let blocked: Vec<(usize, String)> = part
            .keys
            .iter()
            .filter(|(_, k)| k.blocked)
            .filter_map(|(name, k)| k.slot.map(|s| (s, name.clone())))
            .collect();
        for (slot, name) in blocked {
            let held = self.s.group.held(p, slot);
            let released = match self.get(p, &held).await? {
                Some(m) if header(&m.properties, RELEASED_HEADER).is_some() => m,
                Some(m) => {
                    self.nack(p, m.delivery_tag, true).await?;
                    continue;
                }
                // Someone is looking at it: still blocked (looked at again
                // on the next nudge).
                None => continue,
            };
            info!(
                group = self.s.group.name(),
                partition = p,
                slot,
                "a blocked key was released"
            );
            if let Some(key) = self.parts[p as usize].keys.get_mut(&name) {
                key.blocked = false;
            }
            // The released message goes on as the key's head as it is:
            // given back and read again, a listing could hold it just then,
            // and the key's waiting messages would overtake it.
            self.advance_from(p, &name, Some(released)).await?;
        }
        Ok(())
    }

    /// Every served partition's blocked keys looked at again (a release
    /// whose nudge came while someone held the message in sight).
    pub(super) async fn reload_all(&mut self) -> Result<(), Error> {
        for p in 0..self.parts.len() as u32 {
            self.reload(p).await?;
        }
        Ok(())
    }

    /// Every key that can go on does (after a resume).
    pub(super) async fn advance_all(&mut self) -> Result<(), Error> {
        for p in 0..self.parts.len() as u32 {
            let names: Vec<String> = self.parts[p as usize]
                .keys
                .iter()
                .filter(|(_, k)| k.current.is_none() && !k.blocked)
                .map(|(n, _)| n.clone())
                .collect();
            for name in names {
                self.advance(p, &name).await?;
            }
        }
        Ok(())
    }

    /// The key's head was settled (or released): its next message becomes
    /// the head, from the slot when it holds one, else from the partition.
    pub(super) async fn advance(&mut self, p: u32, name: &str) -> Result<(), Error> {
        self.advance_from(p, name, None).await
    }

    /// [`Self::advance`], with the slot's held message already taken
    /// (`held`: a released one the caller just read); given back if the
    /// key cannot go on now.
    async fn advance_from(
        &mut self,
        p: u32,
        name: &str,
        held: Option<AmqpDelivery>,
    ) -> Result<(), Error> {
        // Paused (`advance_all` runs on resume), gone, busy or blocked: the
        // key does not go on now, and a taken held message goes back (read
        // again when it does).
        let goes_on = !self.paused()
            && self.parts[p as usize]
                .keys
                .get(name)
                .is_some_and(|k| k.current.is_none() && !k.blocked);
        if !goes_on {
            if let Some(m) = held {
                self.nack(p, m.delivery_tag, true).await?;
            }
            return Ok(());
        }
        let busy_at = self.busy_at();
        let part = &mut self.parts[p as usize];
        let key = part.keys.get_mut(name).expect("known: checked above");
        if key.slot.is_none()
            && key.pending.len() >= busy_at
            && part.free_slots() > part.slots.len() / 2
        {
            self.take_aside(p, name).await?;
        }
        let part = &mut self.parts[p as usize];
        let key = part.keys.get_mut(name).expect("still known");
        let Some(slot) = key.slot else {
            match key.pending.pop_front() {
                Some(next) => {
                    key.current = Some(next);
                    self.ready.push_back((p, name.to_owned()));
                }
                None => {
                    part.keys.remove(name);
                }
            }
            // (A held message comes only with a key in a slot.)
            if let Some(m) = held {
                self.nack(p, m.delivery_tag, true).await?;
            }
            return Ok(());
        };
        let (held_queue, wait) = (self.s.group.held(p, slot), self.s.group.wait(p, slot));
        let head = match held {
            Some(m) => Some(m),
            None => self.get(p, &held_queue).await?,
        };
        let next = match head {
            Some(m) if header(&m.properties, RELEASED_HEADER).as_deref() == Some("skip") => {
                // The held message was skipped: on with the waiting ones.
                self.ack(p, Source::Held(m.delivery_tag)).await?;
                self.get(p, &wait)
                    .await?
                    .map(|m| (m, Source::Wait as fn(u64) -> Source, false))
            }
            Some(m) if header(&m.properties, RELEASED_HEADER).is_some() => {
                Some((m, Source::Held as fn(u64) -> Source, true))
            }
            Some(m) => {
                // Held and not released: the key is blocked.
                self.nack(p, m.delivery_tag, true).await?;
                if let Some(key) = self.parts[p as usize].keys.get_mut(name) {
                    key.blocked = true;
                }
                return Ok(());
            }
            None => self
                .get(p, &wait)
                .await?
                .map(|m| (m, Source::Wait as fn(u64) -> Source, false)),
        };
        let part = &mut self.parts[p as usize];
        let key = part.keys.get_mut(name).expect("still known");
        match next {
            Some((m, source, released)) => {
                key.current = Some(Msg {
                    source: source(m.delivery_tag),
                    seq: 0,
                    attempt: if released {
                        1
                    } else {
                        super::keys::attempt(&m.properties, false)
                    },
                    redelivered: m.redelivered,
                    body: m.data.into(),
                    properties: m.properties,
                });
                self.ready.push_back((p, name.to_owned()));
            }
            None => {
                // Drained: the key flows from the partition again.
                part.slots[slot] = None;
                key.slot = None;
                if key.is_idle() {
                    part.keys.remove(name);
                }
                if let Some(stalled) = part.stalled.take() {
                    self.unstall(p);
                    self.block(p, &stalled, "failed while no slot was free")
                        .await?;
                }
            }
        }
        Ok(())
    }
}
