//! What one browser socket may do, decided once at the upgrade from its access token.

use onair_auth::{Grants, TokenError, Verifier};

use crate::protocol::ErrorCode;

/// A socket's grants, and why it has none if its token was refused.
#[derive(Debug, Clone)]
pub struct SocketAccess {
    grants: Grants,
    /// Auth is on and the socket came without a (valid) token.
    anonymous: bool,
    /// Why the token given was refused (sent to the client after `welcome`).
    refused: Option<TokenError>,
    /// The token's subject (empty: no token, or auth off).
    subject: String,
}

impl SocketAccess {
    /// Decides from the token on the upgrade. Without a verifier (auth off) every socket may do everything.
    pub fn from_token(verifier: Option<&Verifier>, token: Option<&str>) -> Self {
        let Some(verifier) = verifier else {
            return Self { grants: Grants::all(), anonymous: false, refused: None, subject: String::new() };
        };
        match token.map(|t| verifier.verify(t)) {
            None => Self { grants: Grants::default(), anonymous: true, refused: None, subject: String::new() },
            Some(Ok(claims)) => {
                tracing::debug!(subject = %claims.sub, "socket with an access token");
                Self { grants: claims.grants, anonymous: false, refused: None, subject: claims.sub }
            }
            Some(Err(e)) => {
                Self { grants: Grants::default(), anonymous: true, refused: Some(e), subject: String::new() }
            }
        }
    }

    /// The subject of the socket's token (empty: none, or auth off): the owner of what it publishes.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `error` frame's code and message for a refused token, if one was refused.
    pub fn refusal(&self) -> Option<(ErrorCode, String)> {
        self.refused.as_ref().map(|e| (ErrorCode::Unauthenticated, format!("{e}; continuing without it")))
    }

    /// Whether this socket may go live with `title`; else the error to send.
    pub fn publish(&self, title: &str) -> Result<(), (ErrorCode, String)> {
        self.decide(self.grants.check_publish(title), "going live", "publish")
    }

    /// Whether this socket may watch `stream`; else the error to send.
    pub fn watch(&self, stream: &str) -> Result<(), (ErrorCode, String)> {
        self.decide(self.grants.check_subscribe(stream), "watching", "subscribe")
    }

    fn decide(
        &self,
        checked: Result<(), onair_auth::Denied>,
        action: &str,
        grant: &str,
    ) -> Result<(), (ErrorCode, String)> {
        match checked {
            Ok(()) => Ok(()),
            Err(_) if self.anonymous => Err((
                ErrorCode::Unauthenticated,
                format!(
                    "{action} needs an access token with the {grant} grant: open this page with \
                     #access_token=<token> (the operator mints one with `onair token --grant {grant}`)"
                ),
            )),
            Err(denied) => Err((ErrorCode::Forbidden, denied.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use onair_auth::{Minter, Scope};

    use super::*;

    const SECRET: &str = "gateway-test-secret-123";

    #[test]
    fn auth_off_allows_everything_and_auth_on_says_what_is_missing() {
        let open = SocketAccess::from_token(None, None);
        assert!(open.publish("t").is_ok() && open.watch("s").is_ok() && open.refusal().is_none());

        let verifier = Verifier::hs256(SECRET).unwrap();
        let anonymous = SocketAccess::from_token(Some(&verifier), None);
        let (code, msg) = anonymous.publish("t").unwrap_err();
        assert_eq!(code, ErrorCode::Unauthenticated);
        assert!(msg.contains("publish grant") && msg.contains("#access_token="), "{msg}");
        assert_eq!(anonymous.watch("s").unwrap_err().0, ErrorCode::Unauthenticated);

        let minter = Minter::hs256(SECRET).unwrap();
        let watcher = Grants { subscribe: Some(Scope::Only("s1".into())), ..Grants::default() };
        let token = minter.mint("w", watcher, Duration::from_secs(60), SystemTime::now()).unwrap();
        let w = SocketAccess::from_token(Some(&verifier), Some(&token));
        assert!(w.watch("s1").is_ok());
        assert_eq!(w.watch("s2").unwrap_err().0, ErrorCode::Forbidden);
        let (code, msg) = w.publish("t").unwrap_err();
        assert_eq!((code, msg.as_str()), (ErrorCode::Forbidden, "this access token has no publish grant"));

        let forged = SocketAccess::from_token(Some(&verifier), Some("e30.e30.e30"));
        assert_eq!(forged.refusal().unwrap().0, ErrorCode::Unauthenticated);
        assert_eq!(forged.watch("s").unwrap_err().0, ErrorCode::Unauthenticated);
    }
}
