//! The one conversion between the shared domain types (`onair-core`) and their
//! `onair.v1` wire form. Domain → wire is total; wire → domain validates every id
//! and enum (`TryFrom`), so a value that reached Rust code is well formed. Services
//! map [`WireError`] to their own errors at their edge.

use onair_core::{Recording, RecordingState, Stream, StreamEvent, StreamState};

use crate::v1 as pb;

/// Why a wire message is not a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn id<T: std::str::FromStr<Err = onair_core::IdError>>(field: &'static str, v: &str) -> Result<T, WireError> {
    v.parse().map_err(|e: onair_core::IdError| WireError { field, reason: e.to_string() })
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
        owner: s.owner.clone(),
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

impl TryFrom<&pb::Stream> for Stream {
    type Error = WireError;
    fn try_from(s: &pb::Stream) -> Result<Self, WireError> {
        let state = match s.state() {
            pb::StreamState::Live => StreamState::Live,
            pb::StreamState::Ended => StreamState::Ended,
            pb::StreamState::Unspecified => {
                return Err(WireError { field: "state", reason: "unspecified".into() });
            }
        };
        Ok(Self {
            id: id("id", &s.id)?,
            title: s.title.clone(),
            state,
            broadcaster: id("broadcaster", &s.broadcaster)?,
            node: id("node", &s.node)?,
            started_at: s.started_at.as_ref().map_or(0, millis),
            ended_at: s.ended_at.as_ref().map(millis),
            viewers: s.viewers,
            owner: s.owner.clone(),
        })
    }
}

impl TryFrom<&pb::Recording> for Recording {
    type Error = WireError;
    fn try_from(r: &pb::Recording) -> Result<Self, WireError> {
        let state = match r.state() {
            pb::RecordingState::Recording => RecordingState::Recording,
            pb::RecordingState::Complete => RecordingState::Complete,
            pb::RecordingState::Failed => RecordingState::Failed,
            pb::RecordingState::Unspecified => {
                return Err(WireError { field: "state", reason: "unspecified".into() });
            }
        };
        Ok(Self {
            id: id("id", &r.id)?,
            stream_id: id("stream_id", &r.stream_id)?,
            title: r.title.clone(),
            file_name: r.file_name.clone(),
            started_at: r.started_at.as_ref().map_or(0, millis),
            duration_ms: r.duration_ms,
            bytes: r.bytes,
            video_codec: r.video_codec.clone(),
            audio_codec: r.audio_codec.clone(),
            state,
            error: r.error.clone(),
        })
    }
}

/// One message of the registry's change feed, as domain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// Every live stream now (the first event after each (re)connect, and after a gap).
    Snapshot(Vec<Stream>),
    /// One change, in order.
    Change(StreamEvent),
}

impl TryFrom<pb::stream_event::Event> for FeedEvent {
    type Error = WireError;
    fn try_from(e: pb::stream_event::Event) -> Result<Self, WireError> {
        use pb::stream_event::Event;
        Ok(match e {
            Event::Snapshot(s) => Self::Snapshot(s.streams.iter().map(Stream::try_from).collect::<Result<_, _>>()?),
            Event::Started(s) => Self::Change(StreamEvent::Started(Stream::try_from(&s)?)),
            Event::Updated(s) => Self::Change(StreamEvent::Updated(Stream::try_from(&s)?)),
            Event::Ended(s) => Self::Change(StreamEvent::Ended(Stream::try_from(&s)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_round_trip_and_bad_ids_are_refused() {
        let s = Stream {
            id: "s1".parse().unwrap(),
            title: "t".into(),
            state: StreamState::Live,
            broadcaster: "p1".parse().unwrap(),
            node: "gw".parse().unwrap(),
            started_at: 1_234,
            ended_at: None,
            viewers: 3,
            owner: "alice".into(),
        };
        assert_eq!(Stream::try_from(&stream_to_pb(&s)), Ok(s.clone()));
        let mut bad = stream_to_pb(&s);
        bad.broadcaster = "../x".into();
        assert_eq!(Stream::try_from(&bad).unwrap_err().field, "broadcaster");
    }

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
