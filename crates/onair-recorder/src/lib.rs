//! The recorder: joins live streams as a server-side WebRTC watcher (a signaling
//! node like a gateway, one peer per recording) and writes each one to a WebM file
//! in live mode, cataloged in the registry. Serves `onair.v1.Recorder` for manual
//! control; with auto-record it follows the registry feed and records every stream.
//!
//! Modules: [`hub`] (shared state, routing), [`session`] (one recording), [`peer`]
//! (WebRTC), [`vp8`] / [`timeline`] / [`mux`] (media), [`finalize`] (the seekable rewrite at
//! stop), [`catalog`] (registry), `onair_node` links (signaling, bus, feed), [`recovery`] (start-up
//! cleanup), [`service`] (gRPC).

pub mod catalog;
pub mod error;
pub mod finalize;
pub mod hub;
pub mod mux;
pub mod peer;
pub mod recovery;
pub mod service;
pub mod session;
pub mod timeline;
pub mod vp8;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onair_core::Bus;
use onair_ops::{Admin, GrpcMetricsLayer, ReadyCheck, ServeError};
use onair_proto::v1::recorder_server::RecorderServer;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::RecorderError;
pub use hub::{Hub, RecorderMetrics};
pub use onair_node::LinkState;
pub use service::RecorderService;

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "onair.v1.Recorder";

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// This recorder's node id; its bus channel is `onair:node:{node}`.
    pub node: onair_core::NodeId,
    /// Where the WebM files are written (created if missing).
    pub recordings_dir: std::path::PathBuf,
    /// Recordings that may run at once; more are refused with a warning.
    pub max_concurrent: usize,
    /// Record every live stream without being asked.
    pub auto_record: bool,
    /// The only IP ICE binds and advertises (UDP).
    pub rtc_ip: std::net::IpAddr,
    /// Registry gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub registry_url: String,
    /// Signaling gRPC URL.
    pub signaling_url: String,
}

/// Readiness: the registry feed and the signaling link of the recorder with this node id
/// (in this process) are both up. Build it before [`serve`] from the same config.
pub struct RecorderCheck(Arc<LinkState>);

impl RecorderCheck {
    /// The check for the recorder that `serve(config, ..)` will run.
    pub fn new(config: &RecorderConfig) -> Self {
        Self(hub::link_state(&config.node))
    }
}

#[async_trait]
impl ReadyCheck for RecorderCheck {
    fn name(&self) -> &str {
        "upstreams"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.check()
    }
}

fn channel(url: &str) -> Result<tonic::transport::Channel, ServeError> {
    onair_node::lazy_channel(url).map_err(ServeError::Transport)
}

/// Serves onair.v1.Recorder on `listener` until `shutdown`; finalizes active recordings before returning.
pub async fn serve(
    config: RecorderConfig,
    bus: Arc<dyn Bus>,
    admin: Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, reflection, reflection_alpha) =
        onair_ops::grpc::scaffold(&admin, &[SERVICE_NAME], onair_proto::FILE_DESCRIPTOR_SET, &shutdown)?;
    std::fs::create_dir_all(&config.recordings_dir)?;
    let catalog = catalog::Catalog::new(StreamRegistryClient::new(channel(&config.registry_url)?));
    let signaling = SignalingClient::new(channel(&config.signaling_url)?);
    let (hub, to_signaling) = Hub::new(config, catalog);
    hub.metrics.register(admin.metrics());
    // The links outlive the server: sessions still talk to signaling and the registry while
    // they finalize after `shutdown`.
    let links = CancellationToken::new();
    tokio::spawn(onair_node::signaling_link(Arc::clone(&hub), signaling.clone(), to_signaling, links.clone()));
    tokio::spawn(onair_node::heartbeat(Arc::clone(&hub), signaling, links.clone()));
    tokio::spawn(onair_node::deliveries(Arc::clone(&hub), bus, links.clone()));
    let feed_hub = Arc::clone(&hub);
    let feed_stop = shutdown.child_token();
    tokio::spawn(async move {
        recovery::recover_with_retries(&feed_hub, Duration::from_secs(10), &feed_stop).await;
        let registry = feed_hub.catalog.client();
        onair_node::registry_feed(feed_hub, registry, feed_stop).await;
    });
    tracing::info!(
        addr = ?listener.local_addr().ok(), node = %hub.config.node, dir = %hub.config.recordings_dir.display(),
        auto_record = hub.config.auto_record, "recorder gRPC listening"
    );
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(GrpcMetricsLayer::new(admin.metrics().clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(RecorderServer::new(RecorderService::new(Arc::clone(&hub))))
        .serve_with_incoming_shutdown(onair_ops::grpc::incoming(listener), shutdown.cancelled_owned())
        .await;
    hub.stop_all().await;
    // Give the final Detach messages a moment to reach signaling, then close the links.
    tokio::time::sleep(Duration::from_millis(100)).await;
    links.cancel();
    tracing::info!("recorder stopped");
    served?;
    Ok(())
}
