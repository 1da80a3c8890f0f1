//! One push endpoint's HTTP side: the pooled client, the request made of a
//! delivery, and what the answer means for the message.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use serde_json::Value;

use crate::bus::subscribe::{Delivery, ATTEMPT_HEADER, MAX_NACK_DELAY_MS};
use crate::config;
use crate::message::RESERVED_PREFIX;

/// Prefix of the HTTP headers that carry a message's string-valued
/// application headers (as on a raw `POST /v1/publish`).
pub const HEADER_PREFIX: &str = "x-warren-header-";
/// The `ce-type` of a message published without a `type`.
pub const DEFAULT_TYPE: &str = "warren.delivery";
/// The most of a response body read (and thrown away) to keep the
/// connection for the next request.
const MAX_DRAINED_BODY: usize = 64 * 1024;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What an answer (or its absence) does to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: ack.
    Delivered,
    /// 429, 5xx, a timeout or no connection: nack with requeue after
    /// `delay_ms` (0: the retry policy's backoff).
    Retry { delay_ms: u32, why: String },
    /// Another 4xx, or a 3xx: dead-letter.
    DeadLetter { why: String },
}

/// The endpoint: its URL, its pooled keep-alive client, its token.
pub struct Client {
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    url: hyper::Uri,
    token: Option<HeaderValue>,
    timeout: Duration,
}

impl Client {
    /// The client of one `[[push]]` entry (already validated).
    pub fn new(entry: &config::Push) -> Result<Arc<Self>, String> {
        let url: hyper::Uri = entry.url.parse().map_err(|e| format!("push url: {e}"))?;
        let mut roots = RootCertStore::empty();
        match entry.roots()? {
            Some(certs) => {
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("push ca_file: no usable CA: {e}"))?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(entry.concurrency as usize)
                .build(https);
        let token = entry
            .token()?
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| e.to_string())?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(Arc::new(Self {
            http,
            url,
            token,
            timeout: entry.timeout,
        }))
    }

    /// POSTs one delivery and says what its answer means. Never fails: a
    /// POST that could not be made is an [`Outcome::Retry`].
    pub async fn push(&self, delivery: &Delivery) -> Outcome {
        let request = match self.request(delivery) {
            Ok(request) => request,
            Err(why) => return Outcome::DeadLetter { why },
        };
        let exchange = async {
            let response = self.http.request(request).await?;
            let (head, body) = response.into_parts();
            // Read what little body there is, so the connection is kept.
            let _ = Limited::new(body, MAX_DRAINED_BODY).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(head)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry {
                delay_ms: 0,
                why: format!("no answer within {:?}", self.timeout),
            },
            Ok(Err(e)) => Outcome::Retry {
                delay_ms: 0,
                why: format!("the request failed: {}", error_chain(&e)),
            },
            Ok(Ok(head)) => classify(head.status, head.headers.get("retry-after")),
        }
    }

    fn request(&self, d: &Delivery) -> Result<Request<Full<Bytes>>, String> {
        let m = &d.message;
        let mut builder = Request::post(self.url.clone());
        let headers = builder.headers_mut().ok_or("invalid request")?;
        let mut set = |name: HeaderName, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        if !m.content_type.is_empty() {
            set(CONTENT_TYPE, &m.content_type);
        }
        if !m.content_encoding.is_empty() {
            set(CONTENT_ENCODING, &m.content_encoding);
        }
        let kind = if m.kind.is_empty() {
            DEFAULT_TYPE
        } else {
            &m.kind
        };
        set(HeaderName::from_static("ce-specversion"), "1.0");
        set(HeaderName::from_static("ce-id"), &m.message_id);
        set(HeaderName::from_static("ce-type"), kind);
        set(
            HeaderName::from_static("ce-source"),
            &format!("/warren/queues/{}", d.queue),
        );
        if m.timestamp > 0 {
            let time = UNIX_EPOCH + Duration::from_secs(m.timestamp as u64);
            set(
                HeaderName::from_static("ce-time"),
                &humantime::format_rfc3339_seconds(time).to_string(),
            );
        }
        if !d.ordering_key.is_empty() {
            set(HeaderName::from_static("ce-subject"), &d.ordering_key);
        }
        set(
            HeaderName::from_static(ATTEMPT_HEADER),
            &d.attempt.to_string(),
        );
        set(HeaderName::from_static("x-warren-delivery-id"), &d.id);
        for (name, value) in &m.headers {
            let Value::String(value) = value else {
                continue;
            };
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(format!("{HEADER_PREFIX}{name}").as_bytes()) {
                set(name, value);
            }
        }
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION, token.clone());
        }
        builder
            .body(Full::new(m.body.clone()))
            .map_err(|e| format!("cannot make the request: {e}"))
    }
}

/// What a response's status (and `Retry-After`) means for the message.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Outcome::Retry {
            delay_ms: retry_after.and_then(delay_ms).unwrap_or(0),
            why: format!("the app answered {status}"),
        };
    }
    Outcome::DeadLetter {
        why: format!("the app answered {status}"),
    }
}

/// A `Retry-After` in seconds as a nack delay, capped at the longest one
/// allowed (30 days). The HTTP-date form is not read: it falls back to the
/// retry policy's backoff.
pub fn delay_ms(value: &HeaderValue) -> Option<u32> {
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    let ms = seconds
        .saturating_mul(1000)
        .min(u64::from(MAX_NACK_DELAY_MS));
    Some(ms as u32)
}

/// An error with its sources (hyper's own message is often just "client
/// error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(StatusCode::OK, None), Outcome::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        for s in [429, 500, 502, 503] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify(status, None), Outcome::Retry { delay_ms: 0, .. }),
                "{s}"
            );
        }
        for s in [301, 400, 404, 410, 422] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify(status, None), Outcome::DeadLetter { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_become_the_delay() {
        let h = retry_after("2");
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, Some(&h)),
            Outcome::Retry { delay_ms: 2000, .. }
        ));
        assert_eq!(delay_ms(&retry_after(" 0 ")), Some(0));
        assert_eq!(
            delay_ms(&retry_after("99999999999")),
            Some(MAX_NACK_DELAY_MS)
        );
        assert_eq!(
            delay_ms(&retry_after("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(delay_ms(&retry_after("-1")), None);
    }
}
