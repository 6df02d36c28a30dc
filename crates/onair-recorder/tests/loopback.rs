//! End to end without a browser: registry + signaling + recorder in this process
//! (LocalBus, memory stores), and a webrtc-rs "broadcaster" on node `gw1` that goes
//! live, answers the recorder's watch with an offer and sends real VP8 (libvpx via
//! ffmpeg) and Opus. The stream ends; the recording must be COMPLETE and pass ffprobe.
//!
//! The broadcaster behaves like a browser's encoder where the recorder relies on it: it answers
//! NACKs (webrtc-rs's default interceptors) and keyframe requests (PLI/FIR), with intra frames of
//! the same source until its next scheduled keyframe. A broadcaster that ignored them would make a
//! first keyframe lost at the start (a busy machine) cost a whole GOP of the recording.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use onair_core::{Bus, BusItem, LocalBus, MemoryDirectory, NodeId, PeerId};
use onair_ops::{Admin, Metrics};
use onair_proto::v1 as pb;
use onair_proto::v1::recorder_client::RecorderClient;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use onair_recorder::RecorderConfig;
use prost::Message;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    (l, format!("http://{addr}"))
}

/// Frames between scheduled keyframes of the test source (1 s at 20 fps).
const GOP: usize = 20;

/// 3 s of 160x120 VP8 at 20 fps (libvpx via ffmpeg, which this test requires), a keyframe every
/// `gop` frames.
fn vp8_frames(dir: &Path, gop: usize) -> Vec<Vec<u8>> {
    let ivf = dir.join(format!("src-g{gop}.ivf"));
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=20", "-t", "3"])
        .args(["-c:v", "libvpx", "-g", &gop.to_string(), "-f", "ivf"])
        .arg(&ivf)
        .status()
        .unwrap_or_else(|e| {
            panic!("this test needs ffmpeg with libvpx ({e}); install ffmpeg (e.g. `apt-get install ffmpeg`)")
        });
    assert!(st.success(), "ffmpeg could not encode VP8 (libvpx)");
    let bytes = std::fs::read(&ivf).unwrap();
    let mut i = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let mut frames = Vec::new();
    while i + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        frames.push(bytes[i + 12..i + 12 + len].to_vec());
        i += 12 + len;
    }
    frames
}

/// Hands inbound keyframe requests (PLI, FIR) to the application, as a browser's encoder gets
/// them; the rest of the inbound RTCP stops at the interceptors that act on it (the pattern of
/// webrtc-rs's rtcp-processing example: inbound RTCP reaches the application only when marked).
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<_> = packets.iter().filter(|p| is_keyframe_request(p.as_ref())).cloned().collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

enum Ev {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
}

struct H(mpsc::UnboundedSender<Ev>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for H {
    async fn on_ice_candidate(&self, e: RTCPeerConnectionIceEvent) {
        let _ = self.0.send(Ev::Candidate(e.candidate.to_json().unwrap()));
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.0.send(Ev::State(s));
    }
}

fn codec(mime: &str, rate: u32, ch: u16, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: rate,
            channels: ch,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

async fn local_track(
    pc: &Arc<dyn PeerConnection>,
    kind: RtpCodecKind,
    c: &RTCRtpCodecParameters,
    ssrc: u32,
) -> (Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>) {
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "cam".into(),
                format!("t-{kind}"),
                format!("l-{kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                    codec: c.rtp_codec.clone(),
                    ..Default::default()
                }],
            ),
        )
        .unwrap(),
    );
    let sender = pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await.unwrap();
    (track, sender)
}

async fn payload_type(sender: &Arc<dyn RtpSender>) -> u8 {
    sender.get_parameters().await.unwrap().rtp_parameters.codecs.first().unwrap().payload_type
}

async fn next(d: &mut onair_core::Subscription) -> Result<pb::Delivery, tokio::time::error::Elapsed> {
    let fut = async {
        loop {
            if let Some(BusItem::Message(b)) = d.recv().await {
                return pb::Delivery::decode(b).unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await
}

/// The test's "gateway": one ordered NodeStream to signaling, as a real gateway keeps.
struct FakeNode {
    node: NodeId,
    tx: mpsc::Sender<pb::NodeMessage>,
}

impl FakeNode {
    async fn open(signaling: &mut SignalingClient<tonic::transport::Channel>, node: NodeId) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let n = Self { node, tx };
        n.send(pb::node_message::Msg::Hello(pb::Hello {})).await;
        let mut events =
            signaling.node_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = events.message().await {
                eprintln!("signaling refused a message of the fake gateway: {ev:?}");
            }
        });
        n
    }

    async fn send(&self, msg: pb::node_message::Msg) {
        self.tx
            .send(pb::NodeMessage { node: self.node.to_string(), msg: Some(msg), ..Default::default() })
            .await
            .unwrap();
    }
}

/// Registry, signaling and the recorder in this process (LocalBus, memory stores), and the
/// broadcaster's "gateway" node `gw1`, attached and ready.
struct Stack {
    dir: PathBuf,
    rec_dir: PathBuf,
    registry_url: String,
    recorder_url: String,
    shutdown: CancellationToken,
    rec_shutdown: CancellationToken,
    recorder: tokio::task::JoinHandle<Result<(), onair_ops::ServeError>>,
    /// What signaling sends to `gw1`.
    deliveries: onair_core::Subscription,
    node: FakeNode,
    /// The broadcaster's peer id on `gw1`.
    me: PeerId,
}

impl Stack {
    async fn start(name: &str) -> Self {
        // `RUST_LOG=debug` shows what the recorder, signaling and the registry do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = std::env::temp_dir().join(format!("onair-rec-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let shutdown = CancellationToken::new();
        let rec_shutdown = CancellationToken::new();
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
        let admin = Admin::new(Metrics::new());

        let (l, registry_url) = listener().await;
        let store = Arc::new(onair_registry::LocalStore::memory());
        let config = onair_registry::RegistryConfig {
            ended_retention: Duration::from_secs(600),
            access: onair_auth::Access::Open,
            limits: onair_registry::Limits::default(),
        };
        let (b, s) = (Arc::clone(&bus), shutdown.clone());
        tokio::spawn(onair_registry::serve(config, store, "memory-store", b, &admin, l, s));
        let (l, signaling_url) = listener().await;
        let dirc = Arc::new(MemoryDirectory::new());
        let sconf = onair_signaling::SignalingConfig::default();
        let (b, s, r) = (Arc::clone(&bus), shutdown.clone(), registry_url.clone());
        tokio::spawn(onair_signaling::serve(sconf, dirc, b, r, &admin, l, s).unwrap());

        let rec_dir = dir.join("recordings");
        let (l, recorder_url) = listener().await;
        let rconf = RecorderConfig {
            node: "rec1".parse().unwrap(),
            recordings_dir: rec_dir.clone(),
            max_concurrent: 4,
            min_free_bytes: 0,
            auto_record: true,
            rtc: onair_recorder::RtcNetwork::only("127.0.0.1".parse().unwrap()),
            registry_url: registry_url.clone(),
            signaling_url: signaling_url.clone(),
            security: onair_auth::Security::default(),
        };
        let leases = Arc::new(onair_core::MemoryLeases::new());
        let (b, s) = (Arc::clone(&bus), rec_shutdown.clone());
        let recorder = tokio::spawn(onair_recorder::serve(rconf, b, leases, &admin, l, s).unwrap());

        let gw: NodeId = "gw1".parse().unwrap();
        let deliveries = bus.subscribe("onair:node:gw1").await.unwrap();
        let mut signaling = SignalingClient::connect(signaling_url.clone()).await.unwrap();
        signaling.heartbeat(pb::HeartbeatRequest { node: gw.to_string(), relay: None }).await.unwrap();
        // Heartbeats every second, as a gateway sends them: without, signaling would take the node
        // for dead after its presence TTL and end its stream.
        let (mut beats, beating, node_id) = (signaling.clone(), shutdown.clone(), gw.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while beating.run_until_cancelled(tick.tick()).await.is_some() {
                let _ = beats.heartbeat(pb::HeartbeatRequest { node: node_id.clone(), relay: None }).await;
            }
        });
        let me = PeerId::generate();
        let node = FakeNode::open(&mut signaling, gw).await;
        let attach = pb::Attach { peer: me.to_string(), resume_token: "t".into() };
        node.send(pb::node_message::Msg::Attach(attach)).await;

        // Readiness follows the links.
        let t0 = Instant::now();
        while !admin.failures().await.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "recorder never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { dir, rec_dir, registry_url, recorder_url, shutdown, rec_shutdown, recorder, deliveries, node, me }
    }

    /// Goes live through signaling, as a gateway does: the stream, and the recorder's peer that
    /// joined it.
    async fn go_live(&mut self, title: &str) -> (pb::Stream, PeerId) {
        let publish = pb::Publish { peer: self.me.to_string(), title: title.into(), ..Default::default() };
        self.node.send(pb::node_message::Msg::Publish(publish)).await;
        // The stream's announcement reaches the recorder while signaling still answers us: the
        // recorder's watcher_joined may come before our published.
        let (mut stream, mut watcher) = (None, None);
        while stream.is_none() || watcher.is_none() {
            let d = next(&mut self.deliveries).await.expect("no published / watcher_joined");
            match d.event {
                Some(pb::delivery::Event::Published(s)) => stream = Some(s),
                Some(pb::delivery::Event::WatcherJoined(p)) => watcher = Some(p.parse().unwrap()),
                _ => {}
            }
        }
        (stream.unwrap(), watcher.unwrap())
    }

    /// The next watcher that joins our stream (a recorder's new part).
    async fn next_watcher(&mut self, within: Duration) -> PeerId {
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < within, "no watcher joined within {within:?}");
            if let Ok(pb::Delivery { event: Some(pb::delivery::Event::WatcherJoined(p)), .. }) =
                next(&mut self.deliveries).await
            {
                return p.parse().unwrap();
            }
        }
    }

    /// The recordings of `stream` once none is RECORDING, oldest first.
    async fn finished_recordings(&self, stream: &str) -> Vec<pb::Recording> {
        let mut registry = StreamRegistryClient::connect(self.registry_url.clone()).await.unwrap();
        let t0 = Instant::now();
        loop {
            let req = pb::ListRecordingsRequest { stream_id: stream.into(), ..Default::default() };
            let mut list = registry.list_recordings(req).await.unwrap().into_inner().recordings;
            if !list.is_empty() && list.iter().all(|r| r.state() != pb::RecordingState::Recording) {
                list.sort_by_key(|r| r.started_at.map(|t| (t.seconds, t.nanos)));
                return list;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "recordings never finalized: {list:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn end_stream(&self, stream: &str) {
        let mut registry = StreamRegistryClient::connect(self.registry_url.clone()).await.unwrap();
        registry.end_stream(pb::EndStreamRequest { id: stream.into() }).await.unwrap();
    }

    async fn stop(self) {
        self.rec_shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.recorder).await.unwrap().unwrap().unwrap();
        self.shutdown.cancel();
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

/// The broadcaster's peer connection: a VP8 and an Opus track, connected to one watcher.
struct Broadcaster {
    pc: Arc<dyn PeerConnection>,
    vtrack: Arc<TrackLocalStaticSample>,
    atrack: Arc<TrackLocalStaticSample>,
    vpt: u8,
    apt: u8,
}

const VIDEO_SSRC: u32 = 1111;
const AUDIO_SSRC: u32 = 2222;

impl Broadcaster {
    /// Offers to `watcher` through signaling and exchanges answer and candidates until connected;
    /// how long that took.
    async fn connect(stack: &mut Stack, watcher: &PeerId) -> (Self, Duration) {
        let mut media = MediaEngine::default();
        let vp8 = codec(MIME_TYPE_VP8, 90_000, 0, 96);
        let opus = codec(MIME_TYPE_OPUS, 48_000, 2, 111);
        media.register_codec(vp8.clone(), RtpCodecKind::Video).unwrap();
        media.register_codec(opus.clone(), RtpCodecKind::Audio).unwrap();
        let defaults = register_default_interceptors(Registry::new(), &mut media).unwrap();
        // Last in the chain, so every interceptor has seen the inbound RTCP before it is narrowed.
        let interceptors = defaults.with(Slot::from(14_000), KeyframeRequests::default());
        let (etx, mut erx) = mpsc::unbounded_channel();
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(interceptors)
                .with_handler(Arc::new(H(etx)))
                .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
                .build()
                .await
                .unwrap(),
        );
        let (vtrack, vsender) = local_track(&pc, RtpCodecKind::Video, &vp8, VIDEO_SSRC).await;
        let (atrack, asender) = local_track(&pc, RtpCodecKind::Audio, &opus, AUDIO_SSRC).await;
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        let sdp = pc.local_description().await.unwrap().sdp;
        let (me, node) = (stack.me.clone(), &stack.node);
        let signal = |kind: pb::SignalKind, payload: String| pb::Signal {
            from: me.to_string(),
            to: watcher.to_string(),
            kind: kind.into(),
            payload,
        };
        let offer_json = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
        node.send(pb::node_message::Msg::Signal(signal(pb::SignalKind::Offer, offer_json))).await;

        let t0 = Instant::now();
        let mut remote_set = false;
        let mut queued = Vec::new();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(10), "never connected");
            tokio::select! {
                Some(ev) = erx.recv() => match ev {
                    Ev::Candidate(c) => {
                        let m = signal(pb::SignalKind::Candidate, serde_json::to_string(&c).unwrap());
                        node.send(pb::node_message::Msg::Signal(m)).await;
                    }
                    Ev::State(RTCPeerConnectionState::Connected) => break,
                    Ev::State(s) => assert!(s != RTCPeerConnectionState::Failed, "broadcaster connection failed"),
                },
                d = next(&mut stack.deliveries) => {
                    let Some(pb::delivery::Event::Signal(s)) = d.unwrap().event else { continue };
                    if s.from != watcher.to_string() {
                        continue;
                    }
                    match pb::SignalKind::try_from(s.kind).unwrap() {
                        pb::SignalKind::Answer => {
                            let v: serde_json::Value = serde_json::from_str(&s.payload).unwrap();
                            assert_eq!(v["type"], "answer");
                            let sdp = v["sdp"].as_str().unwrap().to_owned();
                            pc.set_remote_description(RTCSessionDescription::answer(sdp).unwrap()).await.unwrap();
                            remote_set = true;
                            for c in queued.drain(..) {
                                pc.add_ice_candidate(c).await.unwrap();
                            }
                        }
                        pb::SignalKind::Candidate => {
                            let c: RTCIceCandidateInit = serde_json::from_str(&s.payload).unwrap();
                            assert!(c.sdp_mid.as_deref().is_some_and(|m| !m.is_empty()), "candidate without sdpMid");
                            if remote_set { pc.add_ice_candidate(c).await.unwrap() } else { queued.push(c) }
                        }
                        _ => {}
                    }
                }
            }
        }
        let connected = t0.elapsed();
        let (vpt, apt) = (payload_type(&vsender).await, payload_type(&asender).await);
        (Self { pc, vtrack, atrack, vpt, apt }, connected)
    }

    /// Sends `frames` at 20 fps with Opus at 50 fps beside them, answering keyframe requests with
    /// the `intra` frames up to the next scheduled keyframe; the keyframe requests it got.
    async fn send(&self, frames: &[Vec<u8>], intra: &[Vec<u8>]) -> u32 {
        let (atrack, apt) = (Arc::clone(&self.atrack), self.apt);
        let audio_frames = frames.len() * 5 / 2;
        let audio = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..audio_frames {
                tick.tick().await;
                let s = Sample {
                    data: Bytes::from_static(&[0xfc, 0xff, 0xfe]),
                    duration: Duration::from_millis(20),
                    ..Sample::new(Instant::now())
                };
                let _ = atrack.sample_writer(AUDIO_SSRC, apt).write_sample(&s).await;
            }
        });
        let (wanted, requests) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let feedback = {
            let (vtrack, wanted, requests) = (Arc::clone(&self.vtrack), Arc::clone(&wanted), Arc::clone(&requests));
            tokio::spawn(async move {
                while let Some(ev) = vtrack.poll().await {
                    let TrackLocalEvent::OnRtcpPacket(packets) = ev else { continue };
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        requests.fetch_add(1, Ordering::Relaxed);
                        wanted.store(true, Ordering::Relaxed);
                    }
                }
            })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut intra_until = 0;
        for (i, f) in frames.iter().enumerate() {
            tick.tick().await;
            if wanted.swap(false, Ordering::Relaxed) && i % GOP != 0 {
                intra_until = (i / GOP + 1) * GOP;
            }
            let data = if i < intra_until { &intra[i] } else { f };
            let s = Sample {
                data: Bytes::from(data.clone()),
                duration: Duration::from_millis(50),
                ..Sample::new(Instant::now())
            };
            self.vtrack.sample_writer(VIDEO_SSRC, self.vpt).write_sample(&s).await.unwrap();
        }
        audio.await.unwrap();
        feedback.abort();
        requests.load(Ordering::Relaxed)
    }
}

/// ffprobe's JSON of `file` (frames counted); fails on any ffprobe error.
fn ffprobe(file: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("this test needs ffprobe ({e}); install ffmpeg (e.g. `apt-get install ffmpeg`)"));
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The video frames ffprobe decodes in `file`.
fn decoded_video_frames(v: &serde_json::Value) -> u64 {
    let streams = v["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_name"] == "vp8").expect("vp8 stream");
    video["nb_read_frames"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_webrtc_broadcaster_end_to_end() {
    let mut stack = Stack::start("e2e").await;
    // The stream as sent, and the same pictures all intra-coded (what a keyframe request gets).
    let (frames, intra) = (vp8_frames(&stack.dir, GOP), vp8_frames(&stack.dir, 1));
    assert_eq!(frames.len(), intra.len());
    let (stream, watcher) = stack.go_live("e2e").await;
    let (b, connect_time) = Broadcaster::connect(&mut stack, &watcher).await;
    // 3 s of media: 20 fps video, 50 fps audio.
    let requests = b.send(&frames, &intra).await;

    let mut rc = RecorderClient::connect(stack.recorder_url.clone()).await.unwrap();
    let active = rc.list_active(pb::ListActiveRequest {}).await.unwrap().into_inner().recordings;
    assert_eq!(active.len(), 1);
    assert!(active[0].bytes > 10_000, "{:?}", active[0]);
    let again = rc.start_recording(pb::StartRecordingRequest { stream_id: stream.id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let missing = rc.start_recording(pb::StartRecordingRequest { stream_id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The stream ends: the recorder finalizes.
    stack.end_stream(&stream.id).await;
    let recs = stack.finished_recordings(&stream.id).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    assert_eq!(rec.video_codec, "VP8");
    assert_eq!(rec.audio_codec, "OPUS");
    assert_eq!(rec.title, "e2e");
    assert!(rec.duration_ms > 2_000 && rec.duration_ms < 4_000, "{rec:?}");
    let file: PathBuf = stack.rec_dir.join(&rec.file_name);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), rec.bytes);

    let v = ffprobe(&file);
    // A finished file has a duration (libwebm writes it at finalize).
    let duration: f64 = v["format"]["duration"].as_str().expect("a duration").parse().unwrap();
    assert!((duration * 1000.0 - rec.duration_ms as f64).abs() < 100.0, "{duration} s vs {rec:?}");
    let streams = v["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_name"] == "vp8").expect("vp8 stream");
    assert_eq!(video["width"], 160);
    let decoded = decoded_video_frames(&v);
    assert!(decoded >= 40, "only {decoded} video frames decoded");
    let audio = streams.iter().find(|s| s["codec_name"] == "opus").expect("opus stream");
    assert_eq!(audio["sample_rate"], "48000");
    eprintln!(
        "connected in {connect_time:?}; recorded {} bytes, {} ms, {decoded} video frames; {requests} keyframe requests",
        rec.bytes, rec.duration_ms,
    );

    b.pc.close().await.unwrap();
    stack.stop().await;
}

/// The recorder's connection to the media breaks while the stream stays live (here the
/// broadcaster's connection closes without it leaving; in a cluster, a relay that failed or a
/// stalled recorder): the recorder records on into a new part, which the broadcaster's next
/// connection fills. Before, the recording ended there and the rest of the broadcast was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_the_stream_is_live_is_recorded_on_in_a_new_part() {
    let mut stack = Stack::start("record-on").await;
    let (frames, intra) = (vp8_frames(&stack.dir, GOP), vp8_frames(&stack.dir, 1));
    let (stream, watcher) = stack.go_live("record on").await;
    let (first, _) = Broadcaster::connect(&mut stack, &watcher).await;
    first.send(&frames[..2 * GOP], &intra[..2 * GOP]).await;
    first.pc.close().await.unwrap();
    let lost = Instant::now();

    let again = stack.next_watcher(Duration::from_secs(25)).await;
    assert_ne!(again, watcher, "the new part is a new peer");
    let rejoined = lost.elapsed();
    let (second, _) = Broadcaster::connect(&mut stack, &again).await;
    second.send(&frames[..2 * GOP], &intra[..2 * GOP]).await;
    stack.end_stream(&stream.id).await;

    let parts = stack.finished_recordings(&stream.id).await;
    assert_eq!(parts.len(), 2, "{parts:?}");
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.state(), pb::RecordingState::Complete, "part {i}: {part:?}");
        let decoded = decoded_video_frames(&ffprobe(&stack.rec_dir.join(&part.file_name)));
        assert!(decoded >= 20, "part {i} decodes to only {decoded} frames: {part:?}");
    }
    eprintln!("the recorder joined again {rejoined:?} after the connection closed; parts {parts:?}");
    second.pc.close().await.unwrap();
    stack.stop().await;
}
