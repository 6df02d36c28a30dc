//! What every onair gRPC server carries besides its own service: the gRPC
//! health protocol (mirroring `/readyz`), server reflection, and call metrics.

use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServerReflectionAlpha, ServerReflectionServer as ServerReflectionServerAlpha,
};

use crate::Admin;

/// Why a gRPC server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (bind, accept, HTTP/2).
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection descriptor set could not be loaded.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The admin HTTP server failed.
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
}

/// Health and reflection services for a server exposing `services`
/// (fully qualified names, e.g. `onair.v1.StreamRegistry`). Health follows
/// `admin`'s readiness until `shutdown` fires.
pub fn scaffold(
    admin: &Admin,
    services: &[&str],
    descriptor_set: &'static [u8],
    shutdown: &CancellationToken,
) -> Result<
    (
        HealthServer<impl Health + use<>>,
        ServerReflectionServer<impl ServerReflection + use<>>,
        ServerReflectionServerAlpha<impl ServerReflectionAlpha + use<>>,
    ),
    ServeError,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(crate::health::mirror_readiness(
        admin.clone(),
        reporter,
        services.iter().map(|s| (*s).to_owned()).collect(),
        shutdown.clone(),
    ));
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((health, builder().build_v1()?, builder().build_v1alpha()?))
}

/// Accepted connections of `listener` with TCP_NODELAY set. (`Server::tcp_nodelay` only applies to
/// listeners tonic binds itself; without this, responses wait on Nagle + delayed ACK for ~40 ms.)
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
