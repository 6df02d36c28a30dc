//! Makes a finished live-mode WebM seekable.
//!
//! libwebm in live mode writes the Segment and every Cluster with an unknown size and
//! leaves out the Segment Duration and the Cues, so a file is valid while it grows and
//! after a crash, but players see no duration and cannot seek by index. [`make_seekable`]
//! rewrites a finished file into
//!
//! ```text
//! EBML header (copied) · Segment (known size) { SeekHead · Info (+ Duration) · Tracks (copied)
//!   · other header elements (copied) · Cues · Clusters (bodies copied byte for byte, sizes known) }
//! ```
//!
//! The Cues come before the Clusters, so a browser finds them without reading the end of
//! the file. One CuePoint per Cluster whose first video block is a keyframe (libwebm opens a
//! Cluster on every video keyframe); audio-only files get one per Cluster on the audio track.
//!
//! The new file is written to `<file>.tmp` next to the original, synced, scanned again and
//! checked against the original, then renamed over it: a crash or any surprise in the input
//! leaves the live file as it was. The reader is small and strict: it only accepts the
//! element layout this recorder (or this function) writes; anything else is an error.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Element ids (with their length-marker bits, as written in the file).
pub mod id {
    /// EBML header.
    pub const EBML: u32 = 0x1A45_DFA3;
    /// EBML header: DocType.
    pub const DOC_TYPE: u32 = 0x4282;
    /// Segment.
    pub const SEGMENT: u32 = 0x1853_8067;
    /// SeekHead.
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    /// SeekHead: Seek.
    pub const SEEK: u32 = 0x4DBB;
    /// Seek: SeekID.
    pub const SEEK_ID: u32 = 0x53AB;
    /// Seek: SeekPosition.
    pub const SEEK_POSITION: u32 = 0x53AC;
    /// Info.
    pub const INFO: u32 = 0x1549_A966;
    /// Info: TimecodeScale (TimestampScale).
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    /// Info: Duration.
    pub const DURATION: u32 = 0x4489;
    /// Tracks.
    pub const TRACKS: u32 = 0x1654_AE6B;
    /// Tracks: TrackEntry.
    pub const TRACK_ENTRY: u32 = 0xAE;
    /// TrackEntry: TrackNumber.
    pub const TRACK_NUMBER: u32 = 0xD7;
    /// TrackEntry: TrackType.
    pub const TRACK_TYPE: u32 = 0x83;
    /// DefaultDuration (ns) of a TrackEntry.
    pub const DEFAULT_DURATION: u32 = 0x23_E383;
    /// Cluster.
    pub const CLUSTER: u32 = 0x1F43_B675;
    /// Cluster: Timecode (Timestamp).
    pub const TIMECODE: u32 = 0xE7;
    /// Cluster: SilentTracks.
    pub const SILENT_TRACKS: u32 = 0x5854;
    /// Cluster: Position.
    pub const POSITION: u32 = 0xA7;
    /// Cluster: PrevSize.
    pub const PREV_SIZE: u32 = 0xAB;
    /// Cluster: SimpleBlock.
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    /// Cluster: BlockGroup.
    pub const BLOCK_GROUP: u32 = 0xA0;
    /// Cluster: EncryptedBlock.
    pub const ENCRYPTED_BLOCK: u32 = 0xAF;
    /// BlockGroup: Block.
    pub const BLOCK: u32 = 0xA1;
    /// BlockGroup: BlockDuration.
    pub const BLOCK_DURATION: u32 = 0x9B;
    /// BlockGroup: ReferenceBlock.
    pub const REFERENCE_BLOCK: u32 = 0xFB;
    /// Cues.
    pub const CUES: u32 = 0x1C53_BB6B;
    /// Cues: CuePoint.
    pub const CUE_POINT: u32 = 0xBB;
    /// CuePoint: CueTime.
    pub const CUE_TIME: u32 = 0xB3;
    /// CuePoint: CueTrackPositions.
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    /// CueTrackPositions: CueTrack.
    pub const CUE_TRACK: u32 = 0xF7;
    /// CueTrackPositions: CueClusterPosition.
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
    /// Chapters.
    pub const CHAPTERS: u32 = 0x1043_A770;
    /// Tags.
    pub const TAGS: u32 = 0x1254_C367;
    /// Attachments.
    pub const ATTACHMENTS: u32 = 0x1941_A469;
    /// Void (padding, anywhere).
    pub const VOID: u32 = 0xEC;
    /// CRC-32 (anywhere).
    pub const CRC32: u32 = 0xBF;
}

/// TrackType of a video track.
const TRACK_TYPE_VIDEO: u64 = 1;
/// TrackType of an audio track.
const TRACK_TYPE_AUDIO: u64 = 2;
/// The TimecodeScale when Info has none (1 ms).
const DEFAULT_TIMECODE_SCALE: u64 = 1_000_000;
/// Largest header element (Info, Tracks, Tags, ...) read into memory.
const MAX_HEADER_ELEMENT: u64 = 16 << 20;
/// Largest value a size vint of `len` bytes can hold (all ones is reserved for "unknown").
const fn vint_max(len: usize) -> u64 {
    (1u64 << (7 * len)) - 2
}

/// Why a file was not rewritten.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// Reading the original or writing the new file failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The file is not laid out as expected; it is left alone.
    #[error("unexpected content at byte {offset}: {what}")]
    Unexpected {
        /// Absolute file offset.
        offset: u64,
        /// What was wrong.
        what: String,
    },
}

fn unexpected<T>(offset: u64, what: impl Into<String>) -> Result<T, FinalizeError> {
    Err(FinalizeError::Unexpected { offset, what: what.into() })
}

// ---------------------------------------------------------------------------------------------
// Variable-size integers.

/// An element size: `None` is the reserved all-ones "unknown size".
pub type Size = Option<u64>;

/// Decodes a size vint from the start of `buf`: (size, length in bytes). `None` when `buf` is
/// too short or the first byte is zero (no length marker within 8 bytes).
pub fn decode_vint(buf: &[u8]) -> Option<(Size, usize)> {
    let first = *buf.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || buf.len() < len {
        return None;
    }
    let mut v = u64::from(first) & (0xFF >> len);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    Some((if v == all_ones { None } else { Some(v) }, len))
}

/// The shortest vint length that holds `v` (1..=8), or `None` when it does not fit in 8 bytes.
pub fn vint_len(v: u64) -> Option<usize> {
    (1..=8).find(|&len| v <= vint_max(len))
}

/// Encodes a size vint in exactly `len` bytes (`None` size = unknown). `None` when it does not fit.
pub fn encode_vint(size: Size, len: usize) -> Option<Vec<u8>> {
    if !(1..=8).contains(&len) {
        return None;
    }
    let v = match size {
        None => (1u64 << (7 * len)) - 1,
        Some(v) if v <= vint_max(len) => v,
        Some(_) => return None,
    };
    let marked = v | (1u64 << (7 * len));
    Some(marked.to_be_bytes()[8 - len..].to_vec())
}

/// Decodes an element id (1..=4 bytes, marker bits kept) from the start of `buf`.
pub fn decode_id(buf: &[u8]) -> Option<(u32, usize)> {
    let first = *buf.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 || buf.len() < len || first == 0xFF {
        return None;
    }
    Some((buf[..len].iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)), len))
}

fn id_bytes(id: u32) -> Vec<u8> {
    let b = id.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(3);
    b[skip..].to_vec()
}

fn uint_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    b[skip..].to_vec()
}

fn read_uint(data: &[u8]) -> Option<u64> {
    (data.len() <= 8).then(|| data.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

fn read_float(data: &[u8]) -> Option<f64> {
    match data.len() {
        4 => Some(f64::from(f32::from_be_bytes(data.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(data.try_into().ok()?)),
        _ => None,
    }
}

/// Appends an element with a known size (minimal size field).
fn put_element(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    out.extend_from_slice(&id_bytes(id));
    let len = data.len() as u64;
    // A header element never needs more than 8 size bytes: vint_len only fails above 2^56.
    out.extend_from_slice(&encode_vint(Some(len), vint_len(len).unwrap_or(8)).unwrap_or_default());
    out.extend_from_slice(data);
}

fn put_uint(out: &mut Vec<u8>, id: u32, v: u64) {
    put_element(out, id, &uint_bytes(v));
}

/// The children of an element held in memory: (id, data); `None` when malformed or when a
/// child has an unknown size.
fn children(mut data: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (id, il) = decode_id(data)?;
        let (size, sl) = decode_vint(&data[il..])?;
        let size = usize::try_from(size?).ok()?;
        let body = data.get(il + sl..il + sl + size)?;
        out.push((id, body));
        data = &data[il + sl + size..];
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// A buffered reader that knows its position and the file length.
struct Src<R> {
    r: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Src<R> {
    fn new(mut r: R) -> io::Result<Self> {
        let len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        Ok(Self { r: BufReader::with_capacity(256 * 1024, r), pos: 0, len })
    }

    fn seek_to(&mut self, pos: u64) -> io::Result<()> {
        let delta = i64::try_from(pos).ok().and_then(|p| p.checked_sub(i64::try_from(self.pos).ok()?));
        match delta {
            Some(d) => self.r.seek_relative(d)?,
            None => {
                self.r.seek(SeekFrom::Start(pos))?;
            }
        }
        self.pos = pos;
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, FinalizeError> {
        if n > MAX_HEADER_ELEMENT || self.pos + n > self.len {
            return unexpected(self.pos, format!("element of {n} bytes too large or past the end"));
        }
        let mut v = vec![0; n as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads an element header at the current position: (id, size, header length).
    fn header(&mut self) -> Result<(u32, Size, u64), FinalizeError> {
        let at = self.pos;
        let mut b = [0u8; 12];
        let avail = usize::try_from(self.len.saturating_sub(at).min(12)).unwrap_or(12);
        self.read_exact(&mut b[..avail])?;
        let Some((id, il)) = decode_id(&b[..avail]) else { return unexpected(at, "bad element id") };
        let Some((size, sl)) = decode_vint(&b[il..avail]) else { return unexpected(at, "bad element size") };
        let hl = (il + sl) as u64;
        self.seek_to(at + hl)?;
        Ok((id, size, hl))
    }

    /// The id of the element at the current position, without consuming it; `None` at the end.
    fn peek_id(&mut self, end: u64) -> Result<Option<u32>, FinalizeError> {
        if self.pos >= end {
            return Ok(None);
        }
        let at = self.pos;
        let mut b = [0u8; 4];
        let avail = usize::try_from(end.min(self.len).saturating_sub(at).min(4)).unwrap_or(4);
        self.read_exact(&mut b[..avail])?;
        self.seek_to(at)?;
        match decode_id(&b[..avail]) {
            Some((id, _)) => Ok(Some(id)),
            None => unexpected(at, "bad element id"),
        }
    }
}

/// A top-level element: where it is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// The id.
    pub id: u32,
    /// Absolute offset of the id.
    pub offset: u64,
    /// Id plus size field.
    pub header_len: u64,
    /// Payload bytes (resolved when the size field said "unknown").
    pub data_len: u64,
    /// Whether the size field was the reserved "unknown".
    pub unknown_size: bool,
}

impl Element {
    /// The offset just past the element.
    pub fn end(&self) -> u64 {
        self.offset + self.header_len + self.data_len
    }
}

/// One Cluster as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Where it is.
    pub element: Element,
    /// Its Timecode (TimecodeScale units).
    pub timecode: u64,
    /// Blocks (SimpleBlock or BlockGroup) in it.
    pub blocks: u64,
    /// The first video block: (absolute time, keyframe).
    pub first_video: Option<(i64, bool)>,
    /// Time of the first audio block.
    pub first_audio: Option<i64>,
}

/// A CuePoint: (CueTime, CueTrack, CueClusterPosition).
pub type Cue = (u64, u64, u64);

/// Per-track block timing, for the duration estimate.
#[derive(Debug, Clone, Copy, Default)]
struct TrackTiming {
    first: i64,
    last: i64,
    count: u64,
    last_duration: Option<u64>,
    /// Shortest positive gap between consecutive blocks (TimecodeScale units).
    min_gap: Option<u64>,
}

/// What a WebM file holds, as far as rewriting it is concerned.
#[derive(Debug, Clone)]
pub struct Layout {
    /// End of the EBML header (it starts at 0).
    pub ebml_header_end: u64,
    /// The Segment.
    pub segment: Element,
    /// Info.
    pub info: Element,
    /// Tracks.
    pub tracks: Element,
    /// Other header elements kept as they are (Chapters, Tags, Attachments).
    pub others: Vec<Element>,
    /// The Clusters in file order.
    pub clusters: Vec<ClusterInfo>,
    /// The Cues found (positions relative to the Segment data).
    pub cues: Vec<Cue>,
    /// The SeekHead entries found: (id, position relative to the Segment data).
    pub seeks: Vec<(u32, u64)>,
    /// TimecodeScale in ns.
    pub timecode_scale: u64,
    /// Info's Duration, when present (TimecodeScale units).
    pub duration: Option<f64>,
    /// (TrackNumber, TrackType) per TrackEntry.
    pub track_types: Vec<(u64, u64)>,
    timings: Vec<(u64, TrackTiming)>,
    info_data: Vec<u8>,
    tracks_data: Vec<u8>,
}

impl Layout {
    /// The video track number, else the audio one: the track the cues refer to.
    pub fn cue_track(&self) -> Option<(u64, bool)> {
        let of = |t| self.track_types.iter().find(|(_, ty)| *ty == t).map(|(n, _)| *n);
        of(TRACK_TYPE_VIDEO).map(|n| (n, true)).or_else(|| of(TRACK_TYPE_AUDIO).map(|n| (n, false)))
    }

    /// Media duration estimated from the blocks, in TimecodeScale units: per track the last
    /// block time plus its BlockDuration or the track's mean frame interval; the longest track.
    pub fn estimated_duration(&self) -> u64 {
        self.timings
            .iter()
            .map(|(_, t)| {
                let last = u64::try_from(t.last).unwrap_or(0);
                let step = t.last_duration.unwrap_or_else(|| {
                    if t.count >= 2 { u64::try_from(t.last - t.first).unwrap_or(0) / (t.count - 1) } else { 0 }
                });
                last + step
            })
            .max()
            .unwrap_or(0)
    }

    /// The latest block time in the file (TimecodeScale units).
    pub fn last_block_time(&self) -> u64 {
        self.timings.iter().map(|(_, t)| u64::try_from(t.last).unwrap_or(0)).max().unwrap_or(0)
    }
}

fn is_segment_child(id: u32) -> bool {
    matches!(
        id,
        id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::CUES
            | id::CHAPTERS
            | id::TAGS
            | id::ATTACHMENTS
            | id::VOID
            | id::CRC32
    )
}

fn is_cluster_child(id: u32) -> bool {
    matches!(
        id,
        id::TIMECODE
            | id::SILENT_TRACKS
            | id::POSITION
            | id::PREV_SIZE
            | id::SIMPLE_BLOCK
            | id::BLOCK_GROUP
            | id::ENCRYPTED_BLOCK
            | id::VOID
            | id::CRC32
    )
}

/// Scans a WebM file.
pub fn scan<R: Read + Seek>(r: R) -> Result<Layout, FinalizeError> {
    let mut src = Src::new(r)?;
    let (eid, esize, ehl) = src.header()?;
    let Some(esize) = esize.filter(|_| eid == id::EBML) else { return unexpected(0, "no EBML header") };
    let header = src.read_vec(esize)?;
    let doc_type = children(&header)
        .and_then(|c| c.into_iter().find(|(i, _)| *i == id::DOC_TYPE))
        .map(|(_, d)| String::from_utf8_lossy(d).trim_end_matches('\0').to_owned());
    if !matches!(doc_type.as_deref(), Some("webm" | "matroska")) {
        return unexpected(0, format!("doc type {doc_type:?}"));
    }
    let ebml_header_end = ehl + esize;

    let seg_at = src.pos;
    let (sid, ssize, shl) = src.header()?;
    if sid != id::SEGMENT {
        return unexpected(seg_at, format!("expected a Segment, found id {sid:#x}"));
    }
    let seg_data = seg_at + shl;
    let seg_end = match ssize {
        Some(s) if seg_data + s <= src.len => seg_data + s,
        Some(s) => return unexpected(seg_at, format!("Segment of {s} bytes runs past the end of the file")),
        None => src.len,
    };

    let mut info = None;
    let mut tracks = None;
    let mut others = Vec::new();
    let mut clusters = Vec::new();
    let mut cues = Vec::new();
    let mut seeks = Vec::new();
    let mut track_types = Vec::new();
    let mut timings: Vec<(u64, TrackTiming)> = Vec::new();
    let mut timecode_scale = DEFAULT_TIMECODE_SCALE;
    let mut duration = None;
    let mut info_data = Vec::new();
    let mut tracks_data = Vec::new();

    while let Some(next) = src.peek_id(seg_end)? {
        let at = src.pos;
        if !is_segment_child(next) {
            return unexpected(at, format!("id {next:#x} is not a Segment child"));
        }
        let (eid, size, hl) = src.header()?;
        if eid == id::CLUSTER {
            let c = scan_cluster(&mut src, at, hl, size, seg_end, &track_types, &mut timings)?;
            clusters.push(c);
            continue;
        }
        let Some(size) = size else { return unexpected(at, format!("element {eid:#x} of unknown size")) };
        if src.pos + size > seg_end {
            return unexpected(at, format!("element {eid:#x} runs past the Segment"));
        }
        let element = Element { id: eid, offset: at, header_len: hl, data_len: size, unknown_size: false };
        match eid {
            id::INFO | id::TRACKS | id::CUES | id::SEEK_HEAD => {
                if !clusters.is_empty() && matches!(eid, id::INFO | id::TRACKS) {
                    return unexpected(at, "Info or Tracks after a Cluster");
                }
                let data = src.read_vec(size)?;
                let Some(kids) = children(&data) else { return unexpected(at, format!("malformed {eid:#x}")) };
                match eid {
                    id::INFO if info.is_none() => {
                        for (k, d) in kids {
                            match k {
                                id::TIMECODE_SCALE => timecode_scale = read_uint(d).unwrap_or(0),
                                id::DURATION => duration = read_float(d),
                                _ => {}
                            }
                        }
                        if timecode_scale == 0 {
                            return unexpected(at, "TimecodeScale 0");
                        }
                        info_data = data.clone();
                        info = Some(element);
                    }
                    id::TRACKS if tracks.is_none() => {
                        track_types = parse_tracks(&kids)
                            .ok_or(FinalizeError::Unexpected { offset: at, what: "malformed TrackEntry".into() })?;
                        tracks_data = data.clone();
                        tracks = Some(element);
                    }
                    id::CUES => cues.extend(
                        parse_cues(&kids)
                            .ok_or(FinalizeError::Unexpected { offset: at, what: "malformed Cues".into() })?,
                    ),
                    id::SEEK_HEAD => seeks.extend(
                        parse_seeks(&kids)
                            .ok_or(FinalizeError::Unexpected { offset: at, what: "malformed SeekHead".into() })?,
                    ),
                    _ => return unexpected(at, format!("a second {eid:#x}")),
                }
            }
            id::VOID | id::CRC32 => src.seek_to(src.pos + size)?,
            _ => {
                // Chapters, Tags, Attachments: copied as they are.
                if size > MAX_HEADER_ELEMENT {
                    return unexpected(at, format!("element {eid:#x} too large"));
                }
                src.seek_to(src.pos + size)?;
                others.push(element);
            }
        }
    }
    if ssize.is_some() && src.pos != src.len {
        return unexpected(src.pos, "data after the Segment");
    }
    let (Some(info), Some(tracks)) = (info, tracks) else { return unexpected(seg_data, "no Info or no Tracks") };
    if clusters.is_empty() {
        return unexpected(seg_data, "no Cluster");
    }
    let segment = Element {
        id: id::SEGMENT,
        offset: seg_at,
        header_len: shl,
        data_len: seg_end - seg_data,
        unknown_size: ssize.is_none(),
    };
    Ok(Layout {
        ebml_header_end,
        segment,
        info,
        tracks,
        others,
        clusters,
        cues,
        seeks,
        timecode_scale,
        duration,
        track_types,
        timings,
        info_data,
        tracks_data,
    })
}

fn parse_tracks(kids: &[(u32, &[u8])]) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (k, d) in kids {
        if *k != id::TRACK_ENTRY {
            continue;
        }
        let entry = children(d)?;
        let field = |want| entry.iter().find(|(i, _)| *i == want).and_then(|(_, d)| read_uint(d));
        let number = field(id::TRACK_NUMBER).filter(|&n| n > 0)?;
        if out.iter().any(|(n, _)| *n == number) {
            return None;
        }
        out.push((number, field(id::TRACK_TYPE)?));
    }
    (!out.is_empty()).then_some(out)
}

fn parse_cues(kids: &[(u32, &[u8])]) -> Option<Vec<Cue>> {
    let mut out = Vec::new();
    for (k, d) in kids {
        if *k != id::CUE_POINT {
            continue;
        }
        let point = children(d)?;
        let time = point.iter().find(|(i, _)| *i == id::CUE_TIME).and_then(|(_, d)| read_uint(d))?;
        for (_, pos) in point.iter().filter(|(i, _)| *i == id::CUE_TRACK_POSITIONS) {
            let p = children(pos)?;
            let field = |want| p.iter().find(|(i, _)| *i == want).and_then(|(_, d)| read_uint(d));
            out.push((time, field(id::CUE_TRACK)?, field(id::CUE_CLUSTER_POSITION)?));
        }
    }
    Some(out)
}

fn parse_seeks(kids: &[(u32, &[u8])]) -> Option<Vec<(u32, u64)>> {
    let mut out = Vec::new();
    for (k, d) in kids {
        if *k != id::SEEK {
            continue;
        }
        let seek = children(d)?;
        let target = seek.iter().find(|(i, _)| *i == id::SEEK_ID).and_then(|(_, d)| decode_id(d))?.0;
        let pos = seek.iter().find(|(i, _)| *i == id::SEEK_POSITION).and_then(|(_, d)| read_uint(d))?;
        out.push((target, pos));
    }
    Some(out)
}

/// Reads a (Simple)Block header at the current position: (track number, relative timecode,
/// flags). Leaves the position after the flags byte.
fn block_header<R: Read + Seek>(src: &mut Src<R>, size: u64) -> Result<(u64, i16, u8), FinalizeError> {
    let at = src.pos;
    let mut b = [0u8; 11];
    let n = usize::try_from(size.min(11)).unwrap_or(11);
    src.read_exact(&mut b[..n])?;
    let Some((Some(track), tl)) = decode_vint(&b[..n]) else { return unexpected(at, "bad block track number") };
    if n < tl + 3 {
        return unexpected(at, "block too short");
    }
    let rel = i16::from_be_bytes([b[tl], b[tl + 1]]);
    Ok((track, rel, b[tl + 2]))
}

fn scan_cluster<R: Read + Seek>(
    src: &mut Src<R>,
    at: u64,
    header_len: u64,
    size: Size,
    seg_end: u64,
    track_types: &[(u64, u64)],
    timings: &mut Vec<(u64, TrackTiming)>,
) -> Result<ClusterInfo, FinalizeError> {
    let data = src.pos;
    let end = match size {
        Some(s) if data + s <= seg_end => data + s,
        Some(_) => return unexpected(at, "Cluster runs past the Segment"),
        None => seg_end,
    };
    if track_types.is_empty() {
        return unexpected(at, "Cluster before Tracks");
    }
    let mut timecode = None;
    let mut c = ClusterInfo {
        element: Element { id: id::CLUSTER, offset: at, header_len, data_len: 0, unknown_size: size.is_none() },
        timecode: 0,
        blocks: 0,
        first_video: None,
        first_audio: None,
    };
    // Up to the end of a known-size Cluster, or of the Segment.
    while let Some(next) = src.peek_id(end)? {
        if !is_cluster_child(next) {
            // An unknown-size Cluster ends at the first element of the Segment's level.
            if size.is_none() && is_segment_child(next) {
                break;
            }
            return unexpected(src.pos, format!("id {next:#x} inside a Cluster"));
        }
        let child_at = src.pos;
        let (k, csize, _) = src.header()?;
        let Some(csize) = csize else { return unexpected(child_at, "Cluster child of unknown size") };
        let child_end = src.pos + csize;
        if child_end > end {
            return unexpected(child_at, "Cluster child runs past its parent");
        }
        match k {
            id::TIMECODE => {
                let d = src.read_vec(csize)?;
                timecode = read_uint(&d);
                if timecode.is_none() || c.blocks > 0 {
                    return unexpected(child_at, "bad or late Cluster Timecode");
                }
            }
            id::SIMPLE_BLOCK | id::BLOCK_GROUP => {
                let Some(tc) = timecode else { return unexpected(child_at, "block before the Cluster Timecode") };
                let (track, rel, key, duration) = if k == id::SIMPLE_BLOCK {
                    let (track, rel, flags) = block_header(src, csize)?;
                    (track, rel, flags & 0x80 != 0, None)
                } else {
                    scan_block_group(src, child_end)?
                };
                let Some(&(_, ty)) = track_types.iter().find(|(n, _)| *n == track) else {
                    return unexpected(child_at, format!("block on unknown track {track}"));
                };
                let time = i64::try_from(tc).unwrap_or(i64::MAX).saturating_add(i64::from(rel));
                match ty {
                    TRACK_TYPE_VIDEO if c.first_video.is_none() => c.first_video = Some((time, key)),
                    TRACK_TYPE_AUDIO if c.first_audio.is_none() => c.first_audio = Some(time),
                    _ => {}
                }
                let i = match timings.iter().position(|(n, _)| *n == track) {
                    Some(i) => i,
                    None => {
                        timings.push((track, TrackTiming { first: time, last: time, ..TrackTiming::default() }));
                        timings.len() - 1
                    }
                };
                let t = &mut timings[i].1;
                if t.count > 0 && time > t.last {
                    let gap = u64::try_from(time - t.last).unwrap_or(u64::MAX);
                    t.min_gap = Some(t.min_gap.map_or(gap, |g| g.min(gap)));
                }
                t.last = t.last.max(time);
                t.count += 1;
                t.last_duration = duration;
                c.blocks += 1;
            }
            _ => {}
        }
        src.seek_to(child_end)?;
    }
    let Some(tc) = timecode else { return unexpected(at, "Cluster without a Timecode") };
    c.timecode = tc;
    c.element.data_len = src.pos - data;
    if size.is_some_and(|s| s != c.element.data_len) {
        return unexpected(at, "Cluster children do not fill it");
    }
    Ok(c)
}

fn scan_block_group<R: Read + Seek>(
    src: &mut Src<R>,
    end: u64,
) -> Result<(u64, i16, bool, Option<u64>), FinalizeError> {
    let mut block = None;
    let mut reference = false;
    let mut duration = None;
    while src.pos < end {
        let at = src.pos;
        let (k, size, _) = src.header()?;
        let Some(size) = size.filter(|s| src.pos + s <= end) else { return unexpected(at, "bad BlockGroup child") };
        let child_end = src.pos + size;
        match k {
            id::BLOCK => {
                let (track, rel, _) = block_header(src, size)?;
                block = Some((track, rel));
            }
            id::REFERENCE_BLOCK => reference = true,
            id::BLOCK_DURATION => duration = read_uint(&src.read_vec(size)?),
            _ => {}
        }
        src.seek_to(child_end)?;
    }
    let Some((track, rel)) = block else { return unexpected(end, "BlockGroup without a Block") };
    Ok((track, rel, !reference, duration))
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// The new file, laid out: what is built here; Tracks, the other header elements and the
/// Cluster payloads are copied from the original between these.
struct Plan {
    /// The SeekHead (first in the Segment).
    seek_head: Vec<u8>,
    /// Info with the Duration.
    info: Vec<u8>,
    /// Tracks (with the video DefaultDuration).
    tracks: Vec<u8>,
    /// Cues (empty when no Cluster qualifies), right before the Clusters.
    cues: Vec<u8>,
    /// CuePoints in `cues`.
    cue_count: usize,
    /// Where the first Cluster starts, relative to the Segment data.
    clusters_at: u64,
    /// Segment data size.
    segment_size: u64,
    /// Cluster headers (id + known size), in order.
    cluster_headers: Vec<Vec<u8>>,
}

fn build_info(layout: &Layout, duration: f64) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    for (k, d) in children(&layout.info_data)? {
        if !matches!(k, id::DURATION | id::VOID | id::CRC32) {
            put_element(&mut data, k, d);
        }
    }
    put_element(&mut data, id::DURATION, &duration.to_be_bytes());
    let mut out = Vec::new();
    put_element(&mut out, id::INFO, &data);
    Some(out)
}

/// Tracks with a DefaultDuration on the video track when it has none: the shortest frame
/// interval seen. Players and tools that assume a constant frame rate (ffmpeg derives
/// `r_frame_rate` from it) then never map two frames of this variable-rate video to one slot.
fn build_tracks(layout: &Layout) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    for (k, d) in children(&layout.tracks_data)? {
        if k != id::TRACK_ENTRY {
            if !matches!(k, id::VOID | id::CRC32) {
                put_element(&mut data, k, d);
            }
            continue;
        }
        let kids = children(d)?;
        let number = kids.iter().find(|(k, _)| *k == id::TRACK_NUMBER).and_then(|(_, v)| read_uint(v));
        let is_video = kids.iter().any(|(k, v)| *k == id::TRACK_TYPE && read_uint(v) == Some(TRACK_TYPE_VIDEO));
        let has_default = kids.iter().any(|(k, _)| *k == id::DEFAULT_DURATION);
        let min_gap = layout.timings.iter().find(|(n, _)| Some(*n) == number).and_then(|(_, t)| t.min_gap);
        let mut entry = Vec::new();
        for (k, v) in &kids {
            put_element(&mut entry, *k, v);
        }
        if is_video
            && !has_default
            && let Some(gap) = min_gap
        {
            put_uint(&mut entry, id::DEFAULT_DURATION, gap.saturating_mul(layout.timecode_scale));
        }
        put_element(&mut data, id::TRACK_ENTRY, &entry);
    }
    let mut out = Vec::new();
    put_element(&mut out, id::TRACKS, &data);
    Some(out)
}

fn build_seek_head(entries: &[(u32, u64)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (target, pos) in entries {
        let mut seek = Vec::new();
        put_element(&mut seek, id::SEEK_ID, &id_bytes(*target));
        put_uint(&mut seek, id::SEEK_POSITION, *pos);
        put_element(&mut data, id::SEEK, &seek);
    }
    let mut out = Vec::new();
    put_element(&mut out, id::SEEK_HEAD, &data);
    out
}

fn build_cues(cues: &[Cue]) -> Vec<u8> {
    if cues.is_empty() {
        return Vec::new();
    }
    let mut data = Vec::new();
    for (time, track, pos) in cues {
        let mut tp = Vec::new();
        put_uint(&mut tp, id::CUE_TRACK, *track);
        put_uint(&mut tp, id::CUE_CLUSTER_POSITION, *pos);
        let mut point = Vec::new();
        put_uint(&mut point, id::CUE_TIME, *time);
        put_element(&mut point, id::CUE_TRACK_POSITIONS, &tp);
        put_element(&mut data, id::CUE_POINT, &point);
    }
    let mut out = Vec::new();
    put_element(&mut out, id::CUES, &data);
    out
}

/// Cluster header with a known size: the original size field length when the size fits in it
/// (so a Cluster keeps its length), else 8 bytes.
fn cluster_header(c: &ClusterInfo) -> Option<Vec<u8>> {
    let size_len = usize::try_from(c.element.header_len).ok()?.checked_sub(4)?;
    let len = if vint_len(c.element.data_len)? <= size_len { size_len } else { 8 };
    let mut h = id_bytes(id::CLUSTER);
    h.extend_from_slice(&encode_vint(Some(c.element.data_len), len)?);
    Some(h)
}

fn plan(layout: &Layout, duration: f64) -> Result<Plan, FinalizeError> {
    let bad = |what: &str| FinalizeError::Unexpected { offset: layout.segment.offset, what: what.into() };
    let info = build_info(layout, duration).ok_or_else(|| bad("malformed Info"))?;
    let cluster_headers =
        layout.clusters.iter().map(cluster_header).collect::<Option<Vec<_>>>().ok_or_else(|| bad("Cluster size"))?;
    let tracks = build_tracks(layout).ok_or_else(|| bad("malformed Tracks"))?;
    let tracks_len = tracks.len() as u64;
    let others_len: u64 = layout.others.iter().map(|e| e.header_len + e.data_len).sum();
    let (cue_track, video) = layout.cue_track().ok_or_else(|| bad("no audio or video track"))?;
    // Which clusters get a cue, and at what time.
    let cue_times: Vec<Option<u64>> = layout
        .clusters
        .iter()
        .map(|c| {
            let first = if video { c.first_video.and_then(|(t, key)| key.then_some(t)) } else { c.first_audio };
            first.map(|t| u64::try_from(t).unwrap_or(0).max(c.timecode))
        })
        .collect();
    // Sizes depend on positions and positions on sizes: iterate to the fixed point (sizes only grow).
    let (mut seek_len, mut cues_len) = (0u64, 0u64);
    for _ in 0..16 {
        let info_at = seek_len;
        let tracks_at = info_at + info.len() as u64;
        let others_at = tracks_at + tracks_len;
        let cues_at = others_at + others_len;
        let clusters_at = cues_at + cues_len;
        let mut pos = clusters_at;
        let mut cues = Vec::new();
        for ((c, h), t) in layout.clusters.iter().zip(&cluster_headers).zip(&cue_times) {
            if let Some(t) = t {
                cues.push((*t, cue_track, pos));
            }
            pos += h.len() as u64 + c.element.data_len;
        }
        let cues_bytes = build_cues(&cues);
        let mut entries = vec![(id::INFO, info_at), (id::TRACKS, tracks_at)];
        let mut at = others_at;
        for e in &layout.others {
            entries.push((e.id, at));
            at += e.header_len + e.data_len;
        }
        if !cues_bytes.is_empty() {
            entries.push((id::CUES, cues_at));
        }
        let seek_head = build_seek_head(&entries);
        if seek_head.len() as u64 == seek_len && cues_bytes.len() as u64 == cues_len {
            return Ok(Plan {
                seek_head,
                info,
                tracks,
                cues: cues_bytes,
                cue_count: cues.len(),
                clusters_at,
                segment_size: pos,
                cluster_headers,
            });
        }
        seek_len = seek_head.len() as u64;
        cues_len = cues_bytes.len() as u64;
    }
    Err(bad("header layout did not converge"))
}

fn copy_range(src: &mut File, dst: &mut impl Write, start: u64, len: u64) -> Result<(), FinalizeError> {
    src.seek(SeekFrom::Start(start))?;
    let copied = io::copy(&mut Read::by_ref(src).take(len), dst)?;
    if copied != len {
        return unexpected(start + copied, "the file shrank while it was copied");
    }
    Ok(())
}

fn write_file(original: &mut File, layout: &Layout, plan: &Plan, tmp: &Path) -> Result<File, FinalizeError> {
    let file = File::create(tmp)?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    copy_range(original, &mut out, 0, layout.ebml_header_end)?;
    out.write_all(&id_bytes(id::SEGMENT))?;
    let size = encode_vint(Some(plan.segment_size), 8)
        .ok_or_else(|| FinalizeError::Unexpected { offset: layout.segment.offset, what: "Segment too large".into() })?;
    out.write_all(&size)?;
    out.write_all(&plan.seek_head)?;
    out.write_all(&plan.info)?;
    out.write_all(&plan.tracks)?;
    for e in &layout.others {
        copy_range(original, &mut out, e.offset, e.header_len + e.data_len)?;
    }
    out.write_all(&plan.cues)?;
    for (c, h) in layout.clusters.iter().zip(&plan.cluster_headers) {
        out.write_all(h)?;
        copy_range(original, &mut out, c.element.offset + c.element.header_len, c.element.data_len)?;
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(file)
}

/// Checks the new file against the original: same Clusters (time, size, blocks), Cues and
/// SeekHead pointing at what they should.
fn verify(original: &Layout, new: &Layout, plan: &Plan) -> Result<(), String> {
    if new.segment.unknown_size || new.clusters.len() != original.clusters.len() {
        return Err("cluster count or Segment size".into());
    }
    for (a, b) in original.clusters.iter().zip(&new.clusters) {
        if a.timecode != b.timecode
            || a.blocks != b.blocks
            || a.element.data_len != b.element.data_len
            || b.element.unknown_size
        {
            return Err(format!("cluster at {} differs", b.element.offset));
        }
    }
    let seg_data = new.segment.offset + new.segment.header_len;
    let cluster_at: Vec<u64> = new.clusters.iter().map(|c| c.element.offset - seg_data).collect();
    if new.cues.len() != plan.cue_count || new.cues.iter().any(|(_, _, p)| cluster_at.binary_search(p).is_err()) {
        return Err("cues".into());
    }
    if cluster_at.first() != Some(&plan.clusters_at) || new.duration.is_none() {
        return Err("layout".into());
    }
    let target = |want| match want {
        id::INFO => Some(new.info.offset),
        id::TRACKS => Some(new.tracks.offset),
        id::CUES => Some(seg_data + plan.clusters_at - plan.cues.len() as u64),
        k => new.others.iter().find(|e| e.id == k).map(|e| e.offset),
    };
    if new.seeks.iter().any(|(k, p)| target(*k) != Some(seg_data + p)) {
        return Err("seek head".into());
    }
    Ok(())
}

/// What [`make_seekable`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finalized {
    /// Size of the new file.
    pub bytes: u64,
    /// The Duration written, in seconds.
    pub duration_s: f64,
    /// CuePoints written.
    pub cues: usize,
    /// Clusters copied.
    pub clusters: usize,
}

/// The temporary file a rewrite of `path` goes through: `<file>.tmp` in the same directory.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Rewrites the finished live WebM at `path` into a seekable one (see the module docs).
/// `known_duration_ns` is the recorder's own duration; without it the duration is estimated
/// from the blocks. On error the original file is untouched and no `.tmp` file is left.
pub fn make_seekable(path: &Path, known_duration_ns: Option<u64>) -> Result<Finalized, FinalizeError> {
    let tmp = tmp_path(path);
    let result = rewrite(path, &tmp, known_duration_ns);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn rewrite(path: &Path, tmp: &Path, known_duration_ns: Option<u64>) -> Result<Finalized, FinalizeError> {
    let mut original = File::open(path)?;
    let layout = scan(&mut original)?;
    let scale = layout.timecode_scale;
    let ticks = match known_duration_ns.filter(|&d| d > 0) {
        // Never shorter than the last block.
        Some(ns) => (ns as f64 / scale as f64).max(layout.last_block_time() as f64),
        None => layout.estimated_duration() as f64,
    };
    let plan = plan(&layout, ticks)?;
    let written = write_file(&mut original, &layout, &plan, tmp)?;
    drop(written);
    let new = scan(File::open(tmp)?)?;
    if let Err(what) = verify(&layout, &new, &plan) {
        return unexpected(0, format!("the rewritten file does not check out: {what}"));
    }
    if let Ok(meta) = original.metadata() {
        let _ = std::fs::set_permissions(tmp, meta.permissions());
    }
    drop(original);
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = File::open(dir).and_then(|d| d.sync_all())
    {
        tracing::debug!(error = %e, "directory not synced after the rename");
    }
    Ok(Finalized {
        bytes: std::fs::metadata(path)?.len(),
        duration_s: ticks * scale as f64 / 1e9,
        cues: plan.cue_count,
        clusters: layout.clusters.len(),
    })
}

/// [`make_seekable`] for the recorder's stop path: logs the outcome, never fails. Returns the
/// new file size when the file was rewritten (`None`: the live file was kept as it was).
pub fn finalize_or_keep(path: &Path, known_duration_ns: Option<u64>) -> Option<u64> {
    let started = std::time::Instant::now();
    match make_seekable(path, known_duration_ns) {
        Ok(f) => {
            tracing::info!(
                file = %path.display(), bytes = f.bytes, duration_s = f.duration_s, cues = f.cues,
                clusters = f.clusters, ms = started.elapsed().as_millis() as u64, "recording made seekable"
            );
            Some(f.bytes)
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "recording left in live form (no duration or cues)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Cursor;

    use super::*;

    #[test]
    fn vints_round_trip() {
        for (v, len) in [(0u64, 1usize), (1, 1), (126, 1), (127, 2), (16_382, 2), (16_383, 3), (1 << 40, 6)] {
            assert_eq!(vint_len(v), Some(len), "{v}");
            let b = encode_vint(Some(v), len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(decode_vint(&b), Some((Some(v), len)));
            // Any longer width decodes to the same value.
            let wide = encode_vint(Some(v), 8).unwrap();
            assert_eq!(decode_vint(&wide), Some((Some(v), 8)));
        }
        assert_eq!(encode_vint(Some(127), 1), None); // 0xFF is "unknown"
        assert_eq!(vint_len(u64::MAX), None);
        assert_eq!(encode_vint(Some(5), 0), None);
        assert_eq!(encode_vint(Some(0x1234), 2).unwrap(), vec![0x52, 0x34]);
        assert_eq!(encode_vint(None, 1).unwrap(), vec![0xFF]);
        assert_eq!(encode_vint(None, 8).unwrap(), vec![0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        for len in 1..=8 {
            assert_eq!(decode_vint(&encode_vint(None, len).unwrap()), Some((None, len)));
        }
        assert_eq!(decode_vint(&[0x00, 1, 2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(decode_vint(&[0x40]), None); // truncated
        assert_eq!(decode_vint(&[]), None);
        assert_eq!(decode_id(&[0x1F, 0x43, 0xB6, 0x75, 0x00]), Some((id::CLUSTER, 4)));
        assert_eq!(decode_id(&[0xA3]), Some((id::SIMPLE_BLOCK, 1)));
        assert_eq!(decode_id(&[0x08, 0, 0, 0, 0]), None);
        assert_eq!(id_bytes(id::INFO), vec![0x15, 0x49, 0xA9, 0x66]);
        assert_eq!(id_bytes(id::TIMECODE_SCALE), vec![0x2A, 0xD7, 0xB1]);
        assert_eq!(uint_bytes(0), vec![0]);
        assert_eq!(uint_bytes(0x1_0000), vec![1, 0, 0]);
    }

    fn el(id: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_element(&mut v, id, data);
        v
    }

    fn unknown(id: u32, data: &[u8]) -> Vec<u8> {
        let mut v = id_bytes(id);
        v.extend(encode_vint(None, 8).unwrap());
        v.extend_from_slice(data);
        v
    }

    fn block(track: u8, rel: i16, key: bool) -> Vec<u8> {
        let mut d = vec![0x80 | track];
        d.extend(rel.to_be_bytes());
        d.push(if key { 0x80 } else { 0 });
        d.extend([0xAB; 5]);
        el(id::SIMPLE_BLOCK, &d)
    }

    fn cluster(tc: u64, blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut d = el(id::TIMECODE, &uint_bytes(tc));
        blocks.iter().for_each(|b| d.extend(b));
        unknown(id::CLUSTER, &d)
    }

    /// A live-mode file: unknown-size Segment and Clusters; video track 1 (10 fps), audio track 2 (50 fps).
    fn live_file(video: bool) -> Vec<u8> {
        let mut f = el(id::EBML, &el(id::DOC_TYPE, b"webm"));
        let mut seg = el(id::INFO, &[el(id::TIMECODE_SCALE, &uint_bytes(1_000_000)), el(0x4D80, b"test")].concat());
        let mut tracks = el(id::TRACK_ENTRY, &[el(id::TRACK_NUMBER, &[2]), el(id::TRACK_TYPE, &[2])].concat());
        if video {
            tracks.extend(el(id::TRACK_ENTRY, &[el(id::TRACK_NUMBER, &[1]), el(id::TRACK_TYPE, &[1])].concat()));
        }
        seg.extend(el(id::TRACKS, &tracks));
        for c in 0..3u64 {
            let mut blocks = Vec::new();
            for k in 0..50i16 {
                if video && k % 5 == 0 {
                    blocks.push(block(1, k * 20, c == 0 && k == 0));
                }
                blocks.push(block(2, k * 20 + 10, true));
            }
            seg.extend(cluster(c * 1000, &blocks));
        }
        f.extend(unknown(id::SEGMENT, &seg));
        f
    }

    #[test]
    fn unknown_sizes_are_resolved_by_scanning() {
        let f = live_file(true);
        let l = scan(Cursor::new(&f)).unwrap();
        assert!(l.segment.unknown_size);
        assert_eq!(l.segment.offset + l.segment.header_len + l.segment.data_len, f.len() as u64);
        assert_eq!(l.clusters.len(), 3);
        for (i, c) in l.clusters.iter().enumerate() {
            assert!(c.element.unknown_size);
            assert_eq!(c.timecode, i as u64 * 1000);
            assert_eq!(c.blocks, 60);
            assert_eq!(c.first_video, Some((i as i64 * 1000, i == 0)));
            assert_eq!(c.first_audio, Some(i as i64 * 1000 + 10));
            // Each one ends where the next Cluster id starts.
            let end = c.element.end() as usize;
            assert!(end == f.len() || f[end..].starts_with(&id_bytes(id::CLUSTER)));
        }
        assert_eq!(l.track_types, vec![(2, 2), (1, 1)]);
        assert_eq!(l.cue_track(), Some((1, true)));
        assert_eq!(l.last_block_time(), 2990);
        assert_eq!(l.estimated_duration(), 3010); // 2990 + 20 ms per audio frame
        assert_eq!(l.duration, None);

        // An unknown-size Cluster followed by something that is no Segment child is refused.
        let mut bad = f.clone();
        bad.extend(el(0x4D80, b"stray"));
        assert!(matches!(scan(Cursor::new(&bad)), Err(FinalizeError::Unexpected { .. })));
        // So is a truncated block.
        assert!(scan(Cursor::new(&f[..f.len() - 3])).is_err());
        // And a chained second Segment.
        let mut two = f.clone();
        two.extend(el(id::EBML, &el(id::DOC_TYPE, b"webm")));
        assert!(scan(Cursor::new(&two)).is_err());
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("onair-finalize-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rewrite_adds_duration_cues_and_sizes() {
        let dir = tempdir();
        for video in [true, false] {
            let path = dir.join("rec.webm");
            let original = live_file(video);
            std::fs::write(&path, &original).unwrap();
            let f = make_seekable(&path, None).unwrap();
            assert!(!tmp_path(&path).exists());
            assert_eq!(f.clusters, 3);
            assert!((f.duration_s - 3.01).abs() < 1e-9, "{f:?}");
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(f.bytes, bytes.len() as u64);
            let l = scan(Cursor::new(&bytes)).unwrap();
            assert!(!l.segment.unknown_size);
            assert!(l.clusters.iter().all(|c| !c.element.unknown_size));
            assert_eq!(l.duration, Some(3010.0));
            // The video track gained a DefaultDuration: its shortest frame interval.
            let video_default = children(&l.tracks_data).unwrap().into_iter().any(|(k, d)| {
                k == id::TRACK_ENTRY
                    && children(d)
                        .unwrap()
                        .iter()
                        .any(|(k, v)| *k == id::TRACK_TYPE && read_uint(v) == Some(TRACK_TYPE_VIDEO))
                    && children(d)
                        .unwrap()
                        .iter()
                        .any(|(k, v)| *k == id::DEFAULT_DURATION && read_uint(v).is_some_and(|ns| ns > 0))
            });
            assert!(video_default == video, "video DefaultDuration present iff there is video");
            let seg_data = l.segment.offset + l.segment.header_len;
            let expect: Vec<Cue> = if video {
                vec![(0, 1, l.clusters[0].element.offset - seg_data)]
            } else {
                l.clusters.iter().map(|c| (c.timecode + 10, 2, c.element.offset - seg_data)).collect()
            };
            assert_eq!(l.cues, expect);
            let targets: Vec<u32> = l.seeks.iter().map(|s| s.0).collect();
            assert_eq!(targets, vec![id::INFO, id::TRACKS, id::CUES]);
            // Cluster bodies are the same bytes.
            let old = scan(Cursor::new(&original)).unwrap();
            for (a, b) in old.clusters.iter().zip(&l.clusters) {
                let body = |f: &[u8], c: &ClusterInfo| {
                    f[(c.element.offset + c.element.header_len) as usize..c.element.end() as usize].to_vec()
                };
                assert_eq!(body(&original, a), body(&bytes, b));
            }
            // Rewriting again changes nothing; a known duration wins over the estimate.
            make_seekable(&path, None).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            let f = make_seekable(&path, Some(3_500_000_000)).unwrap();
            assert!((f.duration_s - 3.5).abs() < 1e-9);
            assert_eq!(scan(File::open(&path).unwrap()).unwrap().duration, Some(3500.0));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_left_alone() {
        let dir = tempdir();
        let path = dir.join("rec.webm");
        let mut original = live_file(true);
        original.extend([0u8; 16]); // zero padding after the last Cluster
        std::fs::write(&path, &original).unwrap();
        assert!(make_seekable(&path, Some(3_000_000_000)).is_err());
        assert_eq!(finalize_or_keep(&path, None), None);
        assert_eq!(std::fs::read(&path).unwrap(), original);
        assert!(!tmp_path(&path).exists());
        assert!(make_seekable(&dir.join("missing.webm"), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
