//! Which exchanges exist, checked before a publish can close a channel.
//!
//! Publishing to a missing exchange makes the broker close the channel, and
//! with it every unconfirmed message on it. So before the first publish to an
//! exchange (and again after `publish.exchange_cache_ttl`), Warren asks the
//! broker with a passive declare on a probe channel of its own; only known
//! exchanges reach publisher channels. Checks are single-flight per exchange
//! (concurrent first publishes to one exchange share one probe; probes of
//! different exchanges run side by side), and a missing exchange is
//! remembered for [`NEGATIVE_TTL`], so a client hammering a missing exchange
//! costs the broker one probe per period and delays nobody else. Names whose
//! refusal could not be parsed are probed on a connection of their own. An exchange
//! deleted after its check is handled by the publisher's recovery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::amqp::probe::{self, Kind};
use crate::amqp::Pool;
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

/// How long a missing exchange is remembered as missing.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// A cache of what the broker said about exchanges.
pub struct Exchanges {
    /// Name -> (exists, when the broker said so).
    known: RwLock<HashMap<String, (bool, Instant)>>,
    /// One lock per exchange being probed.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    ttl: Duration,
    pool: Arc<Pool>,
    /// For names whose refusal could cost a connection.
    isolated: Arc<Pool>,
}

impl Exchanges {
    /// An empty cache that probes over `pool` (and `isolated`, see
    /// [`probe`]).
    pub fn new(pool: Arc<Pool>, isolated: Arc<Pool>, ttl: Duration) -> Self {
        Self {
            isolated,
            known: RwLock::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            ttl,
            pool,
        }
    }

    fn cached(&self, name: &str) -> Option<Result<(), Error>> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        match known.get(name) {
            Some((true, at)) if at.elapsed() < self.ttl => Some(Ok(())),
            Some((false, at)) if at.elapsed() < NEGATIVE_TTL.min(self.ttl) => {
                Some(Err(missing(name)))
            }
            _ => None,
        }
    }

    fn remember(&self, name: &str, exists: bool) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        // Keep the map from growing without bound on made-up names.
        if known.len() > 10_000 {
            known.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        known.insert(name.to_owned(), (exists, Instant::now()));
    }

    /// Ok when `name` exists; NOT_FOUND when it does not.
    pub async fn check(&self, name: &str) -> Result<(), Error> {
        if PREDECLARED.contains(&name) {
            return Ok(());
        }
        if let Some(result) = self.cached(name) {
            return result;
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(name.to_owned()).or_default().clone()
        };
        let result = {
            let _one_probe = flight.lock().await;
            match self.cached(name) {
                Some(result) => result, // probed by whoever went before us
                None => self.probe(name).await,
            }
        };
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on this flight.
        if Arc::strong_count(&flight) <= 2 {
            flights.remove(name);
        }
        result
    }

    async fn probe(&self, name: &str) -> Result<(), Error> {
        let exists = probe::exists(&self.pool, &self.isolated, Kind::Exchange, name).await?;
        self.remember(name, exists);
        if exists {
            Ok(())
        } else {
            Err(missing(name))
        }
    }

    /// Forgets an exchange the broker said is gone.
    pub fn forget(&self, name: &str) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.remove(name);
    }
}

fn missing(name: &str) -> Error {
    Error::NotFound(format!("exchange {name:?} does not exist"))
}
