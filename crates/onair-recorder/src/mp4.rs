//! The MP4 writer for H.264 streams (WebM holds VP8 here): a fragmented MP4 (ISO/IEC 14496-12
//! `moov` + `mvex`, then `moof` + `mdat` fragments), boxes encoded by `mp4-atom`.
//!
//! Why a crash leaves a playable file: the header (`ftyp`, `moov` with the H.264 `avcC` and the
//! Opus `dOps`) is written once, then every [`Mp4Mux::flush`] (every half second, from the
//! session) appends one self-contained fragment holding the samples since the last one and
//! pushes it to the OS. A crash loses at most the unflushed half second; what is on disk is a
//! sequence of complete fragments that ffmpeg and browsers play. [`Mp4Mux::finish`] writes the
//! last fragment and the movie's duration into the `mehd` box reserved in the header.
//!
//! The file starts on the first H.264 keyframe that comes with (or after) its SPS and PPS; earlier
//! frames are dropped, and so is audio before it, so audio and video start together. Video is in
//! 90 kHz units, Opus in 48 kHz; a sample's duration is the distance to the next one of its track,
//! so each track holds back one sample until the next arrives (or the file ends). Parameter sets
//! stay in the samples too, so a decoder follows a mid-stream resolution change. B-frames are not
//! supported (WebRTC H.264 has none: timestamps are decode order).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use mp4_atom::{
    Audio, Avc1, Avcc, Codec, Dinf, Dops, Dref, DrefEntry, Encode, FourCC, Ftyp, Hdlr, Mdhd, Mdia, Mehd, Mfhd, Minf,
    Moof, Moov, Mvex, Mvhd, Opus, Smhd, Stbl, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples,
    Url, Visual, Vmhd,
};

use crate::h264;
use crate::mux::{FileClock, MediaFrame, MuxError, MuxStats, OPUS_PRE_SKIP, Tracks};

/// Track ids in the file.
const VIDEO_TRACK: u32 = 1;
const AUDIO_TRACK: u32 = 2;
/// Track timescales: the RTP clocks.
const VIDEO_RATE: u32 = 90_000;
const AUDIO_RATE: u32 = 48_000;
/// The movie timescale (`mvhd`, `mehd`): milliseconds.
const MOVIE_RATE: u32 = 1000;
/// A fragment is cut early when its samples reach this size (a burst between two flushes).
const MAX_FRAGMENT_BYTES: usize = 4 << 20;
/// `trun` sample flags: a sync sample (depends on nothing), and a non-sync one.
const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

/// One sample on its track's timeline.
#[derive(Debug)]
struct Sample {
    /// Decode time in the track's timescale, from the file's start.
    dts: u64,
    data: Vec<u8>,
    sync: bool,
}

/// A track's samples waiting for the next fragment.
#[derive(Debug, Default)]
struct Queue {
    /// Samples with known durations: `(sample, duration)`.
    ready: Vec<(Sample, u32)>,
    /// The last sample, waiting for the next to know its duration.
    held: Option<Sample>,
    /// The last duration given (used for the final sample).
    last_duration: Option<u32>,
    /// Decode time of the next sample written into a fragment.
    next_dts: Option<u64>,
    /// Bytes of the `ready` samples.
    bytes: usize,
}

impl Queue {
    fn push(&mut self, s: Sample) {
        if let Some(prev) = self.held.take() {
            let d = u32::try_from(s.dts.saturating_sub(prev.dts)).unwrap_or(u32::MAX).max(1);
            self.last_duration = Some(d);
            self.bytes += prev.data.len();
            self.ready.push((prev, d));
        }
        self.held = Some(s);
    }

    /// Releases the held sample too (end of file), with the track's last duration.
    fn release(&mut self, fallback: u32) {
        if let Some(s) = self.held.take() {
            let d = self.last_duration.unwrap_or(fallback);
            self.bytes += s.data.len();
            self.ready.push((s, d));
        }
    }

    /// Empties `ready` (its samples went into a fragment).
    fn clear(&mut self) {
        self.ready.clear();
        self.bytes = 0;
    }
}

/// Writes one recording as fragmented MP4 (H.264 and/or Opus).
pub struct Mp4Mux {
    tracks: Tracks,
    file: BufWriter<File>,
    len: u64,
    started: bool,
    /// The latest parameter sets seen (the header takes the ones before the first keyframe).
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// Where the `mehd` duration (u64) is in the file.
    mehd_at: u64,
    clock: FileClock,
    queues: [Queue; 2],
    sequence: u32,
    stats: MuxStats,
}

impl std::fmt::Debug for Mp4Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Mux").field("tracks", &self.tracks).field("stats", &self.stats).finish_non_exhaustive()
    }
}

fn atom_err(_: mp4_atom::Error) -> MuxError {
    MuxError::Mp4("box encoding failed")
}

fn ns_to(rate: u32, ns: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX)
}

fn track_header(track_id: u32, volume: u8, size: Option<(u16, u16)>) -> Tkhd {
    let (w, h) = size.unwrap_or((0, 0));
    Tkhd {
        track_id,
        enabled: true,
        in_movie: true,
        volume: volume.into(),
        width: w.into(),
        height: h.into(),
        ..Tkhd::default()
    }
}

fn media(handler: &[u8; 4], name: &str, rate: u32, vmhd: bool, codec: Codec) -> Mdia {
    Mdia {
        mdhd: Mdhd { timescale: rate, language: "und".into(), ..Mdhd::default() },
        hdlr: Hdlr { handler: FourCC::new(handler), name: name.into() },
        minf: Minf {
            vmhd: vmhd.then(Vmhd::default),
            smhd: (!vmhd).then(Smhd::default),
            dinf: Dinf { dref: Dref { entries: vec![DrefEntry::Url(Url { location: String::new() })] } },
            stbl: Stbl { stsd: Stsd { codecs: vec![codec] }, ..Stbl::default() },
            ..Minf::default()
        },
    }
}

impl Mp4Mux {
    /// Creates (truncates) the file at `path`; nothing is written until the first frame.
    pub fn create(path: &Path, tracks: Tracks) -> Result<Self, MuxError> {
        let file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        Ok(Self {
            tracks,
            file,
            len: 0,
            started: false,
            sps: None,
            pps: None,
            mehd_at: 0,
            clock: FileClock::default(),
            queues: [Queue::default(), Queue::default()],
            sequence: 0,
            stats: MuxStats::default(),
        })
    }

    /// Whether the file has started (its header is written).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        MuxStats { bytes: self.len, ..self.stats }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), MuxError> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes `ftyp` and `moov` once the first frame allows: an H.264 keyframe with known
    /// parameter sets when there is video, else the first Opus frame.
    fn open(&mut self, first: &MediaFrame) -> Result<bool, MuxError> {
        let video = match first {
            MediaFrame::Video { keyframe: true, .. } if self.tracks.video => {
                let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) else { return Ok(false) };
                let Some(size) = h264::sps_size(&sps) else { return Ok(false) };
                Some((sps, pps, size))
            }
            _ if self.tracks.video => return Ok(false),
            _ => None,
        };
        let channels = self.tracks.audio_channels.clamp(1, 2);
        let mut traks = Vec::new();
        let mut trex = Vec::new();
        if let Some((sps, pps, (w, h))) = video {
            let avcc = Avcc::new(&sps, &pps).map_err(atom_err)?;
            let visual = Visual { data_reference_index: 1, width: w, height: h, ..Visual::default() };
            let codec = Codec::Avc1(Avc1 {
                visual,
                avcc,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            });
            traks.push(Trak {
                tkhd: track_header(VIDEO_TRACK, 0, Some((w, h))),
                mdia: media(b"vide", "onair video", VIDEO_RATE, true, codec),
                ..Trak::default()
            });
            trex.push(Trex { track_id: VIDEO_TRACK, default_sample_description_index: 1, ..Trex::default() });
        }
        if self.tracks.audio {
            let audio = Audio {
                data_reference_index: 1,
                channel_count: u16::from(channels),
                sample_size: 16,
                sample_rate: 48_000u16.into(),
            };
            let dops = Dops {
                output_channel_count: channels,
                pre_skip: OPUS_PRE_SKIP,
                input_sample_rate: AUDIO_RATE,
                output_gain: 0,
                channel_mapping: None,
            };
            let codec = Codec::Opus(Opus { audio, dops, btrt: None });
            traks.push(Trak {
                tkhd: track_header(AUDIO_TRACK, 1, None),
                mdia: media(b"soun", "onair audio", AUDIO_RATE, false, codec),
                ..Trak::default()
            });
            trex.push(Trex { track_id: AUDIO_TRACK, default_sample_description_index: 1, ..Trex::default() });
        }
        let ftyp = Ftyp {
            major_brand: FourCC::new(b"isom"),
            minor_version: 0x200,
            compatible_brands: [b"isom", b"iso6", b"iso2", b"avc1", b"mp41"].iter().map(|b| FourCC::new(b)).collect(),
        };
        let moov = Moov {
            mvhd: Mvhd {
                timescale: MOVIE_RATE,
                rate: 1u16.into(),
                volume: 1u8.into(),
                next_track_id: AUDIO_TRACK + 1,
                ..Mvhd::default()
            },
            mvex: Some(Mvex { mehd: Some(Mehd { fragment_duration: 0 }), trex }),
            trak: traks,
            ..Moov::default()
        };
        let mut header = Vec::new();
        ftyp.encode(&mut header).map_err(atom_err)?;
        moov.encode(&mut header).map_err(atom_err)?;
        // The duration goes into mehd at the end: its body is version/flags (4 bytes), then the u64.
        let mehd = header.windows(4).position(|w| w == b"mehd").ok_or(MuxError::Mp4("no mehd box"))?;
        self.mehd_at = (mehd + 4 + 4) as u64;
        self.put(&header)?;
        self.started = true;
        Ok(true)
    }

    /// Takes one frame at timeline time `ts_ns` (non-decreasing across calls). Frames before the
    /// file's first frame (a keyframe when there is video) are dropped; returns whether it was kept.
    pub fn write(&mut self, ts_ns: i64, frame: &MediaFrame) -> Result<bool, MuxError> {
        if let MediaFrame::Video { data, .. } = frame {
            if let Some(sps) = h264::find(data, h264::NAL_SPS) {
                self.sps = Some(sps.to_vec());
            }
            if let Some(pps) = h264::find(data, h264::NAL_PPS) {
                self.pps = Some(pps.to_vec());
            }
        }
        if !self.started {
            if !self.open(frame)? {
                return Ok(false);
            }
            self.clock.start(ts_ns);
        }
        let Some(rel) = self.clock.place(ts_ns, frame) else { return Ok(false) };
        let (track, data, sync, rate) = match frame {
            MediaFrame::Video { data, keyframe } if self.tracks.video => (0, data, *keyframe, VIDEO_RATE),
            MediaFrame::Audio { data } if self.tracks.audio => (1, data, true, AUDIO_RATE),
            _ => return Ok(false),
        };
        self.queues[track].push(Sample { dts: ns_to(rate, rel), data: data.clone(), sync });
        self.clock.wrote(rel, frame, &mut self.stats);
        if self.queues.iter().map(|q| q.bytes).sum::<usize>() >= MAX_FRAGMENT_BYTES {
            self.fragment()?;
        }
        Ok(true)
    }

    /// Appends one `moof` + `mdat` with every sample whose duration is known (nothing if none).
    fn fragment(&mut self) -> Result<(), MuxError> {
        if self.queues.iter().all(|q| q.ready.is_empty()) {
            return Ok(());
        }
        self.sequence += 1;
        let mut trafs = Vec::new();
        let mut payload: Vec<&[u8]> = Vec::new();
        let mut offsets = Vec::new();
        let mut at = 0usize;
        for (i, q) in self.queues.iter_mut().enumerate() {
            let Some((first, _)) = q.ready.first() else { continue };
            let base = *q.next_dts.get_or_insert(first.dts);
            let entries: Vec<TrunEntry> = q
                .ready
                .iter()
                .map(|(s, d)| TrunEntry {
                    duration: Some(*d),
                    size: Some(u32::try_from(s.data.len()).unwrap_or(u32::MAX)),
                    flags: Some(if s.sync { SYNC } else { NON_SYNC }),
                    cts: None,
                })
                .collect();
            q.next_dts = Some(base + q.ready.iter().map(|(_, d)| u64::from(*d)).sum::<u64>());
            trafs.push(Traf {
                tfhd: Tfhd {
                    track_id: if i == 0 { VIDEO_TRACK } else { AUDIO_TRACK },
                    default_base_is_moof: true,
                    ..Tfhd::default()
                },
                tfdt: Some(Tfdt { base_media_decode_time: base }),
                trun: vec![Trun { data_offset: Some(0), samples: TrunSamples::Explicit(entries) }],
                ..Traf::default()
            });
            offsets.push(at);
            for (s, _) in &q.ready {
                at += s.data.len();
                payload.push(&s.data);
            }
        }
        let mut moof = Moof { mfhd: Mfhd { sequence_number: self.sequence }, traf: trafs };
        // Data offsets count from the moof's first byte: its size (fixed by the first encoding,
        // the offsets are fixed-width) plus the 8-byte mdat header.
        let mut probe = Vec::new();
        moof.encode(&mut probe).map_err(atom_err)?;
        for (traf, off) in moof.traf.iter_mut().zip(&offsets) {
            let offset = i32::try_from(probe.len() + 8 + off).map_err(|_| MuxError::Mp4("fragment too large"))?;
            traf.trun[0].data_offset = Some(offset);
        }
        let mut head = Vec::with_capacity(probe.len() + 8);
        moof.encode(&mut head).map_err(atom_err)?;
        let mdat_len = u32::try_from(at + 8).map_err(|_| MuxError::Mp4("fragment too large"))?;
        head.extend_from_slice(&mdat_len.to_be_bytes());
        head.extend_from_slice(b"mdat");
        let mut bytes = head;
        for p in payload {
            bytes.extend_from_slice(p);
        }
        for q in &mut self.queues {
            q.clear();
        }
        self.put(&bytes)
    }

    /// Writes a fragment with the samples so far and pushes it to the OS (call periodically, e.g.
    /// every half second), so a crash loses at most that much media.
    pub fn flush(&mut self) -> Result<(), MuxError> {
        if self.started {
            self.fragment()?;
            self.file.flush()?;
        }
        Ok(())
    }

    /// Writes the last samples and the movie duration, flushes and syncs the file. Returns what it holds.
    pub fn finish(mut self) -> Result<MuxStats, MuxError> {
        if self.started {
            self.queues[0].release(VIDEO_RATE / 30);
            self.queues[1].release(AUDIO_RATE / 50);
            self.fragment()?;
            let duration = self.stats.duration_ns / 1_000_000;
            self.file.seek(SeekFrom::Start(self.mehd_at))?;
            self.file.write_all(&duration.to_be_bytes())?;
            self.file.seek(SeekFrom::End(0))?;
        }
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        Ok(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_sample_gets_the_distance_to_the_next_one() {
        let mut q = Queue::default();
        q.push(Sample { dts: 0, data: vec![1], sync: true });
        assert!(q.ready.is_empty(), "the first sample waits for its duration");
        q.push(Sample { dts: 3000, data: vec![2], sync: false });
        q.push(Sample { dts: 6010, data: vec![3], sync: false });
        let durations: Vec<u32> = q.ready.iter().map(|(_, d)| *d).collect();
        assert_eq!(durations, vec![3000, 3010]);
        q.release(3000);
        assert_eq!(q.ready.last().map(|(_, d)| *d), Some(3010), "the last sample repeats the last duration");
        // Two samples on one tick still get a non-zero duration.
        let mut q = Queue::default();
        q.push(Sample { dts: 5, data: vec![], sync: true });
        q.push(Sample { dts: 5, data: vec![], sync: true });
        assert_eq!(q.ready[0].1, 1);
    }

    #[test]
    fn nanoseconds_to_track_units() {
        assert_eq!(ns_to(VIDEO_RATE, 1_000_000_000), 90_000);
        assert_eq!(ns_to(AUDIO_RATE, 20_000_000), 960);
        assert_eq!(ns_to(MOVIE_RATE, 1_500_000_000), 1500);
    }
}
