//! The `Host` allow-list (`http.allowed_hosts`): a web page that a DNS
//! rebinding points at Warren's loopback port sends its own host name, and
//! is answered 421 before any handler runs. A browser's cross-origin
//! request that changes something (any method but GET and HEAD, with an
//! `Origin` that is not the request's own host) is refused with 403, so that
//! no web page can act on Warren through a visitor's browser; clients that
//! are not browsers send no `Origin`.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::AppState;

/// Paths any host may ask for: probes and scrapers use the pod's address.
const ANY_HOST: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The host part of a `Host` value: no port, no IPv6 brackets, no final
/// dot (compared case-insensitively, without allocating).
fn host_of(value: &str) -> &str {
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if value.matches(':').count() == 1 {
        value.split(':').next().unwrap_or("")
    } else {
        // A bare IPv6 address (in the allow-list), or no port at all.
        value
    };
    host.trim_end_matches('.')
}

/// Whether `value` names an allowed host.
pub fn allowed(allowed: &[String], value: &str) -> bool {
    let host = host_of(value);
    allowed
        .iter()
        .any(|a| a == "*" || host_of(a).eq_ignore_ascii_case(host))
}

/// Whether a request is a browser's from another origin that would change
/// something.
fn cross_origin(request: &Request) -> bool {
    if matches!(request.method(), &Method::GET | &Method::HEAD) {
        return false;
    }
    let headers = request.headers();
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).map(|h| h.as_bytes());
    let authority = origin
        .as_bytes()
        .splitn(2, |&b| b == b':')
        .nth(1)
        .and_then(|rest| rest.strip_prefix(b"//"));
    match (authority, host) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        _ => true, // "null" or a malformed origin
    }
}

/// Refuses requests for other hosts with 421, cross-origin changes with 403.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if cross_origin(&request) {
        return Problem::http(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "a browser request from another origin may not change anything here",
        )
        .into_response();
    }
    let path = request.uri().path();
    let hosts = &state.bus.config().http.allowed_hosts;
    if ANY_HOST.contains(&path) || hosts.iter().any(|h| h == "*") {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if !allowed(hosts, host) => Problem::http(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected-request",
            format!("host {host:?} is not one of http.allowed_hosts"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_without_port_or_brackets() {
        let list: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        for yes in [
            "localhost",
            "LOCALHOST:5680",
            "127.0.0.1:80",
            "[::1]:5680",
            "[::1]",
            "localhost.",
        ] {
            assert!(allowed(&list, yes), "{yes}");
        }
        for no in [
            "evil.test",
            "evil.test:5680",
            "127.0.0.2",
            "localhost.evil.test",
            "[::2]:1",
            "[::]",
        ] {
            assert!(!allowed(&list, no), "{no}");
        }
        assert!(allowed(&["*".to_owned()], "anything:1"));
    }

    #[test]
    fn browsers_from_other_origins_cannot_change_anything() {
        let request = |method: &str, headers: &[(&str, &str)]| {
            let mut r = axum::http::Request::builder().method(method).uri("/v1/x");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(axum::body::Body::empty()).unwrap()
        };
        let host = ("host", "127.0.0.1:5680");
        assert!(
            !cross_origin(&request("POST", &[host])),
            "curl sends no origin"
        );
        assert!(!cross_origin(&request(
            "POST",
            &[host, ("origin", "http://127.0.0.1:5680")]
        )));
        assert!(!cross_origin(&request(
            "GET",
            &[host, ("origin", "https://evil.test")]
        )));
        for origin in ["https://evil.test", "null", "http://127.0.0.1:9999"] {
            assert!(
                cross_origin(&request("POST", &[host, ("origin", origin)])),
                "{origin}"
            );
        }
        assert!(cross_origin(&request(
            "POST",
            &[host, ("sec-fetch-site", "cross-site")]
        )));
    }
}
