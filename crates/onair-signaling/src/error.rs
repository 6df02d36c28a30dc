//! Routing errors: each has a stable code that gateways forward to the browser
//! as the WebSocket `error.code`, and one gRPC status mapping.

use onair_core::{DirectoryError, ErrorCode};

/// Why a peer's request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// The target does not exist (peer not connected, stream not live).
    #[error("{0}")]
    NotFound(String),
    /// The sender may not do this (e.g. signal a peer it is not paired with).
    #[error("{0}")]
    Forbidden(String),
    /// Conflicts with current state (e.g. already live).
    #[error("{0}")]
    Conflict(String),
    /// A limit is reached (e.g. the stream's maximum of watchers).
    #[error("{0}")]
    Full(String),
    /// A limit of the caller's own is reached (its live streams, its creates per minute).
    #[error("{0}")]
    Limited(String),
    /// The registry did not answer; the message says what to retry.
    #[error("{0}")]
    RegistryUnavailable(String),
    /// Presence state is unreachable.
    #[error("signaling state unavailable")]
    Unavailable(#[source] DirectoryError),
}

impl From<DirectoryError> for RouteError {
    fn from(e: DirectoryError) -> Self {
        Self::Unavailable(e)
    }
}

impl RouteError {
    /// The error code the browser sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Full(_) => ErrorCode::Full,
            Self::Limited(_) => ErrorCode::Limited,
            Self::Unavailable(_) | Self::RegistryUnavailable(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<RouteError> for tonic::Status {
    fn from(e: RouteError) -> Self {
        match &e {
            RouteError::BadRequest(m) => tonic::Status::invalid_argument(m.clone()),
            RouteError::NotFound(m) => tonic::Status::not_found(m.clone()),
            RouteError::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            RouteError::Conflict(m) => tonic::Status::already_exists(m.clone()),
            RouteError::Full(m) | RouteError::Limited(m) => tonic::Status::resource_exhausted(m.clone()),
            RouteError::RegistryUnavailable(m) => tonic::Status::unavailable(m.clone()),
            RouteError::Unavailable(source) => {
                tracing::warn!(error = %source, "directory unavailable");
                tonic::Status::unavailable("signaling state is unavailable; retry later")
            }
        }
    }
}
