//! `[amqp.tls]` and `amqp.password_file`: whom Warren trusts on the broker's
//! side and how it proves who it is.
//!
//! The configuration holds only paths. [`Secrets::read`] reads and parses the
//! files, naming the key of any file it cannot use; it runs at start-up (a
//! bad file stops Warren) and again before every round of connection
//! attempts, so that a rotated secret (a remounted password or certificate)
//! is picked up on the next reconnect.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::{invalid, Amqp, Error};

/// `[amqp.tls]`: TLS for `amqps://` URIs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpTls {
    /// PEM file of the CAs that may sign the broker's certificate; only
    /// these are trusted. Unset: the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// PEM file of Warren's client certificate (its chain may follow),
    /// presented to the broker. Needs `key_file`. With it and no password
    /// in a URI, Warren logs in with SASL EXTERNAL.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1). Needs `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl AmqpTls {
    /// Whether Warren presents a client certificate.
    pub fn has_identity(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// A password that never shows in `Debug` output (nor anywhere else but the
/// SASL exchange).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password given as text.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for the broker's login only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What the files of `[amqp.tls]` and `amqp.password_file` hold.
#[derive(Debug)]
pub struct Secrets {
    /// The CAs of `amqp.tls.ca_file`; `None`: the system's.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// The client certificate chain of `amqp.tls.cert_file` and the key of
    /// `amqp.tls.key_file`.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The broker password of `amqp.password_file`.
    pub password: Option<Password>,
}

impl Secrets {
    /// Reads and parses every file that `amqp` names.
    pub fn read(amqp: &Amqp) -> Result<Self, Error> {
        let tls = &amqp.tls;
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates("amqp.tls.cert_file", cert)?;
                let bytes = read("amqp.tls.key_file", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
                    invalid(
                        "amqp.tls.key_file",
                        key.display(),
                        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    )
                })?;
                Some((chain, key_der))
            }
            (Some(cert), None) => {
                return Err(invalid(
                    "amqp.tls.cert_file",
                    cert.display(),
                    "needs amqp.tls.key_file (its private key)",
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "amqp.tls.key_file",
                    key.display(),
                    "needs amqp.tls.cert_file (the certificate it belongs to)",
                ))
            }
            (None, None) => None,
        };
        let roots = match &tls.ca_file {
            Some(path) => Some(certificates("amqp.tls.ca_file", path)?),
            None => None,
        };
        let password = match &amqp.password_file {
            Some(path) => Some(password(path)?),
            None => None,
        };
        Ok(Self {
            roots,
            identity,
            password,
        })
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| invalid(key, path.display(), format!("cannot read it: {e}")))
}

/// Every certificate of a PEM file: at least one.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path.display(), format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path.display(), "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The file's text less its trailing newline (what `echo` and most secret
/// stores leave there). Errors never quote the content.
fn password(path: &Path) -> Result<Password, Error> {
    let key = "amqp.password_file";
    let bytes = read(key, path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid(key, path.display(), "the password is not UTF-8"))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(invalid(key, path.display(), "the file is empty"));
    }
    Ok(Password(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!("warren-tls-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn amqp(tls: AmqpTls, password_file: Option<PathBuf>) -> Amqp {
        Amqp {
            tls,
            password_file,
            ..Amqp::default()
        }
    }

    fn refused(amqp: &Amqp) -> String {
        Secrets::read(amqp)
            .expect_err("should be refused")
            .to_string()
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["warren".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn nothing_set_reads_nothing() {
        let s = Secrets::read(&Amqp::default()).unwrap();
        assert!(s.roots.is_none() && s.identity.is_none() && s.password.is_none());
    }

    #[test]
    fn certificates_and_key_are_read() {
        let dir = Dir::new();
        let (cert, key) = pair();
        let tls = AmqpTls {
            ca_file: Some(dir.file("ca.pem", format!("{cert}{cert}").as_bytes())),
            cert_file: Some(dir.file("cert.pem", cert.as_bytes())),
            key_file: Some(dir.file("key.pem", key.as_bytes())),
        };
        let s = Secrets::read(&amqp(tls, None)).unwrap();
        assert_eq!(s.roots.unwrap().len(), 2);
        assert_eq!(s.identity.unwrap().0.len(), 1);
    }

    #[test]
    fn a_certificate_needs_its_key_and_a_key_its_certificate() {
        let dir = Dir::new();
        let (cert, key) = pair();
        let cert = dir.file("cert.pem", cert.as_bytes());
        let key = dir.file("key.pem", key.as_bytes());
        let only_cert = AmqpTls {
            cert_file: Some(cert),
            ..AmqpTls::default()
        };
        let e = refused(&amqp(only_cert, None));
        assert!(
            e.contains("amqp.tls.cert_file") && e.contains("amqp.tls.key_file"),
            "{e}"
        );
        let only_key = AmqpTls {
            key_file: Some(key),
            ..AmqpTls::default()
        };
        let e = refused(&amqp(only_key, None));
        assert!(
            e.starts_with("invalid configuration: amqp.tls.key_file"),
            "{e}"
        );
    }

    #[test]
    fn missing_unreadable_or_empty_files_name_their_key() {
        let dir = Dir::new();
        let (cert, key) = pair();
        let cert = dir.file("cert.pem", cert.as_bytes());
        let missing = dir.0.join("missing.pem");
        let not_pem = dir.file("junk.pem", b"hello");
        let cases = [
            ("amqp.tls.ca_file", missing.clone()),
            ("amqp.tls.ca_file", dir.0.clone()), // a directory: unreadable
            ("amqp.tls.ca_file", not_pem.clone()),
        ];
        for (key_name, path) in cases {
            let tls = AmqpTls {
                ca_file: Some(path.clone()),
                ..AmqpTls::default()
            };
            let e = refused(&amqp(tls, None));
            assert!(e.contains(key_name), "{path:?}: {e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        for path in [missing.clone(), not_pem.clone()] {
            let tls = AmqpTls {
                cert_file: Some(path.clone()),
                key_file: Some(dir.file("key.pem", key.as_bytes())),
                ..AmqpTls::default()
            };
            assert!(refused(&amqp(tls, None)).contains("amqp.tls.cert_file"));
            let tls = AmqpTls {
                cert_file: Some(cert.clone()),
                key_file: Some(path.clone()),
                ..AmqpTls::default()
            };
            assert!(refused(&amqp(tls, None)).contains("amqp.tls.key_file"));
        }
        for path in [missing, dir.file("empty", b"\n")] {
            let e = refused(&amqp(AmqpTls::default(), Some(path)));
            assert!(e.contains("amqp.password_file"), "{e}");
        }
    }

    #[test]
    fn the_password_loses_its_trailing_newline_and_never_shows() {
        let dir = Dir::new();
        for (content, expected) in [
            (&b"s3cret\n"[..], "s3cret"),
            (b"s3cret\r\n", "s3cret"),
            (b"s3cret", "s3cret"),
            (b" spaced pass \n", " spaced pass "),
        ] {
            let path = dir.file("password", content);
            let s = Secrets::read(&amqp(AmqpTls::default(), Some(path))).unwrap();
            let password = s.password.as_ref().unwrap();
            assert_eq!(password.expose(), expected);
            assert!(!format!("{s:?}").contains("s3cret"));
        }
        let path = dir.file("binary", &[0xff, 0xfe, b'\n']);
        let e = refused(&amqp(AmqpTls::default(), Some(path)));
        assert!(
            e.contains("amqp.password_file") && e.contains("UTF-8"),
            "{e}"
        );
    }
}
