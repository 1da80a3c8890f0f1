//! The Warren under test: started as a child process on free loopback ports
//! (so its pid is known, for CPU and RSS), or a running one given by URL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// How long Warren may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How long Warren may take to exit after SIGTERM (its default shutdown grace
/// is 30 s) before it is killed.
const EXIT_WITHIN: Duration = Duration::from_secs(40);

/// A Warren to test.
pub struct Warren {
    /// Base URL of its HTTP listener.
    pub http: String,
    /// URL of its gRPC listener.
    pub grpc: String,
    /// Its pid, when known.
    pub pid: Option<u32>,
    /// Where its output goes, when the load test started it.
    pub log: Option<PathBuf>,
    child: Option<Child>,
    /// How it was started, when the load test started it.
    launch: Option<Launch>,
}

/// What [`Warren::start`] was given.
#[derive(Clone)]
struct Launch {
    bin: PathBuf,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    amqp_url: String,
}

/// A free TCP port on 127.0.0.1 (free when asked; Warren binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Warren {
    /// Starts `bin` (with `--config config` when given, and `env` on top)
    /// against `amqp_url` on free ports, output to `log`, and waits until
    /// `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
        amqp_url: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        if !bin.is_file() {
            bail!(
                "no Warren binary at {} (build it: cargo build --release -p warren), \
                 or pass --warren-bin, or --warren-url-http/--warren-url-grpc",
                bin.display()
            );
        }
        if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create the log {}", log.display()))?;
        let launch = Launch {
            bin: bin.to_owned(),
            config: config.map(Path::to_owned),
            env: env.to_vec(),
            amqp_url: amqp_url.to_owned(),
        };
        Self::spawn(launch, log, out).await
    }

    /// Stops a Warren the load test started and starts it again as it was
    /// (on new ports, its output appended to the same log), for a
    /// measurement that must not inherit memory from the one before. Says
    /// how the old one ended.
    pub async fn restart(&mut self) -> anyhow::Result<Option<String>> {
        let (Some(launch), Some(log)) = (self.launch.clone(), self.log.clone()) else {
            bail!("only a Warren the load test started can be restarted");
        };
        let ended = self.stop().await;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open the log {}", log.display()))?;
        *self = Self::spawn(launch, &log, out).await?;
        Ok(ended)
    }

    /// Whether the load test started this Warren (and so can restart it).
    pub fn restartable(&self) -> bool {
        self.launch.is_some()
    }

    async fn spawn(launch: Launch, log: &Path, out: std::fs::File) -> anyhow::Result<Self> {
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let mut command = Command::new(&launch.bin);
        if let Some(config) = &launch.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .env("WARREN__AMQP__URL", &launch.amqp_url)
            .env("WARREN__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
            .env("WARREN__GRPC__LISTEN", format!("127.0.0.1:{grpc_port}"))
            .env("WARREN__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", launch.bin.display()))?;
        let mut warren = Self {
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            pid: child.id(),
            log: Some(log.to_owned()),
            child: Some(child),
            launch: Some(launch),
        };
        warren.wait_ready().await?;
        Ok(warren)
    }

    /// A running Warren; checks that it is ready.
    pub async fn attach(http: &str, grpc: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let mut warren = Self {
            http: http.trim_end_matches('/').to_owned(),
            grpc: grpc.trim_end_matches('/').to_owned(),
            pid,
            log: None,
            child: None,
            launch: None,
        };
        warren.wait_ready().await?;
        Ok(warren)
    }

    /// Polls `GET /readyz` until it answers 200.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/readyz", self.http);
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "Warren exited before it was ready ({status}); its output:\n{}",
                        self.log_tail(20)
                    );
                }
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_WITHIN {
                bail!("{url} did not answer 200 within {READY_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A metric's value off Warren's `/metrics`: the sample of `name`
    /// without labels.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<f64> {
        let text = http
            .get(format!("{}/metrics", self.http))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// The last `n` lines of Warren's output, when the load test started it.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Counts lines of Warren's output that are warnings or errors.
    pub fn log_problems(&self) -> (usize, Vec<String>) {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return (0, Vec::new());
        };
        let bad: Vec<String> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .map(str::to_owned)
            .collect();
        let first = bad.iter().take(5).cloned().collect();
        (bad.len(), first)
    }

    /// Stops a Warren the load test started: SIGTERM, then waits for it (and
    /// kills it past [`EXIT_WITHIN`]). Says how it ended.
    pub async fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(format!(
                "had already exited ({status}) before the load test stopped it"
            ));
        }
        let pid = child.id()?;
        // SAFETY: kill(2) with a pid we own (our child, not yet reaped).
        let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0;
        if !sent {
            return Some("could not send SIGTERM".into());
        }
        let started = Instant::now();
        match tokio::time::timeout(EXIT_WITHIN, child.wait()).await {
            Ok(Ok(status)) => Some(format!(
                "exited after SIGTERM in {:.2} s with {status}",
                started.elapsed().as_secs_f64()
            )),
            Ok(Err(e)) => Some(format!("could not wait for it: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                Some(format!(
                    "did not exit within {EXIT_WITHIN:?} of SIGTERM: killed"
                ))
            }
        }
    }
}
