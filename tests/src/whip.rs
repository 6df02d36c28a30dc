//! WHIP/WHEP test clients: raw HTTP/1.1 requests with bodies and headers, SDP offers made by
//! str0m (no media flows: for protocol tests), and GStreamer's webrtcbin as an independent WebRTC
//! stack (`tests/gst/webrtc_client.py`, run with Debian's python).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Proc;
use crate::tls::{Response, parse_response};

/// One HTTP/1.1 request on `127.0.0.1:port` with `headers` and `body` (Content-Length set).
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await.expect("response in time").unwrap();
    parse_response(&buf, vec![])
}

/// POST an SDP offer.
pub async fn post_sdp(port: u16, path: &str, sdp: &str, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("Content-Type", "application/sdp")];
    headers.extend_from_slice(extra);
    request(port, "POST", path, &headers, sdp).await
}

/// An SDP offer with send-only (WHIP) or receive-only (WHEP) VP8 video and Opus audio.
pub fn offer(direction: Direction) -> String {
    let mut rtc = str0m::Rtc::builder().clear_codecs().enable_vp8(true).enable_opus(true, false).build(Instant::now());
    let candidate = str0m::Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap();
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, direction, None, None, None);
    api.add_media(MediaKind::Audio, direction, None, None, None);
    let (offer, _) = api.apply().unwrap();
    offer.to_sdp_string()
}

/// The GStreamer client script.
pub fn gst_client() -> PathBuf {
    crate::tests_dir().join("gst/webrtc_client.py")
}

/// A GStreamer WHIP publisher or WHEP player (see the script's usage), killed on drop.
pub struct GstClient {
    /// The process.
    pub proc: Proc,
}

impl GstClient {
    /// Starts `webrtc_client.py mode url args…`.
    pub fn start(name: &str, mode: &str, url: &str, args: &[&str]) -> Self {
        let mut argv = vec![gst_client().display().to_string(), mode.to_owned(), url.to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        // Debian's python has python3-gi; the machine's default python3 may not.
        let envs = vec![("GST_DEBUG".to_owned(), "1".to_owned())];
        Self { proc: Proc::spawn(name, "/usr/bin/python3", argv, envs) }
    }

    /// The JSON events printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.proc.output().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits up to `timeout` for an event named `name` and returns it (panics with the output).
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e["event"] == name) {
                return e;
            }
            if let Some(e) = self.events().into_iter().find(|e| e["event"] == "error") {
                panic!("the GStreamer client failed: {e}\n{}", self.proc.output());
            }
            assert!(!self.proc.output().contains("Traceback"), "the GStreamer client crashed:\n{}", self.proc.output());
            assert!(Instant::now() < deadline, "no {name:?} event within {timeout:?}:\n{}", self.proc.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
