//! The chain's topology: 28 delay levels, the exit and its dead-letter
//! queue.
//!
//! Level `n` (27 down to 0) is a durable topic exchange `warren.delay.<n>`
//! and a durable queue of the same name whose messages expire after 2^n s
//! and dead-letter, routing key kept, to the exchange of level `n - 1` (for
//! level 0, the exit exchange `warren.scheduled`). The exchange of level `n`
//! looks at word `27 - n` of the routing key, bit `n` of the delay: `1`
//! sends the message into its queue (binding `*.`×(27-n) `1.#`), `0` on to
//! the next level (an exchange-to-exchange binding `*.`×(27-n) `0.#`; for
//! level 0 the `#` matches no word at all). The exit is a durable fanout
//! exchange `warren.scheduled` bound to the durable queue
//! `warren.scheduled`, which the forwarders consume; it dead-letters what
//! the broker gives up on (a quorum queue's delivery limit, from RabbitMQ
//! 4.0 on 20 by default) to `warren.scheduled.dlq`.
//!
//! Queues are of `retry.delay_queue_type`: quorum by default, whose expired
//! messages dead-letter at least once (confirmed by the next level; this
//! needs `x-overflow: reject-publish`, and no level has a length limit, so
//! nothing is ever rejected). A queue that already exists with other
//! arguments (declared by a Warren with another queue type, say) is used
//! as it is.
//!
//! Each process declares the chain lazily, on its first scheduled publish,
//! once (single flight), and again after a failed declaration or once its
//! publishing connections reconnected; the forwarder declares the exit
//! before it consumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::amqp::{args, Channel, Pool};
use crate::config::QueueKind;
use crate::error::Error;

/// How many levels the chain has: delays up to 2^28 - 1 s.
pub const LEVELS: u32 = 28;
/// Where scheduled messages enter the chain: the highest level's exchange.
pub const ENTRY: &str = "warren.delay.27";
/// The exit exchange and the queue the forwarders consume.
pub const EXIT: &str = "warren.scheduled";
/// Where due messages go that cannot be forwarded.
pub const DEAD_LETTER_QUEUE: &str = "warren.scheduled.dlq";

/// The name of level `n`'s exchange and queue.
pub fn level(n: u32) -> String {
    format!("warren.delay.{n}")
}

/// Where level `n`'s messages go next.
fn next(n: u32) -> String {
    if n == 0 {
        EXIT.to_owned()
    } else {
        level(n - 1)
    }
}

/// The binding key on level `n`'s exchange that matches bit `n` = `bit`.
pub fn pattern(n: u32, bit: char) -> String {
    format!("{}{bit}.#", "*.".repeat((LEVELS - 1 - n) as usize))
}

/// Declares the chain for one process, lazily.
pub(crate) struct Topology {
    pool: Arc<Pool>,
    kind: QueueKind,
    /// Connections made on `pool` so far (changes on each reconnect).
    epoch: watch::Receiver<u64>,
    /// The epoch + 1 at which the chain was last declared; 0 for never.
    declared: AtomicU64,
    flight: tokio::sync::Mutex<()>,
}

impl Topology {
    pub(crate) fn new(pool: Arc<Pool>, kind: QueueKind) -> Self {
        Self {
            epoch: pool.connections_made(),
            pool,
            kind,
            declared: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> u64 {
        *self.epoch.borrow() + 1
    }

    /// Declares the chain unless it was declared since the last reconnect;
    /// concurrent callers wait for the one that declares.
    pub(crate) async fn ensure(&self) -> Result<(), Error> {
        if self.declared.load(Ordering::Acquire) == self.current() {
            return Ok(());
        }
        let _one_at_a_time = self.flight.lock().await;
        let epoch = self.current();
        if self.declared.load(Ordering::Acquire) == epoch {
            return Ok(()); // declared by whoever held the lock before us
        }
        declare_chain(&self.pool, self.kind).await?;
        self.declared.store(epoch, Ordering::Release);
        info!("scheduled-publish chain declared");
        Ok(())
    }
}

/// Declares the exit exchange, its queue and the dead-letter queue.
pub async fn declare_exit(pool: &Pool, kind: QueueKind) -> Result<(), Error> {
    let mut d = Declarer::open(pool).await?;
    let result = d.exit(kind).await;
    d.close().await;
    result
}

/// Declares the exit and every level, lowest first (a level's exchange
/// binds the next one's).
pub async fn declare_chain(pool: &Pool, kind: QueueKind) -> Result<(), Error> {
    let mut d = Declarer::open(pool).await?;
    let result = async {
        d.exit(kind).await?;
        for n in 0..LEVELS {
            let name = level(n);
            let next = next(n);
            d.exchange(&name, ExchangeKind::Topic).await?;
            let wait = Duration::from_secs(1 << n);
            d.queue(&name, args::delay_level(wait, &next, kind)).await?;
            d.bind_queue(&name, &name, &pattern(n, '1')).await?;
            d.bind_exchange(&next, &name, &pattern(n, '0')).await?;
        }
        Ok(())
    }
    .await;
    d.close().await;
    result
}

/// Declarations on a channel of their own, reopened after a refusal.
struct Declarer<'a> {
    pool: &'a Pool,
    channel: Channel,
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

impl<'a> Declarer<'a> {
    async fn open(pool: &'a Pool) -> Result<Self, Error> {
        Ok(Self {
            channel: pool.open_channel().await?,
            pool,
        })
    }

    async fn close(self) {
        self.channel.close(self.pool.operation_timeout()).await;
    }

    async fn exit(&mut self, kind: QueueKind) -> Result<(), Error> {
        self.exchange(EXIT, ExchangeKind::Fanout).await?;
        self.queue(DEAD_LETTER_QUEUE, FieldTable::default()).await?;
        self.queue(EXIT, args::dead_lettering_queue(DEAD_LETTER_QUEUE, kind))
            .await?;
        self.bind_queue(EXIT, EXIT, "").await
    }

    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<(), Error> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declare =
            self.channel
                .exchange_declare(name.into(), kind, options, FieldTable::default());
        self.pool.op("exchange.declare", declare).await
    }

    /// Declares a durable queue; one that exists with other arguments is
    /// taken as it is (the refusal closed the channel: a fresh one then).
    async fn queue(&mut self, name: &str, args: FieldTable) -> Result<(), Error> {
        let declare = self.channel.queue_declare(name.into(), durable(), args);
        match self.pool.op("queue.declare", declare).await {
            Ok(_) => Ok(()),
            Err(Error::FailedPrecondition(reason)) => {
                warn!(queue = name, %reason, "queue exists with other arguments; using it as it is");
                self.channel = self.pool.open_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let declare =
                    self.channel
                        .queue_declare(name.into(), passive, FieldTable::default());
                self.pool.op("queue.declare", declare).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn bind_queue(&mut self, queue: &str, exchange: &str, key: &str) -> Result<(), Error> {
        let bind = self.channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        self.pool.op("queue.bind", bind).await
    }

    async fn bind_exchange(
        &mut self,
        destination: &str,
        source: &str,
        key: &str,
    ) -> Result<(), Error> {
        let bind = self.channel.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        );
        self.pool.op("exchange.bind", bind).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_look_at_one_word_each() {
        assert_eq!(pattern(27, '1'), "1.#");
        assert_eq!(pattern(27, '0'), "0.#");
        assert_eq!(pattern(26, '0'), "*.0.#");
        let lowest = pattern(0, '1');
        assert_eq!(lowest, format!("{}1.#", "*.".repeat(27)));
        assert_eq!(next(0), EXIT);
        assert_eq!(next(27), "warren.delay.26");
        assert_eq!(level(LEVELS - 1), ENTRY);
    }

    /// A model of the topic exchange's match (`*` one word, `#` zero or
    /// more), to check that each key takes exactly the levels of its bits.
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                matches(&pattern[1..], key) || (!key.is_empty() && matches(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => matches(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => matches(&pattern[1..], &key[1..]),
            _ => false,
        }
    }

    #[test]
    fn a_key_waits_in_the_levels_of_its_bits() {
        for secs in [1u64, 2, 3, 60, 2_592_000, super::super::MAX_DELAY_SECS] {
            let key = super::super::routing_key(secs);
            let words: Vec<&str> = key.split('.').collect();
            let mut waited = 0u64;
            for n in (0..LEVELS).rev() {
                let wait = pattern(n, '1');
                let pass = pattern(n, '0');
                let wait: Vec<&str> = wait.split('.').collect();
                let pass: Vec<&str> = pass.split('.').collect();
                let (w, p) = (matches(&wait, &words), matches(&pass, &words));
                assert!(w != p, "{secs}: exactly one binding of level {n} matches");
                if w {
                    waited += 1 << n;
                }
            }
            assert_eq!(waited, secs);
        }
    }
}
