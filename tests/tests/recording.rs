//! Server-side recording, end to end: Chromium broadcasts with a fake camera and
//! microphone, the recorder joins as a WebRTC peer and writes WebM; the catalog,
//! the file (ffprobe/ffmpeg), the /recordings page and range downloads are checked.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::browser::Browser;
use onair_tests::cluster::Cluster;
use onair_tests::registry::{assert_fits, client, duration_bounds, finished_recording, recordings_of};
use onair_tests::{Onair, media, wait_until};

const LONG: Duration = Duration::from_secs(20);

async fn wait_complete(url: &str, stream: &str, within: Duration) -> pb::Recording {
    let r = finished_recording(url, stream, within).await;
    assert_eq!(r.state(), pb::RecordingState::Complete, "recording failed: {r:?}");
    r
}

/// Raw GET with a Range header; returns (status, content-range, body bytes).
async fn get_range(port: u16, path: &str, range: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: {range}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let cr = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-range:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    (status, cr, buf[split + 4..].to_vec())
}

#[tokio::test]
async fn a_browser_broadcast_becomes_a_playable_webm() {
    let c = Cluster::start_with(1, true, true).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("rec-broadcaster").await;
    let sid = b.go_live(&base, "Recorded show").await;
    let live_at = Instant::now();
    let reg = c.registry.grpc_url();
    wait_until(LONG, "the recording to start", || async { !recordings_of(&reg, &sid).await.is_empty() }).await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(live_at.elapsed())).await;
    b.stop_broadcast().await;
    let bounds = duration_bounds(&reg, &sid, live_at).await;
    let stopped = Instant::now();

    let rec = wait_complete(&reg, &sid, Duration::from_secs(5)).await;
    println!("COMPLETE {:?} after stop; catalog says {} ms, {} bytes", stopped.elapsed(), rec.duration_ms, rec.bytes);
    assert_eq!((rec.video_codec.as_str(), rec.audio_codec.as_str()), ("VP8", "OPUS"));
    let path = c.recordings.join(&rec.file_name);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), rec.bytes);

    let probe = media::probe(&path);
    assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
    let dur = media::duration(&probe).expect("ffprobe reports a duration");
    assert_fits(dur, bounds);
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(frames > 60, "only {frames} video frames decoded");

    // Range requests: 206 with exactly the requested bytes; unknown ids are 404s.
    let gw = c.gateways[0].http;
    let url = format!("/recordings/{}.webm", rec.id);
    let file = std::fs::read(&path).unwrap();
    let (status, cr, body) = get_range(gw, &url, "bytes=100-1099").await;
    assert_eq!(status, 206);
    assert_eq!(cr, format!("bytes 100-1099/{}", file.len()));
    assert_eq!(body, file[100..1100]);
    let (status, _, _) = get_range(c.front(), &url, "bytes=-10").await;
    assert_eq!(status, 206, "range requests pass through nginx");
    assert_eq!(get_range(gw, "/recordings/nope.webm", "bytes=0-1").await.0, 404);
    assert_eq!(get_range(gw, "/recordings/..%2f..%2fetc%2fpasswd", "bytes=0-1").await.0, 404);

    // The /recordings page lists it and plays it in the browser.
    let w = Browser::start("rec-viewer").await;
    w.goto(&format!("{base}/recordings")).await;
    let sel = format!("document.querySelector('[data-recording-id=\"{}\"] video')", rec.id);
    w.wait_for("the recording in the list", LONG, &format!("return !!{sel}")).await;
    w.eval(&format!("const v = {sel}; v.muted = true; v.play(); return true")).await;
    w.wait_for("playback to advance", LONG, &format!("return {sel}.currentTime > 1")).await;
    w.screenshot("recordings").await;
}

#[tokio::test]
async fn a_killed_recorder_leaves_a_decodable_file_and_cleans_up_after_restart() {
    let mut c = Cluster::start_with(1, false, true).await;
    let base = format!("http://127.0.0.1:{}", c.gateways[0].http);
    let b = Browser::start("crash-broadcaster").await;
    let sid = b.go_live(&base, "Crash test").await;
    let reg = c.registry.grpc_url();
    wait_until(LONG, "the recording to hold media", || async {
        let recs = recordings_of(&reg, &sid).await;
        recs.first().is_some_and(|r| r.bytes > 50_000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let recorder = c.recorder.as_mut().unwrap();
    recorder.proc.kill();
    let rec = recordings_of(&reg, &sid).await.remove(0);
    assert_eq!(rec.state(), pb::RecordingState::Recording);
    let path = c.recordings.join(&rec.file_name);
    let probe = media::probe(&path);
    assert!(media::codecs(&probe).contains(&"vp8".to_owned()), "{probe}");
    let (errors, frames) = media::decode(&path);
    println!("partial file: {} bytes, {frames} frames, errors: {errors:?}", std::fs::metadata(&path).unwrap().len());
    assert!(frames > 10, "the partial file should decode ({frames} frames)");

    recorder.restart().await;
    wait_until(LONG, "the catalog entry to leave RECORDING", || async {
        let recs = recordings_of(&reg, &sid).await;
        recs.iter().find(|r| r.id == rec.id).is_some_and(|r| r.state() != pb::RecordingState::Recording)
    })
    .await;
    b.stop_broadcast().await;
}

#[tokio::test]
async fn two_concurrent_broadcasts_on_the_all_in_one_binary_make_two_files() {
    let dir = std::env::temp_dir().join(format!("onair-rec-aio-{}", std::process::id()));
    let gw = Onair::start("aio-recorder", &["--store", "memory", "--data-dir", dir.to_str().unwrap()]).await;
    gw.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", gw.http);
    let (b1, b2) = (Browser::start("aio-b1").await, Browser::start("aio-b2").await);
    let s1 = b1.go_live(&base, "First").await;
    let s2 = b2.go_live(&base, "Second").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    b1.stop_broadcast().await;
    b2.stop_broadcast().await;
    let reg = gw.grpc_url();
    let r1 = wait_complete(&reg, &s1, Duration::from_secs(10)).await;
    let r2 = wait_complete(&reg, &s2, Duration::from_secs(10)).await;
    assert_ne!(r1.file_name, r2.file_name);
    for r in [r1, r2] {
        let path = dir.join("recordings").join(&r.file_name);
        let probe = media::probe(&path);
        assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
        let (errors, frames) = media::decode(&path);
        assert!(errors.trim().is_empty(), "{errors}");
        assert!(frames > 40, "{frames} frames");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_to_the_all_in_one_finalizes_the_recording_before_exit() {
    let dir = std::env::temp_dir().join(format!("onair-rec-sigterm-{}-{}", std::process::id(), onair_tests::unique()));
    let args = ["--store", "embedded", "--data-dir", dir.to_str().unwrap()];
    let mut aio = Onair::start("aio-sigterm", &args).await;
    aio.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", aio.http);
    let b = Browser::start("sigterm-broadcaster").await;
    let sid = b.go_live(&base, "Stopped by SIGTERM").await;
    let live_at = Instant::now();
    let reg = aio.grpc_url();
    wait_until(LONG, "the recording to hold media", || async {
        recordings_of(&reg, &sid).await.first().is_some_and(|r| r.bytes > 20_000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(live_at.elapsed())).await;
    let bounds = duration_bounds(&reg, &sid, live_at).await;
    let code = aio.proc.terminate(Duration::from_secs(20)).await;
    let log = aio.proc.output();
    assert_eq!(code, Some(0), "onair did not exit cleanly within 20 s of SIGTERM:\n{log}");
    assert!(!log.contains("final recording state not stored"), "the final recording state was lost:\n{log}");
    // The broadcaster's page would go live again on the restarted server: close it first.
    drop(b);

    // The file was finalized before exit: seekable, with the broadcast's duration.
    let recordings = dir.join("recordings");
    let files: Vec<_> = std::fs::read_dir(&recordings).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "exactly one file (no temporary left behind): {files:?}");
    let probe = media::probe(&files[0]);
    let dur = media::duration(&probe).expect("ffprobe reports a duration");
    assert_fits(dur, bounds);

    // After a restart on the same data: one COMPLETE recording with no error, nothing live.
    let again = Onair::start("aio-sigterm-restarted", &args).await;
    let reg = again.grpc_url();
    let recs = recordings_of(&reg, &sid).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    assert_eq!(rec.error, "", "{rec:?}");
    let catalog_s = rec.duration_ms as f64 / 1000.0;
    assert!((catalog_s - dur).abs() < 0.5, "catalog says {catalog_s:.2} s, the file holds {dur:.2} s");
    let mut c = client(&reg).await;
    let live = c
        .list_streams(pb::ListStreamsRequest { state: pb::StreamState::Live.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .streams;
    assert!(live.is_empty(), "streams still live after a clean shutdown: {live:?}");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_ice_restart_by_the_broadcaster_page_keeps_the_recording_going() {
    let dir = std::env::temp_dir().join(format!("onair-rec-restart-{}-{}", std::process::id(), onair_tests::unique()));
    let gw = Onair::start("aio-restart", &["--store", "memory", "--data-dir", dir.to_str().unwrap()]).await;
    gw.wait_ready().await;
    let b = Browser::start("restart-broadcaster").await;
    let sid = b.go_live(&format!("http://127.0.0.1:{}", gw.http), "Restarted").await;
    let reg = gw.grpc_url();
    let bytes = || async { recordings_of(&reg, &sid).await.first().map_or(0, |r| r.bytes) };
    wait_until(LONG, "the recording to hold media", || async { bytes().await > 20_000 }).await;
    // What the page does when a viewer's network changes: restart ICE. The recorder answers from a
    // new connection (it replaces its connection on every offer); the page then starts over.
    b.eval("window.onair.restartIce(); return true").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.wait_for(
        "the recorder's connection to be up again",
        LONG,
        "return window.onair.state.peers.length === 1 && window.onair.state.peers[0].state === 'connected'",
    )
    .await;
    let before = bytes().await;
    wait_until(LONG, "the recording to keep growing", || async { bytes().await > before + 20_000 }).await;
    b.stop_broadcast().await;
    let rec = wait_complete(&reg, &sid, Duration::from_secs(10)).await;
    let path = dir.join("recordings").join(&rec.file_name);
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "{errors}");
    assert!(frames > 60, "{frames} frames");
    let _ = std::fs::remove_dir_all(&dir);
}
