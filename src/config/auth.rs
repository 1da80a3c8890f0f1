//! `[auth]`: who may use the bus (off by default).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Error};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Every request needs a credential (except health, and metrics while
    /// `metrics_public`).
    pub enabled: bool,
    /// `/metrics` needs no credential.
    pub metrics_public: bool,
    /// The clients known by token or certificate.
    pub clients: Vec<Client>,
    /// JWTs as credentials.
    pub jwt: Option<Jwt>,
    /// Most named publishers (and publish streams) one client holds at once.
    pub max_publishers_per_client: usize,
    /// Most subscriptions one client holds at once.
    pub max_subscriptions_per_client: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            enabled: false,
            metrics_public: true,
            clients: Vec::new(),
            jwt: None,
            max_publishers_per_client: 256,
            max_subscriptions_per_client: 256,
        }
    }
}

/// `[[auth.clients]]`: one client and what it may do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Client {
    /// Shown in logs and as a metrics label.
    pub name: String,
    /// SHA-256 of its bearer token, lowercase hex (the token itself is never
    /// stored); or a list of them, so that a token can be rotated without a
    /// second client (old and new are both this client meanwhile).
    pub token_sha256: Option<Hashes>,
    /// The subject common name of its client certificate.
    pub cert_cn: Option<String>,
    /// Exchanges it may publish to (`amqp.default` is the default exchange).
    pub publish: Vec<String>,
    /// Queues it may subscribe to.
    pub consume: Vec<String>,
    /// Exchanges it may call through.
    pub call: Vec<String>,
    /// Dead letters, queues, ordered keys, the console.
    pub admin: bool,
    /// Messages per second it may publish, 0 for no limit.
    pub max_publish_rate: u32,
}

/// One token hash or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Hashes {
    /// `token_sha256 = "<hex>"`.
    One(String),
    /// `token_sha256 = ["<hex>", "<hex>"]`.
    Many(Vec<String>),
}

impl Hashes {
    /// Every hash.
    pub fn all(&self) -> &[String] {
        match self {
            Hashes::One(one) => std::slice::from_ref(one),
            Hashes::Many(many) => many,
        }
    }
}

/// `[auth.jwt]`: signed JWTs (RS256, ES256) as credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Jwt {
    /// A JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document over HTTP(S), re-read when a token names an unknown
    /// key id (at most once per `jwks_refresh`).
    pub jwks_url: Option<String>,
    /// The required `iss`.
    pub issuer: Option<String>,
    /// The required `aud`.
    pub audience: Option<String>,
    /// Least time between two reads of `jwks_url`.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            jwks_refresh: Duration::from_secs(30),
            leeway: Duration::from_secs(30),
        }
    }
}

impl Auth {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if self.clients.is_empty() && self.jwt.is_none() {
            return Err(invalid(
                "auth.enabled",
                true,
                "no [[auth.clients]] and no [auth.jwt]: nobody could use Warren",
            ));
        }
        for (key, value) in [
            (
                "auth.max_publishers_per_client",
                self.max_publishers_per_client,
            ),
            (
                "auth.max_subscriptions_per_client",
                self.max_subscriptions_per_client,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, value, "must be at least 1"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for client in &self.clients {
            if client.name.is_empty() || client.name.len() > 64 {
                return Err(invalid(
                    "auth.clients.name",
                    &client.name,
                    "must be 1 to 64 bytes",
                ));
            }
            if !names.insert(client.name.as_str()) {
                return Err(invalid("auth.clients.name", &client.name, "named twice"));
            }
            let hashes = client.token_sha256.as_ref().map_or(&[][..], Hashes::all);
            if client.token_sha256.is_some() && hashes.is_empty() {
                return Err(invalid(
                    format!("auth.clients.{}.token_sha256", client.name),
                    "[]",
                    "name at least one hash",
                ));
            }
            for hash in hashes {
                let hex = hash.len() == 64
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex {
                    return Err(invalid(
                        format!("auth.clients.{}.token_sha256", client.name),
                        "<hidden>",
                        "must be 64 lowercase hex digits (sha256sum of the token)",
                    ));
                }
            }
            if client.token_sha256.is_none() && client.cert_cn.is_none() {
                return Err(invalid(
                    format!("auth.clients.{}", client.name),
                    &client.name,
                    "needs token_sha256 or cert_cn",
                ));
            }
        }
        if let Some(jwt) = &self.jwt {
            if jwt.jwks_file.is_some() == jwt.jwks_url.is_some() {
                return Err(invalid(
                    "auth.jwt",
                    "",
                    "set exactly one of jwks_file and jwks_url",
                ));
            }
            if let Some(path) = &jwt.jwks_file {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(invalid(
                        "auth.jwt.jwks_file",
                        path.display(),
                        format!("cannot be read: {e}"),
                    ));
                }
            }
            if let Some(url) = &jwt.jwks_url {
                let ok = url::Url::parse(url)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid("auth.jwt.jwks_url", url, "not an http(s) URL"));
                }
            }
            if jwt.jwks_refresh < Duration::from_secs(1) {
                return Err(invalid(
                    "auth.jwt.jwks_refresh",
                    humantime::format_duration(jwt.jwks_refresh),
                    "must be at least 1s",
                ));
            }
        }
        Ok(())
    }
}
