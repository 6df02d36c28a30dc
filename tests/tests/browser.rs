//! Real-browser end-to-end: Chromium with a fake camera and microphone goes live
//! on /broadcast; another Chromium watches on /watcher, through nginx, on a
//! different gateway; and the same flow on the all-in-one binary.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use onair_tests::browser::{Browser, p50, watch};
use onair_tests::cluster::Cluster;
use onair_tests::{Onair, wait_until};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

async fn leave(w: &Browser) {
    w.eval("document.getElementById('leave').click(); return true").await;
    w.wait_for("the player to stop", LONG, "const p = document.getElementById('player'); return !p.srcObject || p.srcObject.getTracks().length === 0 || document.getElementById('stage').hidden").await;
}

async fn gateway_sockets(g: &Onair) -> u64 {
    g.metric("onair_gateway_sockets").await
}

#[tokio::test]
async fn browsers_broadcast_and_watch_through_nginx_on_different_gateways() {
    let c = Cluster::start(2, true).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("broadcaster").await;
    b.go_live(&base, "Browser E2E").await;
    let w = Browser::start("watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    // least_conn puts the second socket on the other gateway; check it, as a user can't.
    w.wait_for("the watcher socket", LONG, "return document.getElementById('connection').dataset.state === 'online'")
        .await;
    let per_gateway = (gateway_sockets(&c.gateways[0]).await, gateway_sockets(&c.gateways[1]).await);
    assert_eq!(per_gateway, (1, 1), "broadcaster and watcher should be on different gateways");

    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(watch(&w, "Browser E2E").await);
        leave(&w).await;
    }
    println!("watch click → first frame (ms) through nginx across gateways: {times:?}, p50 {:.0}", p50(times.clone()));
    watch(&w, "Browser E2E").await;
    w.screenshot("watching").await;

    // Stop: the stream leaves the list and the watcher is told.
    b.eval("document.getElementById('stop').click(); return true").await;
    w.wait_for("the ended message", LONG, "const e = document.getElementById('ended-message'); return e && !e.hidden")
        .await;
    w.wait_for("the list to empty", LONG, "return document.querySelectorAll('#streams [data-stream-id]').length === 0")
        .await;
    w.screenshot("ended").await;
}

#[tokio::test]
async fn browsers_broadcast_and_watch_on_the_all_in_one_binary() {
    let dir = std::env::temp_dir().join(format!("onair-browser-aio-{}", std::process::id()));
    let gw = Onair::start("all-in-one-browser", &["--store", "memory", "--data-dir", dir.to_str().unwrap()]).await;
    gw.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", gw.http);
    let b = Browser::start("aio-broadcaster").await;
    b.go_live(&base, "All in one").await;
    let w = Browser::start("aio-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    let ms = watch(&w, "All in one").await;
    println!("all-in-one watch click → first frame: {ms:.0} ms");
    b.eval("document.getElementById('stop').click(); return true").await;
    w.wait_for("the list to empty", LONG, "return document.querySelectorAll('#streams [data-stream-id]').length === 0")
        .await;
}

#[tokio::test]
async fn a_broadcast_survives_its_gateway_being_killed_by_resuming_through_nginx() {
    let mut c = Cluster::start(2, true).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("resume-broadcaster").await;
    let sid = b.go_live(&base, "Survivor").await;
    // The broadcaster's gateway: the one holding the only socket so far.
    let dead = if gateway_sockets(&c.gateways[0]).await == 1 { 0 } else { 1 };
    let alive = 1 - dead;
    assert_eq!(gateway_sockets(&c.gateways[dead]).await, 1);
    let w = Browser::start("resume-watcher").await;
    // nginx's least_conn counts its HTTP connections too (the page's assets), so the watcher's socket
    // may land beside the broadcaster's: reload until it is on the other gateway (bounded).
    for attempt in 1..=5 {
        w.goto(&format!("{base}/watcher")).await;
        watch(&w, "Survivor").await;
        if gateway_sockets(&c.gateways[alive]).await == 1 {
            break;
        }
        assert!(attempt < 5, "the watcher's socket never landed on the other gateway");
    }
    assert_eq!(gateway_sockets(&c.gateways[alive]).await, 1, "the watcher is on the other gateway");
    let peer = b.eval("return window.onair.state.peerId").await;
    assert!(peer.as_str().is_some_and(|p| !p.is_empty()), "{peer}");
    b.eval("window.__sessions = []; window.onair.socket.on('session', (s) => window.__sessions.push(s)); return true")
        .await;

    // The broadcaster's gateway dies without closing anything (SIGKILL).
    c.gateways[dead].proc.kill();
    // The page reconnects through nginx to the survivor with its token on the upgrade and gets its
    // old peer id back in its one welcome.
    b.wait_for(
        "the resumed session",
        LONG,
        "return window.__sessions.length > 0 && window.onair.state.socket === 'online'",
    )
    .await;
    assert_eq!(b.eval("return window.__sessions").await, json!([{"peerId": peer, "resumed": true}]));
    assert_eq!(gateway_sockets(&c.gateways[alive]).await, 2);
    // Past the dead gateway's presence TTL (4 s) the stream is still the same, live, and playing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let state = b.eval("return window.onair.state").await;
    assert_eq!((state["live"].clone(), state["stream"]["id"].clone()), (json!(true), json!(sid)), "{state}");
    assert_eq!(b.eval("return document.getElementById('status').textContent.trim()").await, "Live");
    let listed = w.eval("return window.onair.state.streams").await;
    assert!(listed.as_array().unwrap().iter().any(|s| s == sid.as_str()), "{listed}");
    let time = "return document.getElementById('player').currentTime";
    let t1 = w.eval(time).await.as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t2 = w.eval(time).await.as_f64().unwrap();
    assert!(t2 > t1, "the watcher's video stopped ({t1} → {t2})");
    b.screenshot("resumed").await;
    w.screenshot("resumed").await;
    // The token travelled in the upgrade URL; nginx's access log keeps query strings out. nginx logs a
    // WebSocket when it ends: close the pages, then expect all three sockets (the broadcaster's two).
    drop((b, w));
    let log_file = c.nginx.as_ref().unwrap().dir.join("access.log");
    let read = || std::fs::read_to_string(&log_file).unwrap_or_default();
    wait_until(Duration::from_secs(10), "three /ws lines in nginx's access log", || async {
        read().matches("\"GET /ws HTTP/1.1\" 101").count() >= 3
    })
    .await;
    assert!(!read().contains("resume="), "a resume token in the access log: {}", read());
}

#[tokio::test]
async fn a_watcher_without_a_media_path_is_told_so_plainly() {
    let dir = std::env::temp_dir().join(format!("onair-browser-nopath-{}", std::process::id()));
    let args = ["--store", "memory", "--auto-record", "false", "--data-dir", dir.to_str().unwrap()];
    let gw = Onair::start("all-in-one-nopath", &args).await;
    gw.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", gw.http);
    let b = Browser::start("nopath-broadcaster").await;
    b.go_live(&base, "No path").await;
    let w = Browser::start("nopath-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    // No TURN server is configured and the watcher may use relays only: no candidate at all, as
    // behind a network that blocks everything but a relay.
    w.eval(
        "const Native = window.RTCPeerConnection; \
         window.RTCPeerConnection = function (config) { return new Native({ ...config, iceTransportPolicy: 'relay' }); }; \
         window.RTCPeerConnection.prototype = Native.prototype; return true",
    )
    .await;
    w.wait_for("the stream", LONG, "return document.querySelectorAll('#streams [data-stream-id]').length === 1").await;
    w.eval("document.querySelector('#streams [data-stream-id] button').click(); return true").await;
    let text = w
        .wait_for(
            "the cannot-connect message",
            Duration::from_secs(25),
            "const o = document.getElementById('player-overlay'); return !o.hidden && o.dataset.reason === 'ice' && o.innerText",
        )
        .await;
    let text = text.as_str().unwrap();
    assert!(text.contains("Could not reach the broadcaster"), "{text}");
    assert!(text.contains("TURN servers: none configured"), "{text}");
    assert_eq!(
        w.eval("return document.getElementById('status').textContent.trim()").await,
        "Cannot reach the broadcaster"
    );
    println!("screenshot {}", w.screenshot("no-path").await.display());
    let _ = std::fs::remove_dir_all(&dir);
}
