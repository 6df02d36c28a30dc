//! Who may do what in onair.
//!
//! - **Access tokens** ([`Verifier`], [`Minter`]): JWTs (HS256 with `--auth-secret`, or EdDSA with a
//!   public key) whose [`Claims`] carry [`Grants`]: `publish` (optionally only under one name),
//!   `subscribe` (one stream or any), `admin`. Browsers present them on the WebSocket upgrade;
//!   developers present admin tokens to the public gRPC APIs.
//! - **The cluster secret** ([`ClusterSecret`], [`Credentials`]): what services present to each
//!   other, so a client on the network cannot call the internal APIs (signaling) at all.
//! - **gRPC access** ([`Access`], [`Guarded`]): the one check in front of a gRPC service.

mod cluster;
mod grants;
mod grpc;
mod token;

pub use cluster::{ClusterSecret, Credentials, Upstream, secrets_match};
pub use grants::{Claims, Denied, GrantArg, Grants, Scope};
pub use grpc::{Access, Caller, Guarded};
pub use token::{Minter, TokenError, Verifier};

/// How one process authenticates: the cluster secret it shares with the other services, and the
/// verifier of users' access tokens (none: auth is off).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Presented on internal calls and required by internal APIs (none: an open cluster).
    pub cluster: Option<ClusterSecret>,
    /// Checks access tokens (none: auth off, everyone may do everything).
    pub tokens: Option<std::sync::Arc<Verifier>>,
}

impl Security {
    /// What this process's gRPC clients send to other services.
    pub fn credentials(&self) -> Credentials {
        Credentials::from_secret(self.cluster.as_ref())
    }

    /// Who may call a public API here (registry, recorder).
    pub fn public_api(&self) -> Access {
        Access::public(self.cluster.clone(), self.tokens.clone())
    }

    /// Who may call an internal API here (signaling).
    pub fn internal_api(&self) -> Access {
        Access::internal(self.cluster.clone())
    }
}

/// A secret or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Shorter than [`MIN_SECRET_CHARS`].
    #[error("{what} must be at least {MIN_SECRET_CHARS} characters (32 random characters are better)")]
    TooShort {
        /// Which secret (a flag name).
        what: &'static str,
    },
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// Not an Ed25519 public key in PEM (SPKI).
    #[error("not an Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\"): {0}")]
    NotEd25519(String),
}

/// The credential of an `Authorization` header value `Bearer <credential>` (or `bearer …`), trimmed;
/// `None` for any other scheme.
pub fn bearer(authorization: &str) -> Option<&str> {
    authorization.strip_prefix("Bearer ").or_else(|| authorization.strip_prefix("bearer ")).map(str::trim)
}

/// Shortest secret accepted for signing tokens or authenticating services.
pub const MIN_SECRET_CHARS: usize = 16;
