//! Resume tokens: `<peer>.<nonce>`, and with a resume secret shared by every gateway of a
//! cluster, `<peer>.<nonce>.<mac>` where the MAC (HMAC-SHA256, truncated to 128 bits) binds the
//! token to its peer id. A gateway refuses a token it cannot verify before asking signaling, so a
//! guessed or edited token costs one hash, never a directory lookup or a takeover attempt.
//! Signaling still checks the whole token against the directory (the token must be the live one).

use hmac::{Hmac, KeyInit, Mac};
use onair_core::PeerId;
use sha2::Sha256;

/// Bytes of the MAC kept in a token (hex-encoded: 32 characters).
const MAC_BYTES: usize = 16;

/// Mints and checks the resume tokens of one gateway.
#[derive(Clone)]
pub struct TokenSigner {
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("signed", &self.key.is_some()).finish()
    }
}

impl TokenSigner {
    /// Signs tokens with `secret` (shared by every gateway), or mints unsigned random tokens.
    pub fn new(secret: Option<&str>) -> Self {
        Self { key: secret.filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()) }
    }

    fn mac(key: &[u8], body: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(body.as_bytes());
        mac
    }

    /// A fresh token for `peer`.
    pub fn mint(&self, peer: &PeerId) -> String {
        let body = format!("{peer}.{}", uuid::Uuid::new_v4().simple());
        match &self.key {
            None => body,
            Some(key) => {
                let tag = Self::mac(key, &body).finalize().into_bytes();
                format!("{body}.{}", hex::encode(&tag[..MAC_BYTES]))
            }
        }
    }

    /// The peer `token` names, if it is well formed and (with a secret) carries a valid MAC.
    pub fn peer_of(&self, token: &str) -> Option<PeerId> {
        let mut parts = token.split('.');
        let (peer, nonce) = (parts.next()?, parts.next()?);
        let peer: PeerId = peer.parse().ok()?;
        match (&self.key, parts.next(), parts.next()) {
            (None, None, None) => Some(peer),
            (Some(key), Some(tag), None) => {
                let tag = hex::decode(tag).ok().filter(|t| t.len() == MAC_BYTES)?;
                let body = &token[..peer.as_str().len() + 1 + nonce.len()];
                Self::mac(key, body).verify_truncated_left(&tag).ok()?;
                Some(peer)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_only_with_the_same_secret_and_peer() {
        let a = TokenSigner::new(Some("cluster secret"));
        let peer = PeerId::generate();
        let t = a.mint(&peer);
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(a.peer_of(&t), Some(peer.clone()));
        assert_eq!(TokenSigner::new(Some("cluster secret")).peer_of(&t), Some(peer.clone()), "another gateway");
        assert_eq!(TokenSigner::new(Some("other secret")).peer_of(&t), None);
        // Another peer's id with this MAC, an edited nonce, a cut or missing MAC: refused.
        let other = PeerId::generate();
        let stolen = t.replacen(peer.as_str(), other.as_str(), 1);
        assert_eq!(a.peer_of(&stolen), None);
        let mut edited = t.clone();
        let i = peer.as_str().len() + 2;
        edited.replace_range(i..=i, if &t[i..=i] == "0" { "1" } else { "0" });
        assert_eq!(a.peer_of(&edited), None);
        assert_eq!(a.peer_of(&t[..t.len() - 2]), None);
        assert_eq!(a.peer_of(t.rsplit_once('.').unwrap().0), None);
        assert_eq!(a.peer_of(&format!("{t}.x")), None);
    }

    #[test]
    fn unsigned_tokens_name_their_peer() {
        let s = TokenSigner::new(None);
        let peer = PeerId::generate();
        let t = s.mint(&peer);
        assert_eq!(s.peer_of(&t), Some(peer));
        assert_eq!(s.peer_of("not a token"), None);
        assert_eq!(s.peer_of("../x.y"), None);
        assert_eq!(TokenSigner::new(Some("k")).peer_of(&t), None, "a signed cluster refuses unsigned tokens");
    }
}
