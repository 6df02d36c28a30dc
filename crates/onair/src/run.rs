//! Wiring: which implementations each target gets, listeners, ordered shutdown.

use std::sync::Arc;

use onair_core::{Bus, LocalBus};
use onair_ops::{Admin, Metrics, ReadyCheck, ServeError};
use onair_registry::{LocalStore, MongoStore, RegistryConfig, StoreCheck, StreamStore};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, StoreKind, Target};

/// Why the process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// A server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })
}

/// Readiness check on the bus.
struct BusCheck(Arc<dyn Bus>);

#[async_trait::async_trait]
impl ReadyCheck for BusCheck {
    fn name(&self) -> &str {
        "bus"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

async fn make_bus(cli: &Cli) -> Result<Arc<dyn Bus>, RunError> {
    match &cli.redis_url {
        Some(url) => {
            let bus = onair_redis::RedisBus::connect(url).await.map_err(|e| RunError::Config(format!("redis: {e}")))?;
            Ok(Arc::new(bus))
        }
        None if cli.target == Target::All => Ok(Arc::new(LocalBus::new())),
        None => Err(RunError::Config(
            "--redis-url is required for a cluster target (the in-process bus only works with --target all)".into(),
        )),
    }
}

async fn make_store(cli: &Cli, shutdown: &CancellationToken) -> Result<(Arc<dyn StreamStore>, &'static str), RunError> {
    match cli.store_kind() {
        StoreKind::Memory => Ok((Arc::new(LocalStore::memory()), "memory-store")),
        StoreKind::Embedded => {
            let store = LocalStore::open(&cli.data_dir.join("registry"))
                .map_err(|e| RunError::Config(format!("embedded store: {e}")))?;
            Ok((Arc::new(store), "embedded-store"))
        }
        StoreKind::Mongodb => {
            let store = MongoStore::connect(&cli.mongodb_uri, &cli.mongodb_database)
                .await
                .map_err(|e| RunError::Config(e.to_string()))?;
            tokio::spawn(store.clone().prepare(shutdown.clone()));
            Ok((Arc::new(store), "mongodb"))
        }
    }
}

/// Runs `cli.target` until SIGTERM/ctrl-c, then shuts down in order within the grace period.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let bus = make_bus(&cli).await?;
    let (store, store_name) = make_store(&cli, &shutdown).await?;
    let mut checks: Vec<Arc<dyn ReadyCheck>> = vec![Arc::new(StoreCheck(Arc::clone(&store), store_name))];
    if cli.redis_url.is_some() {
        checks.push(Arc::new(BusCheck(Arc::clone(&bus))));
    }
    let admin = Admin::new(metrics, checks);

    let grpc = bind(cli.grpc_addr).await?;
    let admin_listener = bind(cli.admin_addr).await?;
    let grpc_addr = grpc.local_addr().map_err(|source| RunError::Bind { addr: cli.grpc_addr, source })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| RunError::Bind { addr: cli.admin_addr, source })?;
    // Machine-readable lines tests and scripts wait for.
    println!("onair: grpc listening on {grpc_addr}");
    println!("onair: admin listening on http://{admin_addr}");
    if cli.target == Target::All {
        println!("onair: registry API: grpcurl -plaintext {grpc_addr} list");
    }

    let mut tasks: JoinSet<Result<(), ServeError>> = JoinSet::new();
    {
        let shutdown = shutdown.clone();
        let admin = admin.clone();
        tasks.spawn(async move {
            onair_ops::admin::serve(admin, admin_listener, shutdown.cancelled_owned()).await?;
            Ok(())
        });
    }
    let config = RegistryConfig { ended_retention: cli.ended_retention };
    tasks.spawn(onair_registry::serve(config, store, bus, admin.clone(), grpc, shutdown.clone()));

    let result = tokio::select! {
        () = terminated() => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::from(e)),
            Err(e) => Err(RunError::Config(format!("task failed: {e}"))),
        },
    };
    tracing::info!("shutting down");
    admin.start_draining();
    shutdown.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(cli.shutdown_grace, drain).await.is_err() {
        tracing::warn!(grace = ?cli.shutdown_grace, "grace period over; exiting with work in flight");
    }
    result
}

/// Resolves on SIGTERM or ctrl-c.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
