//! Starting and stopping Warren: listeners, the bus, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::amqp::topology::Refused;
use crate::bus::Bus;
use crate::config::Config;
use crate::listen::Tls;
use crate::metrics::Metrics;

/// How long the listeners go on answering 503 after the drain.
const LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// A running Warren.
pub struct Server {
    /// Where HTTP listens (the real port when configured with port 0).
    pub http_addr: SocketAddr,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    bus: Arc<Bus>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Why Warren could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        /// `http.listen` or `grpc.listen`.
        key: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A listener's TLS files cannot be used.
    #[error("invalid configuration: {0}")]
    Tls(String),
    /// `[auth]` key material cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::auth::Invalid),
    /// The spool's directory or database cannot be used.
    #[error("cannot open the spool in spool.dir = {dir:?}: {source}")]
    Spool {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: crate::bus::spool::store::StoreError,
    },
    /// The broker refused the configured topology.
    #[error(transparent)]
    Topology(#[from] Refused),
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            key,
            addr: addr.to_owned(),
            source,
        })
}

impl Server {
    /// Binds both listeners and starts serving; the bus connects in the
    /// background. Call [`Server::declare_topology`] next.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let http = bind("http.listen", &config.http.listen).await?;
        let grpc = bind("grpc.listen", &config.grpc.listen).await?;
        let http_addr = http.local_addr().map_err(|source| StartError::Bind {
            key: "http.listen",
            addr: config.http.listen.clone(),
            source,
        })?;
        let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind {
            key: "grpc.listen",
            addr: config.grpc.listen.clone(),
            source,
        })?;
        let http_tls = config
            .http
            .tls
            .as_ref()
            .map(|files| Tls::new("http.tls", files, &[b"h2", b"http/1.1"]))
            .transpose()
            .map_err(StartError::Tls)?;
        let grpc_tls = config
            .grpc
            .tls
            .as_ref()
            .map(|files| Tls::new("grpc.tls", files, &[b"h2"]))
            .transpose()
            .map_err(StartError::Tls)?;
        let spool = config
            .spool
            .enabled
            .then(|| crate::bus::spool::Spool::open(&config.spool.dir, config.spool.max_bytes))
            .transpose()
            .map_err(|source| StartError::Spool {
                dir: config.spool.dir.clone(),
                source,
            })?;
        let bus = Bus::start(Arc::new(config), Metrics::new(), spool)?;
        let shutdown = CancellationToken::new();
        let reloadable: Vec<_> = http_tls.iter().chain(grpc_tls.iter()).cloned().collect();
        if !reloadable.is_empty() {
            tokio::spawn(reload_on_sighup(reloadable, shutdown.clone()));
        }
        info!(http = %http_addr, grpc = %grpc_addr, brokers = ?bus.brokers(), "warren listening");
        let tasks = vec![
            tokio::spawn({
                let (bus, shutdown) = (bus.clone(), shutdown.clone());
                async move {
                    if let Err(e) = crate::http::serve(bus, http, http_tls, shutdown).await {
                        error!(error = %e, "the HTTP server failed");
                    }
                }
            }),
            tokio::spawn({
                let (bus, shutdown) = (bus.clone(), shutdown.clone());
                async move {
                    if let Err(e) = crate::grpc::serve(bus, grpc, grpc_tls, shutdown).await {
                        error!(error = %e, "the gRPC server failed");
                    }
                }
            }),
        ];
        Ok(Self {
            http_addr,
            grpc_addr,
            bus,
            shutdown,
            tasks,
        })
    }

    /// Waits for the broker and declares the configured topology.
    pub async fn declare_topology(&self) -> Result<(), StartError> {
        Ok(self.bus.declare_topology().await?)
    }

    /// The bus core.
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Graceful stop, in order: new calls are answered UNAVAILABLE / 503
    /// while the listeners still accept; every call in flight is answered
    /// (publishes after their confirms) within `shutdown.grace`;
    /// subscriptions end and hand their deliveries back; the listeners stop
    /// (finishing open responses); channels and connections close.
    pub async fn shutdown(self) {
        let grace = self.bus.config().shutdown.grace;
        let until = tokio::time::Instant::now() + grace;
        info!(grace = ?grace, "shutting down");
        self.bus.drain(grace).await;
        // Keep answering 503 (with `Connection: close`) a little longer, so
        // that a client whose next request is already on its way over a
        // kept-alive connection gets an answer rather than a reset.
        let linger = LINGER.min(until.saturating_duration_since(tokio::time::Instant::now()));
        tokio::time::sleep(linger).await;
        self.shutdown.cancel();
        let servers = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout_at(until, servers).await.is_err() {
            warn!("the shutdown grace period ran out; leaving the rest unfinished");
        }
        self.bus.close().await;
        info!("warren stopped");
    }
}

/// Re-reads the listeners' TLS files on each SIGHUP (open connections keep
/// theirs).
async fn reload_on_sighup(tls: Vec<Arc<Tls>>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP: TLS files will not be re-read");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {}
            }
            for listener in &tls {
                listener.reload();
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, shutdown);
    }
}
