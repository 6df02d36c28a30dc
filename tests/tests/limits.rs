//! Hostile clients cost little: sockets per client address are bounded (429 with a reason and a
//! metric), the address behind a trusted proxy is the one counted (and nobody else can claim one),
//! and a client that sends its headers slowly is cut off; idle sockets cost a few KiB each.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_tests::Onair;
use onair_tests::procs::metric;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens `/ws` with `X-Forwarded-For: xff` (if any); the socket, or the refusal's status and body.
async fn upgrade(
    port: u16,
    xff: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, String, Option<String>),
> {
    let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
    if let Some(x) = xff {
        req.headers_mut().insert("x-forwarded-for", x.parse().unwrap());
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await.unwrap() {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            Err((r.status().as_u16(), body, retry))
        }
        Err(e) => panic!("upgrade failed oddly: {e}"),
    }
}

#[tokio::test]
async fn one_address_gets_a_bounded_number_of_sockets_and_a_clear_429() {
    let gw = Onair::start(
        "per-ip",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--max-sockets-per-ip", "3"],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(upgrade(gw.http, None).await.unwrap());
    }
    let Err((status, body, retry)) = upgrade(gw.http, None).await else {
        panic!("a 4th socket from one address opened")
    };
    assert_eq!(status, 429);
    assert!(body.contains("too many connections from your address (at most 3)"), "{body}");
    assert_eq!(retry.as_deref(), Some("10"));
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "onair_gateway_sockets_refused_per_ip_total"), Some(1), "{metrics}");

    // Behind a trusted proxy (loopback, by default) the forwarded client is counted, not the proxy.
    let other = upgrade(gw.http, Some("203.0.113.7")).await;
    assert!(other.is_ok(), "another client behind the proxy is not limited by the first: {:?}", other.err());

    // A socket closed frees its place.
    let mut first = held.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let start = Instant::now();
    loop {
        match upgrade(gw.http, None).await {
            Ok(ws) => {
                held.push(ws);
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(5), "the place never came back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_untrusted_client_cannot_claim_another_address() {
    let gw = Onair::start(
        "per-ip-untrusted",
        &[
            "--store",
            "memory",
            "--auto-record",
            "false",
            "--max-sockets-per-ip",
            "1",
            "--trusted-proxies",
            "10.0.0.0/8",
        ],
    )
    .await;
    let _one = upgrade(gw.http, None).await.unwrap();
    let spoof = upgrade(gw.http, Some("198.51.100.1")).await;
    assert_eq!(spoof.err().map(|e| e.0), Some(429), "X-Forwarded-For from an untrusted peer is ignored");
}

#[tokio::test]
async fn headers_sent_slowly_are_cut_off_and_prompt_ones_are_served() {
    let gw = Onair::start(
        "slow-headers",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--header-timeout", "2s"],
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", gw.http)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let mut closed = None;
    // A header line every 500 ms, never finishing: the gateway must hang up after ~2 s.
    for i in 0..20 {
        if slow.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
            closed = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = Some(start.elapsed());
                break;
            }
            // hyper answers 408 before closing.
            Ok(Ok(n)) => assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "unexpected reply"),
            Err(_) => {}
        }
    }
    let closed = closed.expect("a slow client was never cut off");
    assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5), "cut off after {closed:?}");
    let (status, _) = gw.http_get("/healthz").await;
    assert_eq!(status, 200, "prompt clients are served");
}

#[tokio::test]
async fn a_stream_takes_at_most_its_watcher_limit_and_says_so() {
    use serde_json::json;
    let gw = Onair::start(
        "watchers",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--max-watchers-per-stream", "1"],
    )
    .await;
    let mut b = onair_tests::ws::Ws::connect(gw.http).await;
    let s = b.publish("one seat").await;
    let mut w1 = onair_tests::ws::Ws::connect(gw.http).await;
    w1.send(json!({"type": "watch", "stream_id": s["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w1.peer_id.as_str()).await;
    let mut w2 = onair_tests::ws::Ws::connect(gw.http).await;
    w2.send(json!({"type": "watch", "stream_id": s["id"]})).await;
    let e = w2.expect_error("full").await;
    assert!(e["message"].as_str().unwrap().contains("maximum of 1 watchers"), "{e}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "onair_signaling_watch_refused_full_total"), Some(1), "{metrics}");
    // The seat frees up when the first watcher leaves.
    w1.send(json!({"type": "unwatch"})).await;
    b.expect_where("watcher_left", |f| f["peer"] == w1.peer_id.as_str()).await;
    w2.send(json!({"type": "watch", "stream_id": s["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w2.peer_id.as_str()).await;
}

/// Idle sockets stay cheap: 1 000 of them (each got its `welcome` and live list) add at most 6 KiB
/// of RSS each to the all-in-one (4.6 KiB measured on the debug build, 4.3 KiB optimized; tungstenite's
/// default buffers made it 139 KiB, a socket task twice its size ~6.5 KiB). BENCHMARKS has the
/// breakdown; `probe idle` measures 19 000.
#[tokio::test]
async fn a_thousand_idle_sockets_cost_a_few_kib_each() {
    let o = Onair::start("idle-memory", &["--store", "memory", "--max-sockets-per-ip", "0"]).await;
    o.wait_ready().await;
    let pid = o.proc.pid().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = onair_tests::procs::proc_usage(pid).1;
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut ws = upgrade(o.http, None).await.unwrap();
        // welcome + streams: the server has set the socket up completely.
        for _ in 0..2 {
            let _ = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut ws)).await;
        }
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = onair_tests::procs::proc_usage(pid).1;
    #[allow(clippy::cast_precision_loss)]
    let per = after.saturating_sub(before) as f64 / open.len() as f64;
    println!("1 000 idle sockets: RSS {before} → {after} KiB, {per:.1} KiB per socket");
    assert!(per <= 6.0, "an idle socket costs {per:.1} KiB of RSS");
}
