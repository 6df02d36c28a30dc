//! Operability shared by every onair service: the admin HTTP router
//! (`/healthz`, `/readyz`, `/metrics`), Prometheus metrics with a tower layer
//! that counts gRPC calls by method and status, readiness checks, and a task
//! that mirrors readiness into the gRPC health protocol.

pub mod admin;
pub mod grpc;
pub mod grpc_metrics;
pub mod health;
pub mod metrics;

pub use admin::{Admin, ReadyCheck};
pub use grpc::ServeError;
pub use grpc_metrics::GrpcMetricsLayer;
pub use metrics::Metrics;
