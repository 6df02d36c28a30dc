//! The stream registry: the catalog of streams and recordings behind the
//! `onair.v1.StreamRegistry` gRPC API, and the change feed (`WatchStreams`)
//! that gateways and recorders follow.

mod convert;
mod error;
mod feed;
mod page;
mod quota;
mod service;
mod store;

use std::sync::Arc;
use std::time::Duration;

use onair_core::Bus;
use onair_ops::{Admin, ReadyCheck, ServeError};
use onair_proto::v1::stream_registry_server::StreamRegistryServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::RegistryError;
pub use quota::Limits;
use service::RegistryService;
pub use store::{LocalStore, MongoStore, StoreError, StreamStore};

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// How long ended streams stay listed before they are purged.
    pub ended_retention: Duration,
    /// Who may call the registry API (an admin token or the cluster secret; open when auth is off).
    pub access: onair_auth::Access,
    /// What one owner or caller may create.
    pub limits: Limits,
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

/// Prepares the registry on `listener`: registers its readiness check (named `store_name`, e.g.
/// `mongodb`) with `admin` and returns the future that serves it until `shutdown` fires; in-flight
/// calls finish and open `WatchStreams` calls end before it resolves.
pub fn serve(
    config: RegistryConfig,
    store: Arc<dyn StreamStore>,
    store_name: &'static str,
    bus: Arc<dyn Bus>,
    admin: &Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> impl Future<Output = Result<(), ServeError>> + Send + 'static {
    let check_store = Arc::clone(&store);
    admin.add_check(ReadyCheck::from_fn(store_name, move || {
        let store = Arc::clone(&check_store);
        async move { store.ping().await.map_err(|e| e.to_string()) }
    }));
    let admin = admin.clone();
    async move {
        let purge = tokio::spawn(purge_loop(Arc::clone(&store), config.ended_retention, shutdown.clone()));
        let limited = quota::Limited::default();
        admin.metrics().register("registry_limited", "Creates refused by a registry limit, by limit", limited.clone());
        let service = RegistryService::new(store, bus, config.limits, limited, shutdown.clone());
        let served = onair_ops::grpc::serve(
            &admin,
            onair_auth::Guarded::new(StreamRegistryServer::new(service), config.access),
            onair_proto::FILE_DESCRIPTOR_SET,
            listener,
            shutdown,
        )
        .await;
        let _ = purge.await;
        served
    }
}
