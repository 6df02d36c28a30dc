//! The embedded store: the catalog in memory, optionally journaled to
//! `<dir>/registry.jsonl` (one JSON record per change, compacted at start-up)
//! so that a restart of the all-in-one binary keeps every stream and recording.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use onair_core::{Recording, RecordingId, Stream, StreamId, StreamState};
use serde::{Deserialize, Serialize};

use super::{Cursor, RecordingPatch, StoreError, StreamStore, owned_limit};

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Stream { stream: Stream },
    Recording { recording: Recording },
    DeleteStream { id: StreamId },
}

/// Listing order index: (started_at, id), iterated backwards for newest first.
type Order = BTreeSet<(i64, String)>;

#[derive(Default)]
struct State {
    streams: HashMap<StreamId, Stream>,
    recordings: HashMap<RecordingId, Recording>,
    stream_order: Order,
    recording_order: Order,
}

impl State {
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Stream { stream } => {
                self.stream_order.insert((stream.started_at, stream.id.to_string()));
                if let Some(old) = self.streams.insert(stream.id.clone(), stream)
                    && let Some(new) = self.streams.get(&old.id)
                    && new.started_at != old.started_at
                {
                    self.stream_order.remove(&(old.started_at, old.id.to_string()));
                }
            }
            Record::Recording { recording } => {
                self.recording_order.insert((recording.started_at, recording.id.to_string()));
                if let Some(old) = self.recordings.insert(recording.id.clone(), recording)
                    && let Some(new) = self.recordings.get(&old.id)
                    && new.started_at != old.started_at
                {
                    self.recording_order.remove(&(old.started_at, old.id.to_string()));
                }
            }
            Record::DeleteStream { id } => {
                if let Some(old) = self.streams.remove(&id) {
                    self.stream_order.remove(&(old.started_at, old.id.to_string()));
                }
            }
        }
    }
}

/// Keys of `order` newest first, strictly after `cursor`.
fn newest_first_after<'a>(order: &'a Order, cursor: Option<&Cursor>) -> Box<dyn Iterator<Item = &'a String> + 'a> {
    match cursor {
        Some(c) => Box::new(order.range(..(c.started_at, c.id.clone())).rev().map(|(_, id)| id)),
        None => Box::new(order.iter().rev().map(|(_, id)| id)),
    }
}

struct Inner {
    state: State,
    journal: Option<BufWriter<File>>,
}

impl Inner {
    fn log(&mut self, rec: &Record) -> Result<(), StoreError> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        let io = |e: std::io::Error| StoreError::Unavailable(format!("journal write: {e}"));
        serde_json::to_writer(&mut *journal, rec).map_err(|e| StoreError::Other(e.to_string()))?;
        journal.write_all(b"\n").map_err(io)?;
        journal.flush().map_err(io)
    }
}

/// In-memory catalog with an optional on-disk journal.
pub struct LocalStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

const JOURNAL: &str = "registry.jsonl";

impl LocalStore {
    /// A store that forgets everything when dropped (tests).
    pub fn memory() -> Self {
        Self { inner: Mutex::new(Inner { state: State::default(), journal: None }) }
    }

    /// Opens (or creates) the journaled store in `dir`, replaying and compacting the journal.
    /// A truncated last line (a crash mid-write) is ignored.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what} {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        let path = dir.join(JOURNAL);
        let mut state = State::default();
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| io("read", e))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Record>(&line) {
                        Ok(rec) => state.apply(rec),
                        Err(e) => tracing::warn!(error = %e, "skipping unreadable journal line"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("open", e)),
        }
        let journal = compact(&path, &state).map_err(|e| io("compact", e))?;
        Ok(Self { inner: Mutex::new(Inner { state, journal: Some(journal) }) })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }
}

/// Rewrites the journal with only the current state (tmp file + rename) and opens it for appending.
fn compact(path: &Path, state: &State) -> std::io::Result<BufWriter<File>> {
    let tmp: PathBuf = path.with_extension("jsonl.tmp");
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        for stream in state.streams.values() {
            serde_json::to_writer(&mut w, &Record::Stream { stream: stream.clone() })?;
            w.write_all(b"\n")?;
        }
        for recording in state.recordings.values() {
            serde_json::to_writer(&mut w, &Record::Recording { recording: recording.clone() })?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(BufWriter::new(OpenOptions::new().append(true).open(path)?))
}

#[async_trait]
impl StreamStore for LocalStore {
    async fn insert_stream(&self, stream: &Stream, max_owned: u32) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.state.streams.contains_key(&stream.id) {
            return Err(StoreError::Conflict(format!("stream {} exists", stream.id)));
        }
        let live = || inner.state.streams.values().filter(|s| s.state == StreamState::Live);
        if live().any(|s| s.broadcaster == stream.broadcaster) {
            return Err(StoreError::Conflict(format!("{} already has a live stream", stream.broadcaster)));
        }
        if max_owned > 0 && !stream.owner.is_empty() {
            let owned = live().filter(|s| s.owner == stream.owner).count();
            if owned >= max_owned as usize {
                return Err(StoreError::Limit(owned_limit(&stream.owner, max_owned)));
            }
        }
        let rec = Record::Stream { stream: stream.clone() };
        inner.log(&rec)?;
        inner.state.apply(rec);
        Ok(())
    }

    async fn get_stream(&self, id: &StreamId) -> Result<Option<Stream>, StoreError> {
        Ok(self.lock().state.streams.get(id).cloned())
    }

    async fn list_streams(
        &self,
        state: Option<StreamState>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stream>, StoreError> {
        let inner = self.lock();
        let st = &inner.state;
        Ok(newest_first_after(&st.stream_order, cursor)
            .filter_map(|id| id.parse::<StreamId>().ok().and_then(|id| st.streams.get(&id)))
            .filter(|s| state.is_none_or(|want| s.state == want))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn end_stream(&self, id: &StreamId, ended_at: i64) -> Result<Option<(Stream, bool)>, StoreError> {
        let mut inner = self.lock();
        let Some(mut stream) = inner.state.streams.get(id).cloned() else {
            return Ok(None);
        };
        if stream.state == StreamState::Ended {
            return Ok(Some((stream, false)));
        }
        stream.state = StreamState::Ended;
        stream.ended_at = Some(ended_at);
        stream.viewers = 0;
        let rec = Record::Stream { stream: stream.clone() };
        inner.log(&rec)?;
        inner.state.apply(rec);
        Ok(Some((stream, true)))
    }

    async fn set_viewers(&self, id: &StreamId, viewers: u32) -> Result<Option<(Stream, bool)>, StoreError> {
        let mut inner = self.lock();
        let Some(mut stream) = inner.state.streams.get(id).cloned() else {
            return Ok(None);
        };
        if stream.state != StreamState::Live || stream.viewers == viewers {
            return Ok(Some((stream, false)));
        }
        stream.viewers = viewers;
        let rec = Record::Stream { stream: stream.clone() };
        inner.log(&rec)?;
        inner.state.apply(rec);
        Ok(Some((stream, true)))
    }

    async fn purge_ended(&self, before: i64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let old: Vec<StreamId> = inner
            .state
            .streams
            .values()
            .filter(|s| s.ended_at.is_some_and(|t| t < before))
            .map(|s| s.id.clone())
            .collect();
        for id in &old {
            let rec = Record::DeleteStream { id: id.clone() };
            inner.log(&rec)?;
            inner.state.apply(rec);
        }
        Ok(old.len() as u64)
    }

    async fn insert_recording(&self, recording: &Recording) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.state.recordings.contains_key(&recording.id) {
            return Err(StoreError::Conflict(format!("recording {} exists", recording.id)));
        }
        let rec = Record::Recording { recording: recording.clone() };
        inner.log(&rec)?;
        inner.state.apply(rec);
        Ok(())
    }

    async fn update_recording(
        &self,
        id: &RecordingId,
        patch: &RecordingPatch,
    ) -> Result<Option<Recording>, StoreError> {
        let mut inner = self.lock();
        let Some(mut recording) = inner.state.recordings.get(id).cloned() else {
            return Ok(None);
        };
        patch.apply(&mut recording);
        let rec = Record::Recording { recording: recording.clone() };
        inner.log(&rec)?;
        inner.state.apply(rec);
        Ok(Some(recording))
    }

    async fn get_recording(&self, id: &RecordingId) -> Result<Option<Recording>, StoreError> {
        Ok(self.lock().state.recordings.get(id).cloned())
    }

    async fn list_recordings(
        &self,
        stream: Option<&StreamId>,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError> {
        let inner = self.lock();
        let st = &inner.state;
        Ok(newest_first_after(&st.recording_order, cursor)
            .filter_map(|id| id.parse::<RecordingId>().ok().and_then(|id| st.recordings.get(&id)))
            .filter(|r| stream.is_none_or(|s| &r.stream_id == s))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
