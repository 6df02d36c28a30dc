//! JSON API for pages and scripts: `/api/streams`, `/api/recordings`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use onair_core::Recording;
use onair_proto::v1 as pb;

use crate::hub::Hub;

/// Query of `GET /api/streams`.
#[derive(Debug, serde::Deserialize)]
pub struct StreamsQuery {
    /// `next_cursor` of the previous page; none for the first.
    cursor: Option<String>,
    /// Page size, 1..=500 (default [`crate::hub::SNAPSHOT_MAX`]).
    limit: Option<usize>,
}

/// Most streams one `/api/streams` page may hold.
pub const MAX_PAGE: usize = 500;

/// `GET /api/streams[?cursor=C&limit=N]`: live streams, newest first, a page at a time:
/// `{streams, total, next_cursor}` (`next_cursor` null on the last page).
pub async fn streams(State(hub): State<Arc<Hub>>, Query(q): Query<StreamsQuery>) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": m }))).into_response();
    let limit = q.limit.unwrap_or(crate::hub::SNAPSHOT_MAX);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad(&format!("limit must be 1..={MAX_PAGE}"));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c.split_once(':').and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id))) {
            Some(parsed) => Some(parsed),
            None => return bad("cursor is not a next_cursor this server returned"),
        },
    };
    let (page, total, next) = hub.streams_page(cursor, limit);
    Json(serde_json::json!({ "streams": page, "total": total, "next_cursor": next })).into_response()
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
