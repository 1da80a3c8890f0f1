//! `warren`: parse flags, load config, serve until SIGTERM or SIGINT, drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warren::config::Config;
use warren::server::Server;

/// A sidecar that bridges gRPC and HTTP to a RabbitMQ (AMQP 0-9-1) bus.
///
/// Configuration layers: built-in defaults < the config file < environment
/// variables WARREN__SECTION__KEY (e.g. WARREN__AMQP__URL).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: config/warren.toml when present.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

const DEFAULT_CONFIG: &str = "config/warren.toml";

/// jemalloc (see `Cargo.toml`): freed memory goes back to the system on a
/// decay instead of staying with the process after a burst.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Its options: a background thread purges pages unused for 5 s (dirty)
/// at once (no muzzy stage). `_RJEM_MALLOC_CONF` in the environment
/// overrides them.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let args = Args::parse();
    let file = args
        .config
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()));
    let config = match Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    warren::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        result = server.declare_topology() => {
            if let Err(e) = result {
                tracing::error!("{e}");
                server.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
        _ = signal() => {
            server.shutdown().await;
            return ExitCode::SUCCESS;
        }
    }
    signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
