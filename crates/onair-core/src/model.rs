//! Streams, recordings and the change events the registry emits.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, PeerId, RecordingId, StreamId};

/// Longest title a stream may have, in characters.
pub const TITLE_MAX_CHARS: usize = 200;

/// Whether `name` is a plain file name: no directory part, not hidden, not `.`/`..`, at most 255 bytes.
/// The one check every path built from catalog data goes through.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && std::path::Path::new(name).file_name().is_some_and(|f| f == name)
}

/// Whether a stream is on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// On air.
    Live,
    /// Over.
    Ended,
}

/// One broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// Server-chosen id.
    pub id: StreamId,
    /// 1..=200 characters.
    pub title: String,
    /// Live or ended.
    pub state: StreamState,
    /// The broadcaster's peer id.
    pub broadcaster: PeerId,
    /// The node holding the broadcaster's socket.
    pub node: NodeId,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds; `None` while live.
    pub ended_at: Option<i64>,
    /// Watchers connected now.
    pub viewers: u32,
    /// The subject of the publish grant it went live with (empty: none, auth off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// A change to the set of streams, in the order the registry applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "stream", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A stream went live.
    Started(Stream),
    /// A live stream changed (viewer count).
    Updated(Stream),
    /// A stream ended.
    Ended(Stream),
}

impl StreamEvent {
    /// The stream the event is about.
    pub fn stream(&self) -> &Stream {
        match self {
            Self::Started(s) | Self::Updated(s) | Self::Ended(s) => s,
        }
    }
}

/// Where a recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written.
    Recording,
    /// Finalized and playable.
    Complete,
    /// Failed; see `Recording::error`.
    Failed,
}

/// One recorded broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// Recording id.
    pub id: RecordingId,
    /// The stream recorded.
    pub stream_id: StreamId,
    /// Title of the stream.
    pub title: String,
    /// File name relative to the recordings directory.
    pub file_name: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Media duration.
    pub duration_ms: u64,
    /// File size.
    pub bytes: u64,
    /// e.g. "VP8"; empty if none.
    pub video_codec: String,
    /// e.g. "OPUS"; empty if none.
    pub audio_codec: String,
    /// Recording, complete or failed.
    pub state: RecordingState,
    /// Failure reason; empty otherwise.
    pub error: String,
}

#[cfg(test)]
mod file_name_tests {
    use super::is_plain_file_name;

    #[test]
    fn only_plain_names_pass() {
        assert!(is_plain_file_name("abc.webm"));
        for bad in ["", ".", "..", ".hidden", "../x.webm", "a/b", "a\\b", "nul\0"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
        assert!(!is_plain_file_name(&"a".repeat(256)));
    }
}
