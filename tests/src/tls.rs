//! A test certificate authority and an HTTPS client that trusts only it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA made for one test: issues server certificates, and builds clients that trust it alone.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate issued by a [`TestCa`], as PEM.
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate (DER), to compare with what a server presents.
    pub der: Vec<u8>,
}

impl Issued {
    /// Writes `cert.pem` and `key.pem` into `dir` atomically (write aside, then rename, as a
    /// certificate manager does); returns their paths.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        for (path, pem) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA ("onair test CA").
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "onair test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate (PEM), e.g. for a browser's trust store.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), with `common_name`.
    pub fn issue(&self, names: &[&str], common_name: &str) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A rustls client configuration trusting this CA only (ring, HTTP/1.1, no session resumption).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection a full handshake: a resumed session would show the certificate of the
        // session it resumes, not the one the server has now.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// A response read by [`https_get`].
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (as text).
    pub body: String,
    /// The certificate the server presented (DER).
    pub server_cert: Vec<u8>,
}

impl Response {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// GET `https://localhost:PORT{path}` over HTTP/1.1 with `tls`; the handshake must verify.
pub async fn https_get(port: u16, path: &str, tls: Arc<rustls::ClientConfig>) -> Result<Response, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await??;
    let server_cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // A peer that closes without close_notify is fine for a Connection: close response.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await?;
    Ok(parse_response(&buf, server_cert))
}

/// Parses a raw HTTP/1.1 response (identity or chunked body: only the text is needed).
pub fn parse_response(raw: &[u8], server_cert: Vec<u8>) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned(), server_cert }
}

/// Plain HTTP GET on `127.0.0.1:PORT` with the headers (see [`https_get`]).
pub async fn http_get_full(port: u16, path: &str) -> Response {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    parse_response(&buf, vec![])
}

/// Whether `der` (a certificate) names the IP address `ip` or the DNS name `dns` in its subject
/// alternative names: looks for the encoded GeneralName (`[7] OCTET STRING` / `[2] IA5String`).
pub fn cert_names(der: &[u8], name: &str) -> bool {
    let encoded: Vec<u8> = match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => [&[0x87, 4][..], &v4.octets()].concat(),
        Ok(std::net::IpAddr::V6(v6)) => [&[0x87, 16][..], &v6.octets()].concat(),
        Err(_) => [&[0x82, u8::try_from(name.len()).unwrap()][..], name.as_bytes()].concat(),
    };
    der.windows(encoded.len()).any(|w| w == encoded.as_slice())
}

/// The DER of a PEM certificate.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// Accepts any server certificate and remembers it: only to *fetch* an unknown (self-signed)
/// certificate; every test then verifies it properly with [`trusting`].
#[derive(Debug)]
struct Capture {
    seen: std::sync::Mutex<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = end_entity.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate the server on `127.0.0.1:PORT` presents, fetched without verifying it.
pub async fn fetch_server_cert(port: u16) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture { seen: Default::default(), provider: Arc::clone(&provider) });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect).await.unwrap().unwrap();
    capture.seen.lock().unwrap().clone()
}

/// A client configuration that trusts exactly the certificate `der` (e.g. a self-signed one).
pub fn trusting(der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
