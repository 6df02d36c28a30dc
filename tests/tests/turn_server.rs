//! The embedded TURN server, driven by coturn's own client (`turnutils_uclient`, an independent
//! implementation): the all-in-one with `--public-addr` hands out its stun:/turn: URLs in
//! `welcome`, those credentials allocate over UDP and TCP and relay data between two clients;
//! wrong, stolen and expired credentials are refused; loopback peers only when allowed; the
//! per-user quota; IPv4-only relays; TLS; metrics; start-up errors for bad flag values; Chromium's
//! own TURN client relaying a data channel over UDP and TCP. Also the recorder announcing
//! `--public-addr` (and ICE-TCP) in the candidates it trickles.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use onair_tests::Onair;
use onair_tests::procs::metric;
use onair_tests::turn::{uclient, uclient_tls, uclient_with};
use onair_tests::ws::Ws;
use serde_json::{Value, json};

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// A relay port window of its own for each server (parallel tests rarely overlap), below the
/// ephemeral range that free ports (and so other tests' listeners) come from.
fn relay_ports() -> String {
    let base = 20000 + (onair_tests::free_port() % 240) * 50;
    format!("{base}-{}", base + 49)
}

/// The all-in-one with the embedded TURN server on loopback ports.
async fn onair_with_turn(name: &str, extra: &[&str]) -> (Onair, u16) {
    onair_with_turn_at(name, "127.0.0.1", extra).await
}

/// The same, announcing `public`.
async fn onair_with_turn_at(name: &str, public: &str, extra: &[&str]) -> (Onair, u16) {
    let ports = relay_ports();
    let mut args = vec!["--store", "memory", "--media", "p2p", "--public-addr", public, "--turn-addr", "127.0.0.1:0"];
    args.extend(["--turn-relay-ports", ports.as_str()]);
    args.extend(extra);
    let gw = Onair::start(name, &args).await;
    let turn = gw.addrs.get("turn").unwrap_or_else(|| panic!("no turn listener printed:\n{}", gw.proc.output())).port();
    (gw, turn)
}

fn credentials(welcome: &Value) -> (String, String) {
    let e = welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("username").is_some())
        .unwrap_or_else(|| panic!("no TURN entry with credentials in {welcome}"));
    (e["username"].as_str().unwrap().to_owned(), e["credential"].as_str().unwrap().to_owned())
}

async fn metrics(gw: &Onair) -> String {
    let (status, body) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn public_addr_runs_turn_whose_welcome_credentials_allocate_and_relay_over_udp_and_tcp() {
    // No --turn-secret: the all-in-one generates one and shares it with its own gateway.
    let (gw, port) = onair_with_turn("turn-embedded", &["--turn-allow-peer", "127.0.0.0/8"]).await;
    let ws = Ws::connect(gw.http).await;
    let servers = &ws.welcome["ice_servers"];
    assert_eq!(servers[0], json!({ "urls": [format!("stun:127.0.0.1:{port}")] }), "{servers}");
    assert_eq!(
        servers[1]["urls"],
        json!([format!("turn:127.0.0.1:{port}"), format!("turn:127.0.0.1:{port}?transport=tcp")]),
        "{servers}"
    );
    let (username, credential) = credentials(&ws.welcome);
    assert!(username.ends_with(&format!(":{}", ws.peer_id)), "{username}");

    uclient(port, &username, &credential, false).await.unwrap_or_else(|o| panic!("UDP allocation refused:\n{o}"));
    uclient(port, &username, &credential, true).await.unwrap_or_else(|o| panic!("TCP allocation refused:\n{o}"));
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_allocations_created_total").unwrap() >= 4, "{m}");
    assert!(metric(&m, "onair_turn_relayed_bytes_to_peers_total").unwrap() > 0, "{m}");
    assert!(metric(&m, "onair_turn_relayed_bytes_to_clients_total").unwrap() > 0, "{m}");
    assert_eq!(metric(&m, "onair_turn_auth_failures_total"), Some(0), "{m}");

    let wrong = uclient(port, &username, "d3JvbmcgY3JlZGVudGlhbA==", false).await;
    assert!(wrong.is_err(), "a wrong credential allocated:\n{wrong:?}");
    let (expiry, _) = username.split_once(':').unwrap();
    let stolen = uclient(port, &format!("{expiry}:someone-else"), &credential, true).await;
    assert!(stolen.is_err(), "the credential worked for another username:\n{stolen:?}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_auth_failures_total").unwrap() >= 2, "{m}");
    assert!(!gw.proc.output().contains(&credential), "a credential was logged");
}

#[tokio::test]
async fn with_a_certificate_turn_also_speaks_tls() {
    let ca = onair_tests::tls::TestCa::new();
    let dir = std::env::temp_dir().join(format!("onair-turn-tls-{}-{}", std::process::id(), onair_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], "onair").write_to(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (gw, _) = onair_with_turn(
        "turn-tls",
        &["--turn-allow-peer", "127.0.0.0/8", "--tls-cert", cert, "--tls-key", key, "--turns-addr", "127.0.0.1:0"],
    )
    .await;
    let tls_port = gw.addrs.get("turns").unwrap_or_else(|| panic!("no turns listener:\n{}", gw.proc.output())).port();
    let ws = Ws::connect_tls(gw.http, ca.client_config()).await;
    let urls = ws.welcome["ice_servers"][1]["urls"].as_array().unwrap().clone();
    assert!(urls.contains(&json!(format!("turns:127.0.0.1:{tls_port}?transport=tcp"))), "{urls:?}");
    let (username, credential) = credentials(&ws.welcome);
    uclient_tls(tls_port, &username, &credential).await.unwrap_or_else(|o| panic!("TLS allocation refused:\n{o}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn expired_credentials_are_refused() {
    let (gw, port) = onair_with_turn(
        "turn-expired",
        &["--turn-allow-peer", "127.0.0.0/8", "--turn-secret", "s3cret", "--turn-credential-ttl", "2s"],
    )
    .await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    uclient(port, &username, &credential, false).await.unwrap_or_else(|o| panic!("fresh creds refused:\n{o}"));
    let expiry: u64 = username.split_once(':').unwrap().0.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while unix_now() <= expiry {
        assert!(Instant::now() < deadline, "the clock did not pass {expiry}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = uclient(port, &username, &credential, false).await;
    assert!(late.is_err(), "expired credentials allocated:\n{late:?}");
}

#[tokio::test]
async fn loopback_peers_are_refused_unless_allowed() {
    // uclient -y makes each client the other's peer: relayed addresses on 127.0.0.1.
    let (gw, port) = onair_with_turn("turn-no-loopback", &[]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    let refused = uclient(port, &username, &credential, false).await;
    assert!(refused.is_err(), "relayed to 127.0.0.1 without --turn-allow-peer:\n{refused:?}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_peers_refused_total").unwrap() > 0, "{m}");
    assert!(metric(&m, "onair_turn_allocations_created_total").unwrap() > 0, "allocating itself works: {m}");
    assert_eq!(metric(&m, "onair_turn_relayed_bytes_to_peers_total"), Some(0), "{m}");
}

#[tokio::test]
async fn the_bandwidth_cap_drops_what_exceeds_it() {
    // 1 kbit/s: one second of budget is 125 bytes, less than one 1000-byte message.
    let (gw, port) = onair_with_turn("turn-cap", &["--turn-allow-peer", "127.0.0.0/8", "--turn-max-kbps", "1"]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    let capped = uclient_with(&["-l", "1000"], port, &username, &credential).await;
    assert!(capped.is_err(), "1000-byte messages went through a 1 kbit/s cap:\n{capped:?}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_packets_over_bandwidth_total").unwrap() > 0, "{m}");
    // Small messages fit the budget.
    uclient_with(&["-l", "20"], port, &username, &credential).await.unwrap_or_else(|o| panic!("20 bytes capped:\n{o}"));
}

#[tokio::test]
async fn an_ipv6_relay_is_refused_by_an_ipv4_server() {
    let (gw, port) = onair_with_turn("turn-v6", &["--turn-allow-peer", "127.0.0.0/8"]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    let v6 = uclient_with(&["-x"], port, &username, &credential).await;
    assert!(v6.is_err(), "an IPv6 relayed address was handed out by an IPv4 relay:\n{v6:?}");
    uclient_with(&["-X"], port, &username, &credential).await.unwrap_or_else(|o| panic!("explicit IPv4 refused:\n{o}"));
}

#[tokio::test]
async fn allocations_beyond_the_user_quota_are_refused() {
    // uclient -y -c needs two allocations at once for one username.
    let (gw, port) =
        onair_with_turn("turn-quota", &["--turn-allow-peer", "127.0.0.0/8", "--turn-user-quota", "1"]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    let over = uclient(port, &username, &credential, false).await;
    assert!(over.is_err(), "two allocations with a quota of one:\n{over:?}");
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_quota_refusals_total").unwrap() > 0, "{m}");

    // uclient -y -c holds three allocations at once (two clients, one probe): a quota of 3 fits.
    drop(gw);
    let (gw, port) =
        onair_with_turn("turn-quota2", &["--turn-allow-peer", "127.0.0.0/8", "--turn-user-quota", "3"]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    uclient(port, &username, &credential, false).await.unwrap_or_else(|o| panic!("within the quota:\n{o}"));
}

#[tokio::test]
async fn turn_target_needs_its_secret_and_bad_flag_values_stop_the_start() {
    let cases: &[(&[&str], &str)] = &[
        (&["--target", "turn", "--turn-addr", "127.0.0.1:0"], "--turn-secret"),
        (&["--turn-relay-ports", "49200-49160"], "--turn-relay-ports"),
        (&["--turn-relay-ports", "0-10"], "--turn-relay-ports"),
        (&["--turn-relay-ports", "40000"], "--turn-relay-ports"),
        (&["--turn-allow-peer", "10.0.0.0/33"], "--turn-allow-peer"),
        (&["--turn-allow-peer", "localhost"], "--turn-allow-peer"),
        (&["--turn-user-quota", "0"], "--turn-user-quota"),
        (&["--turn-max-kbps", "0"], "--turn-max-kbps"),
        (&["--public-addr", "turn.example.org"], "--public-addr"),
        (&["--turn-addr", "3478"], "--turn-addr"),
        (&["--turns-addr", "nope:5349"], "--turns-addr"),
        (&["--public-addr", "0.0.0.0"], "--public-addr"),
        (&["--public-addr", "224.0.0.1"], "--public-addr"),
        (&["--turn-realm", ""], "--turn-realm"),
        (&["--rtc-ip", "localhost"], "--rtc-ip"),
    ];
    for (args, names) in cases {
        let (code, out) = Onair::start_expecting_exit("turn-bad-flag", args).await;
        assert!(code.is_some_and(|c| c != 0), "{args:?} started (exit {code:?}):\n{out}");
        assert!(out.contains(names), "{args:?}: the error does not name {names}:\n{out}");
    }
    // A TURN port that is taken is named.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out) = Onair::start_expecting_exit(
        "turn-taken",
        &["--store", "memory", "--media", "p2p", "--public-addr", "127.0.0.1", "--turn-addr", &addr],
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "started on a taken port:\n{out}");
    assert!(out.contains(&addr), "the error does not name {addr}:\n{out}");
}

#[tokio::test]
async fn turn_target_serves_alone() {
    let gw = Onair::start(
        "turn-alone",
        &[
            "--target",
            "turn",
            "--turn-secret",
            "alone",
            "--turn-addr",
            "127.0.0.1:0",
            "--public-addr",
            "127.0.0.1",
            "--turn-relay-ports",
            &relay_ports(),
            "--turn-allow-peer",
            "127.0.0.1",
        ],
    )
    .await;
    let port = gw.addrs["turn"].port();
    let username = format!("{}:alice", unix_now() + 60);
    let credential = turn_rest_credential("alone", &username);
    uclient(port, &username, &credential, true).await.unwrap_or_else(|o| panic!("TCP allocation refused:\n{o}"));
    gw.wait_ready().await;
}

/// base64(HMAC-SHA1(secret, username)), computed by Python: an independent implementation.
fn turn_rest_credential(secret: &str, username: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,base64,sys;print(base64.b64encode(hmac.new(sys.argv[1].encode(),sys.argv[2].encode(),hashlib.sha1).digest()).decode())",
            secret,
            username,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A sendonly Opus offer, enough for the recorder to answer and gather candidates (no media,
/// no DTLS: the fingerprint is made up).
fn offer() -> Value {
    let fingerprint = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
    let sdp = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:tEsT",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        &format!("a=fingerprint:sha-256 {fingerprint}"),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1001 cname:onair-test",
        "",
    ]
    .join("\r\n");
    json!({ "type": "offer", "sdp": sdp })
}

/// Publishes, offers to the recorder when it joins, and returns the candidate lines it trickles
/// within `window` after its answer.
async fn recorder_candidates(gw: &Onair, window: Duration) -> Vec<String> {
    let mut b = Ws::connect(gw.http).await;
    b.send(json!({"type": "publish", "title": "candidates"})).await;
    // The recorder's watcher_joined may come before or after published.
    let mut recorder = None;
    let mut published = false;
    let end = Instant::now() + Duration::from_secs(10);
    while !(published && recorder.is_some()) {
        assert!(Instant::now() < end, "no published + watcher_joined within 10 s:\n{}", gw.proc.output());
        let Some(msg) = b.next(Duration::from_millis(200)).await else { continue };
        match msg["type"].as_str() {
            Some("published") => published = true,
            Some("watcher_joined") => recorder = msg["peer"].as_str().map(str::to_owned),
            _ => {}
        }
    }
    let recorder = recorder.unwrap();
    b.send(json!({"type": "signal", "to": recorder, "kind": "offer", "payload": offer()})).await;
    let mut candidates = Vec::new();
    let mut answered = false;
    let end = Instant::now() + Duration::from_secs(15);
    let mut quiet_until = None;
    while Instant::now() < end && quiet_until.is_none_or(|q| Instant::now() < q) {
        let Some(msg) = b.next(Duration::from_millis(200)).await else { continue };
        if msg["type"] != "signal" {
            continue;
        }
        match msg["kind"].as_str() {
            Some("answer") => {
                answered = true;
                quiet_until = Some(Instant::now() + window);
            }
            Some("candidate") => {
                let c = &msg["payload"]["candidate"];
                candidates.push(c.as_str().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    assert!(answered, "the recorder never answered:\n{}", gw.proc.output());
    candidates
}

/// The local address of the default route (no packet is sent).
fn default_route_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.200:9").ok()?;
    s.local_addr().ok().map(|a: SocketAddr| a.ip()).filter(|ip| !ip.is_loopback())
}

#[tokio::test]
async fn recorder_announces_the_public_addr_and_ice_tcp() {
    let (gw, _) = onair_with_turn_at("rec-public", "203.0.113.7", &[]).await;
    let candidates = recorder_candidates(&gw, Duration::from_secs(2)).await;
    let has = |pred: &dyn Fn(&str) -> bool| candidates.iter().any(|c| pred(c));
    assert!(
        has(&|c| c.contains(" udp ") && c.contains(" 203.0.113.7 ") && c.contains("typ srflx")),
        "no UDP candidate at the public addr: {candidates:#?}"
    );
    assert!(
        has(&|c| c.contains(" tcp ") && c.contains(" 203.0.113.7 ") && c.contains("tcptype passive")),
        "no ICE-TCP candidate at the public addr: {candidates:#?}"
    );
    assert!(has(&|c| c.contains(" 127.0.0.1 ")), "loopback is no longer announced: {candidates:#?}");
    assert!(
        has(&|c| c.to_ascii_lowercase().contains(" tcp ") && c.contains("tcptype passive")),
        "no ICE-TCP passive candidate: {candidates:#?}"
    );
}

#[tokio::test]
async fn recorder_without_public_addr_announces_a_non_loopback_address() {
    let gw = Onair::start("rec-local", &["--store", "memory", "--media", "p2p"]).await;
    let candidates = recorder_candidates(&gw, Duration::from_secs(2)).await;
    assert!(candidates.iter().any(|c| c.contains(" 127.0.0.1 ")), "{candidates:#?}");
    if let Some(ip) = default_route_ip() {
        assert!(candidates.iter().any(|c| c.contains(&format!(" {ip} "))), "{ip} not announced: {candidates:#?}");
    }
    assert!(!gw.addrs.contains_key("turn"), "TURN runs without --public-addr");
}

/// Two RTCPeerConnections in one Chromium page, relay-only with `ice`: a data channel message goes
/// through the TURN server; returns what the receiving side saw (message, local candidate type and
/// relay protocol of the selected pair).
async fn chromium_relays(b: &onair_tests::browser::Browser, ice: &Value) -> Value {
    let script = r#"
        window.__r = null;
        (async () => {
          try {
            const cfg = { iceServers: SERVERS, iceTransportPolicy: 'relay' };
            const a = new RTCPeerConnection(cfg), b = new RTCPeerConnection(cfg);
            a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
            b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
            const ch = a.createDataChannel('t');
            b.ondatachannel = (e) => {
              e.channel.onmessage = async (m) => {
                const stats = await b.getStats();
                let pair = null;
                stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); });
                if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && r.state === 'succeeded') pair = r; });
                const local = pair && stats.get(pair.localCandidateId);
                window.__r = { msg: m.data, type: local && local.candidateType, proto: local && local.relayProtocol };
              };
            };
            ch.onopen = () => ch.send('through turn');
            await a.setLocalDescription(await a.createOffer());
            await b.setRemoteDescription(a.localDescription);
            await b.setLocalDescription(await b.createAnswer());
            await a.setRemoteDescription(b.localDescription);
          } catch (e) { window.__r = { error: String(e) }; }
        })();
        return true;"#
        .replace("SERVERS", &ice.to_string());
    b.eval(&script).await;
    b.wait_for("a data channel message through TURN", Duration::from_secs(25), "return window.__r").await
}

#[tokio::test]
async fn chromium_relays_through_the_embedded_turn_over_udp_and_tcp() {
    let (gw, port) = onair_with_turn("turn-chromium", &["--turn-allow-peer", "127.0.0.0/8"]).await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    let b = onair_tests::browser::Browser::start("turn-chromium").await;
    b.goto(&format!("http://127.0.0.1:{}/watcher", gw.http)).await;
    for (url, proto) in
        [(format!("turn:127.0.0.1:{port}"), "udp"), (format!("turn:127.0.0.1:{port}?transport=tcp"), "tcp")]
    {
        let ice = json!([{ "urls": [url], "username": username, "credential": credential }]);
        let got = chromium_relays(&b, &ice).await;
        assert_eq!(got["msg"], "through turn", "{url}: {got}\n{}", gw.proc.output());
        assert_eq!(got["type"], "relay", "{url}: {got}");
        assert_eq!(got["proto"], proto, "{url}: {got}");
    }
    let m = metrics(&gw).await;
    assert!(metric(&m, "onair_turn_relayed_bytes_to_clients_total").unwrap() > 0, "{m}");
}
