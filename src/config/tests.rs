use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, Error> {
    Config::load_with_env(None, env(pairs))
}

fn file(text: &str) -> tempfile_path::TempToml {
    tempfile_path::TempToml::new(text)
}

/// A TOML file that removes itself.
mod tempfile_path {
    pub struct TempToml(pub std::path::PathBuf);
    impl TempToml {
        pub fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("warren-test-{}.toml", uuid::Uuid::new_v4()));
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            Self(path)
        }
    }
    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn message(result: Result<Config, Error>) -> String {
    result.expect_err("should be refused").to_string()
}

#[test]
fn defaults_match_the_contract() {
    let c = load_env(&[]).unwrap();
    assert_eq!(c.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(c.http.listen, "127.0.0.1:5680");
    assert_eq!(c.grpc.listen, "127.0.0.1:5681");
    assert_eq!(c.amqp.pool_size, 2);
}

#[test]
fn the_shipped_config_file_loads_and_equals_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/warren.toml");
    let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
    let d = load_env(&[]).unwrap();
    assert_eq!(format!("{c:?}"), format!("{d:?}"));
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/topology.toml");
    let c = Config::load_with_env(Some(&example), env(&[])).unwrap();
    assert_eq!(c.topology.queues.len(), 4);
}

#[test]
fn environment_overrides_the_file() {
    let f = file("[amqp]\nurl = \"amqp://a:b@file-host/%2f\"\npool_size = 3\n");
    let c = Config::load_with_env(
        Some(&f.0),
        env(&[
            ("WARREN__AMQP__URL", "amqp://x:y@env-host/%2f"),
            ("WARREN__HTTP__LISTEN", "0.0.0.0:9000"),
        ]),
    )
    .unwrap();
    assert_eq!(c.amqp.url, "amqp://x:y@env-host/%2f");
    assert_eq!(c.amqp.pool_size, 3);
    assert_eq!(c.http.listen, "0.0.0.0:9000");
}

#[test]
fn several_urls_are_failover_order() {
    let c = load_env(&[("WARREN__AMQP__URL", "amqp://a/%2f, amqp://b/%2f")]).unwrap();
    assert_eq!(c.amqp.urls(), vec!["amqp://a/%2f", "amqp://b/%2f"]);
}

#[test]
fn durations_parse_from_env() {
    let c = load_env(&[("WARREN__PUBLISH__CONFIRM_TIMEOUT", "1500ms")]).unwrap();
    assert_eq!(c.publish.confirm_timeout, Duration::from_millis(1500));
    let e = message(load_env(&[("WARREN__PUBLISH__CONFIRM_TIMEOUT", "soon")]));
    assert!(e.contains("confirm_timeout"), "{e}");
}

#[test]
fn a_bad_url_names_the_key_and_hides_the_password() {
    let e = message(load_env(&[("WARREN__AMQP__URL", "http://u:hunter2@host")]));
    assert!(e.contains("amqp.url"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = message(load_env(&[("WARREN__AMQP__URL", " , ")]));
    assert!(e.contains("amqp.url"), "{e}");
}

#[test]
fn bad_listen_addresses_name_the_key() {
    let e = message(load_env(&[("WARREN__HTTP__LISTEN", "localhost")]));
    assert!(e.contains("http.listen") && e.contains("localhost"), "{e}");
    let e = message(load_env(&[("WARREN__GRPC__LISTEN", "1.2.3.4:99999")]));
    assert!(e.contains("grpc.listen"), "{e}");
}

#[test]
fn counts_must_be_positive() {
    for key in [
        "AMQP__POOL_SIZE",
        "AMQP__MAX_CHANNELS",
        "AMQP__SHARED_PUBLISHERS",
        "PUBLISH__MAX_BODY_BYTES",
        "PUBLISH__MAX_IN_FLIGHT",
        "PUBLISH__STREAM_WINDOW",
        "PUBLISH__MAX_BATCH_MESSAGES",
        "PUBLISH__MAX_BATCH_BYTES",
        "SUBSCRIBE__MAX_SUBSCRIPTIONS",
        "RPC__MAX_PENDING",
        "RPC__CHANNELS",
        "DEAD_LETTERS__MAX_LIST",
        "DEAD_LETTERS__MAX_SCAN",
        "BREAKER__FAILURES",
    ] {
        let e = message(load_env(&[(&format!("WARREN__{key}"), "0")]));
        assert!(e.contains(&key.to_lowercase().replace("__", ".")), "{e}");
    }
    let e = message(load_env(&[("WARREN__AMQP__POOL_SIZE", "two")]));
    assert!(e.contains("pool_size"), "{e}");
}

#[test]
fn shared_publishers_must_leave_room() {
    let e = message(load_env(&[("WARREN__AMQP__MAX_CHANNELS", "4")]));
    assert!(e.contains("amqp.shared_publishers"), "{e}");
}

#[test]
fn body_limit_has_a_ceiling() {
    let e = message(load_env(&[(
        "WARREN__PUBLISH__MAX_BODY_BYTES",
        "999999999999",
    )]));
    assert!(e.contains("publish.max_body_bytes"), "{e}");
}

#[test]
fn prefetch_bounds() {
    let e = message(load_env(&[("WARREN__SUBSCRIBE__DEFAULT_PREFETCH", "0")]));
    assert!(e.contains("subscribe.default_prefetch"), "{e}");
    let e = message(load_env(&[("WARREN__SUBSCRIBE__MAX_PREFETCH", "10")]));
    assert!(e.contains("subscribe.default_prefetch"), "{e}");
}

#[test]
fn zero_durations_are_refused() {
    // `amqp.idle_timeout = "0s"` used to pass and then panic the reaper.
    for key in [
        "AMQP__IDLE_TIMEOUT",
        "AMQP__CONNECT_TIMEOUT",
        "AMQP__OPERATION_TIMEOUT",
        "PUBLISH__CONFIRM_TIMEOUT",
        "PUBLISH__EXCHANGE_CACHE_TTL",
        "SUBSCRIBE__KEEPALIVE",
        "RPC__DEFAULT_TIMEOUT",
        "RPC__MAX_TIMEOUT",
        "BREAKER__OPEN_MIN",
        "BREAKER__OPEN_MAX",
        "SHUTDOWN__GRACE",
    ] {
        for value in ["0s", "1ms"] {
            let e = message(load_env(&[(&format!("WARREN__{key}"), value)]));
            let name = key.to_lowercase().replace("__", ".");
            // Some keys are refused by a rule that names a related key first
            // (open_max below open_min, max_timeout below default_timeout).
            let section = name.split('.').next().unwrap();
            assert!(e.contains(section), "{key}={value}: {e}");
        }
    }
    // Each one named exactly where no other rule intervenes.
    let e = message(load_env(&[("WARREN__AMQP__IDLE_TIMEOUT", "0s")]));
    assert!(e.contains("amqp.idle_timeout"), "{e}");
    let e = message(load_env(&[("WARREN__SHUTDOWN__GRACE", "0s")]));
    assert!(e.contains("shutdown.grace"), "{e}");
}

#[test]
fn log_settings() {
    let e = message(load_env(&[("WARREN__LOG__FORMAT", "xml")]));
    assert!(e.contains("format"), "{e}");
    let e = message(load_env(&[("WARREN__LOG__LEVEL", "warren=[")]));
    assert!(e.contains("log.level"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let f = file("[amqp]\nurll = \"x\"\n");
    let e = message(Config::load_with_env(Some(&f.0), env(&[])));
    assert!(e.contains("urll"), "{e}");
}

#[test]
fn topology_rules() {
    let cases = [
        (
            "[[topology.exchanges]]\nname = \"\"\n",
            "topology.exchanges[0].name",
        ),
        (
            "[[topology.exchanges]]\nname = \"amq.mine\"\n",
            "topology.exchanges[0].name",
        ),
        (
            "[[topology.exchanges]]\nname = \"e\"\ntype = \"fan\"\n",
            "topology.exchanges[0].type",
        ),
        (
            "[[topology.queues]]\nname = \"q\"\ntype = \"quorum\"\nauto_delete = true\n",
            "topology.queues[0].type",
        ),
        (
            "[[topology.queues]]\nname = \"q\"\narguments = { \"x-queue-type\" = \"quorum\" }\n",
            "topology.queues[0].arguments",
        ),
        (
            "[[topology.bindings]]\nsource = \"\"\ndestination = \"q\"\n",
            "topology.bindings[0].source",
        ),
    ];
    for (toml, key) in cases {
        let f = file(toml);
        let e = message(Config::load_with_env(Some(&f.0), env(&[])));
        assert!(e.contains(key), "{toml}: {e}");
    }
    let long = format!("[[topology.queues]]\nname = \"{}\"\n", "q".repeat(256));
    let f = file(&long);
    assert!(
        message(Config::load_with_env(Some(&f.0), env(&[]))).contains("topology.queues[0].name")
    );
}

#[test]
fn rpc_rules() {
    let e = message(load_env(&[("WARREN__RPC__MAX_PENDING", "0")]));
    assert!(e.contains("rpc.max_pending"), "{e}");
    let e = message(load_env(&[("WARREN__RPC__CHANNELS", "0")]));
    assert!(e.contains("rpc.channels"), "{e}");
    let e = message(load_env(&[("WARREN__RPC__DEFAULT_TIMEOUT", "10m")]));
    assert!(
        e.contains("rpc.default_timeout") && e.contains("rpc.max_timeout"),
        "{e}"
    );
    let e = message(load_env(&[("WARREN__RPC__DEFAULT_TIMEOUT", "0s")]));
    assert!(e.contains("rpc.default_timeout"), "{e}");
}

#[test]
fn breaker_rules() {
    let e = message(load_env(&[("WARREN__BREAKER__FAILURES", "0")]));
    assert!(e.contains("breaker.failures"), "{e}");
    let e = message(load_env(&[
        ("WARREN__BREAKER__OPEN_MIN", "1m"),
        ("WARREN__BREAKER__OPEN_MAX", "10s"),
    ]));
    assert!(e.contains("breaker.open_min"), "{e}");
    let e = message(load_env(&[("WARREN__BREAKER__OPEN_MIN", "0s")]));
    assert!(e.contains("breaker.open_min"), "{e}");
    // Sub-second open periods are fine.
    load_env(&[("WARREN__BREAKER__OPEN_MIN", "200ms")]).unwrap();
}

#[test]
fn retry_rules_and_per_queue_policies() {
    let e = message(load_env(&[("WARREN__RETRY__MAX_ATTEMPTS", "0")]));
    assert!(e.contains("retry.max_attempts"), "{e}");
    let e = message(load_env(&[("WARREN__RETRY__INITIAL_BACKOFF", "2m")]));
    assert!(e.contains("retry.initial_backoff"), "{e}");
    let e = message(load_env(&[("WARREN__RETRY__DELAY_QUEUE_TYPE", "stream")]));
    assert!(e.contains("retry.delay_queue_type"), "{e}");
    let f = file("[retry]\nmax_attempts = 3\n[retry.queues.\"orders\"]\nmax_attempts = 9\ninitial_backoff = \"5s\"\nmax_backoff = \"10m\"\n");
    let c = Config::load_with_env(Some(&f.0), env(&[])).unwrap();
    assert_eq!(c.retry.policy("orders").max_attempts, 9);
    assert_eq!(c.retry.policy("other").max_attempts, 3);
    assert_eq!(
        c.retry.policy("other").initial_backoff,
        Duration::from_secs(1)
    );
    let f = file("[retry.queues.\"bad\"]\nmax_attempts = 0\ninitial_backoff = \"1s\"\nmax_backoff = \"2s\"\n");
    let e = message(Config::load_with_env(Some(&f.0), env(&[])));
    assert!(e.contains("retry.queues.\"bad\".max_attempts"), "{e}");
}

#[test]
fn dead_letter_limits() {
    for key in ["MAX_LIST", "MAX_SCAN"] {
        let e = message(load_env(&[(&format!("WARREN__DEAD_LETTERS__{key}"), "0")]));
        assert!(
            e.contains(&format!("dead_letters.{}", key.to_lowercase())),
            "{e}"
        );
    }
}

#[test]
fn quorum_queues_with_warren_dead_letters_need_reject_publish() {
    let f = file("[[topology.queues]]\nname = \"q\"\ntype = \"quorum\"\narguments = { \"x-overflow\" = \"drop-head\" }\n");
    let e = message(Config::load_with_env(Some(&f.0), env(&[])));
    assert!(
        e.contains("topology.queues[0].arguments") && e.contains("reject-publish"),
        "{e}"
    );
    let f = file("[[topology.queues]]\nname = \"q\"\ntype = \"quorum\"\ndead_letter_queue = false\narguments = { \"x-overflow\" = \"drop-head\" }\n");
    Config::load_with_env(Some(&f.0), env(&[])).unwrap();
}

#[test]
fn frame_max_bounds() {
    for bad in ["100", "2000000"] {
        let e = message(load_env(&[("WARREN__AMQP__FRAME_MAX", bad)]));
        assert!(e.contains("amqp.frame_max"), "{e}");
    }
}

#[test]
fn the_secure_example_has_every_key_right() {
    // Its files live in a pod, not here: parse it (every key known, every
    // type right) without the checks that read the files.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/secure.toml");
    let c: Config = config::Config::builder()
        .add_source(config::File::from(path.as_path()))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    assert!(c.auth.enabled);
    assert_eq!(c.auth.clients.len(), 3);
    assert!(c.http.tls.is_some() && c.grpc.tls.is_some());
    assert!(c.auth.validate().is_ok());
}

#[test]
fn ordered_groups_are_checked() {
    let load = |toml: &str| {
        let f = file(toml);
        Config::load_with_env(Some(&f.0), env(&[]))
    };
    let c = load("[[ordered]]\nname = \"orders\"\n").unwrap();
    let g = &c.ordered[0];
    assert_eq!(
        (g.partitions, g.block_on_failure, g.max_blocked_keys),
        (4, true, 32)
    );
    assert_eq!(g.slots(), 8);
    for (toml, key) in [
        (
            "[[ordered]]\nname = \"o\"\npartitions = 0\n",
            "ordered[0].partitions",
        ),
        (
            "[[ordered]]\nname = \"o\"\npartitions = 257\n",
            "ordered[0].partitions",
        ),
        ("[[ordered]]\nname = \"\"\n", "ordered[0].name"),
        ("[[ordered]]\nname = \"amq.x\"\n", "ordered[0].name"),
        (
            "[[ordered]]\nname = \"o\"\nmax_blocked_keys = 0\n",
            "ordered[0].max_blocked_keys",
        ),
        (
            "[[ordered]]\nname = \"o\"\n[[ordered]]\nname = \"o\"\n",
            "ordered[1].name",
        ),
    ] {
        let error = message(load(toml));
        assert!(error.contains(key), "{toml}: {error}");
    }
    let error = message(load("[[ordered]]\nname = \"o\"\nparts = 2\n"));
    assert!(error.contains("parts"), "{error}");
}

#[test]
fn bodies_in_flight_must_hold_the_largest_message() {
    let e = message(load_env(&[
        ("WARREN__PUBLISH__MAX_BODY_BYTES", "2000"),
        ("WARREN__PUBLISH__MAX_BYTES_IN_FLIGHT", "1999"),
    ]));
    assert!(e.contains("publish.max_bytes_in_flight"), "{e}");
    let c = load_env(&[("WARREN__PUBLISH__MAX_BYTES_IN_FLIGHT", "8388608")]).unwrap();
    assert_eq!(c.publish.max_bytes_in_flight, 8 * 1024 * 1024);
}
