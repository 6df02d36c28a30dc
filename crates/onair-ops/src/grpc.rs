//! The one way an onair gRPC server starts: its own service plus the gRPC health
//! protocol (mirroring `/readyz`), server reflection listing exactly the services
//! of this port, call metrics, and TCP_NODELAY on every accepted socket.

use std::convert::Infallible;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::{Admin, GrpcMetricsLayer};

/// Why a gRPC server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (bind, accept, HTTP/2).
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection descriptor set could not be loaded.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// An I/O error (the admin HTTP server, a directory that cannot be created).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Health and reflection service names every server lists besides its own.
const STANDARD_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// How long open connections get, once shutdown fires, to finish their calls and acknowledge the
/// HTTP/2 GOAWAY. Without a bound, one client that stops reading (or whose process is stalled) holds
/// the whole shutdown until the grace period kills the process, with the rest of its work undone.
pub const CONNECTION_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `service` on `listener` until `shutdown` fires; in-flight calls get [`CONNECTION_DRAIN`]
/// to finish, then the connections still open are abandoned (they close with the process).
/// Health follows `admin`'s readiness; reflection describes `service` (from `descriptor_set`),
/// health and reflection, and nothing else.
pub async fn serve<S>(
    admin: &Admin,
    service: S,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: tower::Service<http::Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    tracing::info!(service = S::NAME, addr = ?listener.local_addr().ok(), "gRPC listening");
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(crate::health::mirror_readiness(
        admin.clone(),
        reporter,
        vec![S::NAME.to_owned()],
        shutdown.clone(),
    ));
    let reflection = || {
        STANDARD_SERVICES
            .iter()
            .fold(tonic_reflection::server::Builder::configure().with_service_name(S::NAME), |b, s| {
                b.with_service_name(*s)
            })
            .register_encoded_file_descriptor_set(descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    // `Server::tcp_nodelay` only applies to listeners tonic binds itself; without NODELAY on
    // the accepted sockets, responses wait on Nagle + delayed ACK for ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer::new(admin.metrics().clone()))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let drain_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(CONNECTION_DRAIN).await;
    };
    let served = tokio::select! {
        served = served => served,
        () = drain_over => {
            tracing::warn!(service = S::NAME, drain = ?CONNECTION_DRAIN, "connections still open after shutdown; leaving them");
            Ok(())
        }
    };
    health_task.abort();
    Ok(served?)
}
