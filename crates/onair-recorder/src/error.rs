//! Recorder errors and their one mapping to gRPC status codes.

/// Why a recorder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// Malformed input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The stream is not live, or no recording of it is active.
    #[error("{0}")]
    NotFound(String),
    /// The stream is already being recorded.
    #[error("{0}")]
    AlreadyExists(String),
    /// The recorder runs its maximum number of recordings.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The recorder is shutting down.
    #[error("the recorder is shutting down")]
    ShuttingDown,
    /// The registry did not answer.
    #[error("registry {op} failed: {:?}: {}", .status.code(), .status.message())]
    Registry {
        /// The call that failed.
        op: &'static str,
        /// What the registry said.
        #[source]
        status: tonic::Status,
    },
    /// A file could not be written.
    #[error("recording file: {0}")]
    Io(#[from] std::io::Error),
    /// The leases (Redis) cannot be reached: who records a stream cannot be decided.
    #[error("{0}")]
    Leases(#[from] onair_core::DirectoryError),
}

impl RecorderError {
    /// A registry call failure.
    pub fn registry(op: &'static str, status: tonic::Status) -> Self {
        Self::Registry { op, status }
    }
}

impl From<RecorderError> for tonic::Status {
    fn from(e: RecorderError) -> Self {
        match &e {
            RecorderError::InvalidArgument(m) => Self::invalid_argument(m.clone()),
            RecorderError::NotFound(m) => Self::not_found(m.clone()),
            RecorderError::AlreadyExists(m) => Self::already_exists(m.clone()),
            RecorderError::ResourceExhausted(m) => Self::resource_exhausted(m.clone()),
            RecorderError::ShuttingDown => Self::unavailable("the recorder is shutting down; retry on another one"),
            RecorderError::Registry { op, status } => {
                tracing::warn!(op, code = ?status.code(), message = status.message(), "registry call failed");
                Self::unavailable("the stream registry is unavailable; retry later")
            }
            RecorderError::Leases(source) => {
                tracing::warn!(error = %source, "recording leases unavailable");
                Self::unavailable("the recorders cannot agree who records the stream (Redis unavailable); retry later")
            }
            RecorderError::Io(source) => {
                tracing::error!(error = %source, "recording file error");
                Self::internal("the recording file could not be written")
            }
        }
    }
}
