//! The gateway: serves the pages, speaks the browser WebSocket protocol on
//! `/ws`, and relays everything through signaling and the registry. It holds
//! sockets and nothing that must survive it.

mod access;
mod api;
mod coalesce;
mod download;
mod http;
mod hub;
pub mod ice;
mod pages;
pub mod per_ip;
mod protocol;
mod queue;
mod ratelimit;
mod resume_token;
mod route;
mod socket;
pub mod tls;
mod whip;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use onair_core::{Bus, NodeId};
use onair_node::{Links, NodeLink};
use onair_ops::{Admin, ServeError};
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hub::{Hub, HubParts};
pub use ice::{IceServers, IceUrl, TurnSecret};

/// What the fuzz targets (`fuzz/`, `make fuzz`) reach; built only under `cargo fuzz`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::protocol::parse as parse_client_frame;
}
pub use tls::{TlsConfig, TlsError};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's node id.
    pub node: NodeId,
    /// Registry gRPC URL.
    pub registry_url: String,
    /// Signaling gRPC URL.
    pub signaling_url: String,
    /// How long a dropped peer keeps its id and stream.
    pub resume_grace: Duration,
    /// Directory the recorder writes WebM files to (shared volume in a cluster).
    pub recordings_dir: std::path::PathBuf,
    /// Sustained frames per second one socket may send, and the burst above it (then `rate_limited`).
    pub ws_rate: (u32, u32),
    /// Page origins (e.g. `https://app.example.com`) besides the gateway's own that may open `/ws`.
    pub allowed_origins: Vec<String>,
    /// Secret every gateway of the cluster shares to sign resume tokens (`None`: unsigned random tokens).
    pub resume_secret: Option<String>,
    /// End this gateway's sessions at shutdown instead of leaving them to resume elsewhere:
    /// for the all-in-one, where no other gateway exists and the directory dies with the process.
    pub end_sessions_on_shutdown: bool,
    /// Serve HTTPS/WSS with this certificate (and send HSTS); plain HTTP when `None`.
    pub tls: Option<TlsConfig>,
    /// ICE servers handed to browsers in `welcome`.
    pub ice: IceServers,
    /// The cluster secret for signaling and the registry, and the verifier of browsers' access tokens
    /// (none: auth off, every socket may publish and watch).
    pub security: onair_auth::Security,
    /// WebSockets one client address may hold open (0: no limit); more get 429.
    pub max_sockets_per_ip: usize,
    /// Proxies (nginx, a load balancer) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<per_ip::Cidr>,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    allowed_origins: Arc<[String]>,
    /// Verifies browsers' access tokens (none: auth off).
    tokens: Option<Arc<onair_auth::Verifier>>,
    per_ip: Arc<per_ip::PerIp>,
    trusted_proxies: Arc<[per_ip::Cidr]>,
    /// New WHIP/WHEP sessions per client address.
    post_rate: Arc<whip::PostRate>,
}

impl axum::extract::FromRef<AppState> for Arc<Hub> {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.hub)
    }
}

/// Query of the `/ws` upgrade.
#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    /// The `resume_token` of a previous `welcome`: reclaim that peer id and its stream.
    resume: Option<String>,
    /// An access token (JWT) carrying the socket's grants. Browsers cannot set headers on a
    /// WebSocket; other clients may send `Authorization: Bearer` instead.
    access_token: Option<String>,
}

/// The access token of an upgrade: `?access_token=`, else `Authorization: Bearer`.
fn access_token<'a>(query: Option<&'a str>, authorization: Option<&'a str>) -> Option<&'a str> {
    query.or_else(|| authorization.and_then(onair_auth::bearer)).map(str::trim).filter(|t| !t.is_empty())
}

/// Whether a WebSocket upgrade from a page of `origin` may proceed: an origin on `allowed`, or the
/// page's own origin (its host is the host the request was sent to). Clients that send no `Origin`
/// (tools, other servers) are not browsers a foreign page could drive, and are let in.
fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

async fn ws(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    // HTTP/2 (a browser's WebSocket over extended CONNECT on an HTTPS connection) has no Host
    // header: the host is the request's `:authority`, which is the URI's.
    let host = header(axum::http::header::HOST).or_else(|| uri.authority().map(axum::http::uri::Authority::as_str));
    if !origin_allowed(header(axum::http::header::ORIGIN), host, &state.allowed_origins) {
        tracing::debug!(origin = ?header(axum::http::header::ORIGIN), "WebSocket from a foreign origin refused");
        let msg = "this page's origin may not open onair's WebSocket (the server's --allowed-origins)\n";
        return axum::response::IntoResponse::into_response((axum::http::StatusCode::FORBIDDEN, msg));
    }
    let client = per_ip::client_ip(
        peer.ip(),
        header(axum::http::HeaderName::from_static("x-forwarded-for")),
        &state.trusted_proxies,
    );
    let Some(slot) = state.per_ip.acquire(client) else {
        state.hub.metrics.sockets_refused_per_ip.inc();
        tracing::debug!(%client, "WebSocket refused: too many from this address");
        let msg = format!(
            "too many connections from your address (at most {}); close some tabs and retry\n",
            state.per_ip.limit()
        );
        let mut r = axum::response::IntoResponse::into_response((axum::http::StatusCode::TOO_MANY_REQUESTS, msg));
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("10"));
        return r;
    };
    let resume = q.resume.filter(|t| !t.is_empty());
    let token = access_token(q.access_token.as_deref(), header(axum::http::header::AUTHORIZATION));
    let access = access::SocketAccess::from_token(state.tokens.as_deref(), token);
    upgrade
        .max_message_size(socket::HARD_FRAME_LIMIT)
        .max_frame_size(socket::HARD_FRAME_LIMIT)
        // tungstenite allocates its read buffer eagerly (128 KiB by default): an idle socket should
        // cost a few KiB. Frames are small; the buffer grows for a rare large one.
        .read_buffer_size(socket::READ_BUFFER_BYTES)
        // Every send is flushed at once anyway (signaling is latency-bound): no write buffer to keep.
        .write_buffer_size(0)
        .on_upgrade({
            let up = Box::new(socket::Upgrade {
                hub: Arc::clone(&state.hub),
                resume_token: resume,
                access,
                shutdown: state.shutdown,
                ip_slot: slot,
            });
            let hub = state.hub;
            move |s| hub.sockets.track_future(socket::run(up, s))
        })
}

/// How long a stopping gateway waits for its sockets' closing handshakes (each is bounded to 2 s:
/// 1 s to send the close frame, 1 s for the client's).
const SOCKETS_CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// Prepares the gateway on `listener`: registers its readiness check ("upstreams") and metrics
/// with `admin`, and returns the future that serves it until `shutdown` fires. Then every
/// socket is closed with 1012 so browsers reconnect to another gateway, and the queued
/// messages reach signaling before the future resolves.
pub fn serve(
    config: GatewayConfig,
    bus: Arc<dyn Bus>,
    admin: &Admin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
    let (link, outbox) = NodeLink::new(config.node.clone());
    let (direct, direct_rx) = route::DirectTx::new();
    let creds = config.security.credentials();
    let hub = Hub::new(HubParts {
        link,
        registry: StreamRegistryClient::new(onair_node::lazy_channel(&config.registry_url, &creds)?),
        signaling: SignalingClient::new(onair_node::lazy_channel(&config.signaling_url, &creds)?),
        resume_grace: config.resume_grace,
        ice: config.ice.clone(),
        tokens: resume_token::TokenSigner::new(config.resume_secret.as_deref()),
        ws_rate: config.ws_rate,
        direct,
    });
    hub.metrics.register(admin.metrics());
    hub.route_metrics.register(admin.metrics());
    admin.add_check(onair_node::ready_check(&hub));
    let state = AppState {
        hub: Arc::clone(&hub),
        shutdown: shutdown.clone(),
        allowed_origins: config.allowed_origins.clone().into(),
        tokens: config.security.tokens.clone(),
        per_ip: per_ip::PerIp::new(config.max_sockets_per_ip),
        trusted_proxies: config.trusted_proxies.clone().into(),
        post_rate: Arc::default(),
    };
    let mut app = Router::new()
        .route("/", get(pages::watcher))
        .route("/watcher", get(pages::watcher))
        .route("/broadcast", get(pages::broadcast))
        .route("/recordings", get(pages::recordings))
        .route("/assets/{file}", get(pages::asset))
        // CONNECT: a WebSocket over HTTP/2 (RFC 8441), what browsers use on an HTTPS connection.
        .route("/ws", get(ws).connect(ws))
        .route("/api/streams", get(api::streams))
        .route("/api/recordings", get(api::recordings))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(whip::routes())
        .with_state(state)
        .merge(
            Router::new()
                .route("/recordings/{file}", get(download::recording))
                .with_state((Arc::clone(&hub), download::RecordingsDir(config.recordings_dir.clone()))),
        )
        .layer(axum::middleware::map_response(nosniff));
    if config.tls.is_some() {
        app = app.layer(axum::middleware::map_response(hsts));
    }
    Ok(async move {
        let direct_stop = CancellationToken::new();
        let direct = tokio::spawn(route::run(Arc::clone(&hub), Arc::clone(&bus), direct_rx, direct_stop.clone()));
        let links = Links::spawn(&hub, outbox, hub.cfg.signaling.clone(), bus);
        let feed =
            tokio::spawn(onair_node::registry_feed(Arc::clone(&hub), hub.cfg.registry.clone(), shutdown.clone()));
        tracing::info!(addr = ?listener.local_addr().ok(), node = %hub.node(), tls = config.tls.is_some(), "gateway listening");
        let links = Arc::new(links);
        let closing = (Arc::clone(&hub), shutdown.clone(), Arc::clone(&links));
        let closing = async move {
            closing.1.cancelled().await;
            // Deaf first, then the sockets go: what is routed to their peers while they move to
            // another gateway is parked by signaling and handed to it, not delivered to a socket
            // closing here.
            if !config.end_sessions_on_shutdown {
                closing.2.stop_deliveries().await;
            }
            closing.0.close_all(1012, "server restarting; reconnect");
        };
        let served = match &config.tls {
            Some(tls) => match tls::TlsListener::new(listener, tls) {
                Ok(listener) => {
                    http::serve(listener, app, config.header_timeout, closing).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            // Signaling frames are small and latency-bound: no Nagle delay (the TLS listener does the same).
            None => {
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                http::serve(listener, app, config.header_timeout, closing).await;
                Ok(())
            }
        };
        // Each socket finishes its closing handshake first: what its client sent before it saw the
        // 1012 is read and routed (the link to signaling is still up), not dropped.
        hub.sockets.close();
        if tokio::time::timeout(SOCKETS_CLOSE_WITHIN, hub.sockets.wait()).await.is_err() {
            tracing::warn!(left = hub.sockets.len(), "sockets still closing at shutdown; leaving them");
        }
        // What the sockets sent along direct routes is published (or handed to signaling) first.
        direct_stop.cancel();
        let _ = direct.await;
        if config.end_sessions_on_shutdown {
            hub.detach_all();
        }
        match Arc::try_unwrap(links) {
            Ok(links) => links.close().await,
            Err(_) => tracing::warn!("gateway links still shared at shutdown; not drained"),
        }
        let _ = feed.await;
        tracing::info!("gateway stopped");
        Ok(served?)
    })
}

/// `X-Content-Type-Options: nosniff` on every response: a browser never guesses a type (e.g. runs an
/// uploaded or errored body as a script).
async fn nosniff(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// Adds `Strict-Transport-Security` to every response (TLS only).
async fn hsts(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(axum::http::header::STRICT_TRANSPORT_SECURITY, axum::http::HeaderValue::from_static(tls::HSTS));
    response
}

#[cfg(test)]
mod origin_tests {
    use super::origin_allowed;

    #[test]
    fn only_the_own_origin_and_listed_ones_may_open_the_socket() {
        let none: &[String] = &[];
        assert!(origin_allowed(None, Some("onair.example"), none), "no Origin: not a browser");
        assert!(origin_allowed(Some("https://onair.example"), Some("onair.example"), none));
        assert!(origin_allowed(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), none));
        assert!(origin_allowed(Some("HTTPS://ONAIR.example"), Some("onair.example"), none));
        assert!(!origin_allowed(Some("https://evil.example"), Some("onair.example"), none));
        assert!(!origin_allowed(Some("https://onair.example.evil.example"), Some("onair.example"), none));
        assert!(!origin_allowed(Some("null"), Some("onair.example"), none));
        assert!(!origin_allowed(Some("https://onair.example"), None, none));
        let listed = ["https://app.example".to_owned()];
        assert!(origin_allowed(Some("https://app.example"), Some("onair.example"), &listed));
        assert!(!origin_allowed(Some("http://app.example"), Some("onair.example"), &listed));
    }
}
