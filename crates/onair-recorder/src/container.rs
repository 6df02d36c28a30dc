//! The recording file, in the container its video codec needs: WebM for VP8 (and for audio
//! only), fragmented MP4 for H.264. Both are crash-safe and take the same timed frames.

use std::path::Path;

use crate::mp4::Mp4Mux;
use crate::mux::{MediaFrame, Mux, MuxError, MuxStats, Tracks};
use crate::video::VideoCodec;

/// A recording file being written.
#[derive(Debug)]
pub enum Container {
    /// WebM (libwebm): VP8 and/or Opus.
    Webm(Mux),
    /// Fragmented MP4: H.264 and/or Opus.
    Mp4(Box<Mp4Mux>),
}

/// The file extension (and so the download's content type) for a recording whose video is `codec`.
pub fn extension(codec: Option<VideoCodec>) -> &'static str {
    match codec {
        Some(VideoCodec::H264) => "mp4",
        Some(VideoCodec::Vp8) | None => "webm",
    }
}

impl Container {
    /// Creates (truncates) the file at `path` for `tracks`, whose video (if any) is `codec`.
    pub fn create(path: &Path, tracks: Tracks, codec: Option<VideoCodec>) -> Result<Self, MuxError> {
        Ok(match codec {
            Some(VideoCodec::H264) => Self::Mp4(Box::new(Mp4Mux::create(path, tracks)?)),
            Some(VideoCodec::Vp8) | None => Self::Webm(Mux::create(path, tracks)?),
        })
    }

    /// Whether the file has started (its header is written).
    pub fn started(&self) -> bool {
        match self {
            Self::Webm(m) => m.started(),
            Self::Mp4(m) => m.started(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        match self {
            Self::Webm(m) => m.stats(),
            Self::Mp4(m) => m.stats(),
        }
    }

    /// Writes one frame at timeline time `ts_ns`; whether it was kept.
    pub fn write(&mut self, ts_ns: i64, frame: &MediaFrame) -> Result<bool, MuxError> {
        match self {
            Self::Webm(m) => m.write(ts_ns, frame),
            Self::Mp4(m) => m.write(ts_ns, frame),
        }
    }

    /// Pushes what was written to the OS (bounds what a crash loses).
    pub fn flush(&mut self) -> Result<(), MuxError> {
        match self {
            Self::Webm(m) => m.flush(),
            Self::Mp4(m) => m.flush(),
        }
    }

    /// Finalizes, flushes and syncs the file.
    pub fn finish(self) -> Result<MuxStats, MuxError> {
        match self {
            Self::Webm(m) => m.finish(),
            Self::Mp4(m) => (*m).finish(),
        }
    }
}
