//! JWTs as credentials: RS256 and ES256 against a JWKS (a file, or a URL
//! re-read when a token names an unknown key id, at most once per
//! `auth.jwt.jwks_refresh`), `exp`, `nbf`, `iss` and `aud` checked by
//! `jsonwebtoken`. A verified token is cached until its `exp`, so a stream
//! of requests with one token pays for one signature check.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Caller, Permissions};
use crate::config;
use crate::error::Error;

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long fetching the JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Verified tokens kept.
const CACHE_CAPACITY: usize = 10_000;

type Make = Box<dyn Fn(&str, Permissions) -> Caller + Send + Sync>;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    warren: Permissions,
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

/// Verifies JWTs.
pub struct Verifier {
    config: config::Jwt,
    keys: RwLock<Arc<JwkSet>>,
    /// When the JWKS was last read; held while reading (one at a time).
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    cache: quick_cache::sync::Cache<String, (Caller, u64)>,
    make: Make,
    client: Option<Client>,
}

/// Three base64url parts: worth trying as a JWT.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthenticated(why: impl Into<String>) -> Error {
    Error::Unauthenticated(why.into())
}

impl Verifier {
    /// A verifier; a JWKS file is read now (and an unreadable one is an
    /// error), a JWKS URL on first use.
    pub fn new(config: config::Jwt, make: Make) -> Result<Self, String> {
        let keys = match &config.jwks_file {
            Some(path) => read_file(path)?,
            None => JwkSet { keys: Vec::new() },
        };
        let client = config.jwks_url.as_ref().map(|_| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("auth.jwt.jwks_url: no system CA roots: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            Ok::<_, String>(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(https),
            )
        });
        Ok(Self {
            keys: RwLock::new(Arc::new(keys)),
            refreshed: tokio::sync::Mutex::new(None),
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            make,
            client: client.transpose()?,
            config,
        })
    }

    /// The caller a token proves, or UNAUTHENTICATED saying why not.
    pub async fn verify(&self, token: &str) -> Result<Caller, Error> {
        if let Some((caller, exp)) = self.cache.get(token) {
            if now() < exp + self.config.leeway.as_secs() {
                return Ok(caller);
            }
            self.cache.remove(token);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthenticated(format!("malformed JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(unauthenticated(format!(
                "JWT algorithm {:?} is not accepted (RS256, ES256)",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh().await;
                self.key(&kid).ok_or_else(|| {
                    unauthenticated(format!("the JWT's key id {kid:?} is not in the JWKS"))
                })?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "the JWT has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => "the JWT's issuer is not accepted".to_owned(),
                ErrorKind::InvalidAudience => "the JWT's audience is not accepted".to_owned(),
                ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_owned(),
                ErrorKind::MissingRequiredClaim(c) => format!("the JWT has no {c:?} claim"),
                _ => format!("invalid JWT: {e}"),
            })
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(unauthenticated("the JWT's sub must be 1 to 256 bytes"));
        }
        let caller = (self.make)(&claims.sub, claims.warren);
        self.cache
            .insert(token.to_owned(), (caller.clone(), claims.exp));
        Ok(caller)
    }

    /// The key for `kid` (with no kid, the only key of a one-key set).
    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let jwk = if kid.is_empty() {
            match keys.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            }
        } else {
            keys.find(kid)
        }?;
        DecodingKey::from_jwk(jwk)
            .inspect_err(|e| warn!(kid, error = %e, "a JWKS key cannot be used"))
            .ok()
    }

    /// Reads the JWKS again unless it was read within `jwks_refresh`.
    async fn refresh(&self) {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < self.config.jwks_refresh) {
            return;
        }
        *refreshed = Some(Instant::now());
        let read = match (&self.config.jwks_file, &self.config.jwks_url, &self.client) {
            (Some(path), _, _) => read_file(path),
            (None, Some(url), Some(client)) => fetch(client, url).await,
            _ => return,
        };
        match read {
            Ok(keys) => {
                info!(keys = keys.keys.len(), "JWKS read");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => warn!(error = %e, "cannot read the JWKS; keeping the keys known"),
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<JwkSet, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("auth.jwt.jwks_file {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("auth.jwt.jwks_file {}: not a JWKS: {e}", path.display()))
}

async fn fetch(client: &Client, url: &str) -> Result<JwkSet, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("{url}: body not read within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| format!("{url}: {e}"))?
    .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))
}
