//! Which exchanges exist, checked before a publish can close a channel.
//!
//! Publishing to a missing exchange makes the broker close the channel, and
//! with it every unconfirmed message on it. So before the first publish to an
//! exchange (and again after `publish.exchange_cache_ttl`), Warren asks the
//! broker with a passive declare on a probe channel of its own; only known
//! exchanges reach publisher channels. An exchange deleted in between is
//! handled by the publisher's recovery.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use tokio::sync::Mutex;

use crate::amqp::{self, Pool};
use crate::error::Error;

/// Exchanges every broker has and that cannot be deleted.
const PREDECLARED: [&str; 7] = [
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.rabbitmq.trace",
];

/// A cache of exchanges known to exist.
pub struct Exchanges {
    known: RwLock<HashMap<String, Instant>>,
    ttl: Duration,
    probe: Mutex<Option<Channel>>,
    pool: Arc<Pool>,
    timeout: Duration,
}

impl Exchanges {
    /// An empty cache that probes over `pool`.
    pub fn new(pool: Arc<Pool>, ttl: Duration, timeout: Duration) -> Self {
        Self {
            known: RwLock::new(HashMap::new()),
            ttl,
            probe: Mutex::new(None),
            pool,
            timeout,
        }
    }

    fn is_known(&self, name: &str) -> bool {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.get(name).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Ok when `name` exists; NOT_FOUND when it does not.
    pub async fn check(&self, name: &str) -> Result<(), Error> {
        if PREDECLARED.contains(&name) || self.is_known(name) {
            return Ok(());
        }
        let mut probe = self.probe.lock().await;
        if self.is_known(name) {
            return Ok(()); // checked by whoever held the probe before us
        }
        let channel = match probe.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.pool.open_channel().await?;
                *probe = Some(channel.clone());
                channel
            }
        };
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declare = channel.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        );
        let result = tokio::time::timeout(self.timeout, declare).await;
        match result {
            Ok(Ok(())) => {
                let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
                known.insert(name.to_owned(), Instant::now());
                Ok(())
            }
            Ok(Err(error)) => {
                // A failed passive declare closes the probe channel.
                if let Some(channel) = probe.take() {
                    self.pool.close_channel(&channel).await;
                }
                match amqp::classify(&error) {
                    Error::NotFound(_) => {
                        Err(Error::NotFound(format!("exchange {name:?} does not exist")))
                    }
                    other => Err(other),
                }
            }
            Err(_) => {
                if let Some(channel) = probe.take() {
                    self.pool.close_channel(&channel).await;
                }
                Err(Error::unavailable(
                    "the broker did not answer an exchange check in time",
                ))
            }
        }
    }

    /// Forgets an exchange the broker said is gone.
    pub fn forget(&self, name: &str) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.remove(name);
    }
}
