//! The recorder: joins live streams as a server-side WebRTC watcher (a signaling
//! node like a gateway, one peer per recording) and writes each one to a WebM file
//! (decodable after a crash, seekable once finished), cataloged in the registry. Serves
//! `onair.v1.Recorder` for manual control; with auto-record it follows the registry feed
//! and records every stream. Of several recorders, exactly one records each stream: the one that
//! holds its lease (`reclease:{stream}`, renewed every [`CLAIM_EVERY`], [`LEASE_TTL`]); when it dies or
//! drains, another claims the stream and records it on as a new part.
//!
//! Modules: `hub` (shared state, routing), `session` (one recording, a leaf: it gets the link,
//! catalog and metrics it needs), `peer` (WebRTC), `vp8` / `timeline` / `mux` (media),
//! `catalog` (registry), `onair_node` links (signaling, bus, feed), `recovery` (start-up
//! cleanup), `service` (gRPC).

mod catalog;
pub mod container;
mod disk;
mod error;
mod h264;
mod hub;
mod metrics;
pub mod mp4;
pub mod mux;
mod peer;
mod recovery;
mod service;
mod session;
mod timeline;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use onair_core::{Bus, Leases};
use onair_node::{Links, NodeLink};
use onair_ops::{Admin, ServeError};
use onair_proto::v1::recorder_server::RecorderServer;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::RecorderError;

/// What the fuzz targets (`fuzz/`, `make fuzz`) reach; built only under `cargo fuzz`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h264::{is_keyframe as h264_keyframe, nal_units as h264_nal_units, sps_size as h264_sps_size};
    pub use crate::peer::{answered_video, nat_1to1, offered_media};
}
use hub::Hub;
pub use hub::{CLAIM_EVERY, LEASE_TTL};
use service::RecorderService;

/// Where the recorder's WebRTC peers bind and what they announce to browsers.
///
/// Each peer binds an ephemeral UDP port and an ICE-TCP passive listener (RFC 6544) on every
/// `bind` address. webrtc-rs 0.21 has no UDP mux (its `with_udp_network` is still a to-do), so
/// peers cannot share one UDP port.
#[derive(Debug, Clone)]
pub struct RtcNetwork {
    /// Local addresses ICE binds; an unspecified address (`0.0.0.0`) stands for every
    /// non-loopback, non-link-local interface.
    pub bind: Vec<std::net::IpAddr>,
    /// The address browsers reach this host at when it is not a local one (NAT 1:1): announced as
    /// a server-reflexive candidate beside the host candidates.
    pub public: Option<std::net::IpAddr>,
}

impl RtcNetwork {
    /// Exactly `ip`, nothing announced besides it.
    pub fn only(ip: std::net::IpAddr) -> Self {
        Self { bind: vec![ip], public: None }
    }
}

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// This recorder's node id; its bus channel is `onair:node:{node}`.
    pub node: onair_core::NodeId,
    /// Where the WebM files are written (created if missing).
    pub recordings_dir: std::path::PathBuf,
    /// Recordings that may run at once; more are refused with a warning.
    pub max_concurrent: usize,
    /// Record every live stream without being asked.
    pub auto_record: bool,
    /// Free space the recordings volume must have for a new recording to start (RESOURCE_EXHAUSTED
    /// below it, until space returns).
    pub min_free_bytes: u64,
    /// Where the WebRTC peers bind and what they announce.
    pub rtc: RtcNetwork,
    /// Registry gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub registry_url: String,
    /// Signaling gRPC URL.
    pub signaling_url: String,
    /// The cluster secret (presented to signaling and the registry) and who may call onair.v1.Recorder.
    pub security: onair_auth::Security,
}

/// Prepares the recorder on `listener`: registers its readiness check ("upstreams") and metrics
/// with `admin`, and returns the future that serves onair.v1.Recorder until `shutdown` fires.
/// Then it stops following the registry, finalizes every active recording (the registry and
/// signaling must still be up: shutdown stops them after this future resolves), and closes its
/// signaling link once the final messages went out. `leases` decides which recorder records which
/// stream (shared by every recorder of the cluster).
pub fn serve(
    config: RecorderConfig,
    bus: Arc<dyn Bus>,
    leases: Arc<dyn Leases>,
    admin: &Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
    std::fs::create_dir_all(&config.recordings_dir)?;
    let creds = config.security.credentials();
    let catalog =
        catalog::Catalog::new(StreamRegistryClient::new(onair_node::lazy_channel(&config.registry_url, &creds)?));
    let signaling = SignalingClient::new(onair_node::lazy_channel(&config.signaling_url, &creds)?);
    let access = config.security.public_api();
    let (link, outbox) = NodeLink::new(config.node.clone());
    let hub = Hub::new(config, catalog, link, leases);
    hub.metrics.register(admin.metrics());
    admin.add_check(onair_node::ready_check(&hub));
    let admin = admin.clone();
    Ok(async move {
        let links = Links::spawn(&hub, outbox, signaling, bus);
        let feed_hub = Arc::clone(&hub);
        let feed_stop = shutdown.child_token();
        let feed = tokio::spawn(async move {
            recovery::recover_with_retries(&feed_hub, Duration::from_secs(10), &feed_stop).await;
            let registry = feed_hub.catalog.client();
            onair_node::registry_feed(feed_hub, registry, feed_stop).await;
        });
        let claims = tokio::spawn(Arc::clone(&hub).keep_claims(shutdown.child_token()));
        tracing::info!(
            node = %hub.config.node, dir = %hub.config.recordings_dir.display(),
            auto_record = hub.config.auto_record, "recorder starting"
        );
        let service = onair_auth::Guarded::new(RecorderServer::new(RecorderService::new(Arc::clone(&hub))), access);
        let served =
            onair_ops::grpc::serve(&admin, service, onair_proto::FILE_DESCRIPTOR_SET, listener, shutdown).await;
        let _ = feed.await;
        let _ = claims.await;
        hub.stop_all().await;
        links.close().await;
        tracing::info!("recorder stopped");
        served
    })
}
