//! TURN REST API credentials (draft-uberti-behave-turn-rest-00), the convention coturn's
//! `use-auth-secret` checks: username `<expiry-unix>:<peer-id>`, credential
//! `base64(HMAC-SHA1(secret, username))`. The gateway mints them for `welcome`; the embedded
//! TURN server (`onair-turn`) checks them. One implementation for both sides.

use std::time::SystemTime;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::PeerId;

/// The secret shared with the TURN server (coturn's `static-auth-secret`). Never printed.
#[derive(Clone)]
pub struct TurnSecret(String);

impl TurnSecret {
    /// Wraps `secret`.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

/// The TURN REST API username: `<expiry-unix>:<peer-id>`. The TURN server reads the expiry
/// before the first `:` (peer ids may contain more colons).
pub fn turn_username(expires: SystemTime, peer: &PeerId) -> String {
    let secs = expires.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{secs}:{peer}")
}

/// The TURN REST API credential for `username`: `base64(HMAC-SHA1(secret, username))`.
pub fn turn_credential(secret: &TurnSecret, username: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.0.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Why a TURN REST API username is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnUsernameError {
    /// Not `<expiry-unix>:<user>` with a non-empty user.
    #[error("not a TURN REST API username (<expiry-unix>:<user>)")]
    Malformed,
    /// The expiry is in the past.
    #[error("the credentials expired")]
    Expired,
}

/// Checks the expiry of a TURN REST API `username` at `now` and returns its user part (the
/// peer id for credentials minted by a gateway).
pub fn check_turn_username(username: &str, now: SystemTime) -> Result<&str, TurnUsernameError> {
    let (expiry, user) = username.split_once(':').ok_or(TurnUsernameError::Malformed)?;
    let expiry: u64 = expiry.parse().map_err(|_| TurnUsernameError::Malformed)?;
    if user.is_empty() {
        return Err(TurnUsernameError::Malformed);
    }
    let now = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expiry < now {
        return Err(TurnUsernameError::Expired);
    }
    Ok(user)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn credential_matches_the_turn_rest_api_vector() {
        // Independently computed: python3 -c 'import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b"north", b"1700003600:alice", hashlib.sha1).digest()))'
        let secret = TurnSecret::new("north".into());
        let peer: PeerId = "alice".parse().unwrap();
        let username = turn_username(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_003_600), &peer);
        assert_eq!(username, "1700003600:alice");
        assert_eq!(turn_credential(&secret, &username), "wjwSXO2ch1B6VaLTLMy2Avn5O9o=");
    }

    #[test]
    fn usernames_are_checked_for_expiry_and_shape() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(check_turn_username("100:p:1", at(100)), Ok("p:1"));
        assert_eq!(check_turn_username("100:p", at(101)), Err(TurnUsernameError::Expired));
        for bad in ["100", "x:p", "100:", ":p", ""] {
            assert_eq!(check_turn_username(bad, at(0)), Err(TurnUsernameError::Malformed), "{bad}");
        }
    }
}
