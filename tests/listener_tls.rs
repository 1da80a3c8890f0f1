//! TLS on Warren's own listeners: HTTPS and gRPC over TLS, a client CA
//! (mTLS) whose certificate's common name is a client's credential, and
//! certificates re-read on SIGHUP without dropping open connections.
//! Certificates are made by the test (rcgen), never committed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::tls::{Pki, CLIENT_CN};
use common::{unique, Broker, Warren};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn certs(path: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS client trusting `ca`, presenting `identity` (cert, key) if given.
fn connector(ca: &str, identity: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn tls(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate shows on the first read.
    stream.flush().await?;
    Ok(stream)
}

/// One HTTP/1.1 request on a kept-alive connection: status and body.
async fn request(
    stream: &mut TlsStream<TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if rest.len() >= length {
                let status = head[9..12].parse().unwrap();
                return Ok((status, rest[..length].to_owned()));
            }
        }
    }
}

fn tls_config(pki: &Pki, extra: &str) -> warren::config::Config {
    common::config_toml(&format!(
        r#"
[http.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[grpc.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[auth]
enabled = true

[[auth.clients]]
name = "by-certificate"
cert_cn = "{CLIENT_CN}"
publish = ["amq.default"]
{extra}
"#,
        cert = pki.path("server.pem"),
        key = pki.path("server-key.pem"),
        ca = pki.path("ca.pem"),
    ))
}

#[tokio::test]
async fn mtls_clients_are_known_by_their_certificate() {
    let pki = Pki::new();
    let warren = Warren::start_with(tls_config(&pki, "")).await;
    let queue = unique("mtls");
    Broker::connect().await.queue(&queue).await;
    let publish = serde_json::json!({"routing_key": queue, "body": "over https"}).to_string();
    let identity = (pki.path("client.pem"), pki.path("client-key.pem"));
    let with_cert = connector(&pki.path("ca.pem"), Some((&identity.0, &identity.1)));
    let mut stream = tls(&with_cert, warren.server.http_addr).await.unwrap();
    let (status, body) = request(&mut stream, "POST", "/v1/publish", &publish)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // Without a client certificate the handshake (or the first read) fails.
    let without = connector(&pki.path("ca.pem"), None);
    let refused = match tls(&without, warren.server.http_addr).await {
        Err(_) => true,
        Ok(mut s) => request(&mut s, "POST", "/v1/publish", &publish)
            .await
            .is_err(),
    };
    assert!(refused, "no client certificate, no service");
    // A client that does not trust Warren's CA does not connect.
    let distrust = connector(&pki.path("other-ca.pem"), None);
    assert!(tls(&distrust, warren.server.http_addr).await.is_err());
    // gRPC over TLS, the certificate as the credential.
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let tls_config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
        .identity(tonic::transport::Identity::from_pem(
            read("client.pem"),
            read("client-key.pem"),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://127.0.0.1:{}",
        warren.server.grpc_addr.port()
    ))
    .unwrap()
    .tls_config(tls_config)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut client = warren::proto::bus_client::BusClient::new(channel);
    client
        .publish(common::request("", &queue, b"over grpc+tls"))
        .await
        .unwrap();
    // Outside its permissions: the certificate's client may not use others.
    let e = client
        .publish(common::request("amq.topic", "x", b"no"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let bodies: Vec<_> = Broker::connect().await.bodies(&queue, 10).await;
    assert_eq!(bodies, ["over https", "over grpc+tls"]);
    warren.stop().await;
}

#[tokio::test]
async fn sighup_rereads_the_certificates_and_keeps_open_connections() {
    let pki = Pki::new();
    let warren = Warren::start_with(tls_config(&pki, "")).await;
    let identity = (pki.path("client.pem"), pki.path("client-key.pem"));
    let old_ca = connector(&pki.path("ca.pem"), Some((&identity.0, &identity.1)));
    let mut open = tls(&old_ca, warren.server.http_addr).await.unwrap();
    assert_eq!(
        request(&mut open, "GET", "/healthz", "").await.unwrap().0,
        200
    );
    // A new server certificate from another CA (the client CA stays).
    let key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Rotated CA");
    let rotated = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &rotated).unwrap();
    let rotated_ca = pki.write("rotated-ca.pem", &rotated.pem());
    // A broken file first: the reload keeps what is in use.
    pki.write("server.pem", "not a certificate");
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tls(&old_ca, warren.server.http_addr).await.is_ok(),
        "kept the old set-up"
    );
    pki.write("server.pem", &cert.pem());
    pki.write("server-key.pem", &key.serialize_pem());
    hup();
    let new_ca = connector(&rotated_ca, Some((&identity.0, &identity.1)));
    let mut reloaded = false;
    for _ in 0..50 {
        if let Ok(mut s) = tls(&new_ca, warren.server.http_addr).await {
            if request(&mut s, "GET", "/healthz", "").await.is_ok() {
                reloaded = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "new connections get the new certificate");
    assert!(
        tls(&old_ca, warren.server.http_addr).await.is_err(),
        "the old CA no longer matches"
    );
    // The connection opened before the reload still works.
    assert_eq!(
        request(&mut open, "GET", "/healthz", "").await.unwrap().0,
        200
    );
    warren.stop().await;
}

#[test]
fn unusable_tls_files_stop_start_up_naming_the_key() {
    let pki = Pki::new();
    let cases = [
        (
            format!(
                "[http.tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"{}\"\n",
                pki.path("server-key.pem")
            ),
            "http.tls.cert_file",
        ),
        (
            format!(
                "[grpc.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                pki.path("server.pem"),
                pki.path("client-key.pem")
            ),
            "grpc.tls",
        ),
        (
            format!(
                "[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
                pki.path("server.pem"),
                pki.path("server-key.pem"),
                pki.path("server-key.pem")
            ),
            "http.tls.client_ca_file",
        ),
    ];
    for (toml, key) in cases {
        let path = pki.write("bad.toml", &toml);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--config", &path])
            .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
            .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}
