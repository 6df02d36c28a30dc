//! The admin HTTP router every service serves: `/healthz`, `/readyz`, `/metrics`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::RwLock;

use crate::Metrics;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A dependency whose health decides readiness (a store, Redis, an upstream link).
#[derive(Clone)]
pub struct ReadyCheck {
    name: &'static str,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyCheck").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ReadyCheck {
    /// A check named `name` (shown in `/readyz`, e.g. `mongodb`) that passes when `check` resolves to `Ok`.
    pub fn from_fn<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { name, check: Arc::new(move || Box::pin(check())) }
    }

    /// The name shown in `/readyz`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the check once.
    pub async fn check(&self) -> Result<(), String> {
        (self.check)().await
    }
}

/// State behind the admin router.
#[derive(Clone)]
pub struct Admin {
    metrics: Metrics,
    checks: Arc<RwLock<Vec<ReadyCheck>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin state with the given metrics and no readiness checks yet (services add theirs).
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, checks: Arc::default(), draining: Arc::new(AtomicBool::new(false)) }
    }

    /// Adds a readiness check; `/readyz` passes only while every check passes.
    pub fn add_check(&self, check: ReadyCheck) {
        self.checks.write().push(check);
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
        let checks = self.checks.read().clone();
        let runs = checks.iter().map(|c| async move {
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
