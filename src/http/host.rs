//! The `Host` allow-list (`http.allowed_hosts`): a web page that a DNS
//! rebinding points at Warren's loopback port sends its own host name, and
//! is answered 421 before any handler runs.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
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

/// Refuses requests for other hosts with 421.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
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
}
