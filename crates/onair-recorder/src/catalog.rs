//! The recorder's view of the registry: live streams in, recording catalog
//! entries out. Protobuf stays here; the rest of the crate uses domain types.

use std::time::Duration;

use onair_auth::Upstream;
use onair_core::{Recording, RecordingId, RecordingState, StreamId};
use onair_proto::convert::{recording_state, recording_to_pb};
use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;

use crate::error::RecorderError;

/// Codec names stored in the catalog.
pub const AUDIO_CODEC: &str = "OPUS";

/// Upper bound of one registry call made by the recorder.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A live stream the recorder may record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// Stream id.
    pub id: StreamId,
    /// Title at the time it was seen.
    pub title: String,
}

impl LiveStream {
    /// The stream if it is live.
    pub fn live(s: &onair_core::Stream) -> Option<Self> {
        (s.state == onair_core::StreamState::Live).then(|| Self { id: s.id.clone(), title: s.title.clone() })
    }
}

/// The registry client, with every call bounded by [`CALL_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct Catalog {
    client: StreamRegistryClient<Upstream>,
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Catalog {
    /// Wraps a registry client.
    pub fn new(client: StreamRegistryClient<Upstream>) -> Self {
        Self { client }
    }

    /// The raw client (for the change feed).
    pub fn client(&self) -> StreamRegistryClient<Upstream> {
        self.client.clone()
    }

    /// The stream if it is live; `NotFound` otherwise.
    pub async fn live_stream(&self, id: &StreamId) -> Result<LiveStream, RecorderError> {
        let not_live = || RecorderError::NotFound(format!("stream {id} is not live"));
        match self.client.clone().get_stream(req(pb::GetStreamRequest { id: id.to_string() })).await {
            Ok(r) => {
                onair_core::Stream::try_from(r.get_ref()).ok().as_ref().and_then(LiveStream::live).ok_or_else(not_live)
            }
            Err(s) if s.code() == tonic::Code::NotFound => Err(not_live()),
            Err(s) => Err(RecorderError::registry("GetStream", s)),
        }
    }

    /// Registers a new recording (state RECORDING).
    pub async fn add(&self, r: &Recording) -> Result<(), RecorderError> {
        let msg = pb::AddRecordingRequest { recording: Some(recording_to_pb(r)) };
        self.client.clone().add_recording(req(msg)).await.map_err(|s| RecorderError::registry("AddRecording", s))?;
        Ok(())
    }

    /// Stores `r`'s size, duration, codecs, state and error.
    pub async fn update(&self, r: &Recording) -> Result<(), RecorderError> {
        let msg = pb::UpdateRecordingRequest {
            id: r.id.to_string(),
            duration_ms: Some(r.duration_ms),
            bytes: Some(r.bytes),
            video_codec: (!r.video_codec.is_empty()).then(|| r.video_codec.clone()),
            audio_codec: (!r.audio_codec.is_empty()).then(|| r.audio_codec.clone()),
            state: recording_state(r.state).into(),
            error: (!r.error.is_empty()).then(|| r.error.clone()),
            file_name: Some(r.file_name.clone()),
        };
        self.client
            .clone()
            .update_recording(req(msg))
            .await
            .map_err(|s| RecorderError::registry("UpdateRecording", s))?;
        Ok(())
    }

    /// Closes a recording left in RECORDING by a previous process: new state, size and reason
    /// (duration and codecs keep their last reported values).
    pub async fn close_orphan(
        &self,
        id: &RecordingId,
        state: RecordingState,
        bytes: u64,
        error: &str,
    ) -> Result<(), RecorderError> {
        let msg = pb::UpdateRecordingRequest {
            id: id.to_string(),
            bytes: Some(bytes),
            state: recording_state(state).into(),
            error: Some(error.to_owned()),
            ..Default::default()
        };
        self.client
            .clone()
            .update_recording(req(msg))
            .await
            .map_err(|s| RecorderError::registry("UpdateRecording", s))?;
        Ok(())
    }

    /// Every recording in state RECORDING (all pages; of `stream` only, if given).
    pub async fn recording_now(&self, stream: Option<&StreamId>) -> Result<Vec<OpenRecording>, RecorderError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        let stream_id = stream.map(ToString::to_string).unwrap_or_default();
        loop {
            let msg = pb::ListRecordingsRequest { stream_id: stream_id.clone(), page_size: 100, page_token };
            let resp = self
                .client
                .clone()
                .list_recordings(req(msg))
                .await
                .map_err(|s| RecorderError::registry("ListRecordings", s))?
                .into_inner();
            for r in resp.recordings {
                if r.state() == pb::RecordingState::Recording
                    && let (Ok(id), Ok(stream)) = (r.id.parse(), r.stream_id.parse())
                {
                    out.push(OpenRecording { id, stream, file_name: r.file_name });
                }
            }
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }
}

/// A catalog entry in state RECORDING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecording {
    /// The recording.
    pub id: RecordingId,
    /// Its stream.
    pub stream: StreamId,
    /// Its file in the recordings directory (not checked yet).
    pub file_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_streams_are_recordable() {
        let mut s = onair_core::Stream {
            id: "abc".parse().unwrap(),
            title: "t".into(),
            state: onair_core::StreamState::Live,
            broadcaster: "p".parse().unwrap(),
            node: "n".parse().unwrap(),
            started_at: 0,
            ended_at: None,
            viewers: 0,
            owner: String::new(),
        };
        assert_eq!(LiveStream::live(&s), Some(LiveStream { id: "abc".parse().unwrap(), title: "t".into() }));
        s.state = onair_core::StreamState::Ended;
        assert_eq!(LiveStream::live(&s), None);
    }
}
