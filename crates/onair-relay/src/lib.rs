//! The relay (SFU): a signaling node that receives each broadcast once and forwards it to every
//! watcher of the stream (the recorder included). Signaling places a new stream on the least
//! loaded relay and creates a peer there (the stream's *relay peer*): the broadcaster offers to
//! it like to any watcher, and it offers to each watcher in the broadcaster's place.
//!
//! Modules: `hub` (the node: deliveries from signaling, what to re-assert, load), `engine` (every
//! WebRTC peer of the process, on one UDP port per local address, and the forwarding), `demux`
//! (which peer a STUN request from a new address is for), `net`
//! (sockets and the candidates announced), `metrics`.

mod demux;
mod engine;
mod hub;
mod layers;
mod metrics;
mod net;
mod outbox;
mod sessions;
mod tcp;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use onair_core::Bus;
use onair_node::{Links, NodeLink};
use onair_ops::{Admin, ServeError};
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio_util::sync::CancellationToken;

pub use net::RelaySockets;

/// What the fuzz targets (`fuzz/`, `make fuzz`) reach; built only under `cargo fuzz`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::demux::local_ufrag;
    pub use crate::sessions::{frag_candidates, ice_ufrag};
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay's node id; its bus channel is `onair:node:{node}`.
    pub node: onair_core::NodeId,
    /// The address browsers reach this host at when it is not a local one (NAT 1:1): announced as a
    /// server-reflexive candidate beside the host candidates, on the same port.
    pub public: Option<IpAddr>,
    /// Most subscribers (watchers and recorders) this relay forwards to; more get `error{full}`.
    pub max_subscribers: usize,
    /// A subscriber whose ICE has had no working pair for this long is dropped (its WebSocket may
    /// still be there: a network that vanished, a tab frozen in the background).
    pub drop_silent_after: std::time::Duration,
    /// A subscriber of a simulcast stream whose bandwidth estimate stays below the lowest layer
    /// for this long is let go (`error{too_slow}`): it gets nothing watchable, and the relay stops
    /// spending its egress on it.
    pub drop_slow_after: std::time::Duration,
    /// Registry gRPC URL (the relay follows the live list to drop ended streams).
    pub registry_url: String,
    /// Signaling gRPC URL.
    pub signaling_url: String,
    /// The cluster secret, presented to signaling and the registry.
    pub security: onair_auth::Security,
}

/// Prepares the relay on `sockets`: registers its readiness check ("upstreams") and metrics with
/// `admin`, and returns the future that relays until `shutdown` fires. Then it gives its streams
/// back (signaling moves them to another relay, or to peer to peer) and closes its links.
pub fn serve(
    config: RelayConfig,
    sockets: RelaySockets,
    bus: Arc<dyn Bus>,
    admin: &Admin,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
    let creds = config.security.credentials();
    let registry = StreamRegistryClient::new(onair_node::lazy_channel(&config.registry_url, &creds)?);
    let signaling = SignalingClient::new(onair_node::lazy_channel(&config.signaling_url, &creds)?);
    let (link, outbox) = NodeLink::new(config.node.clone());
    let metrics = metrics::RelayMetrics::default();
    metrics.register(admin.metrics());
    let (engine, commands, mut gone) = engine::Engine::new(&config, sockets, link.clone(), metrics.clone());
    let hub = hub::Hub::new(link, commands, metrics);
    admin.add_check(onair_node::ready_check(&hub));
    Ok(async move {
        let engine_stop = CancellationToken::new();
        let engine_task = tokio::spawn(engine.run(engine_stop.clone()));
        // WHIP/WHEP sessions: end those whose connection went, fail requests that waited too long.
        let sessions_task = tokio::spawn({
            let hub = Arc::clone(&hub);
            let stop = engine_stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        peer = gone.recv() => match peer {
                            Some(p) => hub.connection_gone(&p),
                            None => return,
                        },
                        _ = tick.tick() => hub.expire_requests(),
                    }
                }
            }
        });
        let links = Links::spawn(&hub, outbox, signaling, bus);
        tracing::info!(node = %config.node, "relay starting");
        onair_node::registry_feed(Arc::clone(&hub), registry, shutdown.clone()).await;
        // Draining: take no new streams, hand the current ones back, let the detaches go out.
        hub.drain();
        tokio::time::sleep(Duration::from_millis(200)).await;
        links.close().await;
        engine_stop.cancel();
        let _ = engine_task.await;
        let _ = sessions_task.await;
        tracing::info!("relay stopped");
        Ok(())
    })
}
