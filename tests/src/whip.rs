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

/// A str0m peer on its own UDP socket that really connects (unlike [`offer`]'s): a WHIP publisher
/// of synthetic VP8 frames or a WHEP watcher that counts what it receives.
pub struct RtcPeer {
    /// The connection.
    pub rtc: str0m::Rtc,
    socket: tokio::net::UdpSocket,
    local: std::net::SocketAddr,
    /// The video media line.
    pub video: str0m::media::Mid,
    next_frame: u32,
}

impl RtcPeer {
    /// A peer sending (`SendOnly`) or receiving (`RecvOnly`) VP8 + Opus, with its offer and the
    /// pending change its answer completes.
    pub async fn new(direction: Direction) -> (Self, String, str0m::change::SdpPendingOffer) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc =
            str0m::Rtc::builder().clear_codecs().enable_vp8(true).enable_opus(true, false).build(Instant::now());
        rtc.add_local_candidate(str0m::Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, direction, None, None, None);
        api.add_media(MediaKind::Audio, direction, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        (Self { rtc, socket, local, video, next_frame: 0 }, offer.to_sdp_string(), pending)
    }

    /// Applies the server's answer to `pending`.
    pub fn accept(&mut self, pending: str0m::change::SdpPendingOffer, answer: &str) {
        let answer = str0m::change::SdpAnswer::from_sdp_string(answer).expect("an SDP answer");
        self.rtc.sdp_api().accept_answer(pending, answer).expect("the answer accepted");
    }

    /// Sends the next synthetic frame (a keyframe when `key`) if connected.
    pub fn send_frame(&mut self, key: bool) {
        if !self.rtc.is_connected() {
            return;
        }
        let Some(pt) = self.rtc.writer(self.video).and_then(|w| w.payload_params().next().map(|p| p.pt())) else {
            return;
        };
        self.next_frame += 1;
        let mut data = vec![0u8; 1200];
        // VP8 payload descriptor's first byte: bit 0 clear marks a keyframe.
        data[0] = u8::from(!key);
        data[1..5].copy_from_slice(&self.next_frame.to_be_bytes());
        let rtp_time = str0m::media::MediaTime::from_90khz(u64::from(self.next_frame) * 3000);
        if let Some(w) = self.rtc.writer(self.video) {
            let _ = w.write(pt, Instant::now(), rtp_time, data);
        }
    }

    /// Drives the connection for `duration`: `step` sees every event, and `None` every 33 ms (a
    /// publisher's frame clock); it returns false to stop early. Returns whether it stopped early.
    pub async fn drive(
        &mut self,
        duration: Duration,
        mut step: impl FnMut(&mut Self, Option<&str0m::Event>) -> bool,
    ) -> bool {
        use str0m::net::{Protocol, Receive};
        use str0m::{Input, Output};
        let until = Instant::now() + duration;
        let mut tick = Instant::now();
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = self.socket.try_send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => {
                        if !step(self, Some(&e)) {
                            return true;
                        }
                    }
                    Err(e) => panic!("the str0m peer failed: {e}"),
                }
            };
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if now >= tick {
                tick = now + Duration::from_millis(33);
                if !step(self, None) {
                    return true;
                }
                continue;
            }
            let wake = timeout.min(tick).min(until).max(now);
            let input = tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: self.local, contents })
                }
                () = tokio::time::sleep_until(wake.into()) => Input::Timeout(Instant::now()),
            };
            let _ = self.rtc.handle_input(input);
        }
    }
}

/// The sdpfrag (RFC 8840) of an offer's ICE credentials and candidates, as a WHIP client PATCHes
/// it for an ICE restart.
pub fn ice_frag(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    let first = |p: &str| lines.iter().find(|l| l.starts_with(p)).copied();
    let mut frag: Vec<&str> =
        [first("a=ice-ufrag:"), first("a=ice-pwd:"), first("m="), first("a=mid:")].into_iter().flatten().collect();
    frag.extend(lines.iter().filter(|l| l.starts_with("a=candidate:")));
    frag.iter().fold(String::new(), |mut s, l| {
        s.push_str(l);
        s.push_str("\r\n");
        s
    })
}

/// `sdp` with the ICE credentials of `frag` in place of its own (how a WHIP client applies the
/// server's ICE-restart sdpfrag to the answer it had).
pub fn with_ice_of(sdp: &str, frag: &str) -> String {
    let value = |p: &str| frag.lines().find_map(|l| l.trim().strip_prefix(p)).map(str::trim).unwrap_or("").to_owned();
    let (ufrag, pwd) = (value("a=ice-ufrag:"), value("a=ice-pwd:"));
    sdp.lines()
        .map(str::trim_end)
        .map(|l| {
            if l.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{ufrag}")
            } else if l.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{pwd}")
            } else {
                l.to_owned()
            }
        })
        .fold(String::new(), |mut s, l| {
            s.push_str(&l);
            s.push_str("\r\n");
            s
        })
}
