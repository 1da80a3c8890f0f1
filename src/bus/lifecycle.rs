//! The bus's life: topology at start and after reconnects, readiness, and
//! the ordered shutdown (drain, then close).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Bus;
use crate::amqp::{self, topology};

impl Bus {
    /// Waits for the broker, then declares the configured topology. A refusal
    /// is returned (and should stop start-up).
    pub async fn declare_topology(self: &Arc<Self>) -> Result<(), topology::Refused> {
        let mut reconnects = self.publish_pool.connections_made();
        self.publish_pool.wait_connected().await;
        reconnects.mark_unchanged();
        self.declare_once().await?;
        self.topology_declared.store(true, Ordering::Release);
        // After the broker comes back (a restart may have lost non-durable
        // parts), declare it all again.
        let bus = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = reconnects.changed() => if changed.is_err() { return },
                }
                let Some(bus) = bus.upgrade() else { return };
                match bus.declare_once().await {
                    Ok(()) => info!("topology declared again after a reconnect"),
                    Err(e) => {
                        warn!(error = %e, "could not declare the topology again after a reconnect")
                    }
                }
            }
        });
        Ok(())
    }

    async fn declare_once(&self) -> Result<(), topology::Refused> {
        let refused = |reason: String| topology::Refused {
            what: "the topology".into(),
            reason,
        };
        let channel = self
            .publish_pool
            .open_channel()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let topology = &self.config.topology;
        let groups: usize = self.ordered.all().map(|g| g.declarations()).sum();
        let items =
            topology.exchanges.len() + topology.queues.len() * 2 + topology.bindings.len() + groups;
        let limit = self.config.amqp.operation_timeout * (items as u32 + 1);
        let declare = async {
            topology::declare(&channel, topology).await?;
            for group in self.ordered.all() {
                group
                    .declare(&self.publish_pool, &channel)
                    .await
                    .map_err(|e| topology::Refused {
                        what: format!("ordered group {:?}", group.name()),
                        reason: e.to_string(),
                    })?;
            }
            Ok(())
        };
        let result = match tokio::time::timeout(limit, declare).await {
            Ok(result) => result,
            Err(_) => Err(refused(format!(
                "the broker did not answer within {limit:?}"
            ))),
        };
        channel.close(self.config.amqp.operation_timeout).await;
        result
    }

    /// Whether Warren can serve: connected to the broker, topology declared,
    /// not shutting down. A query: it changes nothing.
    pub fn is_ready(&self) -> bool {
        self.publish_pool.is_connected()
            && self.consume_pool.is_connected()
            && self.topology_declared.load(Ordering::Acquire)
            && !self.gate.is_closed()
    }

    /// The first half of shutdown: stop accepting (new calls fail with
    /// UNAVAILABLE), wait up to `grace` for every call in flight to be
    /// answered, then end subscriptions and the forwarder (their unacked
    /// deliveries go back to the broker) and publisher tasks. Returns
    /// whether everything in flight was answered in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.gate.close();
        info!(
            in_flight = self.gate.in_flight(),
            "draining: waiting for calls in flight"
        );
        let drained = tokio::time::timeout(grace, self.gate.drained())
            .await
            .is_ok();
        if !drained {
            warn!(
                in_flight = self.gate.in_flight(),
                "the shutdown grace period ran out with calls in flight"
            );
        }
        self.shutdown.cancel();
        let limit = self.config.amqp.operation_timeout;
        let forwarder = async {
            self.background.close();
            self.background.wait().await;
        };
        let ended = async {
            tokio::join!(
                self.publishers.drained(),
                self.subscriptions.closed(),
                forwarder
            );
        };
        if tokio::time::timeout(limit, ended).await.is_err() {
            warn!("publishers, subscriptions or the forwarder did not end in time");
        }
        drained
    }

    /// The second half of shutdown: close the kept channels and the
    /// connections.
    pub async fn close(&self) {
        let timeout = self.config.amqp.operation_timeout;
        tokio::join!(self.shared.close(timeout), self.rpc.close(timeout));
        self.publish_pool.close().await;
        self.consume_pool.close().await;
        self.probe_pool.close().await;
        info!("bus closed");
    }

    /// The masked broker URLs (for logs).
    pub fn brokers(&self) -> Vec<String> {
        self.config
            .amqp
            .urls()
            .iter()
            .map(|u| amqp::mask(u))
            .collect()
    }
}
