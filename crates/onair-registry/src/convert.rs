//! Protobuf ⇄ domain conversions, validating on the way in.

use onair_core::{RecordingState, StreamState};
use onair_proto::v1 as pb;

use crate::error::RegistryError;

/// Parses a typed id from a request field, naming the field in the error.
pub fn parse_id<T: std::str::FromStr<Err = onair_core::IdError>>(field: &str, value: &str) -> Result<T, RegistryError> {
    value.parse().map_err(|e| RegistryError::InvalidArgument(format!("{field}: {e}")))
}

pub use onair_proto::convert::{millis, recording_to_pb, stream_to_pb};

/// Protobuf filter → domain state (`None` = any).
pub fn stream_state_filter(raw: i32) -> Result<Option<StreamState>, RegistryError> {
    match pb::StreamState::try_from(raw) {
        Ok(pb::StreamState::Unspecified) => Ok(None),
        Ok(pb::StreamState::Live) => Ok(Some(StreamState::Live)),
        Ok(pb::StreamState::Ended) => Ok(Some(StreamState::Ended)),
        Err(_) => Err(RegistryError::InvalidArgument(format!("state {raw} is not a StreamState"))),
    }
}

/// Protobuf recording state → domain (`None` = unspecified).
pub fn recording_state_in(raw: i32) -> Result<Option<RecordingState>, RegistryError> {
    match pb::RecordingState::try_from(raw) {
        Ok(pb::RecordingState::Unspecified) => Ok(None),
        Ok(pb::RecordingState::Recording) => Ok(Some(RecordingState::Recording)),
        Ok(pb::RecordingState::Complete) => Ok(Some(RecordingState::Complete)),
        Ok(pb::RecordingState::Failed) => Ok(Some(RecordingState::Failed)),
        Err(_) => Err(RegistryError::InvalidArgument(format!("state {raw} is not a RecordingState"))),
    }
}
