//! Writes fragmented MP4 files with the recorder's H.264 writer from real H.264 access units
//! (x264 via ffmpeg, constrained baseline as WebRTC sends it) and Opus silence frames, and
//! checks them with ffprobe / ffmpeg: codecs, size, duration, every frame decodes, and what a
//! crash leaves (the file as it was on disk after a flush, before `finish`) still decodes.
//!
//! ffmpeg (with libx264) and ffprobe are required: these tests fail when they are missing.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use onair_recorder::container::{self, Container};
use onair_recorder::mux::{MediaFrame, MuxStats, Tracks};
use onair_recorder::video::VideoCodec;

mod ffmpeg;
use ffmpeg::{OPUS_SILENCE, decode, ffprobe_duration, ffprobe_streams, seek_and_decode, tempdir, tool};

/// 2 s of a 160x90 test pattern at 10 fps (90 is not a multiple of 16: the SPS crops), a
/// keyframe every second, as H.264 access units in AVCC form with their keyframe flag.
fn h264_frames(dir: &Path) -> Vec<(Vec<u8>, bool)> {
    let file = dir.join("src.h264");
    let st = tool("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=10", "-t", "2"])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-profile:v", "baseline", "-g", "10", "-bf", "0"])
        .args(["-f", "h264"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg could not encode H.264 (libx264)");
    let bytes = std::fs::read(&file).unwrap();
    // Annex B: NAL units after 00 00 01 (or 00 00 00 01); an access unit ends at its slice.
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        if bytes[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut frames = Vec::new();
    let mut au = Vec::new();
    let mut key = false;
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(bytes.len(), |n| n - 3);
        while end > s && bytes[end - 1] == 0 {
            end -= 1; // the leading zero of a 4-byte start code
        }
        let nal = &bytes[s..end];
        au.extend_from_slice(&u32::try_from(nal.len()).unwrap().to_be_bytes());
        au.extend_from_slice(nal);
        let kind = nal[0] & 0x1f;
        key |= kind == 5;
        if kind == 1 || kind == 5 {
            frames.push((std::mem::take(&mut au), key));
            key = false;
        }
    }
    assert!(frames.len() >= 19 && frames[0].1, "ffmpeg gave {} frames", frames.len());
    frames
}

/// 10 fps video and 50 fps audio on one timeline, with audio and a delta frame before the first
/// keyframe (dropped by the writer), flushed every half second as the session does. Returns the
/// stats and the file as it was on disk 60% of the way through (what a crash leaves).
fn write_av(path: &Path, frames: &[(Vec<u8>, bool)]) -> (MuxStats, Vec<u8>) {
    let tracks = Tracks { video: true, audio: true, audio_channels: 2 };
    let mut mux = Container::create(path, tracks, Some(VideoCodec::H264)).unwrap();
    assert!(matches!(mux, Container::Mp4(_)));
    let mut events: Vec<(i64, MediaFrame)> = Vec::new();
    let base = 1_000_000_000;
    events.push((base - 100_000_000, MediaFrame::Video { data: frames[1].0.clone(), keyframe: false }));
    for (i, (data, keyframe)) in frames.iter().enumerate() {
        events.push((base + i as i64 * 100_000_000, MediaFrame::Video { data: data.clone(), keyframe: *keyframe }));
    }
    for k in 0..(frames.len() as i64 * 5 + 3) {
        events.push((base - 70_000_000 + k * 20_000_000, MediaFrame::Audio { data: OPUS_SILENCE.to_vec() }));
    }
    events.sort_by_key(|e| e.0);
    let (mut next_flush, mut crash_image) = (0, None);
    for (n, (ts, f)) in events.iter().enumerate() {
        mux.write(*ts, f).unwrap();
        if *ts >= next_flush {
            mux.flush().unwrap();
            next_flush = ts + 500_000_000;
        }
        if n == events.len() * 3 / 5 {
            mux.flush().unwrap();
            crash_image = Some(std::fs::read(path).unwrap());
        }
    }
    (mux.finish().unwrap(), crash_image.unwrap())
}

#[test]
fn an_h264_recording_is_an_mp4_that_plays_whole() {
    assert_eq!(container::extension(Some(VideoCodec::H264)), "mp4");
    assert_eq!(container::extension(Some(VideoCodec::Vp8)), "webm");
    assert_eq!(container::extension(None), "webm");
    let dir = tempdir("mp4");
    let frames = h264_frames(&dir);
    let path = dir.join("rec.mp4");
    let (stats, _) = write_av(&path, &frames);
    assert_eq!(stats.video_frames, frames.len() as u64, "the delta frame before the first keyframe is dropped");
    assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());

    let streams = ffprobe_streams(&path);
    let codecs: Vec<&str> = streams.iter().map(|s| s["codec_name"].as_str().unwrap()).collect();
    assert_eq!(codecs, vec!["h264", "opus"], "{streams:?}");
    assert_eq!((streams[0]["width"].as_u64(), streams[0]["height"].as_u64()), (Some(160), Some(90)));
    assert_eq!(streams[1]["channels"].as_u64(), Some(2));
    let duration = ffprobe_duration(&path).expect("a finished file has a duration");
    assert!((1.9..=2.2).contains(&duration), "duration {duration} s, 2 s were written");

    let (errors, decoded) = decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert_eq!(decoded, frames.len() as u64);
    for at in [0.5, 1.5] {
        let errors = seek_and_decode(&path, at, "v");
        assert!(errors.trim().is_empty(), "seek to {at}: {errors}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_a_crash_leaves_of_an_mp4_still_decodes() {
    let dir = tempdir("mp4-crash");
    let frames = h264_frames(&dir);
    let (_, image) = write_av(&dir.join("rec.mp4"), &frames);
    let crashed = dir.join("crashed.mp4");
    std::fs::write(&crashed, &image).unwrap();
    let streams = ffprobe_streams(&crashed);
    assert_eq!(streams.len(), 2, "{streams:?}");
    let (errors, decoded) = decode(&crashed);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(decoded >= 8 && decoded < frames.len() as u64, "{decoded} of {} frames", frames.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
