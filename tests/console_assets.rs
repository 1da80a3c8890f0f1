//! The console's assets over HTTP: content types, the strict CSP, ETag and
//! 304, the redirect to `/console/`, every file the page and its modules
//! name, and no credential needed for them when auth is on (the data
//! endpoints still need one).

mod common;

use common::*;
use reqwest::header;
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// The names a text refers to as `./name.ext` (index.html's links and
/// scripts, the modules' imports).
fn references(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices("./") {
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        if [".js", ".css", ".svg"].iter().any(|e| name.ends_with(e)) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn header(response: &reqwest::Response, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("{name} is set"))
        .to_str()
        .expect("ASCII")
}

/// Checks the headers every asset carries; its body.
async fn fetch(warren: &Warren, path: &str, content_type: &str) -> (String, String) {
    let response = client().get(warren.url(path)).send().await.expect("answer");
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(
        header(&response, header::CONTENT_TYPE),
        content_type,
        "{path}"
    );
    let csp = header(&response, header::CONTENT_SECURITY_POLICY);
    assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
    assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let etag = header(&response, header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    (etag, response.text().await.expect("body"))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => panic!("unexpected asset {name}"),
    }
}

#[tokio::test]
async fn the_console_is_served_with_its_headers_and_every_asset_it_names() {
    let warren = Warren::start().await;

    let response = client().get(warren.url("/console")).send().await.unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(header(&response, header::LOCATION), "/console/");

    let (etag, page) = fetch(&warren, "/console/", "text/html; charset=utf-8").await;
    assert!(page.contains("<script type=\"module\" src=\"./app.js\">"));
    assert!(
        !page.contains("style="),
        "no inline style (the CSP forbids it)"
    );
    assert!(
        !page.contains("<script>") && !page.contains("onclick"),
        "no inline script"
    );

    // Every file index.html names, and every module those import, is served.
    let mut pending = references(&page);
    let mut seen = Vec::new();
    while let Some(name) = pending.pop() {
        if seen.contains(&name) {
            continue;
        }
        let (_, body) = fetch(&warren, &format!("/console/{name}"), content_type(&name)).await;
        if name.ends_with(".js") {
            assert!(!body.contains("innerHTML"), "{name}: data is shown as text");
            pending.extend(references(&body));
        }
        seen.push(name);
    }
    for expected in [
        "app.js",
        "api.js",
        "dom.js",
        "message.js",
        "letters.js",
        "queues.js",
        "dead_letters.js",
        "ordered.js",
        "spool.js",
        "style.css",
        "favicon.svg",
    ] {
        assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
    }

    // A browser that has the page revalidates it: 304, no body.
    let response = client()
        .get(warren.url("/console/"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, header::ETAG), etag);
    assert!(response.bytes().await.unwrap().is_empty());
    let response = client()
        .get(warren.url("/console/app.js"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "another file's tag does not match");

    // HEAD works as GET without the body.
    let response = client().head(warren.url("/console/")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    for missing in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/x/app.js",
    ] {
        let response = client().get(warren.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            "application/problem+json"
        );
    }
    let response = client().post(warren.url("/console/")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    warren.stop().await;
}

/// With auth on, the page loads without a credential (it holds no data);
/// what it asks for does need one, and an admin one.
#[tokio::test]
async fn with_auth_on_the_assets_need_no_credential_and_the_data_does() {
    let admin = "console-admin-token";
    let viewer = "console-viewer-token";
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let toml = format!(
        "[auth]\nenabled = true\n\
         [[auth.clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n\
         [[auth.clients]]\nname = \"viewer\"\ntoken_sha256 = \"{}\"\n",
        hash(admin),
        hash(viewer)
    );
    let warren = Warren::start_with(config_toml(&toml)).await;
    fetch(&warren, "/console/", "text/html; charset=utf-8").await;
    fetch(&warren, "/console/app.js", "text/javascript; charset=utf-8").await;

    let queues = |token: Option<&str>| {
        let mut request = client().get(warren.url("/v1/queues"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = queues(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(header(&response, header::WWW_AUTHENTICATE).starts_with("Bearer"));
    assert_eq!(queues(Some(viewer)).await.unwrap().status(), 403);
    assert_eq!(queues(Some(admin)).await.unwrap().status(), 200);
    warren.stop().await;
}
