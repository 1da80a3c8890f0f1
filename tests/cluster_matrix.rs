//! The rest of the cluster matrix (scripts/cluster.sh), beside the publish
//! failover of tests/cluster.rs: Warren, given all three URIs, under
//! publish, subscribe and RPC load on quorum queues, when the node it is
//! connected to is killed with SIGKILL; that node restarted and rejoined;
//! then the whole cluster down and up again with the spool on.
//!
//! - Kill: no confirmed message lost, publishing back within 5 s on another
//!   node, the subscription and RPC back, every confirmed message delivered
//!   at least once.
//! - Restart: the node rejoins; publishing and delivery go on.
//! - Whole cluster down: publishes that allow it are spooled; once the
//!   cluster is back, everything spooled arrives, in order per publisher.
//!
//! One test in a binary of its own: cargo runs test binaries one after
//! another, so nothing else runs beside the cluster.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{alive, kill, publishing_node, quorum_queue, script_async, Cluster};
use common::{unique, Warren};
use futures::StreamExt;
use tonic::transport::Channel as GrpcChannel;
use warren::proto::bus_client::BusClient;
use warren::proto::{AckRequest, Message, ReplyRequest, SubscribeRequest};

/// Publishing must be back this soon after the kill.
const FAILOVER_LIMIT: Duration = Duration::from_secs(5);
/// Everything confirmed must have been delivered this soon after the load.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

/// What the load tasks share with the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    /// Confirmed publishes: body, when the confirm came.
    confirmed: Mutex<Vec<(String, Instant)>>,
    /// Deliveries to the subscriber: body, when.
    delivered: Mutex<Vec<(String, Instant)>>,
    /// Successful calls: when the reply came.
    replies: Mutex<Vec<Instant>>,
    /// Subscriptions opened (1 plus those opened again after one ended).
    subscriptions: AtomicUsize,
    /// Requests the responder got: when.
    requests: Mutex<Vec<Instant>>,
    /// How calls failed, by error, with a count.
    call_errors: Mutex<HashMap<String, usize>>,
    /// Publishes sent after the kill: when sent, when confirmed.
    after_kill: Mutex<Vec<(Instant, Instant)>>,
    kill: std::sync::OnceLock<Instant>,
    /// What RPC did after the kill, in ms from it (the first few).
    timeline: Mutex<Vec<String>>,
}

impl Load {
    /// Notes `what` at `at` (ms from the kill) when after it.
    fn note(&self, at: Instant, what: impl FnOnce(u128) -> String) {
        if let Some(kill) = self.kill.get().filter(|k| at >= **k) {
            let mut timeline = self.timeline.lock().unwrap();
            if timeline.len() < 60 {
                timeline.push(what((at - *kill).as_millis()));
            }
        }
    }
}

impl Load {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Publishes `{prefix}{i}` one after another, confirmed, until stopped.
async fn publisher(
    mut client: BusClient<GrpcChannel>,
    queue: String,
    prefix: String,
    load: Arc<Load>,
) {
    for i in 0.. {
        if load.stopping() {
            return;
        }
        let body = format!("{prefix}{i}");
        let mut request = tonic::Request::new(common::request("", &queue, body.as_bytes()));
        request.set_timeout(Duration::from_secs(10));
        let sent = Instant::now();
        if client.publish(request).await.is_ok() {
            let done = Instant::now();
            load.confirmed.lock().unwrap().push((body, done));
            if load.kill.get().is_some_and(|k| sent >= *k) {
                load.after_kill.lock().unwrap().push((sent, done));
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Subscribes to `queue` and acks everything, subscribing again whenever the
/// stream ends, until stopped.
async fn subscriber(mut client: BusClient<GrpcChannel>, queue: String, load: Arc<Load>) {
    while !load.stopping() {
        let request = SubscribeRequest {
            queue: queue.clone(),
            prefetch: 50,
            ..Default::default()
        };
        let Ok(stream) = client.subscribe(request).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        load.subscriptions.fetch_add(1, Ordering::SeqCst);
        let mut stream = stream.into_inner();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            match next {
                Ok(Some(Ok(d))) => {
                    let body =
                        String::from_utf8_lossy(&d.message.unwrap_or_default().body).into_owned();
                    load.delivered.lock().unwrap().push((body, Instant::now()));
                    let _ = client
                        .ack(AckRequest {
                            delivery_ids: vec![d.delivery_id],
                        })
                        .await;
                }
                Ok(_) => break, // ended: subscribe again
                Err(_) if load.stopping() => return,
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Answers calls on `queue` through Warren (subscribe, reply, ack).
async fn responder(mut client: BusClient<GrpcChannel>, queue: String, load: Arc<Load>) {
    while !load.stopping() {
        let request = SubscribeRequest {
            queue: queue.clone(),
            prefetch: 10,
            ..Default::default()
        };
        let Ok(stream) = client.subscribe(request).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                Ok(Some(Ok(d))) => {
                    load.requests.lock().unwrap().push(Instant::now());
                    load.note(Instant::now(), |t| format!("+{t} responder got a request"));
                    let body = d.message.unwrap_or_default().body;
                    let _ = client
                        .reply(ReplyRequest {
                            delivery_id: d.delivery_id.clone(),
                            message: Some(Message {
                                body,
                                ..Default::default()
                            }),
                        })
                        .await;
                    let _ = client
                        .ack(AckRequest {
                            delivery_ids: vec![d.delivery_id],
                        })
                        .await;
                }
                Ok(_) => break,
                Err(_) if load.stopping() => return,
                Err(_) => {}
            }
        }
    }
}

/// Calls through `queue` one after another until stopped.
async fn caller(mut client: BusClient<GrpcChannel>, queue: String, load: Arc<Load>) {
    for i in 0.. {
        if load.stopping() {
            return;
        }
        let body = format!("call-{i}");
        let mut request = tonic::Request::new(common::call(&queue, &body, 3000));
        request.set_timeout(Duration::from_secs(5));
        let sent = Instant::now();
        let result = client.call(request).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?} {}", status.code(), status.message()),
        };
        load.note(sent, |t| {
            format!(
                "+{t} call sent, {} ms: {outcome}",
                sent.elapsed().as_millis()
            )
        });
        match result {
            Ok(reply)
                if reply
                    .get_ref()
                    .message
                    .as_ref()
                    .is_some_and(|m| m.body == body.as_bytes()) =>
            {
                load.replies.lock().unwrap().push(Instant::now());
            }
            other => {
                let error = match other {
                    Ok(_) => "a reply with another body".to_string(),
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                };
                *load.call_errors.lock().unwrap().entry(error).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `done` holds, or `limit` passed; whether it held.
async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

fn count_after(times: &[Instant], at: Instant) -> usize {
    times.iter().filter(|t| **t >= at).count()
}

/// Bodies confirmed but never delivered.
fn undelivered(load: &Load) -> Vec<String> {
    let delivered: HashSet<String> = load
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(b, _)| b.clone())
        .collect();
    load.confirmed
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| !delivered.contains(b))
        .map(|(b, _)| b.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_rides_out_a_node_kill_a_rejoin_and_the_whole_cluster_down_with_the_spool() {
    let began = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::up)
        .await
        .expect("cluster up");
    let name = format!(
        "warren-matrix-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let urls = cluster.uris.join(",");
    let spool_dir = std::env::temp_dir().join(unique("matrix-spool"));
    let spool_dir_text = spool_dir.to_string_lossy().into_owned();
    let warren = Warren::start_with(common::config_with(&[
        ("WARREN__AMQP__URL", &urls),
        ("WARREN__AMQP__CONNECTION_NAME", &name),
        ("WARREN__SPOOL__ENABLED", "true"),
        ("WARREN__SPOOL__DIR", &spool_dir_text),
    ]))
    .await;
    let (target, spread) = publishing_node(&name, &cluster.uris).await;
    let work = unique("matrix.work");
    let rpc = unique("matrix.rpc");
    // The queues' leaders on the node to be killed: the worst case.
    quorum_queue(&cluster.uris[target - 1], &work).await;
    quorum_queue(&cluster.uris[target - 1], &rpc).await;
    eprintln!("MEASURE matrix: Warren's publishing connections per node {spread:?}; killing node {target}");

    // Load: two publishers, a subscriber, a responder and a caller.
    let load = Arc::new(Load::default());
    let client = warren.grpc().await;
    let mut tasks = vec![
        tokio::spawn(publisher(
            client.clone(),
            work.clone(),
            "a-".into(),
            load.clone(),
        )),
        tokio::spawn(publisher(
            client.clone(),
            work.clone(),
            "b-".into(),
            load.clone(),
        )),
        tokio::spawn(subscriber(client.clone(), work.clone(), load.clone())),
        tokio::spawn(responder(client.clone(), rpc.clone(), load.clone())),
        tokio::spawn(caller(client.clone(), rpc.clone(), load.clone())),
    ];
    let warm = until(Duration::from_secs(30), || {
        load.confirmed.lock().unwrap().len() >= 200
            && load.delivered.lock().unwrap().len() >= 100
            && load.replies.lock().unwrap().len() >= 20
    })
    .await;
    assert!(warm, "the load did not get going before the kill");

    // 1. The node Warren is connected to, killed.
    let pid = script_async(&["pid", &target.to_string()])
        .await
        .trim()
        .to_owned();
    let killed = tokio::task::spawn_blocking({
        let pid = pid.clone();
        move || kill(&pid, target)
    })
    .await
    .unwrap();
    load.kill.set(killed).unwrap();
    assert!(
        until(Duration::from_secs(5), || !alive(&pid)).await,
        "node {target} gone"
    );
    let recovered = until(Duration::from_secs(30), || {
        let confirmed: Vec<Instant> = load
            .confirmed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect();
        let delivered: Vec<Instant> = load
            .delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect();
        count_after(&confirmed, killed) >= 100
            && count_after(&delivered, killed) >= 100
            && count_after(&load.replies.lock().unwrap(), killed) >= 10
    })
    .await;
    let first_after = |times: Vec<Instant>| {
        times
            .into_iter()
            .filter(|t| *t >= killed)
            .min()
            .map(|t| t - killed)
    };
    // Kill to the first confirm of a publish sent after the kill.
    let publish_gap = first_after(
        load.after_kill
            .lock()
            .unwrap()
            .iter()
            .map(|(_, done)| *done)
            .collect(),
    );
    let delivery_gap = first_after(
        load.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect(),
    );
    let rpc_gap = first_after(load.replies.lock().unwrap().clone());
    eprintln!(
        "MEASURE matrix: after SIGKILL of node {target}: publishing back after {publish_gap:?}, \
         deliveries after {delivery_gap:?}, RPC replies after {rpc_gap:?}; subscriptions opened {}; \
         requests the responder got after the kill {}; call errors {:?}",
        load.subscriptions.load(Ordering::SeqCst),
        count_after(&load.requests.lock().unwrap(), killed),
        load.call_errors.lock().unwrap(),
    );
    eprintln!(
        "MEASURE matrix: RPC after the kill: {:#?}",
        load.timeline.lock().unwrap()
    );
    assert!(
        recovered,
        "publish, subscribe and RPC all came back after the kill"
    );
    let publish_gap = publish_gap.expect("publishing came back");
    assert!(
        publish_gap <= FAILOVER_LIMIT,
        "publishing came back only after {publish_gap:?}"
    );

    // 2. The node restarted: it rejoins, and the load goes on.
    script_async(&["start", &target.to_string()]).await;
    let rejoined = Instant::now();
    let status = script_async(&["status"]).await;
    assert_eq!(status.matches(" running").count(), 3, "{status}");
    let went_on = until(Duration::from_secs(30), || {
        let confirmed: Vec<Instant> = load
            .confirmed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect();
        count_after(&confirmed, rejoined) >= 50
    })
    .await;
    assert!(went_on, "publishing goes on after the node rejoined");
    load.stop.store(true, Ordering::SeqCst);
    for task in tasks.drain(..) {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("load ends")
            .unwrap();
    }
    // Every confirmed message delivered at least once.
    let load = Arc::new(Load {
        confirmed: Mutex::new(std::mem::take(&mut *load.confirmed.lock().unwrap())),
        delivered: Mutex::new(std::mem::take(&mut *load.delivered.lock().unwrap())),
        ..Default::default()
    });
    let drain = tokio::spawn(subscriber(client.clone(), work.clone(), load.clone()));
    let all = until(DELIVERY_LIMIT, || undelivered(&load).is_empty()).await;
    let missing = undelivered(&load);
    let (confirmed, delivered) = (
        load.confirmed.lock().unwrap().len(),
        load.delivered.lock().unwrap().len(),
    );
    eprintln!("MEASURE matrix: {confirmed} confirmed, {delivered} deliveries, {} confirmed never delivered", missing.len());
    assert!(
        all,
        "confirmed but never delivered: {:?}",
        &missing[..missing.len().min(5)]
    );
    load.stop.store(true, Ordering::SeqCst);
    drain.await.unwrap();

    // 3. The whole cluster down, the spool on: publishes are spooled, and
    // arrive in order per publisher once the cluster is back.
    script_async(&["stop"]).await;
    let down = until(Duration::from_secs(30), || !warren.server.bus().is_ready()).await;
    assert!(down, "Warren sees the cluster gone");
    let mut spooled: HashMap<String, Vec<String>> = HashMap::new();
    let mut publisher_client = client.clone();
    for round in 0..100 {
        for p in ["x", "y", "z"] {
            let body = format!("{p}-{round}");
            let mut request = common::request("", &work, body.as_bytes());
            request.allow_spool = Some(true);
            let answer = loop {
                match publisher_client.publish(request.clone()).await {
                    Ok(answer) => break answer.into_inner(),
                    // Before Warren knows every node is gone.
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(status) => panic!("{status:?}"),
                }
            };
            assert!(answer.spooled, "{body} spooled while the cluster is down");
            spooled.entry(p.into()).or_default().push(body);
        }
    }
    let stopped_at = Instant::now();
    script_async(&["start"]).await;
    let restarted = stopped_at.elapsed();
    let load = Arc::new(Load::default());
    let drain = tokio::spawn(subscriber(client.clone(), work.clone(), load.clone()));
    let arrived = until(DELIVERY_LIMIT, || {
        load.delivered.lock().unwrap().len() >= 300
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    drain.await.unwrap();
    let delivered = load.delivered.lock().unwrap().clone();
    eprintln!(
        "MEASURE matrix: whole cluster down: 300 spooled; cluster back after {restarted:?}; {} delivered",
        delivered.len()
    );
    assert!(
        arrived,
        "everything spooled arrives: {} of 300",
        delivered.len()
    );
    let mut first_seen: Vec<String> = Vec::new();
    for (body, _) in &delivered {
        if !first_seen.contains(body) {
            first_seen.push(body.clone());
        }
    }
    for (p, sent) in &spooled {
        let got: Vec<&String> = first_seen
            .iter()
            .filter(|b| b.starts_with(&format!("{p}-")))
            .collect();
        let sent: Vec<&String> = sent.iter().collect();
        assert_eq!(got, sent, "publisher {p} in order");
    }
    warren.stop().await;
    eprintln!("MEASURE matrix: the test took {:?}", began.elapsed());
    drop(cluster);
    let _ = std::fs::remove_dir_all(&spool_dir);
}
