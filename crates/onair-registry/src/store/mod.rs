//! Where the registry keeps streams and recordings. One trait, three backends:
//! [`MongoStore`] (cluster), [`LocalStore::open`] (embedded, journaled under a
//! directory; the all-in-one default) and [`LocalStore::memory`] (tests).

mod local;
mod mongo;

use async_trait::async_trait;
use onair_core::{Recording, RecordingId, RecordingState, Stream, StreamId, StreamState};

pub use local::LocalStore;
pub use mongo::MongoStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing database cannot be reached (or timed out).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule would be broken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A quota would be passed (the owner's live streams).
    #[error("limit: {0}")]
    Limit(String),
    /// Anything else (corrupt data, an unexpected server answer).
    #[error("store failure: {0}")]
    Other(String),
}

/// The message of a refused create: `owner` already has `max` live streams.
pub fn owned_limit(owner: &str, max: u32) -> String {
    format!(
        "{owner:?} already has {max} live streams, the most one publisher may have (--max-live-per-subject); end one first"
    )
}

/// Keyset position in a newest-first listing: items strictly older than this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `started_at` of the last item returned.
    pub started_at: i64,
    /// id of the last item returned (tie breaker).
    pub id: String,
}

impl Cursor {
    /// Whether an item at (`started_at`, `id`) comes after this cursor in newest-first order.
    pub fn is_before(&self, started_at: i64, id: &str) -> bool {
        (started_at, id) < (self.started_at, self.id.as_str())
    }
}

/// Fields of a recording to replace; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct RecordingPatch {
    /// New duration.
    pub duration_ms: Option<u64>,
    /// New size.
    pub bytes: Option<u64>,
    /// New video codec.
    pub video_codec: Option<String>,
    /// New audio codec.
    pub audio_codec: Option<String>,
    /// New state.
    pub state: Option<RecordingState>,
    /// New error text.
    pub error: Option<String>,
    /// New file name (plain, checked by the service).
    pub file_name: Option<String>,
}

impl RecordingPatch {
    /// Applies the patch to `r`.
    pub fn apply(&self, r: &mut Recording) {
        if let Some(v) = self.duration_ms {
            r.duration_ms = v;
        }
        if let Some(v) = self.bytes {
            r.bytes = v;
        }
        if let Some(v) = &self.video_codec {
            r.video_codec.clone_from(v);
        }
        if let Some(v) = &self.audio_codec {
            r.audio_codec.clone_from(v);
        }
        if let Some(v) = self.state {
            r.state = v;
        }
        if let Some(v) = &self.error {
            r.error.clone_from(v);
        }
        if let Some(v) = &self.file_name {
            r.file_name.clone_from(v);
        }
    }
}

/// Persistence of the catalog. Implementations must be safe to share between tasks.
#[async_trait]
pub trait StreamStore: Send + Sync + 'static {
    /// Inserts a new live stream; `Conflict` if its broadcaster already has a live one, `Limit` if
    /// its owner (when it has one) already has `max_owned` live streams (0: no limit).
    async fn insert_stream(&self, stream: &Stream, max_owned: u32) -> Result<(), StoreError>;
    /// One stream.
    async fn get_stream(&self, id: &StreamId) -> Result<Option<Stream>, StoreError>;
    /// Up to `limit` streams newest first, after `cursor`, in `state` if given.
    async fn list_streams(
        &self,
        state: Option<StreamState>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stream>, StoreError>;
    /// Marks a live stream ended at `ended_at`. Returns the stored stream and whether it changed.
    async fn end_stream(&self, id: &StreamId, ended_at: i64) -> Result<Option<(Stream, bool)>, StoreError>;
    /// Sets the viewer count of a live stream. Returns the stream and whether it changed.
    async fn set_viewers(&self, id: &StreamId, viewers: u32) -> Result<Option<(Stream, bool)>, StoreError>;
    /// Deletes streams that ended before `before` (Unix ms). Returns how many.
    async fn purge_ended(&self, before: i64) -> Result<u64, StoreError>;
    /// Inserts a recording; `Conflict` if the id exists.
    async fn insert_recording(&self, recording: &Recording) -> Result<(), StoreError>;
    /// Applies `patch` to a recording and returns the result.
    async fn update_recording(&self, id: &RecordingId, patch: &RecordingPatch)
    -> Result<Option<Recording>, StoreError>;
    /// One recording.
    async fn get_recording(&self, id: &RecordingId) -> Result<Option<Recording>, StoreError>;
    /// Up to `limit` recordings newest first, after `cursor`, of `stream` if given.
    async fn list_recordings(
        &self,
        stream: Option<&StreamId>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
