//! Crash safety of the spool, with the real binary: SIGKILL while
//! publishes are being spooled loses none that was answered `spooled`, and
//! a restart forwards them, in order per publisher; a damaged record is
//! dropped, never forwarded as garbage.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{unique, Broker, Warren};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

/// A Warren process, killed (if still running) when dropped, however the
/// test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with the spool in `dir`, reaching the broker at `url`; its
/// HTTP address once it listens.
async fn spawn(dir: &Path, url: &str) -> (Proc, String) {
    let mut child = Proc(
        Command::new(BIN)
            .env("WARREN__AMQP__URL", url)
            .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
            .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
            .env("WARREN__LOG__FORMAT", "json")
            .env("WARREN__LOG__LEVEL", "info")
            .env("WARREN__SPOOL__ENABLED", "true")
            .env("WARREN__SPOOL__DIR", dir)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("warren logs its address")
            .expect("warren runs");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(addr) = v["http"].as_str() {
                // Keep draining the log so that the child never blocks on it.
                tokio::spawn(async move { while rx.recv().await.is_some() {} });
                return (child, format!("http://{addr}"));
            }
        }
    }
}

fn sigkill(child: &mut Proc) {
    Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    child.0.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_answered_spooled_and_a_restart_forwards_it_in_order() {
    let broker = Broker::connect().await;
    let queue = unique("spool.crash");
    broker.queue(&queue).await;
    let dir = std::env::temp_dir().join(unique("spool-crash"));
    // No broker listens there: everything allowed is spooled.
    let (mut child, http) = spawn(&dir, "amqp://guest:guest@127.0.0.1:1/%2f").await;

    const PUBLISHERS: usize = 8;
    let answered: Arc<Mutex<HashMap<usize, Vec<u32>>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (http, queue, answered) = (http.clone(), queue.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0u32.. {
                let body =
                    json!({"routing_key": queue, "body": format!("{p}:{i}"), "allow_spool": true});
                let Ok(response) = client
                    .post(format!("{http}/v1/publish"))
                    .json(&body)
                    .send()
                    .await
                else {
                    return; // killed
                };
                match response.status().as_u16() {
                    202 => answered.lock().unwrap().entry(p).or_default().push(i),
                    503 => tokio::time::sleep(Duration::from_millis(5)).await, // not yet known down
                    other => panic!("publisher {p}: {other}"),
                }
            }
        }));
    }
    let enough = async {
        while answered
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            < 400
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), enough)
        .await
        .expect("400 publishes spooled");
    // Killed in the middle of it: publishes are in flight, commits running.
    sigkill(&mut child);
    for task in tasks {
        task.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let total: usize = answered.values().map(Vec::len).sum();

    let (mut child, http) = spawn(&dir, &common::amqp_url()).await;
    let client = reqwest::Client::new();
    let drained = async {
        loop {
            if let Ok(r) = client.get(format!("{http}/v1/spool")).send().await {
                let state: serde_json::Value = r.json().await.unwrap();
                if state["messages"] == 0 && state["broker_connected"] == true {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("the restarted Warren drains the spool");
    let arrived = broker.count(&queue).await as usize;
    assert!(
        arrived >= total,
        "{arrived} arrived, {total} answered spooled"
    );
    let bodies = broker.bodies(&queue, arrived).await;
    let mut seen: HashMap<usize, Vec<u32>> = HashMap::new();
    for body in &bodies {
        let (p, i) = body.split_once(':').expect("a body we sent, not garbage");
        seen.entry(p.parse().unwrap())
            .or_default()
            .push(i.parse().unwrap());
    }
    for (p, sent) in &answered {
        let got = &seen[p];
        // In order per publisher; beyond what was answered, at most the
        // publish in flight at the kill (its commit may have been durable).
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "publisher {p} out of order: {got:?}"
        );
        assert!(
            got.starts_with(sent),
            "publisher {p} lost some: sent {sent:?}, got {got:?}"
        );
        assert!(got.len() <= sent.len() + 1, "publisher {p}: {got:?}");
    }
    eprintln!("{total} answered spooled before SIGKILL; {arrived} forwarded after the restart");
    sigkill(&mut child);
    broker.delete_queues(&[queue]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_damaged_record_is_dropped_and_the_rest_forwarded() {
    use warren::bus::spool::{record, store};
    use warren::bus::Publish;

    let broker = Broker::connect().await;
    let queue = unique("spool.torn");
    broker.queue(&queue).await;
    let dir = std::env::temp_dir().join(unique("spool-torn"));
    let records: Vec<Vec<u8>> = ["first", "damaged", "last"]
        .iter()
        .map(|body| {
            let mut publish = Publish {
                routing_key: queue.clone(),
                mandatory: true,
                ..Default::default()
            };
            publish.message.body = bytes::Bytes::from(body.as_bytes().to_vec());
            publish.message.message_id = body.to_string();
            record::encode(&publish, 0, None)
        })
        .collect();
    let mut damaged = records[1].clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x20; // one bit of the body
    {
        let store = store::Store::open(&dir).unwrap();
        store
            .append(store::Table::Spooled, &[&records[0], &damaged, &records[2]])
            .unwrap();
    }
    let dir_text = dir.to_string_lossy().into_owned();
    let warren = Warren::start_with(common::config_with(&[
        ("WARREN__SPOOL__ENABLED", "true"),
        ("WARREN__SPOOL__DIR", &dir_text),
    ]))
    .await;
    let drained = async {
        while warren
            .server
            .bus()
            .metrics()
            .render()
            .contains("warren_spool_messages 3")
            || broker.count(&queue).await < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .expect("forwarded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.bodies(&queue, 3).await, ["first", "last"]);
    assert!(broker.is_empty(&queue).await);
    assert!(common::metric(&warren.metrics().await, "warren_spool_messages") == 0.0);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
