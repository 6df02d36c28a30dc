//! The signaling service: who may send what to whom, presence, watcher
//! membership and counts. Stateless: state lives in a [`onair_core::Directory`]
//! (Redis in the cluster) and deliveries go through the [`onair_core::Bus`].

pub mod error;
pub mod router;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onair_core::{Bus, Directory};
use onair_ops::{Admin, GrpcMetricsLayer, ReadyCheck, ServeError};
use onair_proto::v1::signaling_server::SignalingServer;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use router::{Router, node_channel};
pub use service::SignalingService;

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "onair.v1.Signaling";

/// Signaling settings.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// A node silent for this long loses its peers (and their streams end).
    pub presence_ttl: Duration,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self { presence_ttl: Duration::from_secs(6) }
    }
}

/// Readiness: the directory answers.
pub struct DirectoryCheck(pub Arc<dyn Directory>);

#[async_trait]
impl ReadyCheck for DirectoryCheck {
    fn name(&self) -> &str {
        "directory"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

/// Serves signaling on `listener` until `shutdown` fires.
pub async fn serve(
    config: SignalingConfig,
    dir: Arc<dyn Directory>,
    bus: Arc<dyn Bus>,
    registry_url: String,
    admin: Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, reflection, reflection_alpha) =
        onair_ops::grpc::scaffold(&admin, &[SERVICE_NAME], onair_proto::FILE_DESCRIPTOR_SET, &shutdown)?;
    let channel = tonic::transport::Endpoint::from_shared(registry_url)
        .map_err(ServeError::Transport)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let router = Router::new(dir, bus, StreamRegistryClient::new(channel));
    tokio::spawn(service::reap_dead_nodes(router.clone(), config.presence_ttl, shutdown.clone()));
    let service = SignalingService::new(router, config.presence_ttl, shutdown.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "signaling gRPC listening");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(GrpcMetricsLayer::new(admin.metrics().clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(SignalingServer::new(service))
        .serve_with_incoming_shutdown(onair_ops::grpc::incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
