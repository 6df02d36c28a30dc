//! The WebM writer: libwebm's mkvmuxer (the `webm` crate) in file mode over a
//! seekable, buffered file, so the finished file has a Duration, a SeekHead and Cues
//! (players show its length and seek), and the file decodes after a crash at any moment.
//!
//! Why a crash leaves a decodable file: libwebm writes the Segment and each Cluster with
//! an "unknown" size and patches the real size in place once it is known (a Cluster when
//! the next one starts, the Segment at [`Mux::finish`]); Cues go at the end, SeekHead and
//! Duration into space reserved in the header. Every patch is a seek, and a seek first
//! pushes the buffered bytes to the OS, so until [`Mux::finish`] the file on disk is an
//! unknown-size Segment holding complete Clusters (sizes known) and a last Cluster of
//! unknown size, like a live-mode file; during it, each patch leaves a valid file too.
//! [`Mux::flush`], called every half second by the session, bounds what a crash loses
//! inside the open Cluster. A crashed file has no Cues, and its Duration is libwebm's
//! placeholder (1 ms): ffmpeg decodes all of it and Chromium plays it, growing the
//! duration as it reads.
//!
//! The segment is created lazily on the first frame that may start the file: a VP8
//! keyframe when the recording has video (its size comes from the keyframe), else the
//! first Opus frame. Earlier frames are dropped, so audio and video start together.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use webm::mux::{AudioCodecId, AudioTrack, Segment, SegmentBuilder, SegmentMode, VideoCodecId, VideoTrack, Writer};

use crate::video;

/// Opus pre-skip written in `OpusHead` (samples at 48 kHz; libopus' usual encoder delay).
pub const OPUS_PRE_SKIP: u16 = 312;

/// The `OpusHead` identification header (RFC 7845 §5.1), the `CodecPrivate` of an Opus track.
pub fn opus_head(channels: u8, pre_skip: u16, input_rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(channels);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // channel mapping family 0: mono or stereo
    h
}

/// Which tracks the file will have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracks {
    /// A VP8 track (the file then starts at a keyframe).
    pub video: bool,
    /// An Opus track (48 kHz).
    pub audio: bool,
    /// Opus channels (1 or 2).
    pub audio_channels: u8,
}

/// One encoded frame on the recording timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaFrame {
    /// A VP8 frame.
    Video {
        /// The bitstream.
        data: Vec<u8>,
        /// Intra frame.
        keyframe: bool,
    },
    /// An Opus packet.
    Audio {
        /// The packet.
        data: Vec<u8>,
    },
}

impl MediaFrame {
    /// Interleaving track index: 0 video, 1 audio.
    pub fn track_index(&self) -> usize {
        match self {
            Self::Video { .. } => 0,
            Self::Audio { .. } => 1,
        }
    }
}

/// Mux failures.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The file could not be created or written.
    #[error("recording file: {0}")]
    Io(#[from] std::io::Error),
    /// libwebm refused an operation.
    #[error("webm muxer: {0}")]
    Webm(&'static str),
    /// The MP4 writer could not encode a box.
    #[error("mp4 muxer: {0}")]
    Mp4(&'static str),
}

/// The recording file as libwebm sees it: buffered and seekable, with the position kept
/// here so that libwebm's position queries (several per frame) neither make a system call
/// nor flush the buffer. Seeking flushes the buffer (`BufWriter`), so data always reaches
/// the OS before the size patched in front of it.
struct FileSink {
    file: BufWriter<File>,
    pos: u64,
    len: u64,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for FileSink {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range"))?;
        if target != self.pos {
            self.file.seek(SeekFrom::Start(target))?;
            self.pos = target;
        }
        Ok(target)
    }
    fn stream_position(&mut self) -> std::io::Result<u64> {
        Ok(self.pos)
    }
}

/// The file shared between libwebm's writer and the mux (which flushes and syncs it).
#[derive(Clone)]
struct SharedFile(Arc<Mutex<FileSink>>);

impl SharedFile {
    fn lock(&self) -> parking_lot::MutexGuard<'_, FileSink> {
        self.0.lock()
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.lock().seek(to)
    }
    fn stream_position(&mut self) -> std::io::Result<u64> {
        Ok(self.lock().pos)
    }
}

struct Open {
    segment: Segment<SharedFile>,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
}

/// What a finished (or running) file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Bytes written to the file.
    pub bytes: u64,
    /// Media duration: last timestamp written plus one frame.
    pub duration_ns: u64,
    /// Video frames written.
    pub video_frames: u64,
    /// Audio frames written.
    pub audio_frames: u64,
}

/// Writes one recording's WebM file.
pub struct Mux {
    tracks: Tracks,
    file: SharedFile,
    open: Option<Open>,
    clock: FileClock,
    stats: MuxStats,
    dirty: bool,
}

/// The file's time resolution (libwebm's default timecode scale): frames of one track closer than
/// this would share a timestamp, which players reject as non-monotonic.
const TICK_NS: u64 = 1_000_000;

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").field("tracks", &self.tracks).field("stats", &self.stats).finish_non_exhaustive()
    }
}

fn webm_err(_: webm::mux::Error) -> MuxError {
    MuxError::Webm("segment setup failed")
}

/// Where a frame at `rel` goes: never before the last frame written (`last`), and at least one
/// tick after its own track's last frame (`last_of_track`).
fn rel_timestamp(rel: u64, last: u64, last_of_track: Option<u64>) -> u64 {
    let rel = rel.max(last);
    match last_of_track {
        Some(t) if rel < t + TICK_NS => t + TICK_NS,
        _ => rel,
    }
}

/// A file's timeline, shared by the WebM and MP4 writers: frame times relative to the file's first
/// frame, never going back across tracks (libwebm needs that) and strictly forward within a track
/// (players need that). A frame that comes late (a track that started behind the other) is moved
/// just after what was already written instead of sharing a timestamp with it.
#[derive(Debug, Default)]
pub(crate) struct FileClock {
    start_ns: i64,
    last_ns: u64,
    /// Last timestamp written per track (video, audio).
    last_track_ns: [Option<u64>; 2],
}

/// The track index of a frame in [`FileClock`]: 0 video, 1 audio.
fn track_of(frame: &MediaFrame) -> usize {
    usize::from(matches!(frame, MediaFrame::Audio { .. }))
}

impl FileClock {
    /// Puts the file's start at `ts_ns` (its first frame's timeline time).
    pub(crate) fn start(&mut self, ts_ns: i64) {
        self.start_ns = ts_ns;
    }

    /// Where a frame at timeline time `ts_ns` goes, in ns from the file's start; `None` before it.
    pub(crate) fn place(&self, ts_ns: i64, frame: &MediaFrame) -> Option<u64> {
        let rel = u64::try_from(ts_ns - self.start_ns).ok()?;
        Some(rel_timestamp(rel, self.last_ns, self.last_track_ns[track_of(frame)]))
    }

    /// Records that `frame` was written at `rel` (from [`FileClock::place`]) and counts it in `stats`.
    pub(crate) fn wrote(&mut self, rel: u64, frame: &MediaFrame, stats: &mut MuxStats) {
        let track = track_of(frame);
        self.last_ns = rel;
        self.last_track_ns[track] = Some(rel);
        // One 20 ms Opus frame / 33 ms video frame after the last timestamp.
        let frame_ns = if track == 0 {
            stats.video_frames += 1;
            33_333_333
        } else {
            stats.audio_frames += 1;
            20_000_000
        };
        stats.duration_ns = stats.duration_ns.max(rel + frame_ns);
    }
}

impl Mux {
    /// Creates (truncates) the file at `path`; nothing is written until the first frame.
    pub fn create(path: &Path, tracks: Tracks) -> Result<Self, MuxError> {
        let file = File::create(path)?;
        let sink = FileSink { file: BufWriter::with_capacity(64 * 1024, file), pos: 0, len: 0 };
        let file = SharedFile(Arc::new(Mutex::new(sink)));
        Ok(Self { tracks, file, open: None, clock: FileClock::default(), stats: MuxStats::default(), dirty: false })
    }

    /// Whether the file has started (its header is written).
    pub fn started(&self) -> bool {
        self.open.is_some()
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        MuxStats { bytes: self.file.lock().len, ..self.stats }
    }

    fn open(&mut self, first: &MediaFrame) -> Result<bool, MuxError> {
        let video_size = match first {
            MediaFrame::Video { data, keyframe: true } => video::keyframe_size(data),
            _ => None,
        };
        if self.tracks.video && video_size.is_none() {
            return Ok(false);
        }
        let builder = SegmentBuilder::new(Writer::new(self.file.clone()))
            .and_then(|b| b.set_mode(SegmentMode::File))
            .and_then(|b| b.set_writing_app("onair-recorder"))
            .map_err(webm_err)?;
        let (builder, video) = match video_size {
            Some((w, h)) if self.tracks.video => {
                let (b, t) =
                    builder.add_video_track(u32::from(w), u32::from(h), VideoCodecId::VP8, None).map_err(webm_err)?;
                (b, Some(t))
            }
            _ => (builder, None),
        };
        let (builder, audio) = if self.tracks.audio {
            let channels = self.tracks.audio_channels.clamp(1, 2);
            let (b, t) =
                builder.add_audio_track(48_000, u32::from(channels), AudioCodecId::Opus, None).map_err(webm_err)?;
            let b = b.set_codec_private(t, &opus_head(channels, OPUS_PRE_SKIP, 48_000)).map_err(webm_err)?;
            (b, Some(t))
        } else {
            (builder, None)
        };
        self.open = Some(Open { segment: builder.build(), video, audio });
        Ok(true)
    }

    /// Writes one frame at timeline time `ts_ns` (non-decreasing across calls). Frames before
    /// the file's first frame (a keyframe when there is video) are dropped; returns whether
    /// the frame was written.
    pub fn write(&mut self, ts_ns: i64, frame: &MediaFrame) -> Result<bool, MuxError> {
        if self.open.is_none() {
            if !self.open(frame)? {
                return Ok(false);
            }
            self.clock.start(ts_ns);
        }
        let Some(open) = self.open.as_mut() else { return Ok(false) };
        let Some(rel) = self.clock.place(ts_ns, frame) else { return Ok(false) };
        let result = match frame {
            MediaFrame::Video { data, keyframe } => match open.video {
                Some(t) => open.segment.add_frame(t, data, rel, *keyframe),
                None => return Ok(false),
            },
            MediaFrame::Audio { data } => match open.audio {
                // Every Opus packet is independently decodable: all are keyframes.
                Some(t) => open.segment.add_frame(t, data, rel, true),
                None => return Ok(false),
            },
        };
        result.map_err(|_| MuxError::Webm("frame rejected"))?;
        self.clock.wrote(rel, frame, &mut self.stats);
        self.dirty = true;
        Ok(true)
    }

    /// Pushes buffered bytes to the OS (call periodically, e.g. every second), so a crash
    /// loses at most that much media.
    pub fn flush(&mut self) -> Result<(), MuxError> {
        if self.dirty {
            self.file.lock().flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Finalizes the segment (libwebm writes the last Cluster's size, the Duration, the Cues
    /// at the end, the SeekHead and the Segment size), flushes and syncs the file. Returns
    /// what it holds.
    pub fn finish(mut self) -> Result<MuxStats, MuxError> {
        if let Some(open) = self.open.take() {
            // In milliseconds (the default timecode scale).
            let duration_ms = self.stats.duration_ns / 1_000_000;
            open.segment.finalize(Some(duration_ms.max(1))).map_err(|_| MuxError::Webm("finalize failed"))?;
        }
        let mut f = self.file.lock();
        f.flush()?;
        f.file.get_ref().sync_all()?;
        drop(f);
        Ok(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_frames_move_forward_and_never_share_a_tick_with_their_track() {
        // In order: unchanged.
        assert_eq!(rel_timestamp(33_000_000, 20_000_000, Some(0)), 33_000_000);
        // Older than the last frame written (of the other track): moved up to it...
        assert_eq!(rel_timestamp(33_000_000, 69_000_000, Some(0)), 69_000_000);
        // ...but a second late frame of the same track goes one tick later, not onto the same one.
        assert_eq!(rel_timestamp(66_000_000, 69_000_000, Some(69_000_000)), 69_000_000 + TICK_NS);
        // The first frame of a track only respects the global order.
        assert_eq!(rel_timestamp(5, 10, None), 10);
    }

    #[test]
    fn opus_head_layout() {
        let h = opus_head(2, 312, 48_000);
        assert_eq!(h.len(), 19);
        assert_eq!(&h[..8], b"OpusHead");
        assert_eq!(h[8], 1);
        assert_eq!(h[9], 2);
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 312);
        assert_eq!(u32::from_le_bytes([h[12], h[13], h[14], h[15]]), 48_000);
        assert_eq!(&h[16..], &[0, 0, 0]);
    }
}
