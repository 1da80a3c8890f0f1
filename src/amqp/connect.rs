//! How one connection to the broker is made: the URI completed from
//! `[amqp]` (heartbeat, frame size, the password of `amqp.password_file`,
//! SASL EXTERNAL with a client certificate) and, for `amqps://`, TLS with the
//! CAs and the client certificate of `[amqp.tls]`.
//!
//! TLS goes through lapin's own transport (tcp-stream's rustls stream) with a
//! rustls configuration of Warren's: lapin's `OwnedTLSConfig` can only add
//! CAs to the system's (and fails where the system has none), while
//! `amqp.tls.ca_file` must be the only CAs trusted. It also leaves rustls'
//! process-wide crypto provider alone.

use std::path::Path;
use std::sync::Arc;

use lapin::tcp::{AMQPUriTcpExt, RustlsConnector, TLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, RootCertStore};

use crate::config::{self, Password, Secrets};

/// What it takes to connect, read from `[amqp]` and the files it names.
/// Holds the password: never logged (its `Debug` shows none).
#[derive(Debug)]
pub struct Connector {
    /// For `amqps://` URIs; built when `amqp.url` has one.
    tls: Option<RustlsConnector>,
    /// Whether `tls` presents a client certificate.
    identity: bool,
    password: Option<Password>,
    heartbeat: u16,
    frame_max: u32,
}

impl Connector {
    /// Reads the files of `[amqp.tls]` and `amqp.password_file` and, when a
    /// URI is `amqps://`, builds the TLS client configuration. An error names
    /// the key at fault.
    pub fn new(amqp: &config::Amqp) -> Result<Self, config::Error> {
        let secrets = Secrets::read(amqp)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        if let Some((chain, key)) = &secrets.identity {
            // Checked even when no URI is amqps://: a bad pair is a bad
            // configuration either way.
            check_identity(&amqp.tls, chain, key, &provider)?;
        }
        let password = secrets.password.clone();
        let identity = secrets.identity.is_some();
        let tls_needed = amqp
            .urls()
            .iter()
            .any(|u| url::Url::parse(u).is_ok_and(|u| u.scheme() == "amqps"));
        let tls = if tls_needed {
            let config = client_config(&amqp.tls, secrets, provider)?;
            Some(RustlsConnector::from(config))
        } else {
            None
        };
        Ok(Self {
            tls,
            identity,
            password,
            heartbeat: amqp.heartbeat,
            frame_max: amqp.frame_max,
        })
    }

    /// The URI to connect to for `url` (None when it does not parse, which
    /// configuration validation refuses).
    pub fn uri(&self, url: &str) -> Option<AMQPUri> {
        let parsed = url::Url::parse(url).ok()?;
        let mut uri: AMQPUri = url.parse().ok()?;
        // lapin reads an IP address as no host at all ("localhost"), so TLS
        // would check the broker's certificate for the wrong name.
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = ip.to_string(),
            _ => {}
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(self.heartbeat);
        }
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(self.frame_max);
        }
        if parsed.password().is_none() {
            let has_user = !parsed.username().is_empty();
            match &self.password {
                Some(password) if has_user => {
                    uri.authority.userinfo.password = password.expose().to_owned();
                }
                // The certificate is the credential (RabbitMQ's
                // rabbitmq_auth_mechanism_ssl); a URI's own choice wins.
                _ if self.identity
                    && uri.scheme == AMQPScheme::AMQPS
                    && uri.query.auth_mechanism.is_none() =>
                {
                    uri.query.auth_mechanism = Some(SASLMechanism::External);
                }
                _ => {}
            }
        }
        Some(uri)
    }

    /// Connects to `uri` (from [`Connector::uri`]): TCP, then TLS for
    /// `amqps://`, then the AMQP handshake. The caller bounds it in time.
    pub async fn connect(
        &self,
        uri: AMQPUri,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let tls = match (&uri.scheme, &self.tls) {
            (AMQPScheme::AMQPS, Some(tls)) => tls.clone(),
            _ => return Connection::connect_uri(uri, properties).await,
        };
        let runtime = lapin::runtime::default_runtime()?;
        let dial = async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let tcp = AMQPUri {
                scheme: AMQPScheme::AMQP,
                ..uri
            };
            let stream = tcp
                .connect_with_config_async(TLSConfig::default(), &runtime)
                .await?;
            Ok(stream.into_rustls(&tls, &host).await?)
        };
        Connection::connector(uri, runtime, dial, properties).await
    }
}

fn refused(key: &str, path: Option<&Path>, reason: impl Into<String>) -> config::Error {
    config::Error::Invalid {
        key: key.into(),
        value: path.map(|p| p.display().to_string()).unwrap_or_default(),
        reason: reason.into(),
    }
}

/// Trusts the CAs of `amqp.tls.ca_file`, else the system's; presents the
/// client certificate when there is one.
fn client_config(
    tls: &config::AmqpTls,
    secrets: Secrets,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig, config::Error> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused("amqp.tls", None, e.to_string()))?;
    let mut roots = RootCertStore::empty();
    match secrets.roots {
        Some(certs) => {
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    let reason = format!("holds a certificate that is no usable CA: {e}");
                    refused("amqp.tls.ca_file", tls.ca_file.as_deref(), reason)
                })?;
            }
        }
        None => {
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(refused(
                    "amqp.tls.ca_file",
                    None,
                    "not set, and the system has no trusted CA to use instead",
                ));
            }
        }
    }
    let builder = builder.with_root_certificates(roots);
    match secrets.identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            let reason = format!("not a usable client certificate: {e}");
            refused("amqp.tls.cert_file", tls.cert_file.as_deref(), reason)
        }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Whether rustls takes the key and whether it goes with the certificate.
fn check_identity(
    tls: &config::AmqpTls,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<(), config::Error> {
    let key_file = tls.key_file.as_deref();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            refused(
                "amqp.tls.key_file",
                key_file,
                format!("not a usable key: {e}"),
            )
        })?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(e @ rustls::Error::InconsistentKeys(_)) => Err(refused(
            "amqp.tls.key_file",
            key_file,
            format!("does not go with amqp.tls.cert_file: {e}"),
        )),
        // Matching parses the certificate (webpki wants X.509 v3).
        Err(e) => Err(refused(
            "amqp.tls.cert_file",
            tls.cert_file.as_deref(),
            format!("not a usable client certificate: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(password: Option<&str>, identity: bool) -> Connector {
        Connector {
            tls: None,
            identity,
            password: password.map(Password::new),
            heartbeat: 7,
            frame_max: 8192,
        }
    }

    #[test]
    fn tls_is_built_for_amqps_and_a_key_must_match_its_certificate() {
        let dir = std::env::temp_dir().join(format!("warren-connect-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["warren".into()]).unwrap();
        let cert = write("cert.pem", params.self_signed(&key).unwrap().pem());
        let other = write(
            "other.pem",
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let mut amqp = config::Amqp {
            url: "amqp://a/%2f, amqps://b/%2f".into(),
            tls: config::AmqpTls {
                ca_file: Some(cert.clone()),
                cert_file: Some(cert),
                key_file: Some(write("key.pem", key.serialize_pem())),
            },
            ..Default::default()
        };
        let connector = Connector::new(&amqp).unwrap();
        assert!(connector.tls.is_some() && connector.identity);
        amqp.url = "amqp://a/%2f".into();
        assert!(Connector::new(&amqp).unwrap().tls.is_none());
        // Refused whether or not a URI is amqps://.
        amqp.tls.key_file = Some(other);
        let e = Connector::new(&amqp).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.contains("amqp.tls.key_file") && e.contains("does not go with"),
            "{e}"
        );
    }

    #[test]
    fn defaults_fill_what_the_uri_leaves_out() {
        let uri = connector(None, false).uri("amqp://u:p@broker/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(7));
        assert_eq!(uri.query.frame_max, Some(8192));
        let uri = connector(None, false)
            .uri("amqp://u:p@broker/%2f?heartbeat=3&frame_max=4096")
            .unwrap();
        assert_eq!(uri.query.heartbeat, Some(3));
        assert_eq!(uri.query.frame_max, Some(4096));
    }

    #[test]
    fn ip_addresses_stay_the_host() {
        let c = connector(None, false);
        assert_eq!(
            c.uri("amqps://127.0.0.1:5671").unwrap().authority.host,
            "127.0.0.1"
        );
        assert_eq!(c.uri("amqps://[::1]:5671").unwrap().authority.host, "::1");
        assert_eq!(
            c.uri("amqps://broker.example").unwrap().authority.host,
            "broker.example"
        );
    }

    #[test]
    fn the_password_file_fills_uris_with_a_user_and_no_password() {
        let c = connector(Some("fr0m-file"), true);
        let uri = c.uri("amqps://app@broker/%2f").unwrap();
        assert_eq!(uri.authority.userinfo.username, "app");
        assert_eq!(uri.authority.userinfo.password, "fr0m-file");
        assert_eq!(uri.query.auth_mechanism, None);
        // A password in the URI wins.
        let uri = c.uri("amqps://app:own@broker/%2f").unwrap();
        assert_eq!(uri.authority.userinfo.password, "own");
        assert!(!format!("{c:?}").contains("fr0m-file"));
    }

    #[test]
    fn a_client_certificate_without_a_password_logs_in_with_external() {
        let c = connector(None, true);
        for url in ["amqps://broker/%2f", "amqps://app@broker/%2f"] {
            let uri = c.uri(url).unwrap();
            assert_eq!(
                uri.query.auth_mechanism,
                Some(SASLMechanism::External),
                "{url}"
            );
        }
        // Not with a password, not over plain AMQP, not against the URI's choice.
        for url in [
            "amqps://app:pw@broker/%2f",
            "amqp://broker/%2f",
            "amqps://broker/%2f?auth_mechanism=plain",
        ] {
            let uri = c.uri(url).unwrap();
            assert_ne!(
                uri.query.auth_mechanism,
                Some(SASLMechanism::External),
                "{url}"
            );
        }
        // Without a certificate, nothing changes.
        let uri = connector(None, false).uri("amqps://broker/%2f").unwrap();
        assert_eq!(uri.query.auth_mechanism, None);
    }
}
