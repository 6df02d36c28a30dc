//! Wiring: which implementations each target gets, listeners, ordered shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use onair_core::{Bus, Directory, Leases, LocalBus, MemoryDirectory, MemoryLeases, NodeId};
use onair_ops::{Admin, Metrics, ReadyCheck, ServeError};
use onair_registry::{LocalStore, MongoStore, RegistryConfig, StreamStore};
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
        addr: SocketAddr,
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

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let l = TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
    let local = l.local_addr().map_err(|source| RunError::Bind { addr, source })?;
    Ok((l, local))
}

fn needs_redis(cli: &Cli) -> Result<&str, RunError> {
    cli.redis_url.as_deref().ok_or_else(|| {
        RunError::Config(format!(
            "--redis-url is required for --target {:?} (the in-process bus only works with --target all)",
            cli.target
        ))
    })
}

/// How long a starting process waits for Redis (a pod may start before Redis answers, or while the
/// machine is loaded) before giving up.
const REDIS_START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `connect` until it succeeds or [`REDIS_START_WAIT`] has passed, saying what it waits for.
async fn with_redis_retries<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    connect: impl Fn() -> F,
) -> Result<T, RunError> {
    let deadline = tokio::time::Instant::now() + REDIS_START_WAIT;
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(RunError::Config(format!("redis: {e}"))),
            Err(e) => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

async fn make_bus(cli: &Cli) -> Result<Arc<dyn Bus>, RunError> {
    if let Some(url) = &cli.redis_url {
        onair_redis::check_url(url).map_err(|e| RunError::Config(format!("--redis-url: {e}")))?;
    }
    match &cli.redis_url {
        Some(url) => Ok(Arc::new(with_redis_retries(|| onair_redis::RedisBus::connect(url)).await?)),
        None if cli.target == Target::All => Ok(Arc::new(LocalBus::new())),
        // The TURN server uses no bus.
        None if cli.target == Target::Turn => Ok(Arc::new(LocalBus::new())),
        None if cli.target == Target::Registry => {
            tracing::warn!("no --redis-url: WatchStreams only sees changes made through this registry replica");
            Ok(Arc::new(LocalBus::new()))
        }
        None => Err(RunError::Config(needs_redis(cli).err().map(|e| e.to_string()).unwrap_or_default())),
    }
}

async fn make_directory(cli: &Cli) -> Result<Arc<dyn Directory>, RunError> {
    match &cli.redis_url {
        Some(url) => Ok(Arc::new(with_redis_retries(|| onair_redis::RedisDirectory::connect(url)).await?)),
        None => Ok(Arc::new(MemoryDirectory::new())),
    }
}

async fn make_leases(cli: &Cli) -> Result<Arc<dyn Leases>, RunError> {
    match &cli.redis_url {
        Some(url) => Ok(Arc::new(with_redis_retries(|| onair_redis::RedisLeases::connect(url)).await?)),
        None => Ok(Arc::new(MemoryLeases::new())),
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

fn node_id(cli: &Cli) -> Result<NodeId, RunError> {
    match &cli.node_id {
        Some(n) => n.parse().map_err(|e| RunError::Config(format!("--node-id: {e}"))),
        None => Ok(NodeId::generate()),
    }
}

/// The gateway's certificate: from --tls-cert/--tls-key, generated (--tls-self-signed), or none.
fn gateway_tls(cli: &Cli) -> Result<Option<onair_gateway::TlsConfig>, RunError> {
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => onair_gateway::TlsConfig::from_files(cert, key)
            .map_err(|e| RunError::Config(format!("--tls-cert/--tls-key: {e}")))?,
        _ if cli.tls_self_signed => {
            let names = onair_gateway::tls::host_names(cli.http_addr.ip());
            onair_gateway::TlsConfig::self_signed(&names)
                .map_err(|e| RunError::Config(format!("--tls-self-signed: {e}")))?
                .0
        }
        _ => return Ok(None),
    };
    if cli.tls_self_signed {
        println!(
            "onair: WARNING: {}: browsers will warn about it. For a LAN demo only; use --tls-cert/--tls-key otherwise.",
            tls.describe()
        );
        tracing::warn!(certificate = tls.describe(), "serving a self-signed certificate (LAN demo only)");
    } else {
        tracing::info!(certificate = tls.describe(), "serving HTTPS");
    }
    Ok(Some(tls))
}

/// The ICE servers handed out in `welcome`: --ice-servers, plus the embedded TURN server's URLs
/// when it runs in this process; credentials from --turn-secret (or the generated one).
fn gateway_ice(cli: &Cli, turn: Option<&EmbeddedTurn>) -> Result<onair_gateway::IceServers, RunError> {
    let mut urls = cli.ice_servers.clone();
    let mut secret = cli.turn_secret.clone();
    if let Some(turn) = turn {
        for url in &turn.urls {
            urls.push(url.parse().map_err(|e: onair_gateway::ice::IceError| RunError::Config(e.to_string()))?);
        }
        secret = Some(turn.secret.clone());
    }
    let secret = secret.map(onair_gateway::TurnSecret::new);
    onair_gateway::IceServers::new(urls, secret, cli.turn_credential_ttl).map_err(|e| RunError::Config(e.to_string()))
}

/// This host's interface addresses, loopback and link-local excluded, IPv4 first.
fn local_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let a = a.address?;
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .filter(|ip| !ip.is_loopback() && !is_link_local(*ip))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(IpAddr::is_ipv6);
    out.dedup();
    out
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Where the recorder's WebRTC binds (--rtc-ip, or every interface plus loopback) and what it
/// announces besides (--public-addr).
fn recorder_network(cli: &Cli) -> onair_recorder::RtcNetwork {
    let bind = match cli.rtc_ip {
        Some(ip) => vec![ip],
        None => vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([127, 0, 0, 1])],
    };
    onair_recorder::RtcNetwork { bind, public: cli.public_addr }
}

/// Where the relay's UDP sockets bind: --rtc-ip, or every IPv4 interface plus loopback.
fn relay_addresses(cli: &Cli) -> Vec<IpAddr> {
    match cli.rtc_ip {
        Some(ip) => vec![ip],
        None => {
            let mut ips: Vec<IpAddr> = local_addresses().into_iter().filter(IpAddr::is_ipv4).collect();
            ips.push(IpAddr::from([127, 0, 0, 1]));
            ips
        }
    }
}

/// A UDP socket and a TCP listener on the same port of `addr` (with port 0: the same free port;
/// retried when another process holds the TCP side of the port the UDP socket got).
async fn bind_udp_and_tcp(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, TcpListener, u16), RunError> {
    let mut attempts = if addr.port() == 0 { 20 } else { 1 };
    loop {
        attempts -= 1;
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
        let port = udp.local_addr().map_err(|source| RunError::Bind { addr, source })?.port();
        match bind(SocketAddr::new(addr.ip(), port)).await {
            Ok((tcp, _)) => return Ok((udp, tcp, port)),
            Err(e) if attempts == 0 => return Err(e),
            Err(_) => {}
        }
    }
}

/// The embedded TURN server, bound and ready to serve.
struct EmbeddedTurn {
    config: onair_turn::TurnConfig,
    listeners: onair_turn::TurnListeners,
    secret: String,
    /// `stun:`, `turn:` (UDP, TCP) and, with TLS, `turns:` URLs at the announced address.
    urls: Vec<String>,
}

/// Binds the embedded TURN server when this process runs it (--target turn, or `all` with
/// --public-addr): UDP and TCP on --turn-addr (one port), TLS on --turns-addr with `tls`.
async fn embedded_turn(cli: &Cli, tls: Option<&onair_gateway::TlsConfig>) -> Result<Option<EmbeddedTurn>, RunError> {
    let runs = cli.target == Target::Turn || (cli.target == Target::All && cli.public_addr.is_some());
    if !runs {
        return Ok(None);
    }
    let secret = match &cli.turn_secret {
        Some(s) => s.clone(),
        None if cli.target == Target::All => {
            format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
        }
        None => {
            return Err(RunError::Config(
                "--target turn needs --turn-secret: the secret the gateways derive TURN credentials from".into(),
            ));
        }
    };
    let announce = match cli.public_addr.or_else(|| local_addresses().first().copied()) {
        Some(ip) => ip,
        None => {
            return Err(RunError::Config(
                "the TURN server needs --public-addr: this host has no non-loopback address to announce".into(),
            ));
        }
    };
    let (udp, tcp, port) = bind_udp_and_tcp(cli.turn_addr).await?;
    let public = SocketAddr::new(announce, port);
    let mut urls = vec![format!("stun:{public}"), format!("turn:{public}"), format!("turn:{public}?transport=tcp")];
    let mut listeners = onair_turn::TurnListeners { udp: vec![udp], tcp: vec![tcp], tls: Vec::new() };
    if let Some(tls) = tls {
        let (l, addr) = bind(cli.turns_addr).await?;
        urls.push(format!("turns:{}?transport=tcp", SocketAddr::new(announce, addr.port())));
        println!("onair: turns listening on {addr} (TURN over TLS)");
        listeners.tls.push((l, tls.server_config()));
    }
    println!(
        "onair: turn listening on {} (UDP and TCP; relay ports {}, announced as {announce})",
        SocketAddr::new(cli.turn_addr.ip(), port),
        cli.turn_relay_ports
    );
    let config = onair_turn::TurnConfig {
        realm: cli.turn_realm.clone(),
        secret: onair_core::turn_rest::TurnSecret::new(secret.clone()),
        relay_ip: announce,
        relay_bind: if announce.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) },
        relay_ports: cli.turn_relay_ports,
        allow_peers: cli.turn_allow_peer.clone(),
        user_quota: cli.turn_user_quota as usize,
        max_bitrate: cli.turn_max_kbps.saturating_mul(1000),
    };
    Ok(Some(EmbeddedTurn { config, listeners, secret, urls }))
}

/// The cluster secret and the access-token verifier (auth), checked before anything starts; says
/// loudly what is open.
fn security(cli: &Cli) -> Result<onair_auth::Security, RunError> {
    let config = |flag: &str, e: &dyn std::fmt::Display| RunError::Config(format!("{flag}: {e}"));
    let tokens = match (&cli.auth_secret, &cli.auth_public_key) {
        (Some(secret), _) => Some(onair_auth::Verifier::hs256(secret).map_err(|e| config("--auth-secret", &e))?),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| config("--auth-public-key", &e))?;
            Some(onair_auth::Verifier::ed25519_pem(&pem).map_err(|e| config("--auth-public-key", &e))?)
        }
        (None, None) => None,
    };
    let cluster = match &cli.cluster_secret {
        Some(s) => Some(onair_auth::ClusterSecret::new(s).map_err(|e| config("--cluster-secret", &e))?),
        // Every service lives in this process: a secret nobody else knows closes the loopback ports.
        None if cli.target == Target::All => Some(onair_auth::ClusterSecret::generate()),
        None => None,
    };
    if tokens.is_some() && cluster.is_none() {
        return Err(RunError::Config(
            "--auth-secret/--auth-public-key need --cluster-secret on every service of a cluster: the services \
             prove themselves to each other with it"
                .to_owned(),
        ));
    }
    if tokens.is_none() && matches!(cli.target, Target::All | Target::Gateway | Target::Registry | Target::Recorder) {
        println!(
            "onair: WARNING: auth is off (no --auth-secret): anyone who reaches this server may go live, watch, and \
             call the registry and recorder gRPC APIs. Fine on your laptop; see README (Auth) before exposing it."
        );
        tracing::warn!("auth is off: no --auth-secret or --auth-public-key");
    }
    // The TURN server has no gRPC API.
    if cluster.is_none() && cli.target != Target::Turn {
        println!(
            "onair: WARNING: no --cluster-secret: the internal signaling API accepts calls from anyone who reaches \
             --grpc-addr"
        );
        tracing::warn!("no --cluster-secret: internal gRPC APIs are open");
    }
    Ok(onair_auth::Security { cluster, tokens: tokens.map(Arc::new) })
}

/// The services of one shutdown tier and the token that stops them.
struct Tier {
    name: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<Result<(), ServeError>>,
}

impl Tier {
    fn new(name: &'static str) -> Self {
        Self { name, stop: CancellationToken::new(), tasks: JoinSet::new() }
    }
}

/// Shutdown order: what depends on a service stops before it. Gateways and the recorder drain
/// first (sockets closed, recordings finalized while signaling and the registry still answer),
/// then signaling, then the registry, then the admin server.
const EDGE: usize = 0;
const SIGNALING: usize = 1;
const REGISTRY: usize = 2;
const ADMIN: usize = 3;

/// Flag values clap cannot judge alone.
fn check_network_flags(cli: &Cli) -> Result<(), RunError> {
    if let Some(ip) = cli.public_addr
        && (ip.is_unspecified() || ip.is_multicast())
    {
        return Err(RunError::Config(format!(
            "--public-addr {ip}: must be the unicast address browsers reach this host at"
        )));
    }
    if cli.turn_realm.trim().is_empty() {
        return Err(RunError::Config("--turn-realm must not be empty".into()));
    }
    Ok(())
}

/// Runs `cli.target` until SIGTERM/ctrl-c, then shuts down tier by tier within the grace period.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    check_network_flags(&cli)?;
    let mut tiers = [Tier::new("gateway+recorder"), Tier::new("signaling"), Tier::new("registry"), Tier::new("admin")];
    let target = cli.target;
    let runs = |t: Target| target == Target::All || target == t;
    if ![Target::All, Target::Registry, Target::Turn].contains(&target) {
        needs_redis(&cli)?;
    }
    let bus = make_bus(&cli).await?;
    let admin = Admin::new(Metrics::new());
    if cli.redis_url.is_some() {
        let bus = Arc::clone(&bus);
        admin.add_check(ReadyCheck::from_fn("redis", move || {
            let bus = Arc::clone(&bus);
            async move { bus.ping().await.map_err(|e| e.to_string()) }
        }));
    }
    let node = node_id(&cli)?;
    let security = security(&cli)?;
    // The certificate (gateway, TURN over TLS), the TURN sockets and the ICE servers are
    // checked before anything starts.
    let turn_wanted = target == Target::Turn || (target == Target::All && cli.public_addr.is_some());
    let tls = if runs(Target::Gateway) || turn_wanted { gateway_tls(&cli)? } else { None };
    let turn = embedded_turn(&cli, tls.as_ref()).await?;
    let gateway_edge = if runs(Target::Gateway) { Some((tls, gateway_ice(&cli, turn.as_ref())?)) } else { None };
    if let Some(turn) = turn {
        let tier = &mut tiers[EDGE];
        tier.tasks.spawn(onair_turn::serve(turn.config, &admin, turn.listeners, tier.stop.clone())?);
    }

    // Registry: on --grpc-addr (the public developer API).
    let mut registry_url = cli.registry_url.clone();
    if runs(Target::Registry) {
        let (store, store_name) = make_store(&cli, &tiers[REGISTRY].stop).await?;
        let (grpc, addr) = bind(cli.grpc_addr()).await?;
        println!("onair: registry gRPC listening on {addr}");
        registry_url = format!("http://{}", loopback(addr));
        let limits = onair_registry::Limits {
            live_per_subject: cli.max_live_per_subject,
            creates_per_minute: cli.max_creates_per_minute,
        };
        let config = RegistryConfig { ended_retention: cli.ended_retention, access: security.public_api(), limits };
        let tier = &mut tiers[REGISTRY];
        tier.tasks.spawn(onair_registry::serve(
            config,
            store,
            store_name,
            Arc::clone(&bus),
            &admin,
            grpc,
            tier.stop.clone(),
        ));
    }

    // Signaling: on --grpc-addr alone, or on a private loopback port inside `all`.
    let mut signaling_url = cli.signaling_url.clone();
    if runs(Target::Signaling) {
        let dir = make_directory(&cli).await?;
        let addr = if target == Target::All { SocketAddr::from(([127, 0, 0, 1], 0)) } else { cli.grpc_addr() };
        let (grpc, addr) = bind(addr).await?;
        println!("onair: signaling gRPC listening on {addr}");
        signaling_url = format!("http://{}", loopback(addr));
        let config = onair_signaling::SignalingConfig {
            presence_ttl: cli.presence_ttl,
            security: security.clone(),
            max_watchers_per_stream: cli.max_watchers_per_stream,
            relays: cli.media == crate::cli::MediaMode::Relay,
        };
        let tier = &mut tiers[SIGNALING];
        let serve = onair_signaling::serve(
            config,
            dir,
            Arc::clone(&bus),
            registry_url.clone(),
            &admin,
            grpc,
            tier.stop.clone(),
        )?;
        tier.tasks.spawn(serve);
    }

    // Recorder: on --grpc-addr alone, or on a private loopback port inside `all`.
    if runs(Target::Recorder) {
        let addr = if target == Target::All { SocketAddr::from(([127, 0, 0, 1], 0)) } else { cli.grpc_addr() };
        let (grpc, addr) = bind(addr).await?;
        println!("onair: recorder gRPC listening on {addr} (recordings in {})", cli.recordings_dir().display());
        // Inside `all` the gateway is a node too: the recorder needs its own channel.
        let rec_node = if target == Target::All {
            format!("{node}-rec").parse().map_err(|e| RunError::Config(format!("--node-id: {e}")))?
        } else {
            node.clone()
        };
        let config = onair_recorder::RecorderConfig {
            node: rec_node,
            recordings_dir: cli.recordings_dir(),
            max_concurrent: cli.max_recordings,
            min_free_bytes: cli.min_free_mib.saturating_mul(1024 * 1024),
            auto_record: cli.auto_record,
            rtc: recorder_network(&cli),
            registry_url: registry_url.clone(),
            signaling_url: signaling_url.clone(),
            security: security.clone(),
        };
        let leases = make_leases(&cli).await?;
        let tier = &mut tiers[EDGE];
        tier.tasks.spawn(onair_recorder::serve(config, Arc::clone(&bus), leases, &admin, grpc, tier.stop.clone())?);
    }

    // Relay: its UDP port (no gRPC API); inside `all` unless --media p2p.
    if runs(Target::Relay) && (target == Target::Relay || cli.media == crate::cli::MediaMode::Relay) {
        let ips = relay_addresses(&cli);
        let sockets = onair_relay::RelaySockets::bind(&ips, cli.relay_port).await.map_err(|source| RunError::Bind {
            addr: SocketAddr::new(ips.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0])), cli.relay_port),
            source,
        })?;
        let shown: Vec<String> = sockets.addrs().iter().map(ToString::to_string).collect();
        println!("onair: relay media on UDP {}", shown.join(", "));
        println!("onair: relay ICE-TCP (passive) on TCP {}", shown.join(", "));
        let relay_node = if target == Target::All {
            format!("{node}-relay").parse().map_err(|e| RunError::Config(format!("--node-id: {e}")))?
        } else {
            node.clone()
        };
        let config = onair_relay::RelayConfig {
            node: relay_node,
            public: cli.public_addr,
            max_subscribers: cli.relay_max_subscribers,
            drop_silent_after: cli.relay_drop_silent_after,
            drop_slow_after: cli.relay_drop_slow_after,
            registry_url: registry_url.clone(),
            signaling_url: signaling_url.clone(),
            security: security.clone(),
        };
        let tier = &mut tiers[EDGE];
        tier.tasks.spawn(onair_relay::serve(config, sockets, Arc::clone(&bus), &admin, tier.stop.clone())?);
    }

    // Gateway: on --http-addr.
    if let Some((tls, ice)) = gateway_edge {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = onair_gateway::GatewayConfig {
            node: node.clone(),
            registry_url: registry_url.clone(),
            signaling_url: signaling_url.clone(),
            resume_grace: cli.resume_grace,
            recordings_dir: cli.recordings_dir(),
            resume_secret: cli.resume_secret.clone(),
            ws_rate: (cli.ws_rate, cli.ws_burst),
            allowed_origins: cli.allowed_origins.clone(),
            end_sessions_on_shutdown: target == Target::All,
            tls,
            ice,
            security: security.clone(),
            max_sockets_per_ip: cli.max_sockets_per_ip,
            trusted_proxies: cli.trusted_proxies.clone(),
            header_timeout: cli.header_timeout,
        };
        let (http, addr) = bind(cli.http_addr).await?;
        println!("onair: gateway listening on {scheme}://{addr} (node {})", config.node);
        println!("onair:   go live:  {scheme}://{}/broadcast", loopback(addr));
        println!("onair:   watch:    {scheme}://{}/watcher", loopback(addr));
        if config.tls.is_none() {
            println!(
                "onair:   other machines: browsers give the camera only to https pages (or localhost); serve them with \
                 --tls-cert FILE --tls-key FILE (PEM), or --tls-self-signed for a LAN demo, and \
                 --public-addr IP (the address browsers reach this host at: the relay and recorder announce it, \
                 the embedded TURN server starts) across NATs (see README)"
            );
        }
        let tier = &mut tiers[EDGE];
        tier.tasks.spawn(onair_gateway::serve(config, Arc::clone(&bus), &admin, http, tier.stop.clone())?);
    }

    let (admin_listener, admin_addr) = bind(cli.admin_addr()).await?;
    println!("onair: admin listening on http://{admin_addr} (/healthz /readyz /metrics)");
    {
        let tier = &mut tiers[ADMIN];
        let (admin, stop) = (admin.clone(), tier.stop.clone());
        tier.tasks
            .spawn(async move { Ok(onair_ops::admin::serve(admin, admin_listener, stop.cancelled_owned()).await?) });
    }

    let result = tokio::select! {
        () = terminated() => Ok(()),
        failed = first_exit(&mut tiers) => failed,
    };
    tracing::info!("shutting down");
    admin.start_draining();
    let deadline = tokio::time::Instant::now() + cli.shutdown_grace;
    for tier in &mut tiers {
        tier.stop.cancel();
        let drain = async { while tier.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            tracing::warn!(grace = ?cli.shutdown_grace, tier = tier.name, "grace period over; exiting with work in flight");
            break;
        }
        tracing::debug!(tier = tier.name, "stopped");
    }
    result
}

/// Resolves when the first service of any tier stops by itself (an error, or an unexpected end).
async fn first_exit(tiers: &mut [Tier]) -> Result<(), RunError> {
    let exits = tiers.iter_mut().filter(|t| !t.tasks.is_empty()).map(|t| Box::pin(t.tasks.join_next()));
    let (done, _, _) = futures::future::select_all(exits).await;
    match done {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(RunError::from(e)),
        Some(Err(e)) => Err(RunError::Config(format!("task failed: {e}"))),
    }
}

/// `0.0.0.0:P` → `127.0.0.1:P` (for in-process clients of our own listeners).
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}

/// Resolves on SIGTERM or ctrl-c.
async fn terminated() {
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
