//! The gateway: serves the pages, speaks the browser WebSocket protocol on
//! `/ws`, and relays everything through signaling and the registry. It holds
//! sockets and nothing that must survive it.

pub mod api;
pub mod download;
pub mod hub;
pub mod pages;
pub mod protocol;
pub mod ratelimit;
pub mod socket;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use onair_core::{Bus, NodeId};
use onair_ops::{Admin, ReadyCheck, ServeError};
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use hub::{Hub, HubParts};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's node id.
    pub node: NodeId,
    /// Registry gRPC URL.
    pub registry_url: String,
    /// Signaling gRPC URL.
    pub signaling_url: String,
    /// How long a dropped peer keeps its id and stream.
    pub resume_grace: Duration,
    /// Directory the recorder writes WebM files to (shared volume in a cluster).
    pub recordings_dir: std::path::PathBuf,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

impl axum::extract::FromRef<AppState> for Arc<Hub> {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.hub)
    }
}

async fn ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(socket::HARD_FRAME_LIMIT)
        .max_frame_size(socket::HARD_FRAME_LIMIT)
        .on_upgrade(move |s| socket::run(state.hub, s, state.shutdown))
}

/// Readiness: both upstream links are up.
pub struct UpstreamCheck(pub Arc<Hub>);

#[async_trait]
impl ReadyCheck for UpstreamCheck {
    fn name(&self) -> &str {
        "upstreams"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.links.check()
    }
}

fn channel(url: &str) -> Result<tonic::transport::Channel, ServeError> {
    onair_node::lazy_channel(url).map_err(ServeError::Transport)
}

/// Builds the hub (so the caller can register readiness checks) and its signaling queue.
pub fn hub(
    config: &GatewayConfig,
) -> Result<(Arc<Hub>, tokio::sync::mpsc::Receiver<onair_proto::v1::NodeMessage>), ServeError> {
    let parts = HubParts {
        node: config.node.clone(),
        registry: StreamRegistryClient::new(channel(&config.registry_url)?),
        signaling: SignalingClient::new(channel(&config.signaling_url)?),
        resume_grace: config.resume_grace,
        ice_servers: Vec::new(),
    };
    Ok(Hub::new(parts))
}

/// Serves the gateway on `listener` until `shutdown` fires; then closes every
/// socket with 1012 so browsers reconnect to another gateway.
pub async fn serve(
    config: GatewayConfig,
    hub: Arc<Hub>,
    to_signaling: tokio::sync::mpsc::Receiver<onair_proto::v1::NodeMessage>,
    bus: Arc<dyn Bus>,
    admin: Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    hub.metrics.register(admin.metrics());
    let (signaling, registry) = (hub.signaling.clone(), hub.registry.clone());
    tokio::spawn(onair_node::signaling_link(Arc::clone(&hub), signaling.clone(), to_signaling, shutdown.clone()));
    tokio::spawn(onair_node::heartbeat(Arc::clone(&hub), signaling, shutdown.clone()));
    tokio::spawn(onair_node::registry_feed(Arc::clone(&hub), registry, shutdown.clone()));
    tokio::spawn(onair_node::deliveries(Arc::clone(&hub), bus, shutdown.clone()));
    let state = AppState { hub: Arc::clone(&hub), shutdown: shutdown.clone() };
    let app = Router::new()
        .route("/", get(pages::watcher))
        .route("/watcher", get(pages::watcher))
        .route("/broadcast", get(pages::broadcast))
        .route("/recordings", get(pages::recordings))
        .route("/assets/{file}", get(pages::asset))
        .route("/ws", get(ws))
        .route("/api/streams", get(api::streams))
        .route("/api/recordings", get(api::recordings))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
        .merge(
            Router::new()
                .route("/recordings/{file}", get(download::recording))
                .with_state((Arc::clone(&hub), download::RecordingsDir(config.recordings_dir.clone()))),
        );
    tracing::info!(addr = ?listener.local_addr().ok(), node = %hub.node, "gateway HTTP listening");
    let closing = shutdown.clone();
    // Signaling frames are small and latency-bound: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            closing.cancelled().await;
            hub.close_all(1012, "server restarting; reconnect");
        })
        .await?;
    Ok(())
}
