//! ffprobe/ffmpeg checks of recorded files.

use std::path::Path;

use serde_json::Value;

/// `ffprobe -v error ARGS path`'s output; panics saying why when it fails.
fn ffprobe(args: &[&str], path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe not installed (make deps installs ffmpeg)");
    assert!(out.status.success(), "ffprobe failed on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `ffprobe -show_streams -show_format` as JSON.
pub fn probe(path: &Path) -> Value {
    serde_json::from_slice(&ffprobe(&["-show_streams", "-show_format", "-of", "json"], path)).unwrap()
}

/// Codec names of the streams, e.g. `["vp8", "opus"]` (sorted).
pub fn codecs(probe: &Value) -> Vec<String> {
    let mut v: Vec<String> = probe["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["codec_name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The container duration in seconds, if ffprobe knows it.
pub fn duration(probe: &Value) -> Option<f64> {
    probe["format"]["duration"].as_str().and_then(|d| d.parse().ok())
}

/// Decodes the whole file; returns ffmpeg's error output (empty = clean) and the decoded video frame count.
/// Frames keep the file's own timestamps (`-fps_mode passthrough`, the demuxer's time base): without
/// that, ffmpeg re-times them onto a guessed frame rate and reports two frames closer than a frame
/// apart as "non monotonically increasing dts", a complaint about its re-timing, not the file.
pub fn decode(path: &Path) -> (String, u64) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-enc_time_base", "-1", "-fps_mode", "passthrough", "-f", "null", "-"])
        .output()
        .expect("ffmpeg not installed");
    let frames = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    (String::from_utf8_lossy(&out.stderr).into_owned(), frames)
}

/// Writes a moving test pattern (`width`x`height` at `fps`, 6 s) to `path` as MJPEG, for
/// Chromium's `--use-file-for-fake-video-capture` (it loops the file): a camera of a chosen size.
pub fn test_pattern_mjpeg(path: &Path, width: u32, height: u32, fps: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={width}x{height}:rate={fps}"))
        .args(["-t", "6", "-q:v", "6"])
        .arg(path)
        .output()
        .expect("ffmpeg not installed (make deps installs it)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
}

/// The width of the last video frame of `path` (0 when it has none): a recording's resolution at
/// its end, after any layer switch.
pub fn last_frame_width(path: &Path) -> u64 {
    let out = ffprobe(&["-select_streams", "v:0", "-show_entries", "frame=width", "-of", "csv=p=0"], path);
    String::from_utf8_lossy(&out).lines().rev().find_map(|l| l.trim().parse().ok()).unwrap_or(0)
}
