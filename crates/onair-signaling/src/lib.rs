//! The signaling service: who may send what to whom, presence, watcher
//! membership and counts. Stateless: state lives in a [`onair_core::Directory`]
//! (Redis in the cluster) and deliveries go through the [`onair_core::Bus`].

mod error;
mod metrics;
mod router;
mod service;

use std::sync::Arc;
use std::time::Duration;

use onair_core::{Bus, Directory};
use onair_ops::{Admin, ReadyCheck, ServeError};
use onair_proto::v1::signaling_server::SignalingServer;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use router::Router;
use service::SignalingService;

/// Signaling settings.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// A node silent for this long loses its peers (and their streams end).
    pub presence_ttl: Duration,
    /// The cluster secret: required from callers, presented to the registry (none: open).
    pub security: onair_auth::Security,
    /// Most watchers one stream may have (0: no limit); more get `error{full}`.
    pub max_watchers_per_stream: u32,
    /// Place new streams on relay nodes when one is up (false: `--media p2p`, browsers send media
    /// to each other).
    pub relays: bool,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            presence_ttl: Duration::from_secs(6),
            security: onair_auth::Security::default(),
            max_watchers_per_stream: 0,
            relays: true,
        }
    }
}

/// Prepares signaling on `listener`: registers its readiness check ("directory") with `admin`
/// and returns the future that serves it until `shutdown` fires.
pub fn serve(
    config: SignalingConfig,
    dir: Arc<dyn Directory>,
    bus: Arc<dyn Bus>,
    registry_url: String,
    admin: &Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
    let check_dir = Arc::clone(&dir);
    admin.add_check(ReadyCheck::from_fn("directory", move || {
        let dir = Arc::clone(&check_dir);
        async move { dir.ping().await.map_err(|e| e.to_string()) }
    }));
    let channel = tonic::transport::Endpoint::from_shared(registry_url)
        .map_err(ServeError::Transport)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let refused_full = prometheus_client::metrics::counter::Counter::<u64>::default();
    admin.metrics().register(
        "signaling_watch_refused_full",
        "Watches refused because the stream had --max-watchers-per-stream watchers",
        refused_full.clone(),
    );
    let router = Router::new(dir, bus, StreamRegistryClient::new(config.security.credentials().on(channel)))
        .with_watcher_limit(config.max_watchers_per_stream, refused_full)
        .with_media(config.relays, config.presence_ttl);
    let metrics = metrics::SignalingMetrics::default();
    metrics.register(admin.metrics());
    let admin = admin.clone();
    Ok(async move {
        let reaper = tokio::spawn(service::reap_dead_nodes(router.clone(), config.presence_ttl, shutdown.clone()));
        let sweeper = tokio::spawn(service::sweep_orphans(router.clone(), config.presence_ttl * 2, shutdown.clone()));
        let service = SignalingService::new(router, config.presence_ttl, shutdown.clone(), metrics);
        let served = onair_ops::grpc::serve(
            &admin,
            onair_auth::Guarded::new(SignalingServer::new(service), config.security.internal_api()),
            onair_proto::FILE_DESCRIPTOR_SET,
            listener,
            shutdown,
        )
        .await;
        let _ = tokio::join!(reaper, sweeper);
        served
    })
}
