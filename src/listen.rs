//! Accepting connections for both listeners: a cap on open connections,
//! TLS (PEM files, optional client CA: mTLS) re-read on SIGHUP without
//! dropping open connections, and the verified client certificate's common
//! name handed to the transports as a credential.
//!
//! Accepting, capping and the TLS handshake happen here once; the HTTP and
//! gRPC transports serve the connections this yields.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::PeerCommonName;
use crate::config::ListenerTls;

/// What a connection is: its peer and, on mTLS, its certificate's name.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The verified client certificate's subject common name.
    pub common_name: Option<PeerCommonName>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection; its slot under the cap is given back when it
/// is dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Its peer and certificate name.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A listener's TLS set-up, re-read from its files on [`Tls::reload`].
pub struct Tls {
    key: &'static str,
    files: ListenerTls,
    alpn: Vec<Vec<u8>>,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files of `files` (`key` names the section in errors);
    /// `alpn` lists the protocols offered.
    pub fn new(
        key: &'static str,
        files: &ListenerTls,
        alpn: &[&[u8]],
    ) -> Result<Arc<Self>, String> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = acceptor(key, files, &alpn)?;
        Ok(Arc::new(Self {
            key,
            files: files.clone(),
            alpn,
            acceptor: RwLock::new(acceptor),
        }))
    }

    /// Reads the files again; new connections use them, open ones keep
    /// theirs. A file that cannot be used keeps the present set-up.
    pub fn reload(&self) {
        match acceptor(self.key, &self.files, &self.alpn) {
            Ok(acceptor) => {
                *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                info!(listener = self.key, "TLS certificates re-read");
            }
            Err(e) => {
                warn!(listener = self.key, error = %e, "cannot re-read the TLS files; keeping the ones in use")
            }
        }
    }

    fn current(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn read_pem<T>(
    key: &str,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    parse(&bytes).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

fn acceptor(key: &str, files: &ListenerTls, alpn: &[Vec<u8>]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_pem(&format!("{key}.cert_file"), &files.cert_file, certificates)?;
    let private = read_pem(&format!("{key}.key_file"), &files.key_file, |b| {
        PrivateKeyDer::from_pem_slice(b).map_err(|e| format!("not a PEM private key: {e}"))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{key}: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_key = format!("{key}.client_ca_file");
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_pem(&ca_key, ca, certificates)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{ca_key} {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{ca_key} {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| format!("{key}: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The subject common name of a verified client certificate.
fn common_name(tls: &TlsStream<TcpStream>) -> Option<PeerCommonName> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(PeerCommonName(cn.to_owned()))
}

/// Accepts connections on `listener` until `shutdown`: at most `max` open
/// at once (more are closed at once), each through the TLS handshake when
/// `tls` is set (within `handshake_timeout`).
pub fn accept(
    key: &'static str,
    listener: TcpListener,
    max: usize,
    tls: Option<Arc<Tls>>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, not spin.
                    warn!(listener = key, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    warn!(
                        listener = key,
                        max, refused, "connection refused: at the cap of open connections"
                    );
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let conn = match tls {
                    None => {
                        // A client that connects and says nothing is not
                        // kept: the first bytes are due within the timeout.
                        let mut first = [0u8; 1];
                        if !matches!(
                            tokio::time::timeout(handshake_timeout, tcp.peek(&mut first)).await,
                            Ok(Ok(1..))
                        ) {
                            debug!(listener = key, %peer, "no request within the read timeout");
                            return;
                        }
                        Conn {
                            io: Io::Plain(tcp),
                            info: ConnInfo {
                                peer,
                                common_name: None,
                            },
                            _slot: slot,
                        }
                    }
                    Some(tls) => {
                        let handshake = tls.current().accept(tcp);
                        let stream = match tokio::time::timeout(handshake_timeout, handshake).await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(listener = key, %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(listener = key, %peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        Conn {
                            info: ConnInfo {
                                peer,
                                common_name: common_name(&stream),
                            },
                            io: Io::Tls(Box::new(stream)),
                            _slot: slot,
                        }
                    }
                };
                let _ = tx.send(conn).await;
            });
        }
    });
    rx
}
