//! Protobuf ⇄ domain conversions, validating on the way in.

use onair_core::{Recording, RecordingState, Stream, StreamState};
use onair_proto::v1 as pb;

use crate::error::RegistryError;

/// Parses a typed id from a request field, naming the field in the error.
pub fn parse_id<T: std::str::FromStr<Err = onair_core::IdError>>(field: &str, value: &str) -> Result<T, RegistryError> {
    value.parse().map_err(|e| RegistryError::InvalidArgument(format!("{field}: {e}")))
}

/// Unix milliseconds → protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Protobuf timestamp → Unix milliseconds.
pub fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000)
}

/// Domain stream state → protobuf enum.
pub fn stream_state(s: StreamState) -> pb::StreamState {
    match s {
        StreamState::Live => pb::StreamState::Live,
        StreamState::Ended => pb::StreamState::Ended,
    }
}

/// Protobuf filter → domain state (`None` = any).
pub fn stream_state_filter(raw: i32) -> Result<Option<StreamState>, RegistryError> {
    match pb::StreamState::try_from(raw) {
        Ok(pb::StreamState::Unspecified) => Ok(None),
        Ok(pb::StreamState::Live) => Ok(Some(StreamState::Live)),
        Ok(pb::StreamState::Ended) => Ok(Some(StreamState::Ended)),
        Err(_) => Err(RegistryError::InvalidArgument(format!("state {raw} is not a StreamState"))),
    }
}

/// Domain recording state → protobuf enum.
pub fn recording_state(s: RecordingState) -> pb::RecordingState {
    match s {
        RecordingState::Recording => pb::RecordingState::Recording,
        RecordingState::Complete => pb::RecordingState::Complete,
        RecordingState::Failed => pb::RecordingState::Failed,
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

/// Domain stream → protobuf.
pub fn stream_to_pb(s: &Stream) -> pb::Stream {
    pb::Stream {
        id: s.id.to_string(),
        title: s.title.clone(),
        state: stream_state(s.state).into(),
        broadcaster: s.broadcaster.to_string(),
        node: s.node.to_string(),
        started_at: Some(timestamp(s.started_at)),
        ended_at: s.ended_at.map(timestamp),
        viewers: s.viewers,
    }
}

/// Domain recording → protobuf.
pub fn recording_to_pb(r: &Recording) -> pb::Recording {
    pb::Recording {
        id: r.id.to_string(),
        stream_id: r.stream_id.to_string(),
        file_name: r.file_name.clone(),
        started_at: Some(timestamp(r.started_at)),
        duration_ms: r.duration_ms,
        bytes: r.bytes,
        video_codec: r.video_codec.clone(),
        audio_codec: r.audio_codec.clone(),
        state: recording_state(r.state).into(),
        error: r.error.clone(),
        title: r.title.clone(),
    }
}
