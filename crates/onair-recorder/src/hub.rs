//! The recorder's shared state: active recordings by stream, the streams it holds the
//! lease of, the live streams it knows from the registry feed, the routing of signaling
//! deliveries to their session, the queue to signaling, link health and metrics. Sessions
//! (one per recording) live in `session.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onair_core::{Leases, PeerId, Recording, RecordingId, RecordingState, StreamEvent, StreamId};
use onair_node::NodeLink;
use onair_proto::convert::FeedEvent;
use onair_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::RecorderConfig;
use crate::catalog::{Catalog, LiveStream};
use crate::error::RecorderError;
use crate::metrics::RecorderMetrics;
use crate::session::{self, SessionInput, SessionParams};

/// How long shutdown waits for sessions to finalize their files.
pub const FINALIZE_GRACE: Duration = Duration::from_secs(10);

/// How long a recorder's claim on a stream lasts unless renewed: the streams of a recorder that
/// died are claimed by another within this plus [`CLAIM_EVERY`] (then a new WebRTC connection and
/// a keyframe, ~1-2 s, before media flows into the new part).
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often a recorder renews its claims (four times per [`LEASE_TTL`], so one late renewal under
/// load loses nothing) and looks for live streams that nobody records.
pub const CLAIM_EVERY: Duration = Duration::from_millis(500);
/// How long after a part ended on a lost connection the recorder checks that the stream is still
/// live before it records on into a new part.
const RECORD_ON_AFTER: Duration = Duration::from_secs(1);

fn lease_key(stream: &StreamId) -> String {
    format!("reclease:{stream}")
}

struct Active {
    id: RecordingId,
    snapshot: Arc<Mutex<Recording>>,
    stop: CancellationToken,
    done: watch::Receiver<Option<Recording>>,
}

/// A recording session as a signaling peer: its inbox, and what to re-assert if the directory is lost.
struct SessionPeer {
    inbox: mpsc::Sender<SessionInput>,
    token: String,
    stream: StreamId,
}

/// Shared recorder state.
pub struct Hub {
    /// Settings.
    pub config: RecorderConfig,
    /// The registry.
    pub catalog: Catalog,
    link: NodeLink,
    /// Metrics.
    pub metrics: RecorderMetrics,
    active: Mutex<HashMap<StreamId, Active>>,
    peers: Mutex<HashMap<PeerId, SessionPeer>>,
    accepting: AtomicBool,
    leases: Arc<dyn Leases>,
    /// Streams whose lease this recorder holds: those it records, and those it was told to stop
    /// recording while they stay live (so that no other recorder starts them again).
    held: Mutex<HashSet<StreamId>>,
    /// Live streams, from the registry feed.
    live: Mutex<HashMap<StreamId, LiveStream>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.config.node).finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub speaking to signaling through `link`.
    pub fn new(config: RecorderConfig, catalog: Catalog, link: NodeLink, leases: Arc<dyn Leases>) -> Arc<Self> {
        Arc::new(Self {
            config,
            catalog,
            link,
            metrics: RecorderMetrics::default(),
            active: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            leases,
            held: Mutex::new(HashSet::new()),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Whether another recorder holds the lease of `stream` (it records it now).
    pub async fn held_elsewhere(&self, stream: &StreamId) -> Result<bool, RecorderError> {
        let holder = self.leases.holder(&lease_key(stream)).await?;
        Ok(holder.is_some_and(|h| h != self.config.node.as_str()))
    }

    /// Claims (or renews) the lease of `stream`; whether this recorder holds it now.
    async fn claim(&self, stream: &StreamId) -> Result<bool, RecorderError> {
        Ok(self.leases.claim(&lease_key(stream), self.config.node.as_str(), LEASE_TTL).await?)
    }

    /// Starts recording `stream`. Fails if it is already recorded, the recorder is full or
    /// shutting down, or the registry does not take the catalog entry.
    pub async fn start(self: &Arc<Self>, stream: LiveStream) -> Result<Recording, RecorderError> {
        let id = RecordingId::generate();
        let recording = Recording {
            id: id.clone(),
            stream_id: stream.id.clone(),
            title: stream.title.clone(),
            file_name: format!("{id}.webm"),
            started_at: onair_core::time::now_ms(),
            duration_ms: 0,
            bytes: 0,
            video_codec: String::new(),
            audio_codec: String::new(),
            state: RecordingState::Recording,
            error: String::new(),
        };
        let snapshot = Arc::new(Mutex::new(recording.clone()));
        let stop = CancellationToken::new();
        let (done_tx, done) = watch::channel(None);
        {
            let mut active = self.active.lock();
            if !self.accepting.load(Ordering::SeqCst) {
                return Err(RecorderError::ShuttingDown);
            }
            if active.contains_key(&stream.id) {
                return Err(RecorderError::AlreadyExists(format!("stream {} is already being recorded", stream.id)));
            }
            let free = crate::disk::free_bytes(&self.config.recordings_dir).unwrap_or(u64::MAX);
            if free < self.config.min_free_bytes {
                self.metrics.refused_disk_full.inc();
                let (free, min) = (free / (1024 * 1024), self.config.min_free_bytes / (1024 * 1024));
                tracing::warn!(
                    stream = %stream.id, free_mib = free, min_free_mib = min,
                    "not recording stream: the recordings volume is (nearly) full"
                );
                return Err(RecorderError::ResourceExhausted(format!(
                    "the recordings volume has {free} MiB free, below --min-free-mib {min}; new recordings \
                     start again once space returns"
                )));
            }
            if active.len() >= self.config.max_concurrent {
                self.metrics.skipped.inc();
                tracing::warn!(
                    stream = %stream.id, title = %stream.title, max = self.config.max_concurrent,
                    "not recording stream: the recorder is at its maximum of concurrent recordings"
                );
                return Err(RecorderError::ResourceExhausted(format!(
                    "this recorder already runs its maximum of {} recordings",
                    self.config.max_concurrent
                )));
            }
            let entry = Active { id: id.clone(), snapshot: Arc::clone(&snapshot), stop: stop.clone(), done };
            active.insert(stream.id.clone(), entry);
        }
        let path = self.config.recordings_dir.join(&recording.file_name);
        let registered = match self.claim(&stream.id).await {
            Ok(true) => {
                self.held.lock().insert(stream.id.clone());
                self.create(&stream.id, &path, &recording).await
            }
            Ok(false) => {
                Err(RecorderError::AlreadyExists(format!("stream {} is being recorded by another recorder", stream.id)))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            self.active.lock().remove(&stream.id);
            let _ = std::fs::remove_file(&path);
            let mut failed = recording;
            failed.state = RecordingState::Failed;
            failed.error = "could not start".into();
            let _ = done_tx.send(Some(failed));
            return Err(e);
        }
        self.metrics.started.inc();
        self.metrics.active.inc();
        // A recorder's peer: a relay sends it the top simulcast layer.
        let peer = PeerId::recorder();
        let (inbox_tx, inbox) = mpsc::channel(256);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let entry = SessionPeer { inbox: inbox_tx, token: token.clone(), stream: stream.id.clone() };
        self.peers.lock().insert(peer.clone(), entry);
        tracing::info!(stream = %stream.id, recording = %id, %peer, "recording started");
        let params = SessionParams {
            stream,
            recording: recording.clone(),
            peer,
            token,
            path,
            inbox,
            stop,
            snapshot,
            link: self.link.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            rtc: self.config.rtc.clone(),
        };
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let stream_id = params.stream.id.clone();
            let peer = params.peer.clone();
            let asked = params.stop.clone();
            let fin = session::run(params).await;
            // Complete without being asked to stop: the connection to the stream's media was lost
            // (its relay failed or restarted, or this process stalled) while the stream may be live.
            let lost = fin.state == RecordingState::Complete && !asked.is_cancelled();
            hub.finished(&stream_id, &peer, fin, done_tx);
            if lost {
                hub.record_on(stream_id).await;
            }
        });
        Ok(recording)
    }

    /// After a part ended on a lost connection: if the stream is still live a moment later (an
    /// ending broadcast has been heard of by then), records on into a new part.
    async fn record_on(self: &Arc<Self>, stream: StreamId) {
        tokio::time::sleep(RECORD_ON_AFTER).await;
        let live = self.live.lock().get(&stream).cloned();
        let Some(live) = live else { return };
        if !self.held.lock().contains(&stream) || self.active.lock().contains_key(&stream) {
            return;
        }
        tracing::info!(%stream, "lost the stream's media while it is live; recording on into a new part");
        self.metrics.recorded_on.inc();
        self.spawn_start(live);
    }

    /// With the stream's lease held: closes the part a lost recorder left open, creates the file
    /// (it exists from the start, so crash recovery can tell this recorder owns the entry) and
    /// catalogs the recording.
    async fn create(
        &self,
        stream: &StreamId,
        path: &std::path::Path,
        recording: &Recording,
    ) -> Result<(), RecorderError> {
        crate::recovery::close_earlier_parts(self, stream).await?;
        std::fs::create_dir_all(&self.config.recordings_dir)?;
        std::fs::File::create(path)?;
        self.catalog.add(recording).await
    }

    fn finished(&self, stream: &StreamId, peer: &PeerId, fin: Recording, done: watch::Sender<Option<Recording>>) {
        self.peers.lock().remove(peer);
        {
            let mut active = self.active.lock();
            if active.get(stream).is_some_and(|a| a.id == fin.id) {
                active.remove(stream);
            }
        }
        self.metrics.active.dec();
        match fin.state {
            RecordingState::Failed => self.metrics.failed.inc(),
            _ => self.metrics.completed.inc(),
        };
        tracing::info!(
            stream = %stream, recording = %fin.id, state = ?fin.state, bytes = fin.bytes,
            duration_ms = fin.duration_ms, error = %fin.error, "recording finished"
        );
        let _ = done.send(Some(fin));
    }

    /// Stops the recording of `stream` and waits until it is finalized.
    pub async fn stop(&self, stream: &StreamId) -> Result<Recording, RecorderError> {
        let mut done = {
            let active = self.active.lock();
            let a = active
                .get(stream)
                .ok_or_else(|| RecorderError::NotFound(format!("stream {stream} is not being recorded")))?;
            a.stop.cancel();
            a.done.clone()
        };
        match done.wait_for(Option::is_some).await {
            Ok(r) => r.clone().ok_or(RecorderError::ShuttingDown),
            Err(_) => Err(RecorderError::ShuttingDown),
        }
    }

    /// Recordings in progress, with their current size and duration.
    pub fn list_active(&self) -> Vec<Recording> {
        let mut list: Vec<Recording> = self.active.lock().values().map(|a| a.snapshot.lock().clone()).collect();
        list.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        list
    }

    /// Ids of the recordings in progress.
    pub fn active_ids(&self) -> HashSet<RecordingId> {
        self.active.lock().values().map(|a| a.id.clone()).collect()
    }

    /// Routes one delivery from the node's bus channel to its session.
    pub fn deliver(&self, d: pb::Delivery) {
        use pb::delivery::Event;
        let Ok(to) = d.to.parse::<PeerId>() else { return };
        let input = match d.event {
            Some(Event::Signal(s)) => match (s.from.parse(), pb::SignalKind::try_from(s.kind)) {
                (Ok(from), Ok(kind)) => SessionInput::Signal { from, kind, payload: s.payload },
                _ => return,
            },
            Some(Event::Error(e)) => SessionInput::Refused { code: e.code, message: e.message },
            Some(Event::Evicted(_)) => SessionInput::Evicted,
            _ => return,
        };
        self.to_session(&to, input);
    }

    /// Routes a NodeStream error about one of our peers to its session.
    pub fn node_event(&self, ev: pb::NodeEvent) {
        if let Ok(peer) = ev.peer.parse::<PeerId>() {
            self.to_session(&peer, SessionInput::Refused { code: ev.code, message: ev.message });
        }
    }

    fn to_session(&self, peer: &PeerId, input: SessionInput) {
        let tx = self.peers.lock().get(peer).map(|p| p.inbox.clone());
        if let Some(tx) = tx
            && tx.try_send(input).is_err()
        {
            tracing::warn!(%peer, "session inbox full; signaling message dropped");
        }
    }

    /// The sessions' peers, to re-assert after signaling lost them: each watches its stream.
    pub fn peer_states(&self) -> Vec<pb::PeerState> {
        self.peers
            .lock()
            .iter()
            .map(|(peer, p)| pb::PeerState {
                peer: peer.to_string(),
                resume_token: p.token.clone(),
                broadcasting: String::new(),
                watching: p.stream.to_string(),
                relaying: String::new(),
            })
            .collect()
    }

    /// Applies one registry change: records new live streams (with auto-record) and stops
    /// recordings whose stream ended.
    pub fn apply_feed(self: &Arc<Self>, event: FeedEvent) {
        match event {
            FeedEvent::Snapshot(streams) => {
                let live: HashMap<StreamId, LiveStream> =
                    streams.iter().filter_map(LiveStream::live).map(|s| (s.id.clone(), s)).collect();
                self.held.lock().retain(|id| live.contains_key(id));
                let gone: Vec<StreamId> =
                    self.active.lock().keys().filter(|id| !live.contains_key(*id)).cloned().collect();
                for id in gone {
                    self.spawn_stop(id);
                }
                *self.live.lock() = live;
                self.claim_unrecorded();
            }
            FeedEvent::Change(StreamEvent::Started(s)) => {
                if let Some(s) = LiveStream::live(&s) {
                    self.live.lock().insert(s.id.clone(), s.clone());
                    if self.config.auto_record {
                        self.spawn_start(s);
                    }
                }
            }
            FeedEvent::Change(StreamEvent::Updated(_)) => {}
            FeedEvent::Change(StreamEvent::Ended(s)) => {
                self.live.lock().remove(&s.id);
                // Not released: left to expire, so that no recorder that has not heard of the end yet
                // claims the stream meanwhile.
                self.held.lock().remove(&s.id);
                if self.active.lock().contains_key(&s.id) {
                    self.spawn_stop(s.id);
                }
            }
        }
    }

    /// Renews this recorder's claims every [`CLAIM_EVERY`] (a stream whose claim another recorder
    /// took is finalized here), and with auto-record starts the live streams nobody records.
    pub async fn keep_claims(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(CLAIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held: Vec<StreamId> = self.held.lock().iter().cloned().collect();
            for stream in held {
                match self.claim(&stream).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.held.lock().remove(&stream);
                        if self.active.lock().contains_key(&stream) {
                            tracing::warn!(%stream, "another recorder took the stream over; finalizing this part");
                            self.spawn_stop(stream);
                        }
                    }
                    // Nobody can claim it while the leases are unreachable: record on.
                    Err(e) => tracing::debug!(%stream, error = %e, "lease not renewed"),
                }
            }
            self.claim_unrecorded();
        }
    }

    /// With auto-record and room for more, tries to start every live stream this recorder neither
    /// records nor holds (a new one, or one whose recorder died or drained); the lease decides.
    fn claim_unrecorded(self: &Arc<Self>) {
        if !self.config.auto_record || !self.accepting.load(Ordering::SeqCst) {
            return;
        }
        let free = crate::disk::free_bytes(&self.config.recordings_dir).unwrap_or(u64::MAX);
        if free < self.config.min_free_bytes {
            return;
        }
        let candidates: Vec<LiveStream> = {
            let (live, held, active) = (self.live.lock(), self.held.lock(), self.active.lock());
            let room = self.config.max_concurrent.saturating_sub(active.len());
            live.values().filter(|s| !held.contains(&s.id) && !active.contains_key(&s.id)).take(room).cloned().collect()
        };
        for s in candidates {
            let hub = Arc::clone(self);
            tokio::spawn(async move {
                // Only free leases (or this recorder's own, from before a restart): start() claims.
                if let Ok(false) = hub.held_elsewhere(&s.id).await {
                    hub.spawn_start(s);
                }
            });
        }
    }

    fn spawn_start(self: &Arc<Self>, stream: LiveStream) {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let id = stream.id.clone();
            match hub.start(stream).await {
                Ok(_) | Err(RecorderError::AlreadyExists(_) | RecorderError::ShuttingDown) => {}
                // Logged where it was decided (with the stream's title).
                Err(RecorderError::ResourceExhausted(_)) => {}
                Err(e) => tracing::warn!(stream = %id, error = %e, "could not start recording"),
            }
        });
    }

    fn spawn_stop(self: &Arc<Self>, stream: StreamId) {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            tracing::info!(%stream, "stream ended; finalizing its recording");
            let _ = hub.stop(&stream).await;
        });
    }

    /// Shutdown: refuses new recordings, stops every active one and waits (up to
    /// [`FINALIZE_GRACE`]) until all are finalized.
    pub async fn stop_all(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let waits: Vec<_> = {
            let active = self.active.lock();
            active
                .values()
                .map(|a| {
                    a.stop.cancel();
                    let mut done = a.done.clone();
                    async move {
                        let _ = done.wait_for(Option::is_some).await;
                    }
                })
                .collect()
        };
        if !waits.is_empty() {
            tracing::info!(recordings = waits.len(), "finalizing active recordings");
            if tokio::time::timeout(FINALIZE_GRACE, futures::future::join_all(waits)).await.is_err() {
                tracing::warn!("some recordings were not finalized within the shutdown grace");
            }
        }
        // Hand the streams over: another recorder claims them on its next round.
        let held: Vec<StreamId> = self.held.lock().drain().collect();
        for stream in held {
            if let Err(e) = self.leases.release(&lease_key(&stream), self.config.node.as_str()).await {
                tracing::warn!(%stream, error = %e, "lease not released; it expires by itself");
            }
        }
    }
}

impl onair_node::NodeHandler for Hub {
    fn link(&self) -> &NodeLink {
        &self.link
    }
    fn node_event(&self, ev: pb::NodeEvent) {
        Hub::node_event(self, ev);
    }
    fn deliver(&self, d: pb::Delivery) {
        Hub::deliver(self, d);
    }
    fn stream_event(self: &Arc<Self>, event: FeedEvent) {
        self.apply_feed(event);
    }
    fn peer_states(&self) -> Vec<pb::PeerState> {
        Hub::peer_states(self)
    }
}
