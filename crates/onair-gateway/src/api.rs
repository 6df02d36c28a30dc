//! JSON API for pages and scripts: `/api/streams`, `/api/recordings`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use onair_core::Recording;
use onair_proto::v1 as pb;

use crate::hub::Hub;

/// `GET /api/streams`: the live list, newest first.
pub async fn streams(State(hub): State<Arc<Hub>>) -> Response {
    Json(serde_json::json!({ "streams": hub.streams() })).into_response()
}

/// `GET /api/recordings`: the newest 100 recordings.
pub async fn recordings(State(hub): State<Arc<Hub>>) -> Response {
    let mut registry = hub.cfg.registry.clone();
    match registry.list_recordings(pb::ListRecordingsRequest { page_size: 100, ..Default::default() }).await {
        Ok(r) => {
            // Entries that do not convert (an older writer's garbage) are left out, not fatal.
            let list: Vec<Recording> =
                r.into_inner().recordings.iter().filter_map(|r| Recording::try_from(r).ok()).collect();
            Json(serde_json::json!({ "recordings": list })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry unavailable for /api/recordings");
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "registry unavailable"})))
                .into_response()
        }
    }
}
