//! The test cluster of `scripts/cluster.sh`: three nodes beside the default
//! one, started and stopped by the tests that need them (each in a test
//! binary of its own, so nothing else runs beside them).

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use super::Broker;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// Runs `scripts/cluster.sh ARGS`; its stdout, or a panic with its output.
pub fn script(args: &[&str]) -> String {
    let out = Command::new(SCRIPT)
        .args(args)
        .output()
        .expect("scripts/cluster.sh runs");
    assert!(
        out.status.success(),
        "scripts/cluster.sh {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `script` off the async runtime's threads.
pub async fn script_async(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script(&args)
    })
    .await
    .expect("script task")
}

/// The test cluster: up while this lives, down when it is dropped, on every
/// way out of the test (a panic too).
pub struct Cluster {
    /// The AMQP URIs of nodes 1, 2 and 3.
    pub uris: Vec<String>,
}

impl Cluster {
    pub fn up() -> Self {
        // Made before `up`, so that a failed start is cleaned up too.
        let mut cluster = Cluster { uris: Vec::new() };
        let out = script(&["up"]);
        cluster.uris = out
            .lines()
            .filter(|l| l.starts_with("amqp://"))
            .map(String::from)
            .collect();
        assert_eq!(cluster.uris.len(), 3, "three URIs from `up`: {out}");
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match Command::new(SCRIPT).arg("down").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/cluster.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("scripts/cluster.sh down did not run: {e}"),
        }
    }
}

/// Which node (1..3) holds Warren's publishing connections (named
/// `{name}-publish-N`), and how many each node holds. `list_connections`
/// lists the whole cluster's connections: the node is told by the port the
/// client connected to (570N).
pub async fn publishing_node(name: &str, uris: &[String]) -> (usize, [usize; 3]) {
    let needle = format!("{name}-publish-");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = script_async(&[
            "ctl",
            "1",
            "-q",
            "list_connections",
            "port",
            "client_properties",
            "--no-table-headers",
        ])
        .await;
        let mut counts = [0usize; 3];
        for line in list.lines().filter(|l| l.contains(&needle)) {
            let port = line.split_whitespace().next().unwrap_or_default();
            if let Some(n) = uris.iter().position(|u| u.contains(&format!(":{port}/"))) {
                counts[n] += 1;
            }
        }
        let best = (0..3).max_by_key(|i| counts[*i]).expect("three nodes");
        if counts[best] > 0 {
            return (best + 1, counts);
        }
        assert!(
            Instant::now() < deadline,
            "no connection named {needle}* on any node: {list}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Declares `queue` as a quorum queue with a member on every node, from a
/// connection to `url` (its leader goes to that node: client-local).
pub async fn quorum_queue(url: &str, queue: &str) {
    let broker = Broker::connect_to(url).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(3));
    broker
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("quorum queue declared");
    let _ = broker.connection.close(200, "declared".into()).await;
}

/// Kills `pid` with SIGKILL; the moment just before.
pub fn kill(pid: &str, node: usize) -> Instant {
    let at = Instant::now();
    let direct = Command::new("sh")
        .args(["-c", "kill -KILL \"$0\"", pid])
        .status()
        .is_ok_and(|s| s.success());
    if !direct {
        // Not root: the script kills through sudo.
        let at = Instant::now();
        script(&["kill", &node.to_string()]);
        return at;
    }
    at
}

/// Whether process `pid` still runs (a zombie, killed but not yet reaped,
/// does not).
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}
