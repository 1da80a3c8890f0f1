//! TLS helpers: a test PKI made with rcgen (written to a directory of its
//! own, removed on drop) and the TLS node of `scripts/tls-broker.sh`, up while
//! its guard lives.

use std::path::PathBuf;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tls-broker.sh");

/// The subject CN of the client certificate: the user SASL EXTERNAL logs in as.
pub const CLIENT_CN: &str = "warren-client";
/// The TLS node's AMQPS URI with no credentials.
pub const AMQPS_URI: &str = "amqps://127.0.0.1:5712/%2f";
/// The TLS node's plain AMQP URI, as guest (to look at the node).
pub const PLAIN_URI: &str = "amqp://guest:guest@127.0.0.1:5711/%2f";

/// A CA, a server certificate for `localhost` and 127.0.0.1 and a client
/// certificate (CN [`CLIENT_CN`]) signed by it, and a second CA that signed
/// neither. Files: `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
/// `client-key.pem`, `other-ca.pem`, `other-key.pem`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("warren-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("PKI directory");
        let pki = Self { dir };
        let ca = new_ca("Warren test CA");
        for (name, subject, alt_names, usage) in [
            (
                "server",
                "localhost",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                CLIENT_CN,
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(alt_names).expect("params");
            params.distinguished_name.push(DnType::CommonName, subject);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("signed");
            pki.write(&format!("{name}.pem"), &cert.pem());
            pki.write(&format!("{name}-key.pem"), &key.serialize_pem());
        }
        pki.write("ca.pem", &ca.pem());
        let other = new_ca("Some other CA");
        pki.write("other-ca.pem", &other.pem());
        pki.write(
            "other-key.pem",
            &KeyPair::generate().expect("key").serialize_pem(),
        );
        pki
    }

    /// The path of one of the files, as text (for `WARREN__...` settings).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Writes `content` to `name` in the PKI's directory; its path.
    pub fn write(&self, name: &str, content: &str) -> String {
        std::fs::write(self.dir.join(name), content).expect("PKI file written");
        self.path(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// Runs `scripts/tls-broker.sh ARGS`; its stdout, or a panic with its output.
pub fn script(args: &[&str]) -> String {
    let out = Command::new(SCRIPT)
        .args(args)
        .output()
        .expect("scripts/tls-broker.sh runs");
    assert!(
        out.status.success(),
        "scripts/tls-broker.sh {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The TLS node (warren-tls@localhost) with the PKI's server certificate:
/// up while this lives, down when it is dropped, on every way out of a test
/// (a panic too).
pub struct TlsBroker {
    _private: (),
}

impl TlsBroker {
    pub fn up(pki: &Pki) -> Self {
        // Made before `up`, so that a failed start is cleaned up too.
        let node = Self { _private: () };
        script(&["up", &pki.dir.display().to_string()]);
        node
    }

    /// Adds a user with full permissions on `/`; without a password it can
    /// only log in with SASL EXTERNAL.
    pub fn user(&self, name: &str, password: Option<&str>) {
        let mut args = vec!["user", name];
        args.extend(password);
        script(&args);
    }

    /// `rabbitmqctl -q ARGS` against the node.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["ctl", "-q"];
        all.extend_from_slice(args);
        script(&all)
    }

    /// The node's client connections: (user, auth mechanism, over TLS).
    pub fn connections(&self) -> Vec<(String, String, bool)> {
        self.ctl(&["list_connections", "user", "auth_mechanism", "ssl"])
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let user = fields.next()?.to_owned();
                let mechanism = fields.next()?.to_owned();
                let ssl = fields.next()? == "true";
                Some((user, mechanism, ssl))
            })
            .filter(|(user, ..)| user != "user") // the header
            .collect()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        match Command::new(SCRIPT).arg("down").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/tls-broker.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("scripts/tls-broker.sh down did not run: {e}"),
        }
    }
}
