//! The one conversion of shared domain types to their `onair.v1` wire form
//! (registry, recorder and gateway all send or read them). Parsing *from* the
//! wire validates per service, at its edge, with its own error type.

use onair_proto::v1 as pb;

use crate::model::{Recording, RecordingState, Stream, StreamState};

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

/// Stream state → protobuf enum.
pub fn stream_state(s: StreamState) -> pb::StreamState {
    match s {
        StreamState::Live => pb::StreamState::Live,
        StreamState::Ended => pb::StreamState::Ended,
    }
}

/// Recording state → protobuf enum.
pub fn recording_state(s: RecordingState) -> pb::RecordingState {
    match s {
        RecordingState::Recording => pb::RecordingState::Recording,
        RecordingState::Complete => pb::RecordingState::Complete,
        RecordingState::Failed => pb::RecordingState::Failed,
    }
}

/// Stream → protobuf.
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

/// Recording → protobuf.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_millis() {
        let t = timestamp(1_500);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
        for ms in [0, 1, 999, 1_000, 1_795_634_909_789, -1, -1_001] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }
}
