//! TLS to the broker, against a RabbitMQ node of its own that speaks AMQPS
//! (scripts/tls-broker.sh, beside the default node), with certificates made
//! here by rcgen:
//!
//! - a client certificate and no password: Warren logs in with SASL EXTERNAL
//!   as the certificate's CN, and a publish is confirmed into a queue;
//! - `amqp.password_file`: Warren logs in with the file's password;
//! - a broker certificate that `amqp.tls.ca_file` did not sign: not ready,
//!   publishes fail fast with UNAVAILABLE, and the log says why (and never
//!   shows the password);
//! - missing or unusable files: `warren` stops at start-up with one line
//!   naming the key.
//!
//! A test binary of its own: the node is started once, by the one test that
//! needs it, and stopped when that test ends, however it ends.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::tls::{Pki, TlsBroker, AMQPS_URI, CLIENT_CN, PLAIN_URI};
use common::{publish, request, unique, Broker, Warren};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_warren");
/// The user of the `password_file` case, and its password.
const PASSWORD_USER: &str = "warren-pw";
const PASSWORD: &str = "s3cret-fr0m-a-file";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_logins_and_an_untrusted_broker() {
    let pki = Pki::new();
    let node = TlsBroker::up(&pki);
    node.user(CLIENT_CN, None);
    node.user(PASSWORD_USER, Some(PASSWORD));
    let broker = Broker::connect_to(PLAIN_URI).await;

    external_login_as_the_certificate_cn(&pki, &node, &broker).await;
    password_file_login(&pki, &node, &broker).await;
    untrusted_broker_certificate(&pki).await;
}

/// Publishes one message through `warren` into a new queue of the TLS node
/// and checks that it is there.
async fn publish_lands(warren: &Warren, broker: &Broker, what: &str) {
    let queue = unique(what);
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    publish(&mut client, &queue, what).await;
    let got = broker.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "the confirmed message is in {queue}");
    assert_eq!(got[0].data, what.as_bytes());
}

async fn external_login_as_the_certificate_cn(pki: &Pki, node: &TlsBroker, broker: &Broker) {
    let config = common::config_with(&[
        ("WARREN__AMQP__URL", AMQPS_URI),
        ("WARREN__AMQP__TLS__CA_FILE", &pki.path("ca.pem")),
        ("WARREN__AMQP__TLS__CERT_FILE", &pki.path("client.pem")),
        ("WARREN__AMQP__TLS__KEY_FILE", &pki.path("client-key.pem")),
    ]);
    let warren = Warren::start_with(config).await;
    publish_lands(&warren, broker, "tls-external").await;
    let connections = node.connections();
    let mine: Vec<_> = connections
        .iter()
        .filter(|(user, ..)| user == CLIENT_CN)
        .collect();
    assert!(!mine.is_empty(), "Warren's connections in {connections:?}");
    for (_, mechanism, ssl) in &mine {
        assert_eq!(mechanism, "EXTERNAL", "{connections:?}");
        assert!(ssl, "over TLS: {connections:?}");
    }
    warren.stop().await;
}

async fn password_file_login(pki: &Pki, node: &TlsBroker, broker: &Broker) {
    // As a mounted secret usually is: with a trailing newline.
    let password_file = pki.write("password", &format!("{PASSWORD}\n"));
    // By name this time: the server certificate is for localhost too.
    let url = format!("amqps://{PASSWORD_USER}@localhost:5712/%2f");
    let config = common::config_with(&[
        ("WARREN__AMQP__URL", &url),
        ("WARREN__AMQP__TLS__CA_FILE", &pki.path("ca.pem")),
        ("WARREN__AMQP__PASSWORD_FILE", &password_file),
    ]);
    let warren = Warren::start_with(config).await;
    publish_lands(&warren, broker, "tls-password").await;
    let connections = node.connections();
    let mine: Vec<_> = connections
        .iter()
        .filter(|(user, ..)| user == PASSWORD_USER)
        .collect();
    assert!(!mine.is_empty(), "Warren's connections in {connections:?}");
    for (_, mechanism, ssl) in &mine {
        assert_eq!(mechanism, "PLAIN", "{connections:?}");
        assert!(ssl, "over TLS: {connections:?}");
    }
    warren.stop().await;
}

/// `warren` as a child process with JSON logs, its stderr lines on a channel.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
            .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
            .env("WARREN__LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("warren starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first log line (as JSON) for which `test` holds, within `wait`.
    fn log_line(
        &mut self,
        wait: Duration,
        test: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let parsed: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    self.seen.push(line);
                    if test(&parsed) {
                        return parsed;
                    }
                }
                Err(_) => panic!("no such log line within {wait:?}: {:#?}", self.seen),
            }
        }
    }

    /// SIGTERM; the exit must be clean. Every line it logged.
    fn stop(mut self) -> Vec<String> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        let status = self.child.wait().expect("warren exits");
        assert!(status.success(), "{status:?}");
        // The reader ends with the process's stderr.
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        seen
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn untrusted_broker_certificate(pki: &Pki) {
    let password_file = pki.write("password", PASSWORD);
    let url = format!("amqps://{PASSWORD_USER}@127.0.0.1:5712/%2f");
    let mut warren = Process::start(&[
        ("WARREN__AMQP__URL", &url),
        // The node's certificate is signed by ca.pem, not by this one.
        ("WARREN__AMQP__TLS__CA_FILE", &pki.path("other-ca.pem")),
        ("WARREN__AMQP__TLS__CERT_FILE", &pki.path("client.pem")),
        ("WARREN__AMQP__TLS__KEY_FILE", &pki.path("client-key.pem")),
        ("WARREN__AMQP__PASSWORD_FILE", &password_file),
        ("WARREN__LOG__LEVEL", "debug"),
    ]);
    let listening = warren.log_line(Duration::from_secs(10), |l| {
        l["message"] == "warren listening"
    });
    let http = format!("http://{}", listening["http"].as_str().expect("http"));
    let grpc = format!("http://{}", listening["grpc"].as_str().expect("grpc"));
    let refused = warren.log_line(Duration::from_secs(10), |l| {
        l["message"] == "could not connect to the broker"
    });
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "the log says why: {refused}"
    );

    let ready = reqwest::get(format!("{http}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);

    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client
        .post(format!("{http}/v1/publish"))
        .json(&serde_json::json!({"exchange": "", "routing_key": "q", "body": "x"}))
        .send()
        .await
        .expect("publish answers");
    let elapsed = started.elapsed();
    let (status, body) = common::problem(response).await;
    assert_eq!(status, 503, "{body}");
    assert!(elapsed < Duration::from_secs(1), "failed fast: {elapsed:?}");

    let mut bus = warren::proto::bus_client::BusClient::connect(grpc)
        .await
        .expect("grpc connects");
    let started = Instant::now();
    let status = bus
        .publish(request("", "q", b"x"))
        .await
        .expect_err("not published");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "failed fast");

    let seen = tokio::task::spawn_blocking(move || warren.stop())
        .await
        .expect("stopped");
    assert!(seen
        .iter()
        .any(|l| l.contains(&format!("{PASSWORD_USER}@127.0.0.1"))));
    for line in &seen {
        assert!(!line.contains(PASSWORD), "the password in the log: {line}");
    }
}

/// Runs `warren` with `env`; it must exit at start-up with one line on
/// stderr that names `key`.
fn refused_at_start_up(env: &[(&str, &str)], key: &str) {
    let mut command = Command::new(BIN);
    command
        .env("WARREN__AMQP__URL", AMQPS_URI)
        .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
        .env("WARREN__GRPC__LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("warren runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(key), "{env:?}: names {key}: {err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[test]
fn missing_or_unusable_files_stop_start_up_naming_the_key() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let dir = pki.dir.display().to_string();
    let junk = pki.write("junk.pem", "not a certificate\n");
    let empty = pki.write("empty-password", "\n");
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    let other_key = pki.path("other-key.pem");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("WARREN__AMQP__TLS__CA_FILE", &missing)],
            "amqp.tls.ca_file",
        ),
        (
            vec![("WARREN__AMQP__TLS__CA_FILE", &dir)],
            "amqp.tls.ca_file",
        ),
        (
            vec![("WARREN__AMQP__TLS__CA_FILE", &junk)],
            "amqp.tls.ca_file",
        ),
        (
            vec![("WARREN__AMQP__PASSWORD_FILE", &missing)],
            "amqp.password_file",
        ),
        (
            vec![("WARREN__AMQP__PASSWORD_FILE", &empty)],
            "amqp.password_file",
        ),
        (
            vec![("WARREN__AMQP__TLS__CERT_FILE", &cert)],
            "amqp.tls.key_file",
        ),
        (
            vec![("WARREN__AMQP__TLS__KEY_FILE", &key)],
            "amqp.tls.cert_file",
        ),
        (
            vec![
                ("WARREN__AMQP__TLS__CERT_FILE", &cert),
                ("WARREN__AMQP__TLS__KEY_FILE", &missing),
            ],
            "amqp.tls.key_file",
        ),
        (
            vec![
                ("WARREN__AMQP__TLS__CERT_FILE", &cert),
                ("WARREN__AMQP__TLS__KEY_FILE", &other_key),
            ],
            "amqp.tls.key_file",
        ),
        (
            vec![
                ("WARREN__AMQP__TLS__CA_FILE", &ca),
                ("WARREN__AMQP__TLS__CERT_FILE", &junk),
                ("WARREN__AMQP__TLS__KEY_FILE", &key),
            ],
            "amqp.tls.cert_file",
        ),
    ];
    for (env, key) in cases {
        refused_at_start_up(&env, key);
    }
}
