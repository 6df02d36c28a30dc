//! A rolling restart (what `kubectl rollout restart` does): both gateways of a cluster behind
//! nginx are SIGTERMed one after the other, each started again before the next goes, during a
//! broadcast relayed to a watcher and recorded. Each gateway closes its sockets with 1012; the
//! pages resume on the other gateway with their peer ids; the stream never ends, the watcher's
//! video keeps playing, and the recording is one unbroken file.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::browser::{Browser, watch};
use onair_tests::cluster::Cluster;
use onair_tests::registry::{assert_fits, duration_bounds, finished_recording, recordings_of};
use onair_tests::{Onair, media, procs};
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

async fn gateway_sockets(g: &Onair) -> u64 {
    g.metric("onair_gateway_sockets").await
}

/// Where the watcher's video is (seconds).
async fn played(w: &Browser) -> f64 {
    w.eval("return document.getElementById('player').currentTime").await.as_f64().unwrap()
}

async fn stream_state(c: &Cluster, id: &str) -> pb::StreamState {
    let mut reg = onair_tests::registry::client(&c.registry.grpc_url()).await;
    let s = reg.get_stream(pb::GetStreamRequest { id: id.into() }).await.unwrap().into_inner();
    s.state()
}

#[tokio::test]
async fn a_rolling_restart_of_both_gateways_ends_no_stream_and_breaks_no_recording() {
    let mut c = Cluster::start_with(2, true, true).await;
    c.add_relay("relay-0").await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("rolling-broadcaster").await;
    let sid = b.go_live(&base, "Rolling").await;
    let live_at = Instant::now();
    let w = Browser::start("rolling-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    watch(&w, "Rolling").await;
    let pages = [&b, &w];
    let mut peers = Vec::new();
    for p in pages {
        peers.push(p.eval("return window.onair.state.peerId").await);
        p.eval(
            "window.__sessions = []; window.onair.socket.on('session', (s) => window.__sessions.push(s)); return true",
        )
        .await;
    }

    for g in 0..2 {
        let other = 1 - g;
        let before = played(&w).await;
        let started = Instant::now();
        let code = c.gateways[g].proc.terminate(Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "gateway {g} should drain and exit 0 on SIGTERM");
        // Every socket is now on the other gateway, resumed (same peer id, one welcome each).
        procs::wait_until(LONG, "both pages on the other gateway", || async {
            gateway_sockets(&c.gateways[other]).await == 2
        })
        .await;
        for p in pages {
            p.wait_for("the page back online", LONG, "return window.onair.state.socket === 'online'").await;
        }
        let resumed = started.elapsed();
        println!("gateway {g} SIGTERMed: both pages on gateway {other} after {resumed:?}");
        assert!(resumed < Duration::from_secs(5), "resuming took {resumed:?}");
        for (p, peer) in pages.iter().zip(&peers) {
            let sessions = p.eval("return window.__sessions").await;
            for s in sessions.as_array().unwrap() {
                assert_eq!(s, &json!({"peerId": peer, "resumed": true}), "a page lost its session: {sessions}");
            }
        }
        assert_eq!(stream_state(&c, &sid).await, pb::StreamState::Live, "the stream ended during the restart");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = played(&w).await;
        assert!(after > before + 1.0, "the watcher's video stalled across the restart ({before} → {after})");
        c.gateways[g].restart().await;
        c.gateways[g].wait_ready().await;
    }

    // Past every presence TTL the stream is the same one, live, with one recording still going.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stream_state(&c, &sid).await, pb::StreamState::Live);
    assert_eq!(b.eval("return document.getElementById('status').textContent.trim()").await, "Live");
    let reg = c.registry.grpc_url();
    assert_eq!(recordings_of(&reg, &sid).await.len(), 1, "the recording broke into parts");
    b.stop_broadcast().await;
    let bounds = duration_bounds(&reg, &sid, live_at).await;
    let rec = finished_recording(&reg, &sid, LONG).await;
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    let probe = media::probe(&c.recordings.join(&rec.file_name));
    assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
    assert_fits(media::duration(&probe).expect("a duration"), bounds);
}
