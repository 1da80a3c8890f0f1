//! `[[push]]`: push delivery (Warren consumes a queue and POSTs each message
//! to the app).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Error};

/// One push endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The queue (or ordered group) consumed.
    pub queue: String,
    /// The app's endpoint: an `http://` or `https://` URL each message is
    /// POSTed to.
    pub url: String,
    /// Most POSTs in flight at once (the subscription's prefetch).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Limit on one POST, from connecting until the answer is read; a POST
    /// that runs over it is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// File holding a bearer token sent as `Authorization: Bearer ...` (its
    /// trailing newline is dropped).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CAs trusted for an `https://` url (default: the
    /// system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_concurrency() -> u32 {
    16
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The most POSTs one entry may have in flight.
pub const MAX_CONCURRENCY: u32 = 10_000;

impl Push {
    /// Checks every entry: a queue, an http(s) URL, bounds, readable files.
    pub fn validate(entries: &[Push]) -> Result<(), Error> {
        for (i, p) in entries.iter().enumerate() {
            let key = |field: &str| format!("push[{i}].{field}");
            if p.queue.is_empty() || p.queue.len() > crate::message::MAX_SHORT {
                return Err(invalid(key("queue"), &p.queue, "must be 1 to 255 bytes"));
            }
            match url::Url::parse(&p.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => {
                    return Err(invalid(
                        key("url"),
                        &p.url,
                        "must be an http:// or https:// URL with a host",
                    ))
                }
                Err(e) => return Err(invalid(key("url"), &p.url, e.to_string())),
            }
            if !(1..=MAX_CONCURRENCY).contains(&p.concurrency) {
                return Err(invalid(
                    key("concurrency"),
                    p.concurrency,
                    format!("must be 1 to {MAX_CONCURRENCY}"),
                ));
            }
            if p.timeout < Duration::from_millis(1) {
                return Err(invalid(
                    key("timeout"),
                    humantime::format_duration(p.timeout),
                    "must be at least 1ms",
                ));
            }
            if let Some(path) = &p.token_file {
                p.token()
                    .map_err(|e| invalid(key("token_file"), path.display(), e))?;
            }
            if let Some(path) = &p.ca_file {
                p.roots()
                    .map_err(|e| invalid(key("ca_file"), path.display(), e))?;
            }
        }
        Ok(())
    }

    /// The bearer token from `token_file`, less its trailing newline.
    /// Errors never quote the content.
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token);
        if token.is_empty() {
            return Err("holds no token".into());
        }
        if hyper::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err("the token is not a valid header value".into());
        }
        Ok(Some(token.to_owned()))
    }

    /// The CAs from `ca_file`, when set: at least one.
    pub fn roots(&self) -> Result<Option<Vec<rustls::pki_types::CertificateDer<'static>>>, String> {
        use rustls::pki_types::pem::PemObject;
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(Some(certs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Push {
        Push {
            queue: "jobs".into(),
            url: "http://127.0.0.1:8080/jobs".into(),
            concurrency: 16,
            timeout: Duration::from_secs(30),
            token_file: None,
            ca_file: None,
        }
    }

    fn key_of(p: Push) -> String {
        match Push::validate(&[p]) {
            Err(Error::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_entry_is_valid() {
        Push::validate(&[entry()]).unwrap();
    }

    #[test]
    fn each_rule_names_its_key() {
        let mut p = entry();
        p.queue = String::new();
        assert_eq!(key_of(p), "push[0].queue");
        for url in ["ftp://x/y", "not a url", "http://", "unix:/tmp/s"] {
            let mut p = entry();
            p.url = url.into();
            assert_eq!(key_of(p), "push[0].url", "{url}");
        }
        for n in [0, MAX_CONCURRENCY + 1] {
            let mut p = entry();
            p.concurrency = n;
            assert_eq!(key_of(p), "push[0].concurrency");
        }
        let mut p = entry();
        p.timeout = Duration::ZERO;
        assert_eq!(key_of(p), "push[0].timeout");
        let mut p = entry();
        p.token_file = Some("/nonexistent/token".into());
        assert_eq!(key_of(p), "push[0].token_file");
        let mut p = entry();
        p.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(key_of(p), "push[0].ca_file");
    }

    #[test]
    fn the_token_loses_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("warren-push-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut p = entry();
        p.token_file = Some(path.clone());
        assert_eq!(p.token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(p.token().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
