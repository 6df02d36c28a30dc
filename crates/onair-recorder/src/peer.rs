//! The recorder's WebRTC side: a receive-only peer connection (VP8 or H.264, and Opus,
//! mDNS off, ICE on one UDP address, short checks), its events as a channel, and
//! the per-track readers that turn RTP into timed frames.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use crate::RtcNetwork;
use crate::mux::MediaFrame;
use crate::timeline::TrackClock;
use crate::video::{FrameAssembler, VideoCodec};

/// How often a PLI is repeated while the video track waits for a keyframe.
pub const PLI_EVERY: Duration = Duration::from_millis(1000);

/// What the peer connection reports to its session.
pub enum RtcEvent {
    /// A local ICE candidate to trickle to the broadcaster.
    Candidate(RTCIceCandidateInit),
    /// The connection state changed.
    State(RTCPeerConnectionState),
    /// A remote track started.
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    events: mpsc::UnboundedSender<RtcEvent>,
    public: Option<IpAddr>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(c) => {
                let mapped = self.public.and_then(|ip| nat_1to1(&c.candidate, ip));
                let _ = self.events.send(RtcEvent::Candidate(c.clone()));
                if let Some(candidate) = mapped {
                    let _ = self.events.send(RtcEvent::Candidate(RTCIceCandidateInit { candidate, ..c }));
                }
            }
            Err(e) => tracing::debug!(error = %e, "unserializable local candidate"),
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(RtcEvent::State(state));
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.send(RtcEvent::Track(track));
    }
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, fb: &[(&str, &str)], pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: fb
                .iter()
                .map(|(typ, parameter)| RTCPFeedback { typ: (*typ).to_owned(), parameter: (*parameter).to_owned() })
                .collect(),
        },
        payload_type: pt,
    }
}

/// A receive-only peer connection bound to `net.bind` (UDP and ICE-TCP passive, ephemeral ports),
/// announcing `net.public` too, reporting to `events`.
pub async fn peer_connection(
    net: &RtcNetwork,
    events: mpsc::UnboundedSender<RtcEvent>,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let mut media = MediaEngine::default();
    let video_fb = [("nack", ""), ("nack", "pli"), ("ccm", "fir"), ("transport-cc", "")];
    media.register_codec(codec(MIME_TYPE_VP8, 90_000, 0, "", &video_fb, 96), RtpCodecKind::Video)?;
    // H.264 (a WHIP stream from OBS through the relay) is written to MP4; VP8 stays first, so a
    // browser offering both is recorded to WebM.
    for (pt, profile) in [(102, "42001f"), (104, "42e01f"), (106, "4d001f"), (108, "64001f")] {
        let fmtp = format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}");
        media.register_codec(codec(MIME_TYPE_H264, 90_000, 0, &fmtp, &video_fb, pt), RtpCodecKind::Video)?;
    }
    media.register_codec(
        codec(MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1", &[("transport-cc", "")], 111),
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let networks = if net.bind.iter().any(IpAddr::is_ipv4) {
        vec![NetworkType::Udp4, NetworkType::Tcp4]
    } else {
        vec![NetworkType::Udp6, NetworkType::Tcp6]
    };
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(networks)
        .with_include_loopback_candidate(net.bind.iter().any(IpAddr::is_loopback))
        // Checks every 50 ms instead of 200 ms: on a LAN the pair is found in one or two rounds.
        .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(25))
        .with_host_acceptance_min_wait(Some(Duration::ZERO))
        .with_ice_timeouts(Some(Duration::from_secs(5)), Some(Duration::from_secs(10)), Some(Duration::from_secs(1)));
    // NAT 1:1 (`net.public`) is applied to the trickled candidates (`nat_1to1`): webrtc-rs 0.21
    // stores `with_nat_1to1_ips` but never uses it.
    let settings = settings.build();
    let addrs: Vec<SocketAddr> = net.bind.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { events, public: net.public }))
        .with_udp_addrs(addrs.clone())
        .with_tcp_addrs(addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The server-reflexive twin of a local host candidate, at `public` (NAT 1:1: a 1:1 NAT forwards
/// `public:port` to `local:port`, so a browser's checks to it reach the same socket, which answers
/// them as peer-reflexive). `None` for candidates that are not host, not UDP/TCP-passive, on
/// loopback or already at `public`.
pub fn nat_1to1(candidate: &str, public: IpAddr) -> Option<String> {
    let t: Vec<&str> = candidate.split_whitespace().collect();
    // candidate:<foundation> <component> <transport> <priority> <ip> <port> typ host [tcptype passive]
    let [foundation, component, transport, priority, ip, port, "typ", "host", rest @ ..] = t.as_slice() else {
        return None;
    };
    let local: IpAddr = ip.parse().ok()?;
    let tcp = transport.eq_ignore_ascii_case("tcp");
    if local.is_loopback() || local == public || (tcp && rest != ["tcptype", "passive"]) {
        return None;
    }
    // Type preference 100 (srflx) instead of 126 (host), the rest of the priority kept.
    let priority = priority.parse::<u32>().ok()?.checked_sub(26 << 24)?;
    let mut out = format!(
        "{foundation}1 {component} {transport} {priority} {public} {port} typ srflx raddr {local} rport {port}"
    );
    for r in rest {
        out.push(' ');
        out.push_str(r);
    }
    Some(out)
}

/// Which media kind a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// VP8 or H.264.
    Video,
    /// Opus.
    Audio,
}

/// A frame placed on the recording timeline.
#[derive(Debug)]
pub struct TimedFrame {
    /// Nanoseconds since the session's first packet.
    pub ts_ns: i64,
    /// The frame.
    pub frame: MediaFrame,
}

/// Shared by the track readers of one recording.
#[derive(Debug, Default)]
pub struct TrackShared {
    /// Arrival of the first packet of any track: timeline zero.
    pub epoch: OnceLock<Instant>,
}

impl TrackShared {
    fn arrival_ns(&self) -> i64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        i64::try_from(epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }
}

/// Reads one remote track until it ends: depacketizes `video` (VP8 or H.264, requesting
/// keyframes with PLI) or passes Opus through, and sends timed frames to `out`. A video track
/// in another codec than the file's is ignored.
pub async fn read_track(
    track: Arc<dyn TrackRemote>,
    video: Option<VideoCodec>,
    shared: Arc<TrackShared>,
    out: mpsc::Sender<TimedFrame>,
    packets_total: prometheus_client::metrics::counter::Counter,
    stop: CancellationToken,
) {
    let kind = match track.kind().await {
        RtpCodecKind::Video => Kind::Video,
        RtpCodecKind::Audio => Kind::Audio,
        _ => return,
    };
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mime = track.codec(ssrc).await.map(|c| c.mime_type.to_ascii_lowercase()).unwrap_or_default();
    let codec = match kind {
        Kind::Video => match video.filter(|c| mime.is_empty() || VideoCodec::from_mime(&mime) == Some(*c)) {
            Some(c) => Some(c),
            None => {
                tracing::warn!(%mime, file = ?video, "video codec is not the file's; track ignored");
                return;
            }
        },
        Kind::Audio if mime.is_empty() || mime == MIME_TYPE_OPUS.to_ascii_lowercase() => None,
        Kind::Audio => {
            tracing::warn!(%mime, "unsupported audio codec; track ignored");
            return;
        }
    };
    tracing::debug!(?kind, ssrc, "track started");
    let needs_keyframe = Arc::new(AtomicBool::new(kind == Kind::Video));
    let done = stop.child_token();
    if kind == Kind::Video {
        tokio::spawn(request_keyframes(Arc::clone(&track), ssrc, Arc::clone(&needs_keyframe), done.clone()));
    }
    let mut clock = TrackClock::new(if kind == Kind::Video { 90_000 } else { 48_000 });
    // Only video needs one (it holds a 64 Ki-packet ring, ~12 MB); an Opus packet is a frame.
    let mut assembler = codec.map(FrameAssembler::new);
    let mut frames = Vec::new();
    'packets: loop {
        let ev = tokio::select! {
            () = done.cancelled() => break,
            ev = track.poll() => ev,
        };
        let packet = match ev {
            Some(TrackRemoteEvent::OnRtpPacket(p)) => p,
            Some(TrackRemoteEvent::OnEnded) | None => break,
            Some(_) => continue,
        };
        packets_total.inc();
        // The track's first packet anchors its clock; later timestamps follow the RTP clock.
        let ts_ns = clock.ns_at(packet.header.timestamp, shared.arrival_ns());
        match kind {
            Kind::Audio if !packet.payload.is_empty() => {
                frames.push(TimedFrame { ts_ns, frame: MediaFrame::Audio { data: packet.payload.to_vec() } });
            }
            Kind::Audio => {}
            Kind::Video => {
                let Some(assembler) = assembler.as_mut() else { continue };
                assembler.push(packet, |f| {
                    // The clock is anchored: the arrival time is not used.
                    let ts_ns = clock.ns_at(f.rtp_ts, 0);
                    frames.push(TimedFrame { ts_ns, frame: MediaFrame::Video { data: f.data, keyframe: f.keyframe } });
                });
                needs_keyframe.store(assembler.needs_keyframe(), Ordering::Relaxed);
            }
        }
        for f in frames.drain(..) {
            if out.send(f).await.is_err() {
                break 'packets;
            }
        }
    }
    done.cancel();
    let skipped_video_frames = assembler.as_ref().map_or(0, FrameAssembler::dropped);
    tracing::debug!(?kind, skipped_video_frames, "track ended");
}

/// Sends a PLI now and every [`PLI_EVERY`] while `needed` is set.
async fn request_keyframes(
    track: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    needed: Arc<AtomicBool>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(PLI_EVERY);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        if needed.load(Ordering::Relaxed) {
            let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "PLI not sent");
                return;
            }
        }
    }
}

/// What an offer sends that the recorder can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offered {
    /// VP8 or H.264 video.
    pub video: bool,
    /// Opus audio.
    pub audio: bool,
}

/// One m-section of an SDP: its kind, its payload types in order, whether its port is non-zero
/// and whether it is `inactive`/`recvonly`, and its `a=rtpmap` lines.
struct Section<'a> {
    kind: &'a str,
    payload_types: Vec<&'a str>,
    port_ok: bool,
    receive_only: bool,
    rtpmap: Vec<(&'a str, &'a str)>,
}

impl Section<'_> {
    /// The first payload type (the preferred one) of a codec the recorder writes.
    fn video_codec(&self) -> Option<VideoCodec> {
        self.payload_types.iter().find_map(|pt| {
            let (_, encoding) = self.rtpmap.iter().find(|(p, _)| p == pt)?;
            VideoCodec::from_rtpmap(encoding)
        })
    }
}

fn sections(sdp: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port_ok = parts.next().is_some_and(|p| p != "0");
            let payload_types = parts.skip(1).collect();
            out.push(Section { kind, payload_types, port_ok, receive_only: false, rtpmap: Vec::new() });
        } else if let Some(section) = out.last_mut() {
            if line == "a=inactive" || line == "a=recvonly" {
                section.receive_only = true;
            } else if let Some(map) = line.strip_prefix("a=rtpmap:")
                && let Some((pt, encoding)) = map.split_once(' ')
            {
                section.rtpmap.push((pt, encoding.trim()));
            }
        }
    }
    out
}

/// What the SDP offers to send (m-lines with a non-zero port that are not `inactive`/`recvonly`;
/// video only when VP8 or H.264 is among its codecs).
pub fn offered_media(sdp: &str) -> Offered {
    let mut offered = Offered::default();
    for s in sections(sdp).iter().filter(|s| s.port_ok && !s.receive_only) {
        match s.kind {
            "video" if s.video_codec().is_some() => offered.video = true,
            "video" => tracing::warn!("the stream's video is neither VP8 nor H.264: recording its audio only"),
            "audio" => offered.audio = true,
            _ => {}
        }
    }
    offered
}

/// The video codec an answer chose: the first one of its (first, enabled) video section, which is
/// what the other side sends.
pub fn answered_video(sdp: &str) -> Option<VideoCodec> {
    sections(sdp).iter().find(|s| s.kind == "video" && s.port_ok).and_then(Section::video_codec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{Offered, VideoCodec, answered_video, nat_1to1, offered_media};

    #[test]
    fn host_candidates_get_a_public_twin() {
        let public = "203.0.113.7".parse().unwrap();
        assert_eq!(
            nat_1to1("candidate:607854466 1 udp 2130706431 192.0.2.2 54967 typ host", public).as_deref(),
            Some("candidate:6078544661 1 udp 1694498815 203.0.113.7 54967 typ srflx raddr 192.0.2.2 rport 54967")
        );
        assert_eq!(
            nat_1to1("candidate:1 1 tcp 2124414975 10.0.0.5 4000 typ host tcptype passive", public).as_deref(),
            Some("candidate:11 1 tcp 1688207359 203.0.113.7 4000 typ srflx raddr 10.0.0.5 rport 4000 tcptype passive")
        );
        for skipped in [
            "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            "candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host",
            "candidate:1 1 tcp 2128609279 10.0.0.5 9 typ host tcptype active",
            "candidate:1 1 udp 1694498815 198.51.100.1 5000 typ srflx raddr 10.0.0.5 rport 5000",
        ] {
            assert_eq!(nat_1to1(skipped, public), None, "{skipped}");
        }
    }

    #[test]
    fn offered_media_reads_m_lines_and_directions() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\n\
                   a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\na=sendonly\r\n";
        assert_eq!(offered_media(sdp), Offered { video: true, audio: true });
        let h264 =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(offered_media(h264), Offered { video: true, audio: true }, "H.264 video is written (MP4)");
        let av1 = "v=0\r\nm=audio 9 RTP 111\r\nm=video 9 RTP 45\r\na=rtpmap:45 AV1/90000\r\n";
        assert_eq!(offered_media(av1), Offered { audio: true, ..Offered::default() });
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(offered_media(sdp), Offered { audio: true, ..Offered::default() });
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\nm=audio 9 RTP 111\r\na=recvonly\r\n";
        assert_eq!(offered_media(sdp), Offered::default());
    }

    #[test]
    fn the_answer_names_the_video_codec_by_its_first_payload_type() {
        let answer = "v=0\r\nm=audio 9 RTP 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 96\r\n\
                      a=recvonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 h264/90000\r\n";
        assert_eq!(answered_video(answer), Some(VideoCodec::H264));
        let vp8 = "v=0\r\nm=video 9 RTP 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n";
        assert_eq!(answered_video(vp8), Some(VideoCodec::Vp8));
        assert_eq!(answered_video("v=0\r\nm=video 0 RTP 96\r\na=rtpmap:96 VP8/90000\r\n"), None);
        assert_eq!(answered_video("v=0\r\nm=audio 9 RTP 111\r\n"), None);
    }
}
