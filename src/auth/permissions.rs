//! What a client may do: name patterns per kind of access.

use serde::Deserialize;

/// The name under which permissions give the default exchange (`""`).
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// Exact names or globs in which `*` matches any run of characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// Patterns as configured.
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self(patterns.into_iter().collect())
    }

    /// Every name.
    pub fn any() -> Self {
        Self(vec!["*".into()])
    }

    /// Whether `name` matches one of them.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

/// `*` matches any run of bytes (UTF-8 stays whole: `*` never splits a
/// character that the rest of the pattern matches exactly). Iterative, with
/// one backtrack point: linear in practice, never exponential.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The kinds of access a client is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Permissions {
    /// Exchanges it may publish to.
    #[serde(deserialize_with = "patterns")]
    pub publish: Patterns,
    /// Queues it may subscribe to.
    #[serde(deserialize_with = "patterns")]
    pub consume: Patterns,
    /// Exchanges it may call through.
    #[serde(deserialize_with = "patterns")]
    pub call: Patterns,
    /// The operators' endpoints.
    pub admin: bool,
}

fn patterns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Patterns, D::Error> {
    Vec::<String>::deserialize(d).map(Patterns::new)
}

impl Permissions {
    /// Everything (auth off).
    pub fn all() -> Self {
        Self {
            publish: Patterns::any(),
            consume: Patterns::any(),
            call: Patterns::any(),
            admin: true,
        }
    }
}

/// One thing a request would do.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Publish to an exchange (`""` is the default exchange).
    Publish(&'a str),
    /// Subscribe to a queue.
    Consume(&'a str),
    /// Call through an exchange.
    Call(&'a str),
    /// An operators' endpoint.
    Admin,
}

impl Access<'_> {
    /// Whether `permissions` allow it.
    pub fn allowed_by(&self, permissions: &Permissions) -> bool {
        fn exchange(name: &str) -> &str {
            if name.is_empty() {
                DEFAULT_EXCHANGE
            } else {
                name
            }
        }
        match *self {
            Access::Publish(e) => permissions.publish.allows(exchange(e)),
            Access::Consume(q) => permissions.consume.allows(q),
            Access::Call(e) => permissions.call.allows(exchange(e)),
            Access::Admin => permissions.admin,
        }
    }

    /// Says what was refused.
    pub fn describe(&self) -> String {
        match *self {
            Access::Publish("") => format!("publish to the default exchange ({DEFAULT_EXCHANGE})"),
            Access::Call("") => format!("call through the default exchange ({DEFAULT_EXCHANGE})"),
            Access::Publish(e) => format!("publish to exchange {e:?}"),
            Access::Consume(q) => format!("consume from queue {q:?}"),
            Access::Call(e) => format!("call through exchange {e:?}"),
            Access::Admin => "use the operators' endpoints (admin)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Patterns {
        Patterns::new(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn globs_match_runs_of_characters() {
        let billing = p(&["billing.*", "exact", "a*b*c"]);
        for yes in [
            "billing.",
            "billing.x",
            "billing.x.y",
            "exact",
            "abc",
            "a-b-c",
            "aXbYbZc",
        ] {
            assert!(billing.allows(yes), "{yes}");
        }
        for no in ["billing", "xbilling.x", "exact2", "ab", "acb", ""] {
            assert!(!billing.allows(no), "{no}");
        }
        assert!(p(&["*"]).allows(""));
        assert!(p(&["café.*"]).allows("café.ü"));
        assert!(!p(&[]).allows("anything"));
    }

    #[test]
    fn a_long_name_does_not_blow_up_the_match() {
        let name = "a".repeat(255);
        let pattern = p(&["*a*a*a*a*a*a*a*a*b"]);
        assert!(!pattern.allows(&name));
    }

    #[test]
    fn the_default_exchange_is_amq_default() {
        let perms = Permissions {
            publish: p(&[DEFAULT_EXCHANGE]),
            ..Default::default()
        };
        assert!(Access::Publish("").allowed_by(&perms));
        assert!(!Access::Publish("other").allowed_by(&perms));
        assert!(!Access::Call("").allowed_by(&perms));
        assert!(!Access::Admin.allowed_by(&perms));
        assert!(Access::Admin.allowed_by(&Permissions::all()));
    }
}
