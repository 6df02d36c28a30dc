//! Watch click → first decoded frame, onair against the least a watch can cost, in one run (issue 13):
//! the baseline is `bench/signaling/firstframe.js`, one socket.io process and two bare pages doing the
//! same exchange peer to peer; onair runs as the cluster does in production, two gateways behind
//! nginx, first peer to peer (no relay up) and then through a relay. Chromium with the fake camera on
//! both sides, five watches each, timed in the watcher's page the same way.
//!
//! `ONAIR_BIN=$CARGO_TARGET_DIR/release/onair $CARGO_TARGET_DIR/release/firstframe` (`make bench`;
//! needs `npm ci --prefix bench/signaling`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use onair_tests::browser::{Browser, p50, watch};
use onair_tests::cluster::{Cluster, repo_root};
use onair_tests::procs::{Proc, free_port, wait_port};

const WATCHES: usize = 5;
const TITLE: &str = "First frame";

async fn fixture() -> Vec<f64> {
    let port = free_port();
    let script = repo_root().join("bench/signaling/firstframe.js").display().to_string();
    let _server = Proc::spawn("firstframe-fixture", "node", vec![script], vec![("PORT".into(), port.to_string())]);
    wait_port(port, "the first-frame fixture").await;
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::start("ff-fixture-broadcaster").await;
    b.goto(&format!("{base}/broadcast")).await;
    b.wait_for("the fixture's camera", Duration::from_secs(20), "return window.ready === true").await;
    let w = Browser::start("ff-fixture-watcher").await;
    w.goto(&format!("{base}/watch")).await;
    w.wait_for("the fixture's socket", Duration::from_secs(20), "return window.ready === true").await;
    let mut times = Vec::new();
    for _ in 0..WATCHES {
        w.eval("watch(); return true").await;
        let first = w.wait_for("the fixture's first frame", Duration::from_secs(20), "return window.__first").await;
        times.push(first.as_f64().unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    times
}

async fn onair(relay: bool) -> Vec<f64> {
    let mut c = Cluster::start_with(2, true, false).await;
    if relay {
        c.add_relay("ff-relay").await;
    }
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("ff-onair-broadcaster").await;
    b.go_live(&base, TITLE).await;
    if relay {
        let uploads_once = "return document.getElementById('media-mode').textContent.includes('relay')";
        b.wait_for("the broadcast to go through the relay", Duration::from_secs(20), uploads_once).await;
    }
    let w = Browser::start("ff-onair-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    let mut times = Vec::new();
    for i in 0..WATCHES {
        if i > 0 {
            w.eval("document.getElementById('leave').click(); return true").await;
            w.wait_for("the player to stop", Duration::from_secs(20), "return document.getElementById('stage').hidden")
                .await;
        }
        times.push(watch(&w, TITLE).await);
    }
    times
}

fn row(stack: &str, times: &[f64], baseline: f64) {
    let p = p50(times.to_vec());
    let all: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    println!("| {stack} | {} | {p:.0} | {:.2}× |", all.join(", "), p / baseline);
}

#[tokio::main]
async fn main() {
    assert!(
        repo_root().join("bench/signaling/node_modules").exists(),
        "run `npm ci --prefix bench/signaling` first (make bench does)"
    );
    let base = fixture().await;
    let p2p = onair(false).await;
    let relay = onair(true).await;
    let baseline = p50(base.clone());
    println!(
        "\n### Watch click → first decoded frame (Chromium, fake camera, {WATCHES} watches each, same run; {} cores)\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("| stack | watches (ms) | p50 ms | p50 / baseline |");
    println!("|---|---|---|---|");
    row("baseline: one socket.io process, two bare pages, peer to peer", &base, baseline);
    row("onair: nginx + 2 gateways, peer to peer", &p2p, baseline);
    row("onair: nginx + 2 gateways, through the relay", &relay, baseline);
}
