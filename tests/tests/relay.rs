//! The relay (SFU), end to end in a two-gateway cluster behind nginx: a Chromium broadcaster
//! uploads once to the relay, three Chromium watchers and the recorder receive from it; the
//! recording plays; a relay killed with SIGKILL hands its stream to the other relay.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::browser::{Browser, p50, watch};
use onair_tests::cluster::Cluster;
use onair_tests::registry::finished_recording;
use onair_tests::{Onair, media, procs, wait_until};

const LONG: Duration = Duration::from_secs(30);

async fn metric(o: &Onair, name: &str) -> u64 {
    let (_, body) = o.admin_get("/metrics").await;
    procs::metric(&body, name).unwrap_or(0)
}

/// How many peer connections the broadcast page holds (its "Connected viewers" list).
async fn broadcaster_peers(b: &Browser) -> u64 {
    b.eval("return document.querySelectorAll('#peers li').length").await.as_u64().unwrap()
}

#[tokio::test]
async fn one_upload_reaches_three_watchers_and_the_recorder_through_the_relay() {
    let mut c = Cluster::start_with(2, true, true).await;
    c.add_relay("relay-0").await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("relay-broadcaster").await;
    let sid = b.go_live(&base, "Relayed").await;
    let live_at = Instant::now();
    b.wait_for(
        "the page to say it uploads once",
        LONG,
        "return document.getElementById('media-mode').textContent.includes('relay')",
    )
    .await;

    let mut watchers = Vec::new();
    for i in 0..3 {
        let w = Browser::start(&format!("relay-watcher-{i}")).await;
        w.goto(&format!("{base}/watcher")).await;
        watchers.push(w);
    }
    let firsts = futures::future::join_all(watchers.iter().map(|w| watch(w, "Relayed"))).await;
    println!("three watchers through the relay: first frame after {firsts:?} ms (p50 {:.0})", p50(firsts.clone()));

    // One upload: the broadcaster's only peer connection is the relay's; the relay forwards to
    // the three watchers and the recorder.
    assert_eq!(broadcaster_peers(&b).await, 1, "the broadcaster should hold one connection (to the relay)");
    let relay = &c.relays[0];
    wait_until(LONG, "four subscribers on the relay", || async { metric(relay, "onair_relay_subscribers").await == 4 })
        .await;
    assert!(metric(relay, "onair_relay_frames_out_total").await > 100);
    b.screenshot("relay-broadcaster").await;
    watchers[0].screenshot("relay-watcher").await;

    tokio::time::sleep(Duration::from_secs(5).saturating_sub(live_at.elapsed())).await;
    b.stop_broadcast().await;
    let reg = c.registry.grpc_url();
    let rec = finished_recording(&reg, &sid, LONG).await;
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    let path = c.recordings.join(&rec.file_name);
    let probe = media::probe(&path);
    assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
    let dur = media::duration(&probe).expect("a duration");
    assert!(dur > 2.0, "the relayed recording is only {dur:.2} s");
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(frames > 30, "only {frames} frames decoded");
    wait_until(LONG, "the relay to let go of the stream", || async {
        metric(relay, "onair_relay_streams").await == 0 && metric(relay, "onair_relay_subscribers").await == 0
    })
    .await;
}

#[tokio::test]
async fn watchers_play_again_from_the_other_relay_when_theirs_is_killed() {
    let mut c = Cluster::start_with(1, true, false).await;
    c.add_relay("relay-a").await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("failover-broadcaster").await;
    b.go_live(&base, "Failover").await;
    let w = Browser::start("failover-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    watch(&w, "Failover").await;
    c.add_relay("relay-b").await;

    // SIGKILL the relay carrying the stream: signaling's reaper notices (presence TTL 4 s) and
    // moves the stream to the other relay; the broadcaster and the watcher re-connect by themselves.
    let killed_at = Instant::now();
    c.relays[0].proc.kill();
    wait_until(Duration::from_secs(20), "the other relay to forward to the watcher", || async {
        metric(&c.relays[1], "onair_relay_subscribers").await == 1
            && metric(&c.relays[1], "onair_relay_frames_out_total").await > 30
    })
    .await;
    let now = || async { w.eval("return document.getElementById('player').currentTime").await.as_f64().unwrap() };
    let t1 = now().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t2 = now().await;
    assert!(t2 > t1, "the watcher's video does not advance after the move ({t1} → {t2})");
    println!("watcher playing again {:?} after the relay was killed", killed_at.elapsed());
    assert_eq!(broadcaster_peers(&b).await, 1);
}
