//! What a token allows: the grants and the claims that carry them.

use serde::{Deserialize, Serialize};

/// Where a grant applies: anywhere (`"*"` on the wire) or to one name or stream id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Scope {
    /// Any stream.
    Any,
    /// Only this one (a stream's title for `publish`, a stream id for `subscribe`).
    Only(String),
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        if s == "*" { Self::Any } else { Self::Only(s) }
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Any => "*".to_owned(),
            Scope::Only(v) => v,
        }
    }
}

/// What the holder of a token may do. Unknown grants in a token are ignored (a newer issuer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Go live; with [`Scope::Only`], only under that title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Scope>,
    /// Watch; with [`Scope::Only`], only that stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Scope>,
    /// Call the public gRPC APIs (registry, recorder).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why a grant check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token has no grant of this kind.
    #[error("this access token has no {0} grant")]
    NoGrant(&'static str),
    /// The token's grant is for something else.
    #[error("this access token allows {action} only {what} \u{201c}{allowed}\u{201d}")]
    OtherScope {
        /// e.g. "publishing".
        action: &'static str,
        /// e.g. "as", "stream".
        what: &'static str,
        /// The one name or stream the grant covers.
        allowed: String,
    },
}

impl Grants {
    /// Everything: what every client may do when auth is off.
    pub fn all() -> Self {
        Self { publish: Some(Scope::Any), subscribe: Some(Scope::Any), admin: true }
    }

    /// Whether going live with `title` is allowed.
    pub fn check_publish(&self, title: &str) -> Result<(), Denied> {
        check(self.publish.as_ref(), title, "publish", "publishing", "as")
    }

    /// Whether watching `stream` is allowed.
    pub fn check_subscribe(&self, stream: &str) -> Result<(), Denied> {
        check(self.subscribe.as_ref(), stream, "subscribe", "watching", "stream")
    }

    /// Adds one grant given on the command line.
    pub fn with(mut self, g: GrantArg) -> Self {
        match g {
            GrantArg::Publish(s) => self.publish = Some(s),
            GrantArg::Subscribe(s) => self.subscribe = Some(s),
            GrantArg::Admin => self.admin = true,
        }
        self
    }
}

/// Whether `grant` (named `name`) covers `value`; else why not, worded as "allows {action} only {what} …".
fn check(
    grant: Option<&Scope>,
    value: &str,
    name: &'static str,
    action: &'static str,
    what: &'static str,
) -> Result<(), Denied> {
    match grant {
        None => Err(Denied::NoGrant(name)),
        Some(Scope::Only(allowed)) if allowed != value => {
            Err(Denied::OtherScope { action, what, allowed: allowed.clone() })
        }
        Some(_) => Ok(()),
    }
}

/// One grant as written on the command line: `publish`, `publish=NAME`, `subscribe`,
/// `subscribe=STREAM_ID`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantArg {
    /// `publish[=NAME]`.
    Publish(Scope),
    /// `subscribe[=STREAM_ID]`.
    Subscribe(Scope),
    /// `admin`.
    Admin,
}

impl std::str::FromStr for GrantArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, scope) = match s.split_once('=') {
            Some((k, v)) if !v.is_empty() => (k, Scope::from(v.to_owned())),
            Some((k, _)) => return Err(format!("`{k}=` needs a value after `=` (or leave `=` out for any)")),
            None => (s, Scope::Any),
        };
        match kind {
            "publish" => Ok(Self::Publish(scope)),
            "subscribe" => Ok(Self::Subscribe(scope)),
            "admin" if scope == Scope::Any => Ok(Self::Admin),
            "admin" => Err("`admin` takes no value".to_owned()),
            other => Err(format!("unknown grant `{other}`: use publish[=NAME], subscribe[=STREAM_ID] or admin")),
        }
    }
}

/// The claims of an onair access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to (logged at debug level, never the token).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// What the holder may do.
    #[serde(default)]
    pub grants: Grants,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_limit_grants_and_say_why() {
        let g = Grants::default().with("publish=Morning show".parse().unwrap()).with("subscribe".parse().unwrap());
        assert_eq!(g.check_publish("Morning show"), Ok(()));
        let e = g.check_publish("Other").unwrap_err();
        assert_eq!(e.to_string(), "this access token allows publishing only as \u{201c}Morning show\u{201d}");
        assert_eq!(g.check_subscribe("any-stream"), Ok(()));
        let only = Grants::default().with("subscribe=s1".parse().unwrap());
        assert_eq!(only.check_subscribe("s1"), Ok(()));
        assert!(only.check_subscribe("s2").unwrap_err().to_string().contains("only stream \u{201c}s1\u{201d}"));
        assert_eq!(only.check_publish("x"), Err(Denied::NoGrant("publish")));
        assert_eq!(
            Grants::default().check_subscribe("s1").unwrap_err().to_string(),
            "this access token has no subscribe grant"
        );
    }

    #[test]
    fn grant_arguments_parse_or_say_what_is_wrong() {
        assert_eq!("publish".parse::<GrantArg>(), Ok(GrantArg::Publish(Scope::Any)));
        assert_eq!("subscribe=abc".parse::<GrantArg>(), Ok(GrantArg::Subscribe(Scope::Only("abc".into()))));
        assert_eq!("admin".parse::<GrantArg>(), Ok(GrantArg::Admin));
        assert!("admin=x".parse::<GrantArg>().is_err());
        assert!("publish=".parse::<GrantArg>().unwrap_err().contains("needs a value"));
        assert!("root".parse::<GrantArg>().unwrap_err().contains("unknown grant `root`"));
    }

    #[test]
    fn grants_serialize_compactly_and_ignore_unknown_ones() {
        let g = Grants::default().with("publish".parse().unwrap()).with("subscribe=s1".parse().unwrap());
        assert_eq!(serde_json::to_string(&g).unwrap(), r#"{"publish":"*","subscribe":"s1"}"#);
        let parsed: Grants = serde_json::from_str(r#"{"admin":true,"record":"*"}"#).unwrap();
        assert_eq!(parsed, Grants { admin: true, ..Grants::default() });
    }
}
