//! The recorder's WebRTC side: a receive-only peer connection (VP8 + Opus only,
//! mDNS off, ICE on one UDP address, short checks), its events as a channel, and
//! the per-track readers that turn RTP into timed frames.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
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
use crate::vp8;

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
    /// VP8.
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

/// Reads one remote track until it ends: depacketizes VP8 (requesting keyframes with PLI)
/// or passes Opus through, and sends timed frames to `out`.
pub async fn read_track(
    track: Arc<dyn TrackRemote>,
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
    let expected = if kind == Kind::Video { MIME_TYPE_VP8 } else { MIME_TYPE_OPUS };
    if !mime.is_empty() && mime != expected.to_ascii_lowercase() {
        tracing::warn!(%mime, "unsupported codec; track ignored");
        return;
    }
    tracing::debug!(?kind, ssrc, "track started");
    let needs_keyframe = Arc::new(AtomicBool::new(kind == Kind::Video));
    let done = stop.child_token();
    if kind == Kind::Video {
        tokio::spawn(request_keyframes(Arc::clone(&track), ssrc, Arc::clone(&needs_keyframe), done.clone()));
    }
    let mut clock = TrackClock::new(if kind == Kind::Video { 90_000 } else { 48_000 });
    // Only video needs one (it holds a 64 Ki-packet ring, ~12 MB); an Opus packet is a frame.
    let mut assembler = (kind == Kind::Video).then(vp8::FrameAssembler::new);
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
    let skipped_video_frames = assembler.as_ref().map_or(0, vp8::FrameAssembler::dropped);
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

/// Which media the SDP offers to send (m-lines with a non-zero port that are not
/// `inactive`/`recvonly`).
pub fn offered_media(sdp: &str) -> (bool, bool) {
    let (mut video, mut audio) = (false, false);
    let mut current: Option<(&str, bool)> = None;
    let mut flush = |m: Option<(&str, bool)>| match m {
        Some(("video", true)) => video = true,
        Some(("audio", true)) => audio = true,
        _ => {}
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            flush(current.take());
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port_ok = parts.next().is_some_and(|p| p != "0");
            current = Some((kind, port_ok));
        } else if (line == "a=inactive" || line == "a=recvonly")
            && let Some((_, sends)) = current.as_mut()
        {
            *sends = false;
        }
    }
    flush(current.take());
    (video, audio)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{nat_1to1, offered_media};

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
        let sdp =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert_eq!(offered_media(sdp), (true, true));
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(offered_media(sdp), (false, true));
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\nm=audio 9 RTP 111\r\na=recvonly\r\n";
        assert_eq!(offered_media(sdp), (false, false));
    }
}
