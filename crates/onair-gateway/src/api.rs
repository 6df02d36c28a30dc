//! JSON API for pages and scripts: `/api/streams`, `/api/recordings`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use onair_proto::v1 as pb;
use serde::Serialize;

use crate::hub::Hub;

/// `GET /api/streams`: the live list, newest first.
pub async fn streams(State(hub): State<Arc<Hub>>) -> Response {
    Json(serde_json::json!({ "streams": hub.streams() })).into_response()
}

/// A recording as pages see it.
#[derive(Debug, Serialize)]
pub struct RecordingJson {
    id: String,
    stream_id: String,
    title: String,
    file_name: String,
    started_at: i64,
    duration_ms: u64,
    bytes: u64,
    video_codec: String,
    audio_codec: String,
    state: &'static str,
    error: String,
}

fn recording_json(r: pb::Recording) -> RecordingJson {
    let state = match r.state() {
        pb::RecordingState::Recording => "recording",
        pb::RecordingState::Complete => "complete",
        pb::RecordingState::Failed => "failed",
        pb::RecordingState::Unspecified => "unknown",
    };
    RecordingJson {
        started_at: r.started_at.as_ref().map_or(0, onair_core::wire::millis),
        id: r.id,
        stream_id: r.stream_id,
        title: r.title,
        file_name: r.file_name,
        duration_ms: r.duration_ms,
        bytes: r.bytes,
        video_codec: r.video_codec,
        audio_codec: r.audio_codec,
        state,
        error: r.error,
    }
}

/// `GET /api/recordings`: the newest 100 recordings.
pub async fn recordings(State(hub): State<Arc<Hub>>) -> Response {
    let mut registry = hub.registry.clone();
    match registry.list_recordings(pb::ListRecordingsRequest { page_size: 100, ..Default::default() }).await {
        Ok(r) => {
            let list: Vec<RecordingJson> = r.into_inner().recordings.into_iter().map(recording_json).collect();
            Json(serde_json::json!({ "recordings": list })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry unavailable for /api/recordings");
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "registry unavailable"})))
                .into_response()
        }
    }
}
