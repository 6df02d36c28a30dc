//! Command-line flags. Every flag has an `ONAIR_*` environment variable; this is
//! the only place that reads the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Which service(s) this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Every service in one process with embedded defaults (no Redis or MongoDB needed).
    All,
    /// Only the browser gateway (HTTP, WebSocket, pages).
    Gateway,
    /// Only the signaling service (gRPC).
    Signaling,
    /// Only the stream registry (gRPC).
    Registry,
    /// Only the recorder (gRPC + WebRTC): records every live stream to WebM.
    Recorder,
    /// Only the embedded TURN server (needs --turn-secret, shared with the gateways).
    Turn,
    /// Only a relay (SFU): receives each broadcast once and forwards it to its watchers.
    Relay,
}

/// How live media travels between browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MediaMode {
    /// Through a relay node when one is up (the broadcaster uploads once); peer to peer otherwise.
    Relay,
    /// Browser to browser, as the old demo did (the broadcaster uploads once per watcher).
    P2p,
}

/// Where the registry keeps its catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A journal file under --data-dir (survives restarts; single process).
    Embedded,
    /// Memory only (lost on exit; for tests and demos).
    Memory,
    /// MongoDB at --mongodb-uri (cluster).
    Mongodb,
}

/// onair: live video broadcasting from the browser, recorded on the server.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Something other than serving (e.g. `onair token` mints an access token).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Service to run: `all` runs every service in one process.
    #[arg(long, env = "ONAIR_TARGET", value_enum, default_value = "all")]
    pub target: Target,

    /// Gateway HTTP listen address: pages, WebSocket (/ws), JSON API, recording downloads.
    #[arg(long, env = "ONAIR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Serve the gateway over HTTPS/WSS with this PEM certificate chain (needs --tls-key). The file is
    /// re-read when it changes: rotate it in place, no restart.
    #[arg(long, env = "ONAIR_TLS_CERT", value_name = "FILE", requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (re-read with it).
    #[arg(long, env = "ONAIR_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS/WSS with a certificate generated at start for this host's names and addresses.
    /// Browsers warn about it: for a LAN demo only.
    #[arg(long, env = "ONAIR_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,

    /// ICE servers handed to browsers, comma-separated `stun:`/`turn:`/`turns:` URLs
    /// (e.g. stun:stun.example.org:3478,turn:turn.example.org:3478?transport=tcp).
    /// TURN URLs need --turn-secret.
    #[arg(long, env = "ONAIR_ICE_SERVERS", value_name = "URLS", value_delimiter = ',')]
    pub ice_servers: Vec<onair_gateway::IceUrl>,

    /// Secret shared with the TURN server (coturn: use-auth-secret, static-auth-secret=...). Every
    /// welcome carries credentials derived from it (TURN REST API), valid for --turn-credential-ttl.
    #[arg(long, env = "ONAIR_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// How long the TURN credentials in a welcome stay valid.
    #[arg(long, env = "ONAIR_TURN_CREDENTIAL_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub turn_credential_ttl: Duration,

    /// gRPC listen address (registry, signaling, recorder APIs). Default: 127.0.0.1:50051 for `all`
    /// (nothing outside this host needs it), 0.0.0.0:50051 for the cluster targets.
    #[arg(long, env = "ONAIR_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Admin HTTP listen address: /healthz, /readyz, /metrics. Default: 127.0.0.1:9090 for `all`,
    /// 0.0.0.0:9090 for the cluster targets (probes and Prometheus scrape it).
    #[arg(long, env = "ONAIR_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Turns auth on: access tokens (JWT, HS256) signed with this secret carry what their holder may
    /// do (publish, subscribe, admin; see `onair token`). Every gateway, registry and recorder of a
    /// cluster needs it. Without it (or --auth-public-key) anyone who reaches the gateway may go live
    /// and watch, and anyone who reaches gRPC may call the registry and recorder APIs.
    #[arg(long, env = "ONAIR_AUTH_SECRET", hide_env_values = true, global = true)]
    pub auth_secret: Option<String>,

    /// Turns auth on with EdDSA tokens: the issuer's Ed25519 public key (PEM). onair checks tokens
    /// but cannot mint them.
    #[arg(long, env = "ONAIR_AUTH_PUBLIC_KEY", value_name = "FILE", conflicts_with = "auth_secret")]
    pub auth_public_key: Option<PathBuf>,

    /// Secret the services of one cluster share and present to each other on every gRPC call;
    /// signaling refuses calls without it, so nobody else on the network can impersonate a gateway.
    /// The all-in-one generates one. Required with --auth-secret on cluster targets.
    #[arg(long, env = "ONAIR_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// This process's node id (its Redis channel is onair:node:<id>). Default: a random id.
    /// In Kubernetes, set it to the pod name.
    #[arg(long, env = "ONAIR_NODE_ID")]
    pub node_id: Option<String>,

    /// Registry gRPC endpoint used by gateways and recorders (cluster targets).
    #[arg(long, env = "ONAIR_REGISTRY_URL", default_value = "http://127.0.0.1:50051")]
    pub registry_url: String,

    /// Signaling gRPC endpoint used by gateways and recorders (cluster targets).
    #[arg(long, env = "ONAIR_SIGNALING_URL", default_value = "http://127.0.0.1:50051")]
    pub signaling_url: String,

    /// Secret that signs resume tokens (HMAC-SHA256, bound to the peer id); every gateway of a cluster
    /// must share it. Gateways refuse unsigned or forged tokens before asking signaling. Without it,
    /// tokens are unsigned random secrets (signaling still checks them against the directory).
    #[arg(long, env = "ONAIR_RESUME_SECRET", hide_env_values = true)]
    pub resume_secret: Option<String>,

    /// Page origins besides the gateway's own that may open /ws, comma-separated (e.g.
    /// https://app.example.com). A page of any other origin gets 403: another site cannot drive a
    /// visitor's browser into onair.
    #[arg(long, env = "ONAIR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// WebSockets one client address may hold open on a gateway; more get 429 (0: no limit). Raise it
    /// for audiences behind one big NAT (offices, campuses).
    #[arg(long, env = "ONAIR_MAX_SOCKETS_PER_IP", default_value_t = 256)]
    pub max_sockets_per_ip: usize,

    /// Proxies in front of the gateways whose X-Forwarded-For names the client (comma-separated
    /// addresses or CIDR blocks); the per-address limit counts that client instead of the proxy.
    #[arg(long, env = "ONAIR_TRUSTED_PROXIES", value_delimiter = ',', default_value = "127.0.0.0/8,::1")]
    pub trusted_proxies: Vec<onair_gateway::per_ip::Cidr>,

    /// How long a client may take to send the headers of a request before the gateway hangs up.
    #[arg(long, env = "ONAIR_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Frames per second one browser socket may send, sustained (gateway); more get `rate_limited`.
    #[arg(long, env = "ONAIR_WS_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_rate: u32,

    /// Frames a browser socket may send in a burst above --ws-rate (e.g. a trickle of ICE candidates).
    #[arg(long, env = "ONAIR_WS_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_burst: u32,

    /// Registry store backend. Default: embedded for `all`, mongodb for `registry`.
    #[arg(long, env = "ONAIR_STORE", value_enum)]
    pub store: Option<StoreKind>,

    /// Directory for the embedded store and recordings.
    #[arg(long, env = "ONAIR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// MongoDB connection string (store=mongodb).
    #[arg(long, env = "ONAIR_MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub mongodb_uri: String,

    /// MongoDB database name.
    #[arg(long, env = "ONAIR_MONGODB_DATABASE", default_value = "onair")]
    pub mongodb_database: String,

    /// Redis URL for the cluster bus (e.g. redis://redis:6379). Without it, an in-process bus is used,
    /// which only works when every service runs in this one process.
    #[arg(long, env = "ONAIR_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How media travels (signaling; in the all-in-one also whether the relay runs).
    #[arg(long, env = "ONAIR_MEDIA", value_enum, default_value_t = MediaMode::Relay)]
    pub media: MediaMode,

    /// The relay's UDP port, the same on every address it binds (0: a free one). All its peers share it.
    #[arg(long, env = "ONAIR_RELAY_PORT", default_value_t = 0)]
    pub relay_port: u16,

    /// Most subscribers (watchers and recorders) one relay forwards to; more are refused.
    #[arg(long, env = "ONAIR_RELAY_MAX_SUBSCRIBERS", default_value_t = 2000)]
    pub relay_max_subscribers: usize,

    /// A relay subscriber whose media connection has been silent (no working ICE pair) this long is dropped.
    #[arg(long, env = "ONAIR_RELAY_DROP_SILENT_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub relay_drop_silent_after: Duration,

    /// A relay subscriber of a simulcast stream whose bandwidth estimate stays below the lowest layer this long is let go (error too_slow).
    #[arg(long, env = "ONAIR_RELAY_DROP_SLOW_AFTER", default_value = "10s", value_parser = humantime::parse_duration)]
    pub relay_drop_slow_after: Duration,

    /// Most watchers one stream may have (signaling); more get `error{full}` (0: no limit).
    #[arg(long, env = "ONAIR_MAX_WATCHERS_PER_STREAM", default_value_t = 10_000)]
    pub max_watchers_per_stream: u32,

    /// Most live streams one publisher (the subject of its publish grant) may have at once
    /// (registry); more are refused with `error{full}` / RESOURCE_EXHAUSTED (0: no limit).
    #[arg(long, env = "ONAIR_MAX_LIVE_PER_SUBJECT", default_value_t = 3)]
    pub max_live_per_subject: u32,

    /// Most `CreateStream` calls one developer (the subject of an admin token) may make per minute
    /// on the registry API; more are RESOURCE_EXHAUSTED (0: no limit).
    #[arg(long, env = "ONAIR_MAX_CREATES_PER_MINUTE", default_value_t = 60)]
    pub max_creates_per_minute: u32,

    /// How long ended streams stay listed before they are purged (e.g. 7d, 12h, 30s).
    #[arg(long, env = "ONAIR_ENDED_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub ended_retention: Duration,

    /// Longest a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "ONAIR_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a browser that lost its connection keeps its peer id and stream (resume grace).
    #[arg(long, env = "ONAIR_RESUME_GRACE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub resume_grace: Duration,

    /// A gateway silent for this long is presumed dead: its peers are dropped and their streams end.
    #[arg(long, env = "ONAIR_PRESENCE_TTL", default_value = "6s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// Directory recordings are written to (recorder) and served from (gateway). Default: <data-dir>/recordings.
    /// In a cluster, a volume shared by recorders and gateways.
    #[arg(long, env = "ONAIR_RECORDINGS_DIR")]
    pub recordings_dir: Option<PathBuf>,

    /// Record every live stream automatically (recorder).
    #[arg(long, env = "ONAIR_AUTO_RECORD", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_record: bool,

    /// Most recordings one recorder runs at once; more are refused with a log line (RESOURCE_EXHAUSTED).
    #[arg(long, env = "ONAIR_MAX_RECORDINGS", default_value_t = 16)]
    pub max_recordings: usize,

    /// Free space (MiB) the recordings volume must have for a recording to start; below it streams are
    /// not recorded (RESOURCE_EXHAUSTED, a log line, a metric) until space returns.
    #[arg(long, env = "ONAIR_MIN_FREE_MIB", default_value_t = 64)]
    pub min_free_mib: u64,

    /// The only IP address the recorder's and the relay's WebRTC bind and announce (the recorder: UDP
    /// and ICE-TCP; the relay: its one UDP port). Default: every non-loopback interface (the relay:
    /// every IPv4 one) plus 127.0.0.1.
    #[arg(long, env = "ONAIR_RTC_IP")]
    pub rtc_ip: Option<IpAddr>,

    /// The address browsers reach this host at, when it is not one of its own (NAT 1:1, e.g. a cloud
    /// VM's public IP): server peers bind locally and announce this too. In the all-in-one it also
    /// starts the embedded TURN server and hands its stun:/turn: URLs out in welcome.
    #[arg(long, env = "ONAIR_PUBLIC_ADDR", value_name = "IP")]
    pub public_addr: Option<IpAddr>,

    /// Embedded TURN server: UDP and TCP listen address (turn:HOST:PORT, ?transport=tcp).
    #[arg(long, env = "ONAIR_TURN_ADDR", default_value = "0.0.0.0:3478")]
    pub turn_addr: SocketAddr,

    /// Embedded TURN server: TLS listen address (turns:), used when a certificate is configured
    /// (--tls-cert/--tls-key or --tls-self-signed).
    #[arg(long, env = "ONAIR_TURNS_ADDR", default_value = "0.0.0.0:5349")]
    pub turns_addr: SocketAddr,

    /// Embedded TURN server: UDP ports relayed addresses are taken from (one per allocation).
    #[arg(long, env = "ONAIR_TURN_RELAY_PORTS", value_name = "MIN-MAX", default_value = "49152-65535")]
    pub turn_relay_ports: onair_turn::RelayPorts,

    /// Embedded TURN server: internal networks peers may be on after all, comma-separated CIDRs
    /// (loopback, private, shared and link-local addresses are refused by default).
    #[arg(long, env = "ONAIR_TURN_ALLOW_PEER", value_name = "CIDR,...", value_delimiter = ',')]
    pub turn_allow_peer: Vec<onair_turn::Cidr>,

    /// Embedded TURN server: allocations one user (peer id) may hold at once.
    #[arg(long, env = "ONAIR_TURN_USER_QUOTA", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub turn_user_quota: u32,

    /// Embedded TURN server: most kilobits per second one allocation relays (both directions); the
    /// excess is dropped.
    #[arg(long, env = "ONAIR_TURN_MAX_KBPS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub turn_max_kbps: u64,

    /// Embedded TURN server: the realm of its long-term credentials.
    #[arg(long, env = "ONAIR_TURN_REALM", default_value = "onair")]
    pub turn_realm: String,

    /// Log format.
    #[arg(long, env = "ONAIR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// OTLP/gRPC endpoint for trace export (e.g. http://otel-collector:4317); off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Commands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Mint an access token (needs --auth-secret or ONAIR_AUTH_SECRET) and print it.
    Token(TokenArgs),
}

/// `onair token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// What the token allows, repeatable: `publish` (go live), `publish=NAME` (only with that title),
    /// `subscribe` (watch any stream), `subscribe=STREAM_ID`, `admin` (the registry and recorder gRPC APIs).
    #[arg(long = "grant", value_name = "GRANT", required = true)]
    pub grants: Vec<onair_auth::GrantArg>,

    /// Limits `publish` to this stream title (same as `--grant publish=NAME`).
    #[arg(long)]
    pub name: Option<String>,

    /// Who the token is for (its `sub` claim; logged at debug level when used). The registry limits live
    /// streams per subject (--max-live-per-subject): give each publisher its own.
    #[arg(long, default_value = "onair-user")]
    pub subject: String,

    /// How long the token is valid (e.g. 15m, 1h, 30d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The recordings directory in effect.
    pub fn recordings_dir(&self) -> PathBuf {
        self.recordings_dir.clone().unwrap_or_else(|| self.data_dir.join("recordings"))
    }

    /// The gRPC listen address in effect.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr.unwrap_or_else(|| self.default_addr(50051))
    }

    /// The admin listen address in effect.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or_else(|| self.default_addr(9090))
    }

    fn default_addr(&self, port: u16) -> SocketAddr {
        let ip: std::net::IpAddr = if self.target == Target::All { [127, 0, 0, 1].into() } else { [0, 0, 0, 0].into() };
        SocketAddr::new(ip, port)
    }

    /// The store backend in effect.
    pub fn store_kind(&self) -> StoreKind {
        self.store.unwrap_or(match self.target {
            Target::All => StoreKind::Embedded,
            _ => StoreKind::Mongodb,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn the_all_in_one_listens_for_grpc_and_admin_on_loopback_unless_told_otherwise() {
        let all = Cli::try_parse_from(["onair"]).unwrap();
        assert_eq!(all.grpc_addr().to_string(), "127.0.0.1:50051");
        assert_eq!(all.admin_addr().to_string(), "127.0.0.1:9090");
        let registry = Cli::try_parse_from(["onair", "--target", "registry"]).unwrap();
        assert_eq!(registry.grpc_addr().to_string(), "0.0.0.0:50051");
        assert_eq!(registry.admin_addr().to_string(), "0.0.0.0:9090");
        let told = Cli::try_parse_from(["onair", "--grpc-addr", "0.0.0.0:6000"]).unwrap();
        assert_eq!(told.grpc_addr().to_string(), "0.0.0.0:6000");
    }

    #[test]
    fn one_kind_of_token_key_at_a_time() {
        let both = Cli::try_parse_from(["onair", "--auth-secret", "x", "--auth-public-key", "k.pem"]);
        assert!(both.is_err());
    }
}
