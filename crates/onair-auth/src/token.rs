//! Access tokens: JWTs signed with HS256 (`--auth-secret`) or EdDSA (an Ed25519 public key).

use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;

use crate::{Claims, Grants, KeyError, MIN_SECRET_CHARS};

/// Clock skew tolerated between the issuer and onair when checking `exp`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a token was not accepted. The messages are meant for the user holding the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp` (plus [`LEEWAY`]).
    #[error("the access token has expired; ask for a new one")]
    Expired,
    /// Signed with another key, or altered.
    #[error("the access token's signature is not valid here (signed with another key, or altered)")]
    BadSignature,
    /// Signed with an algorithm this server does not accept (e.g. `none`, or RS256).
    #[error("the access token is signed with an algorithm this server does not accept")]
    WrongAlgorithm,
    /// Not a JWT, or claims missing or malformed.
    #[error("the access token is malformed ({0})")]
    Malformed(String),
    /// The token could not be created.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(c) => Self::Malformed(format!("no `{c}` claim")),
            ErrorKind::Json(_) => Self::Malformed("its claims are not onair's".to_owned()),
            _ => Self::Malformed("not a JWT".to_owned()),
        }
    }
}

/// Checks access tokens: signature, algorithm (exactly one accepted), expiry.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY.as_secs();
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

fn check_secret(secret: &str, what: &'static str) -> Result<(), KeyError> {
    if secret.chars().count() < MIN_SECRET_CHARS { Err(KeyError::TooShort { what }) } else { Ok(()) }
}

impl Verifier {
    /// Verifies HS256 tokens signed with `secret` (`--auth-secret`).
    pub fn hs256(secret: &str) -> Result<Self, KeyError> {
        check_secret(secret, "--auth-secret")?;
        Ok(Self { key: DecodingKey::from_secret(secret.as_bytes()), validation: validation(Algorithm::HS256) })
    }

    /// Verifies EdDSA tokens against an Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`):
    /// the issuer keeps the private key; onair can check tokens but not mint them.
    pub fn ed25519_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let raw = spki
            .as_ref()
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| KeyError::NotEd25519("the key is not Ed25519".to_owned()))?;
        Ok(Self { key: DecodingKey::from_ed_der(raw), validation: validation(Algorithm::EdDSA) })
    }

    /// The claims of `token` if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims)
    }
}

/// Mints HS256 access tokens (`onair token`).
pub struct Minter {
    key: EncodingKey,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Minter {
    /// Signs with `secret` (`--auth-secret`).
    pub fn hs256(secret: &str) -> Result<Self, KeyError> {
        check_secret(secret, "--auth-secret")?;
        Ok(Self { key: EncodingKey::from_secret(secret.as_bytes()) })
    }

    /// A token for `subject` with `grants`, valid from `now` for `ttl`.
    pub fn mint(&self, subject: &str, grants: Grants, ttl: Duration, now: SystemTime) -> Result<String, TokenError> {
        let claims = Claims { sub: subject.to_owned(), iat: unix(now), exp: unix(now + ttl), grants };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;
    use crate::Scope;

    const SECRET: &str = "a-test-secret-of-some-length";

    fn publish() -> Grants {
        Grants { publish: Some(Scope::Any), ..Grants::default() }
    }

    #[test]
    fn a_minted_token_verifies_with_its_grants() {
        let token = Minter::hs256(SECRET).unwrap().mint("alice", publish(), Duration::from_secs(60), SystemTime::now());
        let claims = Verifier::hs256(SECRET).unwrap().verify(&token.unwrap()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.grants, publish());
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_are_refused() {
        let minter = Minter::hs256(SECRET).unwrap();
        let verifier = Verifier::hs256(SECRET).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let expired = minter.mint("a", publish(), Duration::from_secs(60), old).unwrap();
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let other = Minter::hs256("another-secret-entirely").unwrap();
        let forged = other.mint("a", publish(), Duration::from_secs(60), SystemTime::now()).unwrap();
        assert_eq!(verifier.verify(&forged), Err(TokenError::BadSignature));
        // Grants edited in the payload: the signature no longer matches.
        let good = minter.mint("a", Grants::default(), Duration::from_secs(60), SystemTime::now()).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["grants"] = serde_json::json!({"admin": true});
        let edited = format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2]);
        assert_eq!(verifier.verify(&edited), Err(TokenError::BadSignature));
        // alg=none with no signature.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(matches!(verifier.verify(&none), Err(TokenError::WrongAlgorithm | TokenError::Malformed(_))));
        assert!(matches!(verifier.verify("not-a-jwt"), Err(TokenError::Malformed(_))));
        assert!(matches!(verifier.verify(""), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn a_token_without_a_subject_or_expiry_is_malformed() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let no_exp = jsonwebtoken::encode(&Header::default(), &serde_json::json!({"sub": "a"}), &key).unwrap();
        assert!(matches!(Verifier::hs256(SECRET).unwrap().verify(&no_exp), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn short_secrets_and_non_ed25519_keys_are_refused() {
        assert!(Verifier::hs256("short").unwrap_err().to_string().contains("at least 16"));
        assert!(Minter::hs256("short").is_err());
        assert!(Verifier::ed25519_pem(b"not pem").is_err());
    }

    #[test]
    fn eddsa_tokens_verify_against_the_public_key() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let spki = [&ED25519_SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let verifier = Verifier::ed25519_pem(pem.as_bytes()).unwrap();
        let exp = unix(SystemTime::now()) + 60;
        let claims = serde_json::json!({"sub": "obs", "exp": exp, "grants": {"publish": "*"}});
        let key = EncodingKey::from_ed_der(pkcs8.as_ref());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().grants, publish());
        // An HS256 token is refused by an EdDSA verifier: exactly one algorithm is accepted.
        let hs = Minter::hs256(SECRET).unwrap().mint("a", publish(), Duration::from_secs(60), SystemTime::now());
        assert_eq!(verifier.verify(&hs.unwrap()), Err(TokenError::WrongAlgorithm));
    }
}
