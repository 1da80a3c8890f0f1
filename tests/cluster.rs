//! Failover in a real three-node RabbitMQ cluster (scripts/cluster.sh, beside
//! the default node): the node that Warren publishes to, which also leads a
//! three-member quorum queue, is killed with SIGKILL while confirmed
//! publishing runs, by unary `Publish` from several tasks and by one
//! `PublishStream`. Publishing must come back on the surviving nodes within
//! 30 s, and no message that Warren confirmed, before or after the kill, may
//! be missing from the queue (one may be there twice: at-least-once).
//!
//! A test binary of its own, with one test: cargo runs test binaries one
//! after another, so nothing else runs beside the cluster's start and kill.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::cluster::{alive, kill, publishing_node, quorum_queue, script_async, Cluster};
use common::{unique, Broker, Warren};
use tonic::transport::Channel as GrpcChannel;
use tonic::Code;
use warren::proto::bus_client::BusClient;
use warren::proto::PublishRequest;

/// Unary publishing tasks, and the pause each makes between two publishes
/// (the load is bounded: the machine is small and shared).
const UNARY_TASKS: usize = 6;
const UNARY_PAUSE: Duration = Duration::from_millis(10);
/// The stream's requests awaiting their response at most, and the pause
/// between two requests.
const STREAM_WINDOW: usize = 32;
const STREAM_PAUSE: Duration = Duration::from_millis(3);
/// Bounds on every loop, whatever happens.
const MAX_PER_TASK: usize = 50_000;
const MAX_STREAMS: usize = 200;
/// Publishing must be back within this long after the kill...
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// ... with at least this many confirmed publishes (sent after the kill) of
/// each kind.
const MIN_AFTER: usize = 100;
/// Publishing stops once each kind has this many confirmed after the kill
/// (or at RECOVERY_LIMIT + 5 s).
const ENOUGH_AFTER: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Unary,
    Stream,
}

/// One publish and how it ended.
struct Outcome {
    kind: Kind,
    body: String,
    sent: Instant,
    done: Instant,
    /// `Code::Ok` once confirmed.
    code: Code,
    /// How it failed: its code, or that no answer came.
    label: String,
    error: String,
}

/// What the publishing tasks share with the test.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    kill: OnceLock<Instant>,
    /// Confirmed publishes, unary and stream.
    confirmed: [AtomicUsize; 2],
    /// Confirmed publishes sent after the kill, unary and stream.
    after: [AtomicUsize; 2],
}

impl Shared {
    fn record(&self, outcome: &Outcome) {
        if outcome.code != Code::Ok {
            return;
        }
        let k = outcome.kind as usize;
        self.confirmed[k].fetch_add(1, Ordering::SeqCst);
        if self.kill.get().is_some_and(|kill| outcome.sent >= *kill) {
            self.after[k].fetch_add(1, Ordering::SeqCst);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn publish_request(queue: &str, body: &str) -> PublishRequest {
    common::request("", queue, body.as_bytes())
}

/// Publishes `u{task}-{i}` one at a time until told to stop.
async fn unary_task(
    mut client: BusClient<GrpcChannel>,
    queue: String,
    task: usize,
    shared: Arc<Shared>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for i in 0..MAX_PER_TASK {
        if shared.stopping() {
            break;
        }
        let body = format!("u{task}-{i}");
        let mut request = tonic::Request::new(publish_request(&queue, &body));
        request.set_timeout(Duration::from_secs(15));
        let sent = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(20), client.publish(request)).await;
        let (code, label, error) = match result {
            Ok(Ok(_)) => (Code::Ok, String::new(), String::new()),
            Ok(Err(status)) => (
                status.code(),
                format!("{:?}", status.code()),
                status.message().to_owned(),
            ),
            Err(_) => (Code::Unknown, "NoAnswer".into(), "no answer in 20 s".into()),
        };
        let outcome = Outcome {
            kind: Kind::Unary,
            body,
            sent,
            done: Instant::now(),
            code,
            label,
            error,
        };
        shared.record(&outcome);
        outcomes.push(outcome);
        tokio::time::sleep(UNARY_PAUSE).await;
    }
    outcomes
}

/// One `PublishStream` (another one if it ends before it is told to stop),
/// at most STREAM_WINDOW requests awaiting their response. Returns the
/// outcomes and how each stream ended early.
async fn stream_task(
    mut client: BusClient<GrpcChannel>,
    queue: String,
    shared: Arc<Shared>,
) -> (Vec<Outcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut ends = Vec::new();
    let mut sent_total = 0usize;
    for session in 0..MAX_STREAMS {
        if shared.stopping() {
            break;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(STREAM_WINDOW);
        let mut tx = Some(tx);
        let call = tokio::time::timeout(
            Duration::from_secs(10),
            client.publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut responses = match call {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                ends.push(format!(
                    "open refused: {:?} {}",
                    status.code(),
                    status.message()
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                ends.push("open timed out".into());
                continue;
            }
        };
        let mut pending: HashMap<String, Instant> = HashMap::new();
        let mut pace = tokio::time::interval(STREAM_PAUSE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_until = None;
        let end = loop {
            if shared.stopping() && tx.is_some() {
                tx = None; // ends the request side: the stream ends once all are answered
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(20));
            }
            let drained = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = pace.tick(), if tx.is_some()
                    && pending.len() < STREAM_WINDOW
                    && sent_total < MAX_PER_TASK => {
                    let body = format!("s{session}-{sent_total}");
                    let mut request = publish_request(&queue, &body);
                    request.request_id = body.clone();
                    let sender = tx.as_ref().expect("sending");
                    if sender.send(request).await.is_err() {
                        break "the request side closed".to_string();
                    }
                    sent_total += 1;
                    pending.insert(body, Instant::now());
                }
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        let Some(sent) = pending.remove(&response.request_id) else {
                            break format!("a response to an unknown request {:?}", response.request_id);
                        };
                        let code = Code::from(response.code as i32);
                        let outcome = Outcome {
                            kind: Kind::Stream,
                            body: response.request_id,
                            sent,
                            done: Instant::now(),
                            code,
                            label: format!("{code:?}"),
                            error: response.error,
                        };
                        shared.record(&outcome);
                        outcomes.push(outcome);
                        if tx.is_none() && pending.is_empty() {
                            break String::new();
                        }
                    }
                    Ok(None) => break "ended by Warren".to_string(),
                    Err(status) => break format!("ended with {:?} {}", status.code(), status.message()),
                },
                _ = drained => break "still awaiting responses 20 s after the end".to_string(),
                // Wakes the loop up now and then to see `stop`.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        let unanswered = pending.len();
        for (body, sent) in pending {
            outcomes.push(Outcome {
                kind: Kind::Stream,
                body,
                sent,
                done: Instant::now(),
                code: Code::Unknown,
                label: "NoAnswer".into(),
                error: format!("no response: the stream {end}"),
            });
        }
        if !end.is_empty() {
            ends.push(format!("{end} ({unanswered} unanswered)"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if shared.stopping() {
            break;
        }
    }
    (outcomes, ends)
}

/// The first confirm, after the kill, of a publish sent after the kill.
fn gap(outcomes: &[&Outcome], kill: Instant) -> Option<Duration> {
    outcomes
        .iter()
        .filter(|o| o.code == Code::Ok && o.sent >= kill)
        .map(|o| o.done - kill)
        .min()
}

/// The longest time without a confirm from the kill on: from the kill to
/// the first confirm after it, or between two confirms after it.
fn longest_pause(outcomes: &[&Outcome], kill: Instant) -> Duration {
    let mut confirms: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.code == Code::Ok && o.done >= kill)
        .map(|o| o.done)
        .collect();
    confirms.sort();
    let mut last = kill;
    let mut longest = Duration::ZERO;
    for at in confirms {
        longest = longest.max(at - last);
        last = at;
    }
    longest
}

/// The first few publishes done after the kill: (sent, done) relative to the
/// kill in ms (negative: before it), and how they ended.
fn first_after(outcomes: &[&Outcome], kill: Instant) -> Vec<String> {
    let ms = |t: Instant| {
        if t >= kill {
            (t - kill).as_millis() as i64
        } else {
            -((kill - t).as_millis() as i64)
        }
    };
    let mut after: Vec<&&Outcome> = outcomes.iter().filter(|o| o.done >= kill).collect();
    after.sort_by_key(|o| o.done);
    after
        .iter()
        .take(4)
        .map(|o| {
            let how = if o.code == Code::Ok { "ok" } else { &o.label };
            format!("{}..{} ms {how}", ms(o.sent), ms(o.done))
        })
        .collect()
}

/// Codes of the failed publishes with their counts and a sample message.
fn failures(outcomes: &[&Outcome]) -> BTreeMap<String, (usize, String)> {
    let mut codes: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.code != Code::Ok) {
        let entry = codes.entry(o.label.clone()).or_insert((0, o.error.clone()));
        entry.0 += 1;
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_warren_publishes_to_loses_no_confirmed_message() {
    let began = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::up)
        .await
        .expect("cluster up");
    let cluster_up = began.elapsed();
    let name = format!(
        "warren-failover-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let urls = cluster.uris.join(",");
    let warren = Warren::start_with(common::config_with(&[
        ("WARREN__AMQP__URL", &urls),
        ("WARREN__AMQP__CONNECTION_NAME", &name),
    ]))
    .await;

    let (target, spread) = publishing_node(&name, &cluster.uris).await;
    eprintln!("MEASURE cluster: up in {cluster_up:?}; Warren's publishing connections per node {spread:?}; killing node {target}");
    let survivor = if target == 1 { 2 } else { 1 };
    let queue = unique("failover");
    quorum_queue(&cluster.uris[target - 1], &queue).await;
    let members = script_async(&[
        "ctl",
        &target.to_string(),
        "-q",
        "list_queues",
        "name",
        "leader",
        "members",
        "--no-table-headers",
    ])
    .await;
    eprintln!(
        "MEASURE cluster: queue {}",
        members
            .lines()
            .find(|l| l.contains(&queue))
            .unwrap_or("(not listed)")
    );
    let pid = script_async(&["pid", &target.to_string()]).await;
    let pid = pid.trim().to_owned();

    let shared = Arc::new(Shared::default());
    let client = warren.grpc().await;
    let unary: Vec<_> = (0..UNARY_TASKS)
        .map(|t| tokio::spawn(unary_task(client.clone(), queue.clone(), t, shared.clone())))
        .collect();
    let stream = tokio::spawn(stream_task(client.clone(), queue.clone(), shared.clone()));

    // Both kinds publish before the kill.
    let warmup = Instant::now();
    while shared.confirmed[0].load(Ordering::SeqCst) < 200
        || shared.confirmed[1].load(Ordering::SeqCst) < 200
    {
        assert!(
            warmup.elapsed() < Duration::from_secs(20),
            "publishing did not get going before the kill: {} unary and {} stream confirmed",
            shared.confirmed[0].load(Ordering::SeqCst),
            shared.confirmed[1].load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let killed = tokio::task::spawn_blocking({
        let pid = pid.clone();
        move || kill(&pid, target)
    })
    .await
    .expect("kill");
    shared.kill.set(killed).expect("killed once");
    let gone = async {
        while alive(&pid) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        killed.elapsed()
    };
    let gone = tokio::time::timeout(Duration::from_secs(5), gone).await;
    eprintln!(
        "MEASURE cluster: killed node {target} (beam.smp pid {pid}) with SIGKILL; gone after {gone:?}"
    );

    // Until each kind has enough confirmed after the kill, or time is up.
    while killed.elapsed() < RECOVERY_LIMIT + Duration::from_secs(5) {
        if shared.after[0].load(Ordering::SeqCst) >= ENOUGH_AFTER
            && shared.after[1].load(Ordering::SeqCst) >= ENOUGH_AFTER
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published_for = killed.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for task in unary {
        outcomes.extend(
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("unary task ends")
                .expect("unary task"),
        );
    }
    let (stream_outcomes, stream_ends) = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("stream task ends")
        .expect("stream task");
    outcomes.extend(stream_outcomes);

    // What the survivors hold.
    let broker = Broker::connect_to(&cluster.uris[survivor - 1]).await;
    let ready = broker.ready(&queue).await.expect("the queue survived");
    let held: Vec<String> = broker
        .take(&queue, ready as usize, Duration::from_secs(30))
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.data).expect("UTF-8 body"))
        .collect();
    let distinct: HashSet<&str> = held.iter().map(String::as_str).collect();

    let mut report = Vec::new();
    let mut verdicts = Vec::new();
    for kind in [Kind::Unary, Kind::Stream] {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        let confirmed: Vec<&&Outcome> = mine.iter().filter(|o| o.code == Code::Ok).collect();
        let before = confirmed.iter().filter(|o| o.sent < killed).count();
        let after = confirmed.iter().filter(|o| o.sent >= killed).count();
        let straddling = confirmed
            .iter()
            .filter(|o| o.sent < killed && o.done >= killed)
            .count();
        let failed = mine.len() - confirmed.len();
        let failed_after = mine
            .iter()
            .filter(|o| o.code != Code::Ok && o.sent >= killed)
            .count();
        let lost: Vec<&str> = confirmed
            .iter()
            .filter(|o| !distinct.contains(o.body.as_str()))
            .map(|o| o.body.as_str())
            .collect();
        let gap = gap(&mine, killed);
        let pause = longest_pause(&mine, killed);
        let early = first_after(&mine, killed);
        let last_failure = mine
            .iter()
            .filter(|o| o.code != Code::Ok)
            .map(|o| o.done.saturating_duration_since(killed))
            .max();
        report.push(format!(
            "MEASURE cluster {kind:?}: failover gap {gap:?} (kill to the first confirm of a publish sent after it); \
             longest time without a confirm after the kill {pause:?}; the first done after the kill {early:?}; \
             {} published, {} confirmed ({before} sent before the kill, of which {straddling} confirmed after it; {after} sent after it), \
             {failed} failed ({failed_after} sent after the kill; the last failure {last_failure:?} after the kill), by code {:?}; \
             {} confirmed missing from the queue",
            mine.len(),
            confirmed.len(),
            failures(&mine),
            lost.len(),
        ));
        verdicts.push((kind, gap, after, lost));
    }
    let confirmed_bodies: HashSet<&str> = outcomes
        .iter()
        .filter(|o| o.code == Code::Ok)
        .map(|o| o.body.as_str())
        .collect();
    let unconfirmed_held = distinct
        .iter()
        .filter(|b| !confirmed_bodies.contains(*b))
        .count();
    report.push(format!(
        "MEASURE cluster: published for {published_for:?} after the kill; the queue holds {} messages ({} distinct, {} twice or more; {unconfirmed_held} not confirmed to the client); \
         stream ends {stream_ends:?}",
        held.len(),
        distinct.len(),
        held.len() - distinct.len(),
    ));
    let metrics = warren.metrics().await;
    report.extend(
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("warren_publish_total")
                    || l.starts_with("warren_circuit_breaker_state")
                    || l.starts_with("warren_amqp_connections")
            })
            .map(|l| format!("MEASURE cluster: metric {l}")),
    );
    for line in &report {
        eprintln!("{line}");
    }

    for (kind, gap, after, lost) in &verdicts {
        let gap =
            gap.unwrap_or_else(|| panic!("{kind:?} publishing never recovered after the kill"));
        assert!(
            gap <= RECOVERY_LIMIT,
            "{kind:?} publishing recovered only {gap:?} after the kill"
        );
        assert!(
            *after >= MIN_AFTER,
            "{kind:?}: only {after} confirmed publishes sent after the kill"
        );
        assert!(
            lost.is_empty(),
            "{kind:?}: {} confirmed messages missing from the queue, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    let _ = broker.connection.close(200, "done".into()).await;
    warren.stop().await;
    eprintln!(
        "MEASURE cluster: the test took {:?} (before `down`)",
        began.elapsed()
    );
    drop(cluster);
}
