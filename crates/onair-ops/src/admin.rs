//! The admin HTTP router every service serves: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Metrics;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A dependency whose health decides readiness (a store, Redis, an upstream service).
#[async_trait]
pub trait ReadyCheck: Send + Sync + 'static {
    /// Short name shown in `/readyz` output, e.g. `mongodb`.
    fn name(&self) -> &str;
    /// `Ok` when the dependency answers.
    async fn check(&self) -> Result<(), String>;
}

/// State behind the admin router.
#[derive(Clone)]
pub struct Admin {
    metrics: Metrics,
    checks: Arc<Vec<Arc<dyn ReadyCheck>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin state with the given metrics and readiness checks.
    pub fn new(metrics: Metrics, checks: Vec<Arc<dyn ReadyCheck>>) -> Self {
        Self { metrics, checks: Arc::new(checks), draining: Arc::new(AtomicBool::new(false)) }
    }

    /// From now on `/readyz` fails, so load balancers stop sending new work (shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently; returns the failures as `name: reason`.
    pub async fn failures(&self) -> Vec<String> {
        if self.draining.load(Ordering::SeqCst) {
            return vec!["draining: shutting down".to_owned()];
        }
        let runs = self.checks.iter().map(|c| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{}: {e}", c.name())),
                Err(_) => Some(format!("{}: timed out", c.name())),
            }
        });
        futures::future::join_all(runs).await.into_iter().flatten().collect()
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `/healthz`, `/readyz`, `/metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let failures = admin.failures().await;
    if failures.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", failures.join("\n")))
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], admin.metrics.encode())
}

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve(
    admin: Admin,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, admin.router()).with_graceful_shutdown(shutdown).await
}
