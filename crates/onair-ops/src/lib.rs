//! Operability shared by every onair service: the admin HTTP router
//! (`/healthz`, `/readyz`, `/metrics`) with readiness checks services register,
//! Prometheus metrics, and the one gRPC server scaffold (health mirroring
//! readiness, reflection, call metrics), and trace context across services.

pub mod admin;
pub mod grpc;
mod grpc_metrics;
mod health;
mod metrics;
pub mod trace;

pub use admin::{Admin, ReadyCheck};
pub use grpc::ServeError;
pub use grpc_metrics::GrpcMetricsLayer;
pub use metrics::Metrics;
