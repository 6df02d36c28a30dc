//! Mirrors readiness into the standard gRPC health protocol.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Admin;

/// Every second, sets `services` (and the server-wide "" entry) to SERVING when
/// every readiness check passes and NOT_SERVING otherwise, until `cancel` fires;
/// then marks them NOT_SERVING.
pub async fn mirror_readiness(
    admin: Admin,
    reporter: HealthReporter,
    services: Vec<String>,
    cancel: CancellationToken,
) {
    let mut names = services;
    names.push(String::new());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let status = if admin.failures().await.is_empty() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for n in &names {
            reporter.set_service_status(n, status).await;
        }
    }
    for n in &names {
        reporter.set_service_status(n, ServingStatus::NotServing).await;
    }
}
