//! HTTPS for the gateway: a certificate from PEM files that is re-read when the files change
//! (rotation without restart), a self-signed certificate for LAN demos, and a listener that runs
//! TLS handshakes beside the accept loop so a slow client never holds up the next one.
//!
//! Crypto provider: ring, the one already in the tree (webrtc's DTLS uses it). It is passed to each
//! `ServerConfig` explicitly (`builder_with_provider`) instead of being installed process-wide, so
//! no other crate's feature choice can change which provider the gateway uses.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often (at most) a handshake looks at the certificate files' metadata.
pub const RECHECK: Duration = Duration::from_secs(1);
/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once (flood guard).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// The `Strict-Transport-Security` value sent on every response when TLS is on: one year,
/// not `includeSubDomains` (onair does not own the subdomains of the name it is served at).
pub const HSTS: &str = "max-age=31536000";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the key or the protocol configuration.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being done.
        context: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// A gateway TLS configuration, ready to accept connections.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    what: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("what", &self.what).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { context: "TLS protocol versions".into(), source })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // axum serves HTTP/2 (with WebSocket over extended CONNECT) and HTTP/1.1 on the same port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsConfig {
    /// Serves the certificate chain in `cert` with the private key in `key` (both PEM). The files
    /// are checked at most every [`RECHECK`] on a handshake and re-read when their size, mtime or
    /// inode changed (a rewrite, a `mv` over them, or Kubernetes' symlink swap of a Secret volume);
    /// a pair that fails to load (half written, mismatched) is logged once and the previous
    /// certificate stays in use.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let files = CertFiles { cert: cert.to_owned(), key: key.to_owned() };
        let stamp = files.stamp();
        let current = Arc::new(files.load(&provider)?);
        let resolver = FileResolver {
            files,
            provider: Arc::clone(&provider),
            state: Mutex::new(ResolverState { current, stamp, checked: Instant::now(), failed: None }),
        };
        let server = server_config(provider, Arc::new(resolver))?;
        Ok(Self { server: Arc::new(server), what: format!("certificate {} (reloaded on change)", cert.display()) })
    }

    /// Serves a certificate generated now for `names` (DNS names and IP addresses), signed by its
    /// own key: browsers warn about it. For a LAN demo only; returns the certificate as PEM too.
    pub fn self_signed(names: &[String]) -> Result<(Self, String), TlsError> {
        let provider = provider();
        let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
        let pem = generated.cert.pem();
        let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let certified = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider)
            .map_err(|source| TlsError::Rustls { context: "self-signed key".into(), source })?;
        let server = server_config(provider, Arc::new(Fixed(Arc::new(certified))))?;
        Ok((Self { server: Arc::new(server), what: format!("SELF-SIGNED certificate for {}", names.join(", ")) }, pem))
    }

    /// What is served, for logs.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The rustls server configuration (ALPN h2 and http/1.1).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }
}

/// The names a self-signed certificate for this host should carry: `localhost`, the host name,
/// and every interface address (IPv6 link-local ones excepted: they cannot be used in a URL
/// without a zone). If the gateway is bound to one address, that address is included as well.
pub fn host_names(bound: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(host) = host.to_str()
        && !host.is_empty()
    {
        names.push(host.to_owned());
    }
    let mut ips: Vec<IpAddr> = vec![];
    if !bound.is_unspecified() {
        ips.push(bound);
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                ips.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                if !ip.is_unicast_link_local() {
                    ips.push(IpAddr::V6(ip));
                }
            }
        }
    }
    for ip in ips {
        let s = ip.to_string();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    names
}

/// Always the same certificate (self-signed).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What identifies a version of a file: size, mtime (ns), inode. `None`: it cannot be stat'ed.
type FileStamp = Option<(u64, SystemTime, u64)>;

impl CertFiles {
    fn stamp(&self) -> [FileStamp; 2] {
        let one = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.ino()))
        };
        [one(&self.cert), one(&self.key)]
    }

    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
        let pem_error = |path: &Path, what: String| TlsError::Pem { path: path.to_owned(), what };
        let cert_pem = read(&self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&self.cert, format!("not a PEM certificate chain ({e})")))?;
        if chain.is_empty() {
            return Err(pem_error(&self.cert, "no CERTIFICATE block (expected a PEM certificate chain)".into()));
        }
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_error(&self.key, format!("no PEM private key ({e})")))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| match source {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone() }
            }
            source => TlsError::Rustls { context: format!("{}", self.key.display()), source },
        })
    }
}

#[derive(Debug)]
struct ResolverState {
    current: Arc<CertifiedKey>,
    /// The files' stamp `current` was loaded from.
    stamp: [FileStamp; 2],
    checked: Instant,
    /// A stamp that failed to load (not retried, not logged again, until the files change).
    failed: Option<[FileStamp; 2]>,
}

/// Checks the files on handshakes, at most every [`RECHECK`]: no background task, an idle
/// server does nothing, and the first handshake after a change (give or take a second) gets the
/// new certificate. The cost on the handshake path is two `stat`s per second; the re-read and
/// parse happen once per change.
#[derive(Debug)]
struct FileResolver {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    state: Mutex<ResolverState>,
}

impl FileResolver {
    fn refresh_if_due(&self) {
        let (stamp, failed) = {
            let mut s = self.state.lock();
            if s.checked.elapsed() < RECHECK {
                return;
            }
            s.checked = Instant::now();
            (s.stamp, s.failed)
        };
        let now = self.files.stamp();
        if now == stamp || Some(now) == failed {
            return;
        }
        match self.files.load(&self.provider) {
            Ok(key) => {
                let mut s = self.state.lock();
                s.current = Arc::new(key);
                s.stamp = now;
                s.failed = None;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.state.lock().failed = Some(now);
                tracing::warn!(error = %e, "TLS certificate files changed but do not load; keeping the previous certificate");
            }
        }
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh_if_due();
        Some(Arc::clone(&self.state.lock().current))
    }
}

/// A listener yielding TLS streams whose handshake is done. Handshakes run in a task set beside
/// the accept loop (bounded by [`HANDSHAKE_TIMEOUT`] and [`MAX_PENDING_HANDSHAKES`]); the task
/// ends when the listener is dropped.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` with `config`. Every accepted socket gets TCP_NODELAY.
    pub(crate) fn new(listener: TcpListener, config: &TlsConfig) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config.server_config()), tx));
        Ok(Self { local, ready, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        tracing::debug!(%addr, "too many TLS handshakes in progress; connection dropped");
                        continue;
                    }
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, addr)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                        }
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning (as axum does).
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
