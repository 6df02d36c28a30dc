//! The stream registry: the catalog of streams and recordings behind the
//! `onair.v1.StreamRegistry` gRPC API, and the change feed (`WatchStreams`)
//! that gateways and recorders follow.

pub mod convert;
pub mod error;
pub mod feed;
pub mod page;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onair_core::Bus;
use onair_ops::{Admin, GrpcMetricsLayer, ReadyCheck, ServeError};
use onair_proto::v1::stream_registry_server::StreamRegistryServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::RegistryError;
pub use service::RegistryService;
pub use store::{LocalStore, MongoStore, StoreError, StreamStore};

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "onair.v1.StreamRegistry";

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// How long ended streams stay listed before they are purged.
    pub ended_retention: Duration,
}

/// Readiness check: the store answers a ping.
pub struct StoreCheck(pub Arc<dyn StreamStore>, pub &'static str);

#[async_trait]
impl ReadyCheck for StoreCheck {
    fn name(&self) -> &str {
        self.1
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

/// Deletes ended streams older than the retention, periodically, until `shutdown`.
async fn purge_loop(store: Arc<dyn StreamStore>, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = onair_core::time::now_ms().saturating_sub(retention_ms);
        match store.purge_ended(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged ended streams past retention"),
            Err(e) => tracing::debug!(error = %e, "purge skipped"),
        }
    }
}

/// Serves the registry on `listener` until `shutdown` fires; in-flight calls finish
/// and open `WatchStreams` calls end before it returns.
pub async fn serve(
    config: RegistryConfig,
    store: Arc<dyn StreamStore>,
    bus: Arc<dyn Bus>,
    admin: Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, reflection, reflection_alpha) =
        onair_ops::grpc::scaffold(&admin, &[SERVICE_NAME], onair_proto::FILE_DESCRIPTOR_SET, &shutdown)?;
    tokio::spawn(purge_loop(Arc::clone(&store), config.ended_retention, shutdown.clone()));
    let service = RegistryService::new(store, bus, shutdown.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "registry gRPC listening");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(GrpcMetricsLayer::new(admin.metrics().clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(StreamRegistryServer::new(service))
        .serve_with_incoming_shutdown(onair_ops::grpc::incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
