//! HTTPS/WSS on the gateway: pages, API, downloads and `/ws` over TLS with a test CA; certificate
//! rotation without restart; HSTS; a self-signed certificate for the host's names; and start-up
//! refusals with clear messages.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use onair_tests::tls::{TestCa, cert_names, fetch_server_cert, http_get_full, https_get, trusting};
use onair_tests::ws::Ws;
use onair_tests::{Onair, unique, wait_until};

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("onair-tls-{name}-{}-{}", std::process::id(), unique()))
}

#[tokio::test]
async fn pages_api_downloads_and_wss_are_served_over_https_with_hsts() {
    let ca = TestCa::new();
    let dir = temp_dir("serve");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], "onair").write_to(&dir);
    let gw = Onair::start(
        "tls-serve",
        &["--store", "memory", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    )
    .await;
    assert!(gw.proc.output().contains("gateway listening on https://"), "{}", gw.proc.output());
    let tls = ca.client_config();

    for (path, status) in
        [("/broadcast", 200), ("/watcher", 200), ("/api/streams", 200), ("/recordings/nope.webm", 404)]
    {
        let r = https_get(gw.http, path, tls.clone()).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, status, "GET {path}: {r:?}");
        assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"), "GET {path}: no HSTS");
    }
    let page = https_get(gw.http, "/broadcast", tls.clone()).await.unwrap();
    assert!(page.body.contains("<html") || page.body.contains("<!doctype"), "not a page: {}", page.body);

    // The browser protocol over wss://, verified against the test CA.
    let mut ws = Ws::connect_tls(gw.http, tls.clone()).await;
    assert!(!ws.peer_id.is_empty());
    let stream = ws.publish("over tls").await;
    assert_eq!(stream["title"], "over tls");
    ws.ping().await;

    // Plain HTTP on the TLS port gets no page.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.http)).await.unwrap();
        s.write_all(b"GET /broadcast HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await
    .expect("the TLS port kept a plain HTTP client hanging");
    assert!(!String::from_utf8_lossy(&plain).contains("200 OK"), "plain HTTP served on the TLS port");

    // A client that does not trust the CA is refused.
    let other = TestCa::new().client_config();
    assert!(https_get(gw.http, "/", other).await.is_err(), "a certificate from an unknown CA was accepted");
}

#[tokio::test]
async fn plain_http_sends_no_hsts() {
    let gw = Onair::start("tls-plain", &["--store", "memory"]).await;
    let r = http_get_full(gw.http, "/broadcast").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None, "HSTS over plain HTTP: {r:?}");
    let out = gw.proc.output();
    assert!(out.contains("gateway listening on http://"), "{out}");
    assert!(out.contains("--tls-cert FILE --tls-key FILE"), "no hint on serving other machines:\n{out}");
}

#[tokio::test]
async fn certificate_files_are_reloaded_without_restart() {
    let ca = TestCa::new();
    let dir = temp_dir("rotate");
    let first = ca.issue(&["localhost", "127.0.0.1"], "first");
    let (cert, key) = first.write_to(&dir);
    let gw = Onair::start(
        "tls-rotate",
        &["--store", "memory", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    )
    .await;
    let tls = ca.client_config();
    let r = https_get(gw.http, "/healthz", tls.clone()).await.unwrap();
    assert_eq!(r.server_cert, first.der, "not the first certificate");
    let mut ws = Ws::connect_tls(gw.http, tls.clone()).await;

    // A key that does not match the certificate: the old pair stays in use.
    let mismatched = ca.issue(&["localhost"], "mismatched");
    std::fs::write(&cert, &mismatched.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = https_get(gw.http, "/healthz", tls.clone()).await.unwrap();
    assert_eq!(r.server_cert, first.der, "a half-rotated pair was served");

    // The full new pair: new handshakes see it, within the re-check period.
    let second = ca.issue(&["localhost", "127.0.0.1"], "second");
    second.write_to(&dir);
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "new handshakes to present the rotated certificate", || {
        let tls = tls.clone();
        let want = second.der.clone();
        async move { https_get(gw.http, "/healthz", tls).await.is_ok_and(|r| r.server_cert == want) }
    })
    .await;
    eprintln!("rotation seen by a new handshake after {:?}", started.elapsed());
    assert!(!gw.proc.full_output().contains("---- restart"), "the process restarted");
    // The connection made before the rotation is unaffected.
    ws.ping().await;
    gw.proc.wait_output("TLS certificate reloaded", Duration::from_secs(2)).await;
    assert!(gw.proc.output().contains("do not load; keeping the previous certificate"), "{}", gw.proc.output());
}

#[tokio::test]
async fn self_signed_certificate_names_this_host() {
    let gw = Onair::start("tls-self-signed", &["--store", "memory", "--tls-self-signed"]).await;
    let out = gw.proc.output();
    assert!(out.contains("WARNING: SELF-SIGNED certificate"), "not logged loudly:\n{out}");
    let der = fetch_server_cert(gw.http).await;
    for name in ["localhost", "127.0.0.1"] {
        assert!(cert_names(&der, name), "the self-signed certificate does not name {name}");
    }
    // Trusting that very certificate, it verifies for localhost and serves HSTS.
    let r = https_get(gw.http, "/watcher", trusting(&der)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_some());
}

async fn refused(name: &str, args: &[&str], expect: &[&str]) {
    let (code, out) = Onair::start_expecting_exit(name, args).await;
    assert!(code.is_some_and(|c| c != 0), "{name}: exit code {code:?}, expected a failure:\n{out}");
    for e in expect {
        assert!(out.contains(e), "{name}: the message does not say {e:?}:\n{out}");
    }
    assert!(!out.contains("gateway listening"), "{name}: it listened anyway:\n{out}");
}

#[tokio::test]
async fn bad_configuration_stops_the_start_with_a_clear_message() {
    let ca = TestCa::new();
    let dir = temp_dir("bad");
    let (cert, key) = ca.issue(&["localhost"], "a").write_to(&dir);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, ca.issue(&["localhost"], "b").key_pem).unwrap();
    let missing = dir.join("missing.pem");
    let (cert, key, other_key, missing) =
        (cert.to_str().unwrap(), key.to_str().unwrap(), other_key.to_str().unwrap(), missing.to_str().unwrap());

    refused("tls-missing-cert", &["--tls-cert", missing, "--tls-key", key], &["cannot read", missing]).await;
    refused("tls-cert-is-a-key", &["--tls-cert", key, "--tls-key", key], &["no CERTIFICATE block", key]).await;
    refused("tls-mismatch", &["--tls-cert", cert, "--tls-key", other_key], &["does not match the certificate"]).await;
    refused("tls-cert-alone", &["--tls-cert", cert], &["--tls-key"]).await;
    refused(
        "ice-bad-scheme",
        &["--ice-servers", "stun:ok.example.org,http://stun.example.org"],
        &["invalid ICE server URL", "http://stun.example.org"],
    )
    .await;
    refused("ice-bad-port", &["--ice-servers", "turn:turn.example.org:99999"], &["port"]).await;
    refused("ice-turn-without-secret", &["--ice-servers", "turn:turn.example.org:3478"], &["needs --turn-secret"])
        .await;
}
