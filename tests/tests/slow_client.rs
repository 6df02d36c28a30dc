//! A client that stops reading costs the gateway a bounded amount of memory and is closed
//! (4008) within seconds, however much its peer sends it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use onair_tests::ws::Ws;
use onair_tests::{Onair, wait_until};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// RSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn open_sockets(gw: &Onair) -> u64 {
    let (_, body) = gw.admin_get("/metrics").await;
    onair_tests::procs::metric(&body, "onair_gateway_sockets").unwrap_or(0)
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_closed_and_costs_bounded_memory() {
    let gw = Onair::start(
        "all-slow-reader",
        &["--store", "memory", "--media", "p2p", "--ws-rate", "1000", "--ws-burst", "1000"],
    )
    .await;
    gw.wait_ready().await;
    let mut b = Ws::connect(gw.http).await;
    let sid = b.publish("big signals").await["id"].as_str().unwrap().to_owned();

    // The watcher: a small receive buffer, its opening frames read, then never another byte.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(([127, 0, 0, 1], gw.http).into()).await.unwrap();
    let (mut w, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{}/ws", gw.http), tcp).await.unwrap();
    let mut frame = async || -> Value {
        loop {
            if let Some(Ok(Message::Text(t))) = w.next().await {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    let welcome = frame().await;
    let peer = welcome["peer_id"].as_str().unwrap().to_owned();
    w.send(Message::Text(json!({"type": "watch", "stream_id": sid}).to_string().into())).await.unwrap();
    b.expect_where("watcher_joined", |v| v["peer"] == peer.as_str()).await;
    assert_eq!(open_sockets(&gw).await, 2);

    let pid = gw.proc.pid().unwrap();
    let before = rss_kib(pid);
    let payload = "x".repeat(60_000);
    let start = Instant::now();
    for i in 0..600 {
        b.send(json!({"type": "signal", "to": peer, "kind": "candidate", "payload": {"i": i, "pad": payload}})).await;
    }
    // 36 MB sent at a client that reads nothing: the gateway drops it instead of queueing.
    wait_until(Duration::from_secs(20), "the gateway to close the non-reading watcher", || async {
        open_sockets(&gw).await == 1
    })
    .await;
    let closed_after = start.elapsed();
    let grown = rss_kib(pid).saturating_sub(before);
    println!("closed {closed_after:?} after the first signal; gateway RSS grew {grown} KiB");
    assert!(grown < 16 * 1024, "the gateway grew {grown} KiB for one non-reading client");
    // The broadcaster was not affected.
    b.ping().await;
    // What the watcher finally reads ends with our close code (or the connection just ends).
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = w.next().await {
            match m {
                Ok(Message::Close(Some(c))) => return Some(u16::from(c.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the watcher's connection never ended");
    assert!(ended.is_none_or(|c| c == 4008), "closed with {ended:?}");
}
