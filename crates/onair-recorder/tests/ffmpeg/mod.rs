//! ffmpeg/ffprobe helpers shared by the container tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A stereo 20 ms CELT silence frame.
pub const OPUS_SILENCE: [u8; 3] = [0xfc, 0xff, 0xfe];

/// `name` (ffmpeg or ffprobe) as a command; panics with a clear message when they are not installed.
pub fn tool(name: &str) -> Command {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        for t in ["ffmpeg", "ffprobe"] {
            if let Err(e) = Command::new(t).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
                panic!("`{t}` is required by this test but cannot be run ({e}); install ffmpeg (e.g. `apt-get install ffmpeg`)");
            }
        }
    });
    Command::new(name)
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("onair-recorder-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn ffprobe_streams(file: &Path) -> Vec<serde_json::Value> {
    let out = tool("ffprobe")
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
pub fn decode(file: &Path) -> (String, u64) {
    let out = tool("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    // The file's own timestamps (see tests/src/media.rs `decode`): no re-timing onto a guessed frame rate.
    let dec = tool("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-enc_time_base", "-1", "-fps_mode", "passthrough", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(dec.status.success(), "ffmpeg cannot decode {}: {}", file.display(), String::from_utf8_lossy(&dec.stderr));
    (String::from_utf8_lossy(&dec.stderr).into_owned(), n)
}

/// `format.duration` as ffprobe reports it (`None` for N/A).
pub fn ffprobe_duration(file: &Path) -> Option<f64> {
    let out = tool("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"]["duration"].as_str().and_then(|d| d.parse().ok())
}

/// Seeks to `at` seconds and decodes one frame of `stream` (`v` or `a`); returns ffmpeg's errors.
pub fn seek_and_decode(file: &Path, at: f64, stream: &str) -> String {
    let out = tool("ffmpeg")
        .args(["-nostdin", "-v", "error", "-ss", &format!("{at:.3}"), "-i"])
        .arg(file)
        .args([&format!("-frames:{stream}"), "1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "seek to {at}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}
