//! The cluster store: MongoDB through the official driver.
//!
//! Every call is bounded: the driver's server selection and connect timeouts are
//! short and each operation has an overall deadline, so an unreachable MongoDB
//! turns into `StoreError::Unavailable` within about a second, and the next call
//! after MongoDB returns succeeds without a restart.

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use onair_core::{Recording, RecordingId, RecordingState, Stream, StreamId, StreamState};
use serde::{Deserialize, Serialize};

use super::{Cursor, RecordingPatch, StoreError, StreamStore};

/// Name of the partial unique index that allows one live stream per broadcaster.
const ONE_LIVE_INDEX: &str = "one_live_stream_per_broadcaster";

/// Overall deadline of one store operation.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Debug, Serialize, Deserialize)]
struct StreamDoc {
    #[serde(rename = "_id")]
    id: String,
    title: String,
    state: String,
    broadcaster: String,
    node: String,
    started_at: i64,
    ended_at: Option<i64>,
    viewers: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordingDoc {
    #[serde(rename = "_id")]
    id: String,
    stream_id: String,
    title: String,
    file_name: String,
    started_at: i64,
    duration_ms: i64,
    bytes: i64,
    video_codec: String,
    audio_codec: String,
    state: String,
    error: String,
}

fn state_str(s: StreamState) -> &'static str {
    match s {
        StreamState::Live => "live",
        StreamState::Ended => "ended",
    }
}

fn rec_state_str(s: RecordingState) -> &'static str {
    match s {
        RecordingState::Recording => "recording",
        RecordingState::Complete => "complete",
        RecordingState::Failed => "failed",
    }
}

fn corrupt(what: &str, id: &str) -> StoreError {
    StoreError::Other(format!("corrupt {what} document {id}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl From<&Stream> for StreamDoc {
    fn from(s: &Stream) -> Self {
        Self {
            id: s.id.to_string(),
            title: s.title.clone(),
            state: state_str(s.state).to_owned(),
            broadcaster: s.broadcaster.to_string(),
            node: s.node.to_string(),
            started_at: s.started_at,
            ended_at: s.ended_at,
            viewers: i64::from(s.viewers),
            owner: s.owner.clone(),
        }
    }
}

impl TryFrom<StreamDoc> for Stream {
    type Error = StoreError;
    fn try_from(d: StreamDoc) -> Result<Self, StoreError> {
        let bad = || corrupt("stream", &d.id);
        Ok(Stream {
            id: d.id.parse().map_err(|_| bad())?,
            title: d.title.clone(),
            state: match d.state.as_str() {
                "live" => StreamState::Live,
                "ended" => StreamState::Ended,
                _ => return Err(bad()),
            },
            broadcaster: d.broadcaster.parse().map_err(|_| bad())?,
            node: d.node.parse().map_err(|_| bad())?,
            started_at: d.started_at,
            ended_at: d.ended_at,
            viewers: u32::try_from(d.viewers).map_err(|_| bad())?,
            owner: d.owner,
        })
    }
}

impl From<&Recording> for RecordingDoc {
    fn from(r: &Recording) -> Self {
        Self {
            id: r.id.to_string(),
            stream_id: r.stream_id.to_string(),
            title: r.title.clone(),
            file_name: r.file_name.clone(),
            started_at: r.started_at,
            duration_ms: to_i64(r.duration_ms),
            bytes: to_i64(r.bytes),
            video_codec: r.video_codec.clone(),
            audio_codec: r.audio_codec.clone(),
            state: rec_state_str(r.state).to_owned(),
            error: r.error.clone(),
        }
    }
}

impl TryFrom<RecordingDoc> for Recording {
    type Error = StoreError;
    fn try_from(d: RecordingDoc) -> Result<Self, StoreError> {
        let bad = || corrupt("recording", &d.id);
        Ok(Recording {
            id: d.id.parse().map_err(|_| bad())?,
            stream_id: d.stream_id.parse().map_err(|_| bad())?,
            title: d.title.clone(),
            file_name: d.file_name.clone(),
            started_at: d.started_at,
            duration_ms: u64::try_from(d.duration_ms).map_err(|_| bad())?,
            bytes: u64::try_from(d.bytes).map_err(|_| bad())?,
            video_codec: d.video_codec.clone(),
            audio_codec: d.audio_codec.clone(),
            state: match d.state.as_str() {
                "recording" => RecordingState::Recording,
                "complete" => RecordingState::Complete,
                "failed" => RecordingState::Failed,
                _ => return Err(bad()),
            },
            error: d.error.clone(),
        })
    }
}

fn map_err(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => {
            StoreError::Conflict("duplicate key".to_owned())
        }
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// Calls in a row that ran into [`OP_TIMEOUT`] after which the driver gets a new client.
const TIMEOUTS_BEFORE_NEW_CLIENT: u32 = 3;

/// Newest-first keyset filter after `cursor`, merged into `filter`.
fn after(mut filter: Document, cursor: Option<&Cursor>) -> Document {
    if let Some(c) = cursor {
        filter.insert(
            "$or",
            vec![
                doc! { "started_at": { "$lt": c.started_at } },
                doc! { "started_at": c.started_at, "_id": { "$lt": c.id.as_str() } },
            ],
        );
    }
    filter
}

fn newest_first() -> Document {
    doc! { "started_at": -1, "_id": -1 }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The driver's handles of one client.
#[derive(Debug, Clone)]
struct Handles {
    db: Database,
    streams: Collection<StreamDoc>,
    recordings: Collection<RecordingDoc>,
}

impl Handles {
    fn new(opts: &ClientOptions, database: &str) -> Result<Self, StoreError> {
        let client = Client::with_options(opts.clone()).map_err(|e| StoreError::Other(e.to_string()))?;
        let db = client.database(database);
        Ok(Self { streams: db.collection("streams"), recordings: db.collection("recordings"), db })
    }
}

/// MongoDB-backed catalog.
///
/// When calls keep timing out (the server answers nobody, or the driver's pool wedged: seen after
/// MongoDB was killed with an operation in flight and came back, every later call hung until its
/// deadline), the store starts over with a new client after [`TIMEOUTS_BEFORE_NEW_CLIENT`] of them.
#[derive(Debug, Clone)]
pub struct MongoStore {
    opts: ClientOptions,
    database: String,
    handles: std::sync::Arc<parking_lot::RwLock<Handles>>,
    timeouts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl MongoStore {
    /// Parses `uri` and prepares a client; does not need MongoDB to be up.
    pub async fn connect(uri: &str, database: &str) -> Result<Self, StoreError> {
        let mut opts =
            ClientOptions::parse(uri).await.map_err(|e| StoreError::Other(format!("bad MongoDB URI: {e}")))?;
        opts.server_selection_timeout = Some(Duration::from_millis(1000));
        opts.connect_timeout = Some(Duration::from_millis(1000));
        opts.app_name.get_or_insert_with(|| "onair-registry".to_owned());
        let handles = Handles::new(&opts, database)?;
        Ok(Self {
            opts,
            database: database.to_owned(),
            handles: std::sync::Arc::new(parking_lot::RwLock::new(handles)),
            timeouts: std::sync::Arc::default(),
        })
    }

    fn h(&self) -> Handles {
        self.handles.read().clone()
    }

    /// Runs one driver call within [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        fut: impl IntoFuture<Output = Result<T, mongodb::error::Error>>,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        match tokio::time::timeout(OP_TIMEOUT, fut.into_future()).await {
            Ok(r) => {
                self.timeouts.store(0, Ordering::Relaxed);
                r.map_err(map_err)
            }
            Err(_) => {
                if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_NEW_CLIENT {
                    self.timeouts.store(0, Ordering::Relaxed);
                    match Handles::new(&self.opts, &self.database) {
                        Ok(h) => {
                            tracing::warn!(
                                calls = TIMEOUTS_BEFORE_NEW_CLIENT,
                                "mongodb calls keep timing out; new client"
                            );
                            *self.handles.write() = h;
                        }
                        Err(e) => tracing::warn!(error = %e, "mongodb: no new client"),
                    }
                }
                Err(StoreError::Unavailable("mongodb did not answer in time".to_owned()))
            }
        }
    }

    /// Creates the indexes the queries use. Safe to call repeatedly.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let idx = |keys: Document| IndexModel::builder().keys(keys).build();
        self.bounded(self.h().streams.create_index(idx(doc! { "state": 1, "started_at": -1, "_id": -1 }))).await?;
        self.bounded(self.h().streams.create_index(idx(doc! { "started_at": -1, "_id": -1 }))).await?;
        self.bounded(self.h().streams.create_index(idx(doc! { "broadcaster": 1, "state": 1 }))).await?;
        // One live stream per broadcaster, enforced by MongoDB itself: two creates racing past the
        // check in `insert_stream` (two registry replicas) cannot both insert.
        let one_live = IndexOptions::builder()
            .name(ONE_LIVE_INDEX.to_owned())
            .unique(true)
            .partial_filter_expression(doc! { "state": "live" })
            .build();
        let unique = IndexModel::builder().keys(doc! { "broadcaster": 1 }).options(one_live).build();
        if let Err(e) = self.bounded(self.h().streams.create_index(unique)).await {
            match e {
                StoreError::Unavailable(_) => return Err(e),
                // Duplicates from before the index existed: the check in insert_stream still holds.
                other => tracing::warn!(error = %other, "cannot create the one-live-stream-per-broadcaster index"),
            }
        }
        self.bounded(self.h().streams.create_index(idx(doc! { "ended_at": 1 }))).await?;
        self.bounded(self.h().recordings.create_index(idx(doc! { "started_at": -1, "_id": -1 }))).await?;
        self.bounded(self.h().recordings.create_index(idx(doc! { "stream_id": 1, "started_at": -1 }))).await?;
        Ok(())
    }

    async fn find_streams(&self, filter: Document, limit: usize) -> Result<Vec<Stream>, StoreError> {
        let docs: Vec<StreamDoc> = self
            .bounded(async {
                self.h().streams.find(filter).sort(newest_first()).limit(limit_i64(limit)).await?.try_collect().await
            })
            .await?;
        docs.into_iter().map(Stream::try_from).collect()
    }

    async fn update_stream(&self, filter: Document, set: Document) -> Result<Option<Stream>, StoreError> {
        let doc = self
            .bounded(
                self.h()
                    .streams
                    .find_one_and_update(filter, doc! { "$set": set })
                    .return_document(ReturnDocument::After),
            )
            .await?;
        doc.map(Stream::try_from).transpose()
    }

    async fn get_or_none(&self, id: &StreamId) -> Result<Option<(Stream, bool)>, StoreError> {
        Ok(self.get_stream(id).await?.map(|s| (s, false)))
    }
}

#[async_trait]
impl StreamStore for MongoStore {
    async fn insert_stream(&self, stream: &Stream, max_owned: u32) -> Result<(), StoreError> {
        let live = self
            .bounded(self.h().streams.find_one(doc! { "broadcaster": stream.broadcaster.as_str(), "state": "live" }))
            .await?;
        if live.is_some() {
            return Err(StoreError::Conflict(format!("{} already has a live stream", stream.broadcaster)));
        }
        if max_owned > 0 && !stream.owner.is_empty() {
            // Counted, then inserted: two creates racing for an owner's last slot may both pass.
            let filter = doc! { "owner": stream.owner.as_str(), "state": "live" };
            let owned = self.find_streams(filter, max_owned as usize).await?.len();
            if owned >= max_owned as usize {
                return Err(StoreError::Limit(super::owned_limit(&stream.owner, max_owned)));
            }
        }
        match self.bounded(self.h().streams.insert_one(StreamDoc::from(stream))).await {
            // The id, or the unique index on live broadcasters (a create that raced this one).
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(match self.get_stream(&stream.id).await? {
                Some(_) => format!("stream {} exists", stream.id),
                None => format!("{} already has a live stream", stream.broadcaster),
            })),
            other => other.map(|_| ()),
        }
    }

    async fn get_stream(&self, id: &StreamId) -> Result<Option<Stream>, StoreError> {
        let doc = self.bounded(self.h().streams.find_one(doc! { "_id": id.as_str() })).await?;
        doc.map(Stream::try_from).transpose()
    }

    async fn list_streams(
        &self,
        state: Option<StreamState>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stream>, StoreError> {
        let mut filter = Document::new();
        if let Some(s) = state {
            filter.insert("state", state_str(s));
        }
        self.find_streams(after(filter, cursor), limit).await
    }

    async fn end_stream(&self, id: &StreamId, ended_at: i64) -> Result<Option<(Stream, bool)>, StoreError> {
        let set = doc! { "state": "ended", "ended_at": ended_at, "viewers": 0_i64 };
        match self.update_stream(doc! { "_id": id.as_str(), "state": "live" }, set).await? {
            Some(s) => Ok(Some((s, true))),
            None => self.get_or_none(id).await,
        }
    }

    async fn set_viewers(&self, id: &StreamId, viewers: u32) -> Result<Option<(Stream, bool)>, StoreError> {
        let v = i64::from(viewers);
        let filter = doc! { "_id": id.as_str(), "state": "live", "viewers": { "$ne": v } };
        match self.update_stream(filter, doc! { "viewers": v }).await? {
            Some(s) => Ok(Some((s, true))),
            None => self.get_or_none(id).await,
        }
    }

    async fn purge_ended(&self, before: i64) -> Result<u64, StoreError> {
        let filter = doc! { "state": "ended", "ended_at": { "$lt": before } };
        Ok(self.bounded(self.h().streams.delete_many(filter)).await?.deleted_count)
    }

    async fn insert_recording(&self, recording: &Recording) -> Result<(), StoreError> {
        let exists = self.bounded(self.h().recordings.find_one(doc! { "_id": recording.id.as_str() })).await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!("recording {} exists", recording.id)));
        }
        self.bounded(self.h().recordings.insert_one(RecordingDoc::from(recording))).await?;
        Ok(())
    }

    async fn update_recording(
        &self,
        id: &RecordingId,
        patch: &RecordingPatch,
    ) -> Result<Option<Recording>, StoreError> {
        let mut set = Document::new();
        if let Some(v) = patch.duration_ms {
            set.insert("duration_ms", to_i64(v));
        }
        if let Some(v) = patch.bytes {
            set.insert("bytes", to_i64(v));
        }
        if let Some(v) = &patch.video_codec {
            set.insert("video_codec", v.as_str());
        }
        if let Some(v) = &patch.audio_codec {
            set.insert("audio_codec", v.as_str());
        }
        if let Some(v) = patch.state {
            set.insert("state", rec_state_str(v));
        }
        if let Some(v) = &patch.error {
            set.insert("error", v.as_str());
        }
        if let Some(v) = &patch.file_name {
            set.insert("file_name", v.as_str());
        }
        if set.is_empty() {
            return self.get_recording(id).await;
        }
        let doc = self
            .bounded(
                self.h()
                    .recordings
                    .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
                    .return_document(ReturnDocument::After),
            )
            .await?;
        doc.map(Recording::try_from).transpose()
    }

    async fn get_recording(&self, id: &RecordingId) -> Result<Option<Recording>, StoreError> {
        let doc = self.bounded(self.h().recordings.find_one(doc! { "_id": id.as_str() })).await?;
        doc.map(Recording::try_from).transpose()
    }

    async fn list_recordings(
        &self,
        stream: Option<&StreamId>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError> {
        let mut filter = Document::new();
        if let Some(s) = stream {
            filter.insert("stream_id", s.as_str());
        }
        let docs: Vec<RecordingDoc> = self
            .bounded(async {
                self.h()
                    .recordings
                    .find(after(filter, cursor))
                    .sort(newest_first())
                    .limit(limit_i64(limit))
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter().map(Recording::try_from).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.h().db.run_command(doc! { "ping": 1 })).await.map(|_| ())
    }
}

impl MongoStore {
    /// Creates the indexes, retrying every two seconds while MongoDB is unreachable, until `shutdown`.
    pub async fn prepare(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            match self.ensure_indexes().await {
                Ok(()) => {
                    tracing::info!("mongodb indexes ready");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "mongodb not ready; retrying index creation"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}
