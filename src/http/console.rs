//! The operators' web console at `/console/`: a page and a few plain ES
//! modules compiled into the binary (no build step, nothing fetched from
//! elsewhere, so it works offline). The assets hold no data and need no
//! credential; every call the page makes goes to the `/v1/...` endpoints,
//! which check the caller as for any other client (admin when auth is on).
//!
//! Each asset is answered with a strict `Content-Security-Policy` (only
//! this origin's scripts and styles, none inline), an `ETag` (304 for a
//! matching `If-None-Match`) and `Cache-Control: no-cache`, so a browser
//! revalidates and a new Warren's console is seen at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::problem::Problem;
use crate::error::Error;

/// Only this origin's scripts, styles, images and connections; no inline
/// code, no plugins, no framing, no form posts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self'; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One compiled-in file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    etag: HeaderValue,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        (
            $name,
            $content_type,
            include_bytes!(concat!("console/", $name)).as_slice(),
        )
    };
}

/// The console's files, by name under `/console/`.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!("index.html", "text/html; charset=utf-8"),
        asset!("style.css", "text/css; charset=utf-8"),
        asset!("favicon.svg", "image/svg+xml"),
        asset!("app.js", "text/javascript; charset=utf-8"),
        asset!("api.js", "text/javascript; charset=utf-8"),
        asset!("dom.js", "text/javascript; charset=utf-8"),
        asset!("message.js", "text/javascript; charset=utf-8"),
        asset!("letters.js", "text/javascript; charset=utf-8"),
        asset!("queues.js", "text/javascript; charset=utf-8"),
        asset!("dead_letters.js", "text/javascript; charset=utf-8"),
        asset!("ordered.js", "text/javascript; charset=utf-8"),
        asset!("spool.js", "text/javascript; charset=utf-8"),
    ]
    .into_iter()
    .map(|(name, content_type, bytes)| {
        let digest = Sha256::digest(bytes);
        let etag = format!("\"{}\"", hex::encode(&digest[..12]));
        Asset {
            name,
            content_type,
            bytes,
            // Hex digits in quotes: always a valid header value.
            etag: HeaderValue::from_str(&etag).expect("a quoted hex string"),
        }
    })
    .collect()
});

/// `GET /console`: the page lives at `/console/` (its modules are relative).
#[utoipa::path(
    get, path = "/console", operation_id = "consoleRedirect", tag = "console",
    summary = "Redirects to the console's page, `/console/`",
    responses((status = 308, description = "To `/console/`",
        headers(("Location" = String, description = "`/console/`")))),
)]
pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/`: the page.
#[utoipa::path(
    get, path = "/console/", operation_id = "console", tag = "console",
    summary = "The operators' web console",
    description = "Needs no credential (the page holds no data); what it shows comes from \
        the `/v1` endpoints, which need an admin credential when auth is on.",
    params(("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer")),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String,
            headers(("ETag" = String), ("Content-Security-Policy" = String))),
        (status = 304, description = "Not modified: the `ETag` matches", headers(("ETag" = String))),
    ),
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{file}`: a script, the style sheet, the icon.
#[utoipa::path(
    get, path = "/console/{file}", operation_id = "consoleFile", tag = "console",
    summary = "One of the console's files (a module, the style sheet, the icon)",
    params(
        ("file" = String, Path, description = "A file the page names, such as `app.js` or `style.css`"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml")),
            headers(("ETag" = String), ("Content-Security-Policy" = String))),
        (status = 304, description = "Not modified: the `ETag` matches", headers(("ETag" = String))),
        (status = 404, response = super::openapi::NotFound),
    ),
)]
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Problem::from(Error::NotFound(format!("no console file {name:?}"))).into_response();
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t.as_bytes() == asset.etag.as_bytes())
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, asset.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page and its modules name (as `./name`) is compiled
    /// in (the integration test checks the same over HTTP).
    #[test]
    fn every_referenced_file_is_an_asset() {
        for asset in ASSETS.iter() {
            let text = String::from_utf8_lossy(asset.bytes);
            for (at, _) in text.match_indices("./") {
                let name: String = text[at + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    .collect();
                if [".js", ".css", ".svg"].iter().any(|e| name.ends_with(e)) {
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{} names {name}, which is not compiled in",
                        asset.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_matching_etag_is_not_modified() {
        let etag = ASSETS[0].etag.clone();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("index.html", &request).status(),
            StatusCode::NOT_MODIFIED
        );
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve("index.html", &request).status(), StatusCode::OK);
        assert_eq!(serve("nope.js", &request).status(), StatusCode::NOT_FOUND);
    }
}
