//! Who may use the bus: authentication and authorization, in one place.
//!
//! The transports only extract a [`Credential`] (a bearer token, a client
//! certificate's common name); the bus turns it into a [`Caller`] with
//! [`Auth::authenticate`] and asks the caller for each [`Access`] before
//! anything reaches the broker ([`Caller::permit`]). With `auth.enabled =
//! false` (the default, a sidecar on localhost) every caller is the
//! anonymous one, which may do everything.
//!
//! - Static tokens are kept as their SHA-256 only and compared in constant
//!   time (`subtle`), against every client, with no early exit.
//! - JWTs (`jsonwebtoken`, RS256 and ES256 against a JWKS) are in `jwt`.
//! - `max_publish_rate` is a GCRA limiter per client (`governor`).
//! - Per-client shares of publishers and subscriptions ([`Caller::hold`]).

mod jwt;
mod permissions;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use permissions::{Access, Patterns, Permissions, DEFAULT_EXCHANGE};

use crate::config;
use crate::error::Error;
use crate::metrics::Metrics;

/// `[auth]` key material that cannot be used (names the key).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct Invalid(pub String);

/// What a request presented, as the transport found it.
#[derive(Debug, Clone, Default)]
pub enum Credential {
    /// Nothing.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (or `?access_token=` on SSE).
    Bearer(String),
    /// An `Authorization` header that is not a bearer token.
    Malformed,
    /// The verified client certificate's subject common name (TLS with a
    /// client CA).
    Certificate(String),
}

/// The verified subject common name of a TLS client certificate, put in a
/// request's extensions by the listener that verified it.
#[derive(Debug, Clone)]
pub struct PeerCommonName(pub String);

impl Credential {
    /// The credential of a request: an `Authorization` value first (a
    /// bearer token, else malformed), else a verified client certificate.
    pub fn of(authorization: Option<&[u8]>, peer: Option<&PeerCommonName>) -> Self {
        if let Some(value) = authorization {
            return match std::str::from_utf8(value).ok().and_then(bearer) {
                Some(token) => Credential::Bearer(token.to_owned()),
                None => Credential::Malformed,
            };
        }
        match peer {
            Some(PeerCommonName(cn)) => Credential::Certificate(cn.clone()),
            None => Credential::None,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `warren_auth_denied_total`'s reasons.
pub mod reason {
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// What a caller holds a share of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Share {
    /// A named publisher or a publish stream.
    Publisher,
    /// A subscription.
    Subscription,
}

struct Shares {
    limits: [usize; 2],
    held: Mutex<HashMap<(Arc<str>, Share), usize>>,
}

impl Shares {
    fn index(share: Share) -> usize {
        match share {
            Share::Publisher => 0,
            Share::Subscription => 1,
        }
    }
}

/// A share held by a caller until dropped.
pub struct Held {
    shares: Option<(Arc<Shares>, Arc<str>, Share)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((shares, name, share)) = self.shares.take() {
            let mut held = shares.held.lock().unwrap_or_else(|e| e.into_inner());
            let key = (name, share);
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

struct Identity {
    name: Arc<str>,
    permissions: Permissions,
    anonymous: bool,
    limiter: Option<(u32, DefaultDirectRateLimiter)>,
    denied: IntCounterVec,
    shares: Arc<Shares>,
}

/// Who is asking, with what they may do. Cheap to clone.
#[derive(Clone)]
pub struct Caller(Arc<Identity>);

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Caller").field(&self.0.name).finish()
    }
}

impl Caller {
    /// The client's name (`anonymous` while auth is off).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whose deliveries and publishers these are: `None` while auth is off
    /// (everything is everyone's).
    pub fn owner(&self) -> Option<&Arc<str>> {
        (!self.0.anonymous).then_some(&self.0.name)
    }

    /// Ok when the caller may do `access`; PERMISSION_DENIED otherwise.
    pub fn permit(&self, access: Access<'_>) -> Result<(), Error> {
        if access.allowed_by(&self.0.permissions) {
            return Ok(());
        }
        self.0.denied.with_label_values(&[reason::FORBIDDEN]).inc();
        Err(Error::PermissionDenied(format!(
            "client {:?} may not {}",
            self.0.name,
            access.describe()
        )))
    }

    /// Counts one message against the caller's `max_publish_rate`.
    pub fn admit_publish(&self) -> Result<(), Error> {
        let Some((rate, limiter)) = &self.0.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            self.0
                .denied
                .with_label_values(&[reason::RATE_LIMITED])
                .inc();
            let clock = governor::clock::DefaultClock::default();
            Error::RateLimited {
                client: self.0.name.to_string(),
                rate: *rate,
                retry_after: not_until
                    .wait_time_from(governor::clock::Clock::now(&clock))
                    .max(Duration::from_millis(1)),
            }
        })
    }

    /// Takes one of the caller's shares of `share` (nothing to take while
    /// auth is off: the global limits apply alone).
    pub fn hold(&self, share: Share) -> Result<Held, Error> {
        if self.0.anonymous {
            return Ok(Held { shares: None });
        }
        let shares = &self.0.shares;
        let limit = shares.limits[Shares::index(share)];
        let mut held = shares.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry((self.0.name.clone(), share)).or_insert(0);
        if *n >= limit {
            let (what, key) = match share {
                Share::Publisher => ("publishers", "auth.max_publishers_per_client"),
                Share::Subscription => ("subscriptions", "auth.max_subscriptions_per_client"),
            };
            return Err(Error::LimitReached(format!(
                "client {:?} holds {limit} {what} already ({key})",
                self.0.name
            )));
        }
        *n += 1;
        Ok(Held {
            shares: Some((shares.clone(), self.0.name.clone(), share)),
        })
    }
}

/// The authenticator: known clients, the JWT verifier, the anonymous caller.
pub struct Auth {
    enabled: bool,
    metrics_public: bool,
    anonymous: Caller,
    tokens: Vec<([u8; 32], Caller)>,
    certificates: HashMap<String, Caller>,
    jwt: Option<jwt::Verifier>,
    denied: IntCounterVec,
    shares: Arc<Shares>,
}

impl Auth {
    /// The authenticator of `config`; fails when a JWKS file cannot be read.
    pub fn new(config: &config::Auth, metrics: &Metrics) -> Result<Self, Invalid> {
        let denied = metrics.auth_denied_total.clone();
        for r in [
            reason::UNAUTHENTICATED,
            reason::FORBIDDEN,
            reason::RATE_LIMITED,
        ] {
            denied.with_label_values(&[r]);
        }
        let shares = Arc::new(Shares {
            limits: [
                config.max_publishers_per_client,
                config.max_subscriptions_per_client,
            ],
            held: Mutex::new(HashMap::new()),
        });
        let identity = {
            let (denied, shares) = (denied.clone(), shares.clone());
            move |name: &str, permissions: Permissions, anonymous: bool, rate: u32| {
                Caller(Arc::new(Identity {
                    name: name.into(),
                    permissions,
                    anonymous,
                    limiter: NonZeroU32::new(rate)
                        .map(|r| (rate, RateLimiter::direct(Quota::per_second(r)))),
                    denied: denied.clone(),
                    shares: shares.clone(),
                }))
            }
        };
        let mut tokens = Vec::new();
        let mut certificates = HashMap::new();
        for client in &config.clients {
            let permissions = Permissions {
                publish: Patterns::new(client.publish.iter().cloned()),
                consume: Patterns::new(client.consume.iter().cloned()),
                call: Patterns::new(client.call.iter().cloned()),
                admin: client.admin,
            };
            let caller = identity(&client.name, permissions, false, client.max_publish_rate);
            for hash in client.token_sha256.as_ref().map_or(&[][..], |h| h.all()) {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hash, &mut digest).map_err(|e| {
                    Invalid(format!("auth.clients.{}.token_sha256: {e}", client.name))
                })?;
                tokens.push((digest, caller.clone()));
            }
            if let Some(cn) = &client.cert_cn {
                certificates.insert(cn.clone(), caller);
            }
        }
        let jwt = match &config.jwt {
            Some(jwt) if config.enabled => {
                let identity = identity.clone();
                Some(
                    jwt::Verifier::new(
                        jwt.clone(),
                        Box::new(move |name: &str, permissions: Permissions| {
                            identity(name, permissions, false, 0)
                        }),
                    )
                    .map_err(Invalid)?,
                )
            }
            _ => None,
        };
        Ok(Self {
            enabled: config.enabled,
            metrics_public: config.metrics_public,
            anonymous: identity("anonymous", Permissions::all(), true, 0),
            tokens,
            certificates,
            jwt,
            denied,
            shares,
        })
    }

    /// Warren itself, for the work it does on its own (forwarding due
    /// scheduled messages): allowed everything, no shares counted.
    pub(crate) fn internal(&self) -> Caller {
        self.anonymous.clone()
    }

    /// Whether requests need a credential.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `/metrics` needs no credential.
    pub fn metrics_public(&self) -> bool {
        !self.enabled || self.metrics_public
    }

    /// The caller a credential proves, or UNAUTHENTICATED.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Caller, Error> {
        if !self.enabled {
            return Ok(self.anonymous.clone());
        }
        let result = match credential {
            Credential::None => Err(Error::Unauthenticated(
                "a credential is required: Authorization: Bearer <token>".into(),
            )),
            Credential::Malformed => Err(Error::Unauthenticated(
                "the Authorization header is not a bearer token".into(),
            )),
            Credential::Certificate(cn) => self.certificates.get(cn).cloned().ok_or_else(|| {
                Error::Unauthenticated(format!("no client has the certificate common name {cn:?}"))
            }),
            Credential::Bearer(token) => self.bearer(token).await,
        };
        if result.is_err() {
            self.denied
                .with_label_values(&[reason::UNAUTHENTICATED])
                .inc();
        }
        result
    }

    async fn bearer(&self, token: &str) -> Result<Caller, Error> {
        // Every client is compared, in constant time, whatever matches (no
        // hashing at all when only JWTs are configured).
        if !self.tokens.is_empty() {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let mut found = None;
            for (hash, caller) in &self.tokens {
                if bool::from(hash.ct_eq(&digest)) {
                    found = Some(caller);
                }
            }
            if let Some(caller) = found {
                return Ok(caller.clone());
            }
        }
        match &self.jwt {
            Some(jwt) if jwt::looks_like_jwt(token) => jwt.verify(token).await,
            _ => Err(Error::Unauthenticated("unknown bearer token".into())),
        }
    }

    /// How many shares each client holds now (for tests and the console).
    pub fn held(&self, name: &str, share: Share) -> usize {
        let held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&(Arc::from(name), share)).copied().unwrap_or(0)
    }
}
