//! The cluster secret: what onair's services present to each other.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::{KeyError, MIN_SECRET_CHARS};

/// A secret every service of one cluster shares (`--cluster-secret`). Internal gRPC calls carry
/// it as `authorization: Bearer <secret>`; it is compared in constant time and never logged.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret given by the operator; at least [`MIN_SECRET_CHARS`] characters of visible ASCII.
    pub fn new(secret: &str) -> Result<Self, KeyError> {
        if secret.chars().count() < MIN_SECRET_CHARS || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::TooShort { what: "--cluster-secret (visible ASCII)" });
        }
        Ok(Self(secret.into()))
    }

    /// A random secret, for services that all live in this one process.
    pub fn generate() -> Self {
        Self(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()).into())
    }

    /// Whether `presented` is this secret.
    pub fn matches(&self, presented: &str) -> bool {
        secrets_match(&self.0, presented)
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn secrets_match(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// What a gRPC client of another onair service sends: the cluster secret, or nothing.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Option<AsciiMetadataValue>);

impl Credentials {
    /// Calls carry `authorization: Bearer <secret>`.
    pub fn cluster(secret: &ClusterSecret) -> Self {
        // A cluster secret is visible ASCII (checked in `ClusterSecret::new`): always a valid header.
        Self::bearer(&secret.0).unwrap_or_default()
    }

    /// Calls carry `authorization: Bearer <token>`: a developer's access token with the admin grant.
    /// `None` if the token is not a valid header value.
    pub fn bearer(token: &str) -> Option<Self> {
        let mut v = MetadataValue::try_from(format!("Bearer {token}")).ok()?;
        v.set_sensitive(true);
        Some(Self(Some(v)))
    }

    /// Calls carry no credentials (an open cluster).
    pub fn none() -> Self {
        Self(None)
    }

    /// Credentials from an optional secret.
    pub fn from_secret(secret: Option<&ClusterSecret>) -> Self {
        secret.map_or_else(Self::none, Self::cluster)
    }
}

/// A channel to another onair service that sends this process's [`Credentials`] on every call.
pub type Upstream = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>;

impl Credentials {
    /// `channel`, sending these credentials.
    pub fn on(&self, channel: tonic::transport::Channel) -> Upstream {
        tonic::service::interceptor::InterceptedService::new(channel, self.clone())
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves_and_short_ones_are_refused() {
        let s = ClusterSecret::new("0123456789abcdef").unwrap();
        assert!(s.matches("0123456789abcdef"));
        assert!(!s.matches("0123456789abcdeF"));
        assert!(!s.matches("0123456789abcdef0"));
        assert!(!s.matches(""));
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new("has a space in it, sadly").is_err());
        let g = ClusterSecret::generate();
        assert!(!g.matches(&ClusterSecret::generate().0));
        assert_eq!(format!("{g:?}"), "ClusterSecret(..)", "never printed");
    }
}
