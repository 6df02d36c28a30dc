//! Registry errors and the one place that maps them to gRPC status codes.

use crate::store::StoreError;

/// Everything a registry call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The caller sent something invalid; the message says what.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such stream or recording.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness rule was broken.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit of the caller's is reached; the message says which and what to do.
    #[error("{0}")]
    Exhausted(String),
    /// The store cannot be reached.
    #[error("store unavailable")]
    Unavailable(#[source] StoreError),
    /// An unexpected store failure; details are logged, not sent.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable(e),
            StoreError::Conflict(m) => Self::AlreadyExists(m),
            StoreError::Limit(m) => Self::Exhausted(m),
            StoreError::Other(_) => Self::Internal(e),
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::InvalidArgument(m) => tonic::Status::invalid_argument(m.clone()),
            RegistryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::AlreadyExists(m) => tonic::Status::already_exists(m.clone()),
            RegistryError::Exhausted(m) => tonic::Status::resource_exhausted(m.clone()),
            RegistryError::Unavailable(source) => {
                tracing::warn!(error = %source, "store unavailable");
                tonic::Status::unavailable("the stream store is unavailable; retry later")
            }
            RegistryError::Internal(source) => {
                tracing::error!(error = %source, "store failure");
                tonic::Status::internal("internal error")
            }
        }
    }
}
