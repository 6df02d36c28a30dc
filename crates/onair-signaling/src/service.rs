//! The `onair.v1.Signaling` gRPC implementation and the dead-node reaper.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream as FutStream;
use onair_core::NodeId;
use onair_proto::v1 as pb;
use onair_proto::v1::signaling_server::Signaling;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::RouteError;
use crate::metrics::{ActionLabels, CodeLabels, SignalingMetrics};
use crate::router::{Action, Router};

/// The signaling service.
#[derive(Debug, Clone)]
pub struct SignalingService {
    router: Router,
    presence_ttl: Duration,
    shutdown: CancellationToken,
    metrics: SignalingMetrics,
}

impl SignalingService {
    /// A service over `router`; nodes silent for `presence_ttl` lose their peers.
    pub fn new(router: Router, presence_ttl: Duration, shutdown: CancellationToken, metrics: SignalingMetrics) -> Self {
        Self { router, presence_ttl, shutdown, metrics }
    }
}

fn node_id(raw: &str) -> Result<NodeId, Status> {
    raw.parse().map_err(|e| Status::invalid_argument(format!("node: {e}")))
}

/// The peer a raw message is about, for an error event when it does not even convert.
fn raw_peer(msg: &pb::node_message::Msg) -> &str {
    use pb::node_message::Msg;
    match msg {
        Msg::Hello(_) => "",
        Msg::Attach(a) => &a.peer,
        Msg::Detach(d) => &d.peer,
        Msg::Publish(p) => &p.peer,
        Msg::Unpublished(u) => &u.peer,
        Msg::Watch(w) => &w.peer,
        Msg::Unwatch(u) => &u.peer,
        Msg::Signal(s) => &s.from,
        Msg::Reassert(_) => "",
        // A session's requests stay in order; an error event names the request.
        Msg::SessionRequest(r) => &r.id,
        Msg::SessionReply(r) => &r.id,
        Msg::Forward(f) => &f.peer,
        Msg::WatcherDropped(d) => &d.watcher,
    }
}

/// A message's kind and the stream it names, for traces.
fn describe(msg: &pb::node_message::Msg) -> (&'static str, &str) {
    use pb::node_message::Msg;
    match msg {
        Msg::Hello(_) => ("hello", ""),
        Msg::Attach(_) => ("attach", ""),
        Msg::Detach(_) => ("detach", ""),
        Msg::Publish(_) => ("publish", ""),
        Msg::Unpublished(_) => ("unpublished", ""),
        Msg::Watch(w) => ("watch", &w.stream_id),
        Msg::Unwatch(_) => ("unwatch", ""),
        Msg::Signal(_) => ("signal", ""),
        Msg::Reassert(_) => ("reassert", ""),
        Msg::SessionRequest(r) => ("session_request", &r.stream_id),
        Msg::SessionReply(_) => ("session_reply", ""),
        Msg::Forward(_) => ("forward", ""),
        Msg::WatcherDropped(_) => ("watcher_dropped", ""),
    }
}

/// One message for a lane: the peer it is about, the message, its trace context (`""`: untraced).
type Lane = mpsc::Sender<(String, pb::node_message::Msg, String)>;

/// Parallel lanes per NodeStream. A node's messages are handled in order per peer (the sender, or
/// the peer a message is about), so a pair's offer/answer/candidates never overtake each other, while
/// different peers' messages no longer wait for one another's Redis round trips.
const SHARDS: usize = 8;

/// The lane of messages about `peer` (messages about no peer, like `hello`, take lane 0).
fn shard_of(peer: &str) -> usize {
    use std::hash::{Hash, Hasher};
    if peer.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.hash(&mut h);
    usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0)
}

/// One lane: handles its messages in order, answering refusals on the node's event stream.
fn spawn_shard(
    router: Router,
    node: NodeId,
    events: mpsc::Sender<Result<pb::NodeEvent, Status>>,
    metrics: SignalingMetrics,
) -> Lane {
    use tracing::Instrument;
    let (tx, mut rx) = mpsc::channel::<(String, pb::node_message::Msg, String)>(1024);
    tokio::spawn(async move {
        while let Some((raw, msg, traceparent)) = rx.recv().await {
            let (kind, stream) = describe(&msg);
            // A traced message (a watch) continues its trace here; the deliveries it makes carry it on.
            let span = if traceparent.is_empty() {
                tracing::Span::none()
            } else {
                let span = tracing::info_span!("signaling.handle", action = kind, peer = %raw, stream = %stream);
                onair_ops::trace::follow(&span, &traceparent);
                span
            };
            let started = std::time::Instant::now();
            let handled = match Action::try_from(msg) {
                Ok(action) => router.handle(&node, action).instrument(span).await,
                Err(e) => Err(e),
            };
            let labels = ActionLabels { action: kind };
            metrics.messages.get_or_create(&labels).inc();
            metrics.handling.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            if let Err(e) = handled {
                metrics.refused.get_or_create(&CodeLabels { code: e.code().as_str() }).inc();
                let ev = pb::NodeEvent { peer: raw, code: e.code().as_str().to_owned(), message: e.to_string() };
                if events.send(Ok(ev)).await.is_err() {
                    break;
                }
            }
        }
    });
    tx
}

type EventStream = Pin<Box<dyn FutStream<Item = Result<pb::NodeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Signaling for SignalingService {
    type NodeStreamStream = EventStream;

    async fn node_stream(
        &self,
        req: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::NodeStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::NodeEvent, Status>>(1024);
        let router = self.router.clone();
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut node: Option<NodeId> = None;
            let mut shards: Vec<Lane> = Vec::new();
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = inbound.next() => next,
                };
                let Some(Ok(m)) = next else { break };
                let Some(msg) = m.msg else { continue };
                if node.is_none() {
                    match m.node.parse::<NodeId>() {
                        Ok(n) => {
                            shards = (0..SHARDS)
                                .map(|_| spawn_shard(router.clone(), n.clone(), tx.clone(), metrics.clone()))
                                .collect();
                            node = Some(n);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::invalid_argument(format!("hello.node: {e}")))).await;
                            break;
                        }
                    }
                }
                let raw = raw_peer(&msg).to_owned();
                // Waiting for room in a shard is the backpressure on this node's stream.
                if shards[shard_of(&raw)].send((raw, msg, m.traceparent)).await.is_err() {
                    break;
                }
            }
            // Dropping the shard senders lets each shard finish what it holds, then end.
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let node = node_id(&req.get_ref().node)?;
        let now = onair_core::time::now_ms();
        let known = self.router.directory().heartbeat(&node, now).await.map_err(RouteError::from)?;
        if let Some(relay) = &req.get_ref().relay {
            let load = relay.accepting.then_some((relay.subscribers, relay.streams));
            self.router.directory().relay_load(&node, load, now).await.map_err(RouteError::from)?;
        }
        if !known {
            tracing::info!(%node, "heartbeat from a node the directory does not know; asking it to re-assert its peers");
        }
        let ttl_ms = u64::try_from(self.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::HeartbeatResponse { ttl_ms, reassert: !known }))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        let r = req.into_inner();
        let node = node_id(&r.node)?;
        let peer = r.peer.parse().map_err(|e| Status::invalid_argument(format!("peer: {e}")))?;
        Ok(Response::new(self.router.resume(&peer, &r.resume_token, &node).await?))
    }
}

/// Every second, finds nodes whose heartbeat is older than `ttl` and detaches their peers
/// (ending their streams). Safe to run on every replica: one claims each dead node.
///
/// After the directory was unreachable, nobody's heartbeat could land: the reaper waits a full
/// `ttl` of reachability before judging anyone, so a Redis outage does not read as every node dying.
pub async fn reap_dead_nodes(router: Router, ttl: Duration, shutdown: CancellationToken) {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut judge_after = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dir = router.directory();
        let stale = match dir.stale_nodes(onair_core::time::now_ms() - ttl_ms).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "reaper skipped");
                judge_after = tokio::time::Instant::now() + ttl;
                continue;
            }
        };
        if tokio::time::Instant::now() < judge_after {
            continue;
        }
        for node in stale {
            if !matches!(dir.claim_node(&node).await, Ok(true)) {
                continue;
            }
            let peers = dir.node_peers(&node).await.unwrap_or_default();
            tracing::warn!(%node, peers = peers.len(), "node missed its heartbeats; detaching its peers");
            for p in peers {
                if let Err(e) = router.detach(&node, &p).await {
                    tracing::warn!(error = %e, peer = %p, "could not detach");
                }
            }
        }
    }
}

/// Every `every`, ends live streams whose broadcaster the directory lost and no node re-asserted
/// (two sweeps in a row, see [`Router::end_orphans`]). Safe on every replica (ending is idempotent).
pub async fn sweep_orphans(router: Router, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects = std::collections::HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match router.end_orphans(&suspects).await {
            Ok(orphans) => suspects = orphans,
            Err(e) => {
                tracing::debug!(error = %e, "orphan sweep skipped");
                suspects.clear();
            }
        }
    }
}
