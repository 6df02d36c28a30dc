//! Writes WebM files with the recorder's muxer from real VP8 frames (libvpx via ffmpeg)
//! and Opus silence frames, and checks them with ffprobe / ffmpeg: complete files,
//! files truncated as if the recorder crashed, and audio-only files; and the seekable
//! rewrite done at finalize (duration, cues, seeking).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use onair_recorder::finalize;
use onair_recorder::mux::{MediaFrame, Mux, Tracks};

/// A stereo 20 ms CELT silence frame.
const OPUS_SILENCE: [u8; 3] = [0xfc, 0xff, 0xfe];

fn tool(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(format!("/usr/bin/{name}"));
    p.exists().then_some(p)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("onair-recorder-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// VP8 frames (data, keyframe) of a 64x48 test pattern at 10 fps, from an IVF file made by ffmpeg.
fn vp8_frames(dir: &Path) -> Vec<(Vec<u8>, bool)> {
    let ivf = dir.join("src.ivf");
    let st = Command::new(tool("ffmpeg").unwrap())
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2"])
        .args(["-c:v", "libvpx", "-g", "10", "-f", "ivf"])
        .arg(&ivf)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&ivf).unwrap();
    assert_eq!(&bytes[..4], b"DKIF");
    let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let mut frames = Vec::new();
    let mut i = header_len;
    while i + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let data = bytes[i + 12..i + 12 + len].to_vec();
        let key = data[0] & 1 == 0;
        frames.push((data, key));
        i += 12 + len;
    }
    frames
}

fn ffprobe_streams(file: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(tool("ffprobe").unwrap())
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "ffprobe complained: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"].as_array().unwrap().clone()
}

/// Decodes every frame; returns ffmpeg's error output (empty when clean) and the decoded video frame count.
fn decode(file: &Path) -> (String, u64) {
    let out = Command::new(tool("ffprobe").unwrap())
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let dec = Command::new(tool("ffmpeg").unwrap())
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    (String::from_utf8_lossy(&dec.stderr).into_owned(), n)
}

/// Interleaves 10 fps video and 50 fps audio on one timeline, with 70 ms of audio and a
/// delta frame before the first keyframe (the muxer must drop those).
fn write_av(path: &Path, frames: &[(Vec<u8>, bool)]) -> onair_recorder::mux::MuxStats {
    let mut mux = Mux::create(path, Tracks { video: true, audio: true, audio_channels: 2 }).unwrap();
    let mut events: Vec<(i64, MediaFrame)> = Vec::new();
    let base = 1_000_000_000; // timeline time of the first keyframe
    events.push((base - 100_000_000, MediaFrame::Video { data: frames[1].0.clone(), keyframe: false }));
    for (i, (data, keyframe)) in frames.iter().enumerate() {
        events.push((base + i as i64 * 100_000_000, MediaFrame::Video { data: data.clone(), keyframe: *keyframe }));
    }
    let audio_start = base - 70_000_000;
    for k in 0..(frames.len() as i64 * 5 + 3) {
        events.push((audio_start + k * 20_000_000, MediaFrame::Audio { data: OPUS_SILENCE.to_vec() }));
    }
    events.sort_by_key(|e| e.0);
    let mut written = 0;
    for (ts, f) in &events {
        if mux.write(*ts, f).unwrap() {
            written += 1;
        }
    }
    assert!(written > frames.len());
    mux.flush().unwrap();
    mux.finish().unwrap()
}

#[test]
fn muxed_vp8_and_opus_pass_ffprobe() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        eprintln!("ffmpeg/ffprobe not installed; skipping");
        return;
    }
    let dir = tempdir("av");
    let frames = vp8_frames(&dir);
    assert!(frames.len() >= 19 && frames[0].1, "ffmpeg gave {} frames", frames.len());
    let path = dir.join("rec.webm");
    let stats = write_av(&path, &frames);
    assert_eq!(stats.video_frames, frames.len() as u64);
    assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(stats.duration_ns >= 1_900_000_000, "{stats:?}");

    let streams = ffprobe_streams(&path);
    assert_eq!(streams.len(), 2, "{streams:?}");
    let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(v["codec_name"], "vp8");
    assert_eq!(v["width"], 64);
    assert_eq!(v["height"], 48);
    let a = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!(a["codec_name"], "opus");
    assert_eq!(a["channels"], 2);
    assert_eq!(a["sample_rate"], "48000");
    let (errors, n) = decode(&path);
    assert!(errors.is_empty(), "decode errors: {errors}");
    assert_eq!(n, frames.len() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_live_file_still_decodes() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        eprintln!("ffmpeg/ffprobe not installed; skipping");
        return;
    }
    let dir = tempdir("crash");
    let frames = vp8_frames(&dir);
    let path = dir.join("rec.webm");
    write_av(&path, &frames);
    // Cut the file in the middle of a frame, as a crash would.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.webm");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 5]).unwrap();
    let out = Command::new(tool("ffprobe").unwrap())
        .args(["-v", "error", "-show_streams", "-of", "json"])
        .arg(&cut)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["streams"].as_array().unwrap().len(), 2);
    let (_, n) = decode(&cut);
    assert!(n >= 5, "only {n} frames decodable from the truncated file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn audio_only_recording() {
    if tool("ffprobe").is_none() {
        eprintln!("ffprobe not installed; skipping");
        return;
    }
    let dir = tempdir("audio");
    let path = dir.join("rec.webm");
    let mut mux = Mux::create(&path, Tracks { video: false, audio: true, audio_channels: 2 }).unwrap();
    for k in 0..100 {
        assert!(mux.write(5_000_000 + k * 20_000_000, &MediaFrame::Audio { data: OPUS_SILENCE.to_vec() }).unwrap());
    }
    let stats = mux.finish().unwrap();
    assert_eq!(stats.audio_frames, 100);
    assert_eq!(stats.duration_ns, 2_000_000_000);
    let streams = ffprobe_streams(&path);
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["codec_name"], "opus");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `format.duration` as ffprobe reports it (`None` for N/A).
fn ffprobe_duration(file: &Path) -> Option<f64> {
    let out = Command::new(tool("ffprobe").unwrap())
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"]["duration"].as_str().and_then(|d| d.parse().ok())
}

/// Seeks to `at` seconds and decodes one frame of `stream` (`v` or `a`); returns ffmpeg's errors.
fn seek_and_decode(file: &Path, at: f64, stream: &str) -> String {
    let out = Command::new(tool("ffmpeg").unwrap())
        .args(["-v", "error", "-ss", &format!("{at:.3}"), "-i"])
        .arg(file)
        .args([&format!("-frames:{stream}"), "1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "seek to {at}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Cluster payloads, in order.
fn cluster_bodies(bytes: &[u8]) -> Vec<Vec<u8>> {
    let layout = finalize::scan(std::io::Cursor::new(bytes)).unwrap();
    layout
        .clusters
        .iter()
        .map(|c| bytes[(c.element.offset + c.element.header_len) as usize..c.element.end() as usize].to_vec())
        .collect()
}

#[test]
fn finalized_file_has_a_duration_and_cues_and_seeks() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        eprintln!("ffmpeg/ffprobe not installed; skipping");
        return;
    }
    let dir = tempdir("seekable");
    let frames = vp8_frames(&dir);
    let path = dir.join("rec.webm");
    let stats = write_av(&path, &frames);
    let live = std::fs::read(&path).unwrap();
    // Live mode: no duration, no cues, unknown sizes.
    assert_eq!(ffprobe_duration(&path), None);
    let before = finalize::scan(std::io::Cursor::new(&live)).unwrap();
    assert!(before.segment.unknown_size && before.cues.is_empty() && before.duration.is_none());
    assert!(before.clusters.iter().all(|c| c.element.unknown_size));

    let done = finalize::make_seekable(&path, Some(stats.duration_ns)).unwrap();
    assert!(!finalize::tmp_path(&path).exists());
    let content_s = frames.len() as f64 * 0.1; // 10 fps
    let duration = ffprobe_duration(&path).expect("a duration after finalize");
    assert!((duration - content_s).abs() < 0.1, "duration {duration} s for {content_s} s of media ({done:?})");
    assert_eq!(done.bytes, std::fs::metadata(&path).unwrap().len());

    let streams = ffprobe_streams(&path);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(streams.iter().any(|s| s["codec_name"] == "vp8" && s["width"] == 64));
    assert!(streams.iter().any(|s| s["codec_name"] == "opus" && s["channels"] == 2));
    let (errors, n) = decode(&path);
    assert!(errors.is_empty(), "decode errors: {errors}");
    assert_eq!(n, frames.len() as u64);
    for at in [content_s / 2.0, content_s / 2.0 + 0.35, 0.0] {
        let errors = seek_and_decode(&path, at, "v");
        assert!(errors.is_empty(), "seek to {at}: {errors}");
    }

    // Same Clusters byte for byte, now with known sizes; one cue per keyframe Cluster on the video track.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(cluster_bodies(&bytes), cluster_bodies(&live));
    let after = finalize::scan(std::io::Cursor::new(&bytes)).unwrap();
    assert!(!after.segment.unknown_size && after.clusters.iter().all(|c| !c.element.unknown_size));
    let (video_track, is_video) = after.cue_track().unwrap();
    assert!(is_video);
    let keyframe_clusters: Vec<_> = after.clusters.iter().filter(|c| c.first_video.is_some_and(|v| v.1)).collect();
    assert_eq!(keyframe_clusters.len(), frames.iter().filter(|f| f.1).count());
    assert_eq!(after.cues.len(), keyframe_clusters.len());
    let seg_data = after.segment.offset + after.segment.header_len;
    for ((time, track, pos), c) in after.cues.iter().zip(&keyframe_clusters) {
        // libwebm puts queued audio before the keyframe that opens a Cluster, so the Cluster
        // Timecode can be a little earlier than the keyframe; the cue is at the keyframe.
        let key_time = c.first_video.unwrap().0 as u64;
        assert!(key_time >= c.timecode && key_time - c.timecode < 100);
        assert_eq!((*time, *track, *pos), (key_time, video_track, c.element.offset - seg_data));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn finalized_audio_only_file_is_seekable() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        eprintln!("ffmpeg/ffprobe not installed; skipping");
        return;
    }
    let dir = tempdir("audio-seekable");
    let path = dir.join("rec.webm");
    let mut mux = Mux::create(&path, Tracks { video: false, audio: true, audio_channels: 2 }).unwrap();
    // 40 s: libwebm starts a new audio-only Cluster every 30 s.
    for k in 0..2000 {
        assert!(mux.write(k * 20_000_000, &MediaFrame::Audio { data: OPUS_SILENCE.to_vec() }).unwrap());
    }
    mux.finish().unwrap();
    // Without the recorder's duration: estimated from the blocks.
    let done = finalize::make_seekable(&path, None).unwrap();
    let duration = ffprobe_duration(&path).unwrap();
    assert!((duration - 40.0).abs() < 0.1, "{duration} ({done:?})");
    let layout = finalize::scan(std::fs::File::open(&path).unwrap()).unwrap();
    assert!(layout.clusters.len() >= 2);
    assert_eq!(layout.cues.len(), layout.clusters.len());
    let (audio_track, is_video) = layout.cue_track().unwrap();
    assert!(!is_video);
    assert!(layout.cues.iter().all(|c| c.1 == audio_track));
    let streams = ffprobe_streams(&path);
    assert_eq!(streams.len(), 1);
    let (errors, _) = decode(&path);
    assert!(errors.is_empty(), "decode errors: {errors}");
    let errors = seek_and_decode(&path, 35.0, "a");
    assert!(errors.is_empty(), "{errors}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_file_is_not_rewritten() {
    if tool("ffmpeg").is_none() {
        eprintln!("ffmpeg not installed; skipping");
        return;
    }
    let dir = tempdir("truncated-finalize");
    let frames = vp8_frames(&dir);
    let path = dir.join("rec.webm");
    write_av(&path, &frames);
    let bytes = std::fs::read(&path).unwrap();
    let cut = &bytes[..bytes.len() * 3 / 5];
    std::fs::write(&path, cut).unwrap();
    assert!(finalize::make_seekable(&path, None).is_err());
    assert_eq!(finalize::finalize_or_keep(&path, Some(1_000_000_000)), None);
    assert_eq!(std::fs::read(&path).unwrap(), cut);
    assert!(!finalize::tmp_path(&path).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
