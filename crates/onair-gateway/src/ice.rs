//! ICE servers handed to browsers in `welcome`: STUN/TURN URLs validated at start, and
//! time-limited TURN credentials per the TURN REST API convention
//! (draft-uberti-behave-turn-rest-00), which is what coturn's `use-auth-secret` checks:
//! username `<expiry-unix>:<peer-id>`, credential `base64(HMAC-SHA1(secret, username))`.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use onair_core::PeerId;
use serde_json::{Value, json};

/// Why an ICE server URL or the ICE configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    /// The URL is malformed.
    #[error("invalid ICE server URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A TURN URL was given without a secret to derive credentials from.
    #[error("{url} needs --turn-secret: TURN credentials are derived per peer from it, never static")]
    TurnWithoutSecret {
        /// The first TURN URL.
        url: String,
    },
}

/// The kind of ICE server a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceScheme {
    /// `stun:` (no credentials).
    Stun,
    /// `turn:` (UDP or `?transport=tcp`).
    Turn,
    /// `turns:` (TURN over TLS).
    Turns,
}

/// One validated ICE server URL (RFC 7064 / RFC 7065): `stun:host[:port]`,
/// `turn:host[:port][?transport=udp|tcp]`, `turns:host[:port][?transport=tcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    scheme: IceScheme,
    url: String,
}

impl IceUrl {
    /// The scheme.
    pub fn scheme(&self) -> IceScheme {
        self.scheme
    }

    /// The URL as the browser gets it.
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for IceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl FromStr for IceUrl {
    type Err = IceError;

    fn from_str(s: &str) -> Result<Self, IceError> {
        let url = s.trim();
        let err = |why| IceError::Url { url: url.to_owned(), why };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| err("expected stun:, turn: or turns:"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => IceScheme::Stun,
            "turn" => IceScheme::Turn,
            "turns" => IceScheme::Turns,
            _ => return Err(err("the scheme must be stun:, turn: or turns:")),
        };
        if rest.starts_with("//") {
            return Err(err("no // after the scheme (stun:host:port, not stun://host:port)"));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        match (scheme, query) {
            (_, None) => {}
            (IceScheme::Stun, Some(_)) => return Err(err("stun: URLs take no query")),
            (IceScheme::Turn, Some("transport=udp" | "transport=tcp")) | (IceScheme::Turns, Some("transport=tcp")) => {}
            (_, Some(_)) => return Err(err("the only query is ?transport=udp or ?transport=tcp (turns: tcp only)")),
        }
        let (host, port) = if authority.starts_with('[') {
            match authority.split_once("]:") {
                Some((h, p)) => (format!("{h}]"), Some(p)),
                None => (authority.to_owned(), None),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if !valid_host(&host) {
            return Err(err("the host must be a DNS name, an IPv4 address or a [bracketed] IPv6 address"));
        }
        if let Some(p) = port
            && !matches!(p.parse::<u16>(), Ok(1..))
        {
            return Err(err("the port must be a number from 1 to 65535"));
        }
        Ok(Self { scheme, url: url.to_owned() })
    }
}

pub use onair_core::turn_rest::{TurnSecret, turn_credential, turn_username};

/// What the gateway hands out in `welcome.ice_servers`.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    stun: Vec<String>,
    turn: Vec<String>,
    secret: Option<TurnSecret>,
    ttl: Duration,
}

impl IceServers {
    /// No ICE servers (host candidates only: same host or same LAN).
    pub fn none() -> Self {
        Self::default()
    }

    /// `urls` as given; TURN entries get credentials derived from `secret`, valid for `ttl`.
    /// A TURN URL without a secret is refused: browsers need credentials for it, and static ones
    /// would be handed to every visitor.
    pub fn new(urls: Vec<IceUrl>, secret: Option<TurnSecret>, ttl: Duration) -> Result<Self, IceError> {
        let (turn, stun): (Vec<_>, Vec<_>) = urls.into_iter().partition(|u| u.scheme != IceScheme::Stun);
        if secret.is_none()
            && let Some(first) = turn.first()
        {
            return Err(IceError::TurnWithoutSecret { url: first.to_string() });
        }
        if secret.is_some() && turn.is_empty() {
            tracing::warn!("--turn-secret is set but --ice-servers lists no turn:/turns: URL; it has no effect");
        }
        Ok(Self {
            stun: stun.into_iter().map(|u| u.url).collect(),
            turn: turn.into_iter().map(|u| u.url).collect(),
            secret,
            ttl,
        })
    }

    /// The `RTCIceServer` dictionaries for `peer` at `now`: one entry with the STUN URLs, one with
    /// the TURN URLs and credentials expiring at `now + ttl`.
    pub fn for_peer(&self, peer: &PeerId, now: SystemTime) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.stun.is_empty() {
            out.push(json!({ "urls": self.stun }));
        }
        if let (false, Some(secret)) = (self.turn.is_empty(), &self.secret) {
            let username = turn_username(now + self.ttl, peer);
            let credential = turn_credential(secret, &username);
            out.push(json!({ "urls": self.turn, "username": username, "credential": credential }));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn turn_entries_carry_credentials_expiring_after_the_ttl() {
        let urls = ["stun:stun.example.org", "turn:198.51.100.7:3478?transport=tcp", "turns:turn.example.org:5349"]
            .map(|u| u.parse().unwrap())
            .to_vec();
        let ice = IceServers::new(urls, Some(TurnSecret::new("s".into())), Duration::from_secs(3600)).unwrap();
        let peer: PeerId = "p1".parse().unwrap();
        let servers = ice.for_peer(&peer, SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(servers[0], json!({ "urls": ["stun:stun.example.org"] }));
        assert_eq!(servers[1]["urls"], json!(["turn:198.51.100.7:3478?transport=tcp", "turns:turn.example.org:5349"]));
        assert_eq!(servers[1]["username"], "4600:p1");
        let expected = turn_credential(&TurnSecret::new("s".into()), "4600:p1");
        assert_eq!(servers[1]["credential"], expected.as_str());
    }

    #[test]
    fn turn_without_a_secret_is_refused() {
        let err =
            IceServers::new(vec!["turn:t.example.org".parse().unwrap()], None, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("--turn-secret"), "{err}");
    }

    #[test]
    fn urls_are_validated() {
        for ok in [
            "stun:stun.l.google.com:19302",
            "stun:[2001:db8::1]:3478",
            "turn:203.0.113.5",
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:443?transport=tcp",
        ] {
            assert!(ok.parse::<IceUrl>().is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "http://stun.example.org",
            "stun://stun.example.org",
            "stun:",
            "stun:host:0",
            "stun:host:99999",
            "stun:host?transport=udp",
            "turn:host?transport=sctp",
            "turns:host?transport=udp",
            "turn:bad_host",
            "turn:[::1",
            "stun",
        ] {
            assert!(bad.parse::<IceUrl>().is_err(), "{bad} should be refused");
        }
    }
}
