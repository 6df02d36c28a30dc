//! One recording: joins the stream as a signaling peer (Attach + Watch), answers
//! the broadcaster's offer with a receive-only peer connection, writes the media to
//! a WebM file and keeps the catalog entry up to date until it is stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onair_core::{PeerId, Recording, RecordingState};
use onair_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription};

use crate::RtcNetwork;
use crate::catalog::Catalog;
use crate::catalog::{AUDIO_CODEC, LiveStream};
use crate::container::{self, Container};
use crate::metrics::RecorderMetrics;
use crate::mux::{MediaFrame, MuxStats, Tracks};
use crate::peer::{self, Offered, RtcEvent, TimedFrame, TrackShared};
use crate::timeline::Reorder;
use crate::video::VideoCodec;
use onair_node::NodeLink;

/// A recording that has received no media this long after it started fails.
pub const NO_MEDIA_TIMEOUT: Duration = Duration::from_secs(15);
/// How often size and duration are reported to the registry.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Longest a track may lag the others before its late frames stop holding them back (media time).
pub const REORDER_WINDOW_NS: i64 = 2_000_000_000;

/// What signaling tells a session.
#[derive(Debug)]
pub enum SessionInput {
    /// An offer or candidate from the broadcaster.
    Signal {
        /// Sender.
        from: PeerId,
        /// Offer, answer or candidate.
        kind: pb::SignalKind,
        /// JSON payload as the browser sent it.
        payload: String,
    },
    /// Signaling refused one of our requests (e.g. the stream is not live any more).
    Refused {
        /// Stable code.
        code: String,
        /// Explanation.
        message: String,
    },
    /// Our peer id was taken over elsewhere.
    Evicted,
}

/// Everything a session starts with.
#[derive(Debug)]
pub struct SessionParams {
    /// The stream recorded.
    pub stream: LiveStream,
    /// The catalog entry as registered.
    pub recording: Recording,
    /// The session's signaling peer id.
    pub peer: PeerId,
    /// Its resume token (signaling wants one per peer; the recorder never resumes).
    pub token: String,
    /// The file.
    pub path: PathBuf,
    /// Deliveries for `peer`.
    pub inbox: mpsc::Receiver<SessionInput>,
    /// Cancelled to stop and finalize.
    pub stop: CancellationToken,
    /// Current state for ListActive.
    pub snapshot: Arc<Mutex<Recording>>,
    /// The recorder's signaling link.
    pub link: NodeLink,
    /// The registry.
    pub catalog: Catalog,
    /// Recorder metrics.
    pub metrics: RecorderMetrics,
    /// Where ICE binds and what it announces.
    pub rtc: RtcNetwork,
}

/// Why a session ended.
enum End {
    /// Asked to stop (gRPC, stream ended, shutdown).
    Stopped,
    /// The broadcaster went away (its peer connection closed or failed): a normal end.
    PeerGone(String),
    /// Something went wrong.
    Failed(String),
}

struct Session {
    link: NodeLink,
    catalog: Catalog,
    metrics: RecorderMetrics,
    rtc: RtcNetwork,
    peer: PeerId,
    path: PathBuf,
    rec: Recording,
    snapshot: Arc<Mutex<Recording>>,
    broadcaster: Option<PeerId>,
    pc: Option<Arc<dyn PeerConnection>>,
    pending: Vec<RTCIceCandidateInit>,
    mid: String,
    rtc_tx: mpsc::UnboundedSender<RtcEvent>,
    media_tx: mpsc::Sender<TimedFrame>,
    tracks: Arc<TrackShared>,
    track_stop: CancellationToken,
    mux: Option<Container>,
    /// The file's video codec, once the answer chose it.
    video: Option<VideoCodec>,
    reorder: Reorder<MediaFrame>,
    bytes_counted: u64,
    progress: Option<JoinHandle<()>>,
}

/// Runs one recording to its end; returns the final catalog entry (already stored).
pub async fn run(p: SessionParams) -> Recording {
    let span = tracing::info_span!("recording", stream_id = %p.stream.id, recording = %p.recording.id, peer = %p.peer);
    run_inner(p).instrument(span).await
}

async fn run_inner(p: SessionParams) -> Recording {
    let SessionParams { stream, recording, peer, token, path, mut inbox, stop, snapshot, link, catalog, metrics, rtc } =
        p;
    let (rtc_tx, mut rtc_rx) = mpsc::unbounded_channel();
    let (media_tx, mut media_rx) = mpsc::channel(2048);
    let mut s = Session {
        link,
        catalog,
        metrics,
        rtc,
        peer,
        path,
        rec: recording,
        snapshot,
        broadcaster: None,
        pc: None,
        pending: Vec::new(),
        mid: String::new(),
        rtc_tx,
        media_tx,
        tracks: Arc::new(TrackShared::default()),
        track_stop: stop.child_token(),
        mux: None,
        video: None,
        reorder: Reorder::new(REORDER_WINDOW_NS),
        bytes_counted: 0,
        progress: None,
    };
    // Join the stream like a browser watcher would.
    s.link.send(pb::node_message::Msg::Attach(pb::Attach { peer: s.peer.to_string(), resume_token: token }));
    s.link.send(pb::node_message::Msg::Watch(pb::Watch { peer: s.peer.to_string(), stream_id: stream.id.to_string() }));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_progress = Instant::now();
    let end = loop {
        tokio::select! {
            () = stop.cancelled() => break End::Stopped,
            input = inbox.recv() => match input {
                Some(input) => if let Err(reason) = s.on_input(input).await { break End::Failed(reason) },
                None => break End::Stopped,
            },
            Some(ev) = rtc_rx.recv() => if let Err(end) = s.on_rtc(ev) { break end },
            Some(f) = media_rx.recv() => {
                s.reorder.push_on(f.frame.track_index(), f.ts_ns, f.frame);
                if let Err(reason) = s.write_ready(false) { break End::Failed(reason) }
            }
            _ = tick.tick() => {
                if let Err(reason) = s.on_tick(started, &mut last_progress) { break End::Failed(reason) }
            }
        }
    };
    // Stop reading; write what already arrived.
    s.track_stop.cancel();
    if let Some(pc) = s.pc.take()
        && tokio::time::timeout(Duration::from_secs(2), pc.close()).await.is_err()
    {
        tracing::debug!("peer connection close timed out");
    }
    while let Ok(f) = media_rx.try_recv() {
        s.reorder.push_on(f.frame.track_index(), f.ts_ns, f.frame);
    }
    let end = match s.write_ready(true) {
        Err(reason) if !matches!(end, End::Failed(_)) => End::Failed(reason),
        _ => end,
    };
    s.link.send(pb::node_message::Msg::Detach(pb::Detach { peer: s.peer.to_string() }));
    s.finish(end).await
}

fn offer_sdp(payload: &str) -> Result<String, String> {
    // The browser sends {"type":"offer","sdp":"..."}; a bare SDP string is accepted too.
    let v: serde_json::Value = serde_json::from_str(payload).map_err(|_| "offer is not JSON".to_owned())?;
    match &v {
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => Ok(v.get("sdp").and_then(|s| s.as_str()).ok_or("offer has no sdp")?.to_owned()),
    }
}

fn description(payload: &str) -> Result<RTCSessionDescription, String> {
    RTCSessionDescription::offer(offer_sdp(payload)?).map_err(|e| format!("bad offer: {e}"))
}

fn first_mid(sdp: &str) -> String {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=mid:")).unwrap_or("0").to_owned()
}

impl Session {
    fn send_signal(&self, to: &PeerId, kind: pb::SignalKind, payload: String) {
        self.link.send(pb::node_message::Msg::Signal(pb::Signal {
            from: self.peer.to_string(),
            to: to.to_string(),
            kind: kind.into(),
            payload,
        }));
    }

    async fn on_input(&mut self, input: SessionInput) -> Result<(), String> {
        match input {
            SessionInput::Signal { from, kind: pb::SignalKind::Offer, payload } => self.on_offer(from, &payload).await,
            SessionInput::Signal { from, kind: pb::SignalKind::Candidate, payload } => {
                if self.broadcaster.as_ref().is_some_and(|b| b != &from) {
                    return Ok(());
                }
                let c: RTCIceCandidateInit = match serde_json::from_str(&payload) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "unparsable remote candidate ignored");
                        return Ok(());
                    }
                };
                if c.candidate.is_empty() {
                    return Ok(()); // end of candidates
                }
                match &self.pc {
                    Some(pc) if self.broadcaster.is_some() => {
                        if let Err(e) = pc.add_ice_candidate(c).await {
                            tracing::debug!(error = %e, "remote candidate rejected");
                        }
                    }
                    // Before the offer: keep it until the remote description is set.
                    _ => self.pending.push(c),
                }
                Ok(())
            }
            SessionInput::Signal { .. } => Ok(()),
            SessionInput::Refused { code, message } => {
                if self.mux.as_ref().is_some_and(Container::started) {
                    tracing::warn!(%code, %message, "signaling refused a message");
                    Ok(())
                } else {
                    Err(format!("signaling refused to join the stream ({code}): {message}"))
                }
            }
            SessionInput::Evicted => Err("the recorder's peer was taken over elsewhere".into()),
        }
    }

    async fn on_offer(&mut self, from: PeerId, payload: &str) -> Result<(), String> {
        let offer = match description(payload) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "unusable offer ignored");
                return Ok(());
            }
        };
        if let Some(old) = self.pc.take() {
            // The broadcaster renegotiated from scratch (a new RTCPeerConnection): replace ours,
            // keep writing the same file.
            tracing::info!("new offer from the broadcaster; reconnecting");
            self.track_stop.cancel();
            self.track_stop = CancellationToken::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), old.close()).await;
        }
        if self.broadcaster.as_ref() != Some(&from) {
            self.pending.retain(|_| false);
        }
        self.broadcaster = Some(from.clone());
        let offered = peer::offered_media(&offer.sdp);
        if self.mux.is_none() && !offered.video && !offered.audio {
            return Err("the broadcaster offered no audio or video".into());
        }
        self.mid = first_mid(&offer.sdp);
        let pc = peer::peer_connection(&self.rtc, self.rtc_tx.clone())
            .await
            .map_err(|e| format!("peer connection setup failed: {e}"))?;
        self.pc = Some(Arc::clone(&pc));
        let answer = async {
            pc.set_remote_description(offer).await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            Ok::<_, webrtc::error::Error>(pc.local_description().await)
        }
        .await
        .map_err(|e| format!("negotiation failed: {e}"))?
        .ok_or("negotiation produced no answer")?;
        if self.mux.is_none() {
            self.create_file(offered, peer::answered_video(&answer.sdp)).await?;
        }
        let payload = serde_json::json!({ "type": "answer", "sdp": answer.sdp }).to_string();
        self.send_signal(&from, pb::SignalKind::Answer, payload);
        for c in std::mem::take(&mut self.pending) {
            if let Err(e) = pc.add_ice_candidate(c).await {
                tracing::debug!(error = %e, "queued remote candidate rejected");
            }
        }
        tracing::info!("answered the broadcaster's offer");
        Ok(())
    }

    /// Creates the recording file in the container the answered video codec needs. An H.264
    /// recording is MP4: its catalog entry, made as `<id>.webm` before the codec was known, is
    /// renamed first, so a crash never leaves the catalog pointing at a file that is not there.
    async fn create_file(&mut self, offered: Offered, codec: Option<VideoCodec>) -> Result<(), String> {
        let codec = codec.filter(|_| offered.video);
        let ext = container::extension(codec);
        let name = format!("{}.{ext}", self.rec.id);
        if name != self.rec.file_name {
            let path = self.dir().join(&name);
            let old = std::mem::replace(&mut self.path, path);
            let _ = std::fs::remove_file(old);
            self.rec.file_name = name;
            *self.snapshot.lock() = self.rec.clone();
            self.catalog.update(&self.rec).await.map_err(|e| format!("the catalog did not take the file name: {e}"))?;
        }
        let tracks = Tracks { video: codec.is_some(), audio: offered.audio, audio_channels: 2 };
        self.mux =
            Some(Container::create(&self.path, tracks, codec).map_err(|e| format!("cannot create the file: {e}"))?);
        self.video = codec;
        tracing::info!(video = ?codec, file = %self.rec.file_name, "recording file created");
        Ok(())
    }

    fn on_rtc(&mut self, ev: RtcEvent) -> Result<(), End> {
        match ev {
            RtcEvent::Candidate(mut c) => {
                let Some(to) = self.broadcaster.clone() else { return Ok(()) };
                if c.sdp_mid.as_deref().is_none_or(str::is_empty) {
                    c.sdp_mid = Some(self.mid.clone());
                }
                match serde_json::to_string(&c) {
                    Ok(payload) => self.send_signal(&to, pb::SignalKind::Candidate, payload),
                    Err(e) => tracing::debug!(error = %e, "local candidate not serializable"),
                }
                Ok(())
            }
            RtcEvent::State(state) => {
                tracing::debug!(%state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        tracing::info!("connected to the broadcaster");
                        Ok(())
                    }
                    RTCPeerConnectionState::Failed => {
                        Err(End::PeerGone("the connection to the broadcaster failed".into()))
                    }
                    RTCPeerConnectionState::Closed => {
                        Err(End::PeerGone("the broadcaster closed the connection".into()))
                    }
                    _ => Ok(()),
                }
            }
            RtcEvent::Track(track) => {
                tokio::spawn(
                    peer::read_track(
                        track,
                        self.video,
                        Arc::clone(&self.tracks),
                        self.media_tx.clone(),
                        self.metrics.rtp_packets.clone(),
                        self.track_stop.clone(),
                    )
                    .in_current_span(),
                );
                Ok(())
            }
        }
    }

    /// Writes the frames the reorder buffer releases (all of them when `all`).
    /// The directory the recording file lives in (the recordings volume).
    fn dir(&self) -> PathBuf {
        self.path.parent().map(PathBuf::from).unwrap_or_default()
    }

    fn write_ready(&mut self, all: bool) -> Result<(), String> {
        let dir = self.dir();
        let Some(mux) = self.mux.as_mut() else {
            while self.reorder.drain().is_some() {}
            return Ok(());
        };
        loop {
            let next = if all { self.reorder.drain() } else { self.reorder.pop_ready() };
            let Some((ts, frame)) = next else { return Ok(()) };
            mux.write(ts, &frame).map_err(|e| crate::disk::write_failure(&e, &dir))?;
        }
    }

    fn refresh(&mut self, stats: MuxStats) {
        self.rec.bytes = stats.bytes;
        self.rec.duration_ms = stats.duration_ns / 1_000_000;
        self.rec.video_codec = match self.video {
            Some(codec) if stats.video_frames > 0 => codec.catalog_name().into(),
            _ => String::new(),
        };
        self.rec.audio_codec = if stats.audio_frames > 0 { AUDIO_CODEC.into() } else { String::new() };
        self.metrics.bytes_written.inc_by(stats.bytes.saturating_sub(self.bytes_counted));
        self.bytes_counted = stats.bytes;
        *self.snapshot.lock() = self.rec.clone();
    }

    fn on_tick(&mut self, started: Instant, last_progress: &mut Instant) -> Result<(), String> {
        let dir = self.dir();
        let Some(mux) = self.mux.as_mut() else {
            return if started.elapsed() > NO_MEDIA_TIMEOUT {
                Err(format!("no offer from the broadcaster within {} s", NO_MEDIA_TIMEOUT.as_secs()))
            } else {
                Ok(())
            };
        };
        if !mux.started() && started.elapsed() > NO_MEDIA_TIMEOUT {
            return Err(format!("no media arrived within {} s", NO_MEDIA_TIMEOUT.as_secs()));
        }
        mux.flush().map_err(|e| crate::disk::write_failure(&e, &dir))?;
        let stats = mux.stats();
        self.refresh(stats);
        if last_progress.elapsed() >= PROGRESS_EVERY && self.progress.as_ref().is_none_or(JoinHandle::is_finished) {
            *last_progress = Instant::now();
            let catalog = self.catalog.clone();
            let rec = self.rec.clone();
            self.progress = Some(tokio::spawn(async move {
                if let Err(e) = catalog.update(&rec).await {
                    tracing::debug!(error = %e, "progress not stored");
                }
            }));
        }
        Ok(())
    }

    async fn finish(mut self, end: End) -> Recording {
        let stats = match self.mux.take() {
            // libwebm writes the sizes, Duration, SeekHead and Cues and the file is synced.
            Some(mux) => match tokio::task::spawn_blocking(move || mux.finish()).await {
                Ok(Ok(stats)) => Some(stats),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "finalizing the file failed");
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let stats = stats.unwrap_or_else(|| MuxStats {
            bytes: std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            ..MuxStats::default()
        });
        self.refresh(stats);
        let has_media = stats.video_frames + stats.audio_frames > 0;
        match (has_media, end) {
            (true, End::Stopped) => self.rec.state = RecordingState::Complete,
            (true, End::PeerGone(reason)) => {
                tracing::info!(%reason, "broadcaster gone; recording complete");
                self.rec.state = RecordingState::Complete;
            }
            (true, End::Failed(reason)) => {
                // The file keeps a playable prefix; the catalog says why it ended.
                tracing::warn!(%reason, "recording failed");
                self.rec.state = RecordingState::Failed;
                self.rec.error = reason;
            }
            (false, end) => {
                self.rec.state = RecordingState::Failed;
                self.rec.error = match end {
                    End::Stopped => "stopped before any media arrived".into(),
                    End::PeerGone(reason) | End::Failed(reason) => reason,
                };
                if stats.bytes == 0 {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
        if let Some(p) = self.progress.take() {
            let _ = p.await;
        }
        *self.snapshot.lock() = self.rec.clone();
        for attempt in 1..=3 {
            match self.catalog.update(&self.rec).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => tracing::error!(error = %e, "final recording state not stored"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        self.rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_from_the_browser_shape() {
        assert_eq!(offer_sdp(r#"{"type":"offer","sdp":"v=0\r\n"}"#).unwrap(), "v=0\r\n");
        assert_eq!(offer_sdp(r#""v=0\r\n""#).unwrap(), "v=0\r\n");
        assert!(offer_sdp("{}").is_err());
        assert!(offer_sdp("not json").is_err());
        assert!(description(r#"{"type":"offer","sdp":"garbage"}"#).is_err());
    }

    #[test]
    fn browser_candidates_deserialize() {
        let c: RTCIceCandidateInit = serde_json::from_str(
            r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}"#,
        )
        .unwrap();
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["sdpMLineIndex"], 0);
        assert_eq!(v["usernameFragment"], "abcd");
    }

    #[test]
    fn first_mid_defaults_to_zero() {
        assert_eq!(first_mid("v=0\r\nm=audio 9 RTP 111\r\na=mid:a0\r\na=mid:v1\r\n"), "a0");
        assert_eq!(first_mid("v=0\r\n"), "0");
    }
}
