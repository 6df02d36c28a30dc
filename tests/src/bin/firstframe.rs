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

use onair_tests::browser::{Browser, leave, p50, watch};
use onair_tests::cluster::{Cluster, repo_root};
use onair_tests::procs::{Proc, free_port, wait_port};

const WATCHES: usize = 5;
const TITLE: &str = "First frame";

/// Installed in both pages before the watches: notes when each step of the watch flow happens (an
/// absolute time, so the two pages' steps line up) by wrapping the WebRTC and WebSocket calls the
/// pages make. `window.__steps` holds `[step, ms]`.
const STEPS: &str = "if (window.__stepsOn) return true; window.__stepsOn = true; window.__steps = []; \
    const note = (s) => window.__steps.push([s, performance.timeOrigin + performance.now()]); \
    const send = WebSocket.prototype.send; WebSocket.prototype.send = function (d) { \
      if (typeof d === 'string' && /\"(watch)\"/.test(d)) note('watch sent'); return send.call(this, d); }; \
    const P = RTCPeerConnection.prototype; \
    const co = P.createOffer; P.createOffer = function (...a) { note('offer created (broadcaster)'); return co.apply(this, a); }; \
    const sl = P.setLocalDescription; P.setLocalDescription = async function (...a) { const r = await sl.apply(this, a); \
      note(this.localDescription.type === 'offer' ? 'offer set (broadcaster)' : 'answer set (watcher)'); return r; }; \
    const sr = P.setRemoteDescription; P.setRemoteDescription = async function (...a) { \
      const offer = (a[0] && a[0].type) === 'offer'; if (offer) note('offer at the watcher'); const r = await sr.apply(this, a); \
      if (!offer) note('answer at the broadcaster'); \
      this.addEventListener('iceconnectionstatechange', () => { if (this.iceConnectionState === 'connected') note(offer ? 'ICE connected (watcher)' : 'ICE connected (broadcaster)'); }); \
      this.addEventListener('connectionstatechange', () => { if (this.connectionState === 'connected') note(offer ? 'DTLS connected (watcher)' : 'DTLS connected (broadcaster)'); }); \
      return r; }; return true;";

/// Clears the watcher's steps and notes the click.
const CLICK: &str = "window.__steps = [['click', performance.timeOrigin + performance.now()]]";

/// Both pages' steps of the last watch, in order, in ms after the click, with the first frame.
async fn steps(b: &Browser, w: &Browser, first: f64) -> String {
    let (sb, sw) = (b.eval("return window.__steps").await, w.eval("return window.__steps").await);
    let mut all: Vec<(String, f64)> = [sb, sw]
        .iter()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|s| Some((s[0].as_str()?.to_owned(), s[1].as_f64()?)))
        .collect();
    let click = all.iter().find(|(s, _)| s == "click").map_or(0.0, |(_, t)| *t);
    all.retain(|(s, _)| s != "click");
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut out: Vec<String> = all.iter().map(|(s, t)| format!("{s} {:.0}", t - click)).collect();
    out.push(format!("first frame {first:.0}"));
    out.join(" → ")
}

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
    for page in [&b, &w] {
        page.eval(STEPS).await;
    }
    for _ in 0..WATCHES {
        b.eval("window.__steps = []; return true").await;
        w.eval(&format!("{CLICK}; watch(); return true")).await;
        let first = w.wait_for("the fixture's first frame", Duration::from_secs(20), "return window.__first").await;
        let first = first.as_f64().unwrap();
        eprintln!("baseline: {}", steps(&b, &w, first).await);
        times.push(first);
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
    for page in [&b, &w] {
        page.eval(STEPS).await;
    }
    let mut times = Vec::new();
    for i in 0..WATCHES {
        if i > 0 {
            leave(&w).await;
        }
        b.eval("window.__steps = []; return true").await;
        w.eval(&format!("{CLICK}; return true")).await;
        let first = watch(&w, TITLE).await;
        eprintln!("onair ({}): {}", if relay { "relay" } else { "p2p" }, steps(&b, &w, first).await);
        times.push(first);
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
