//! Recorder high availability, black-box: two recorders on one cluster share the live streams
//! through leases. Exactly one records a broadcast at any time; SIGKILL it and the other
//! continues in a new part within 5 s; a recorder that drains (SIGTERM) hands the stream over;
//! every part is closed in the catalog and decodes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_proto::v1::recorder_client::RecorderClient;
use onair_tests::browser::Browser;
use onair_tests::cluster::Cluster;
use onair_tests::registry::recordings_of;
use onair_tests::{Onair, media, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// Which of `recorders` record `stream` now (by index); asserts it is never more than one.
async fn holders(recorders: &[Onair], stream: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in recorders.iter().enumerate() {
        let Ok(mut c) = RecorderClient::connect(r.grpc_url()).await else { continue };
        let Ok(list) = c.list_active(pb::ListActiveRequest {}).await else { continue };
        if list.into_inner().recordings.iter().any(|rec| rec.stream_id == stream) {
            out.push(i);
        }
    }
    assert!(out.len() <= 1, "stream {stream} recorded by {out:?} at once");
    out
}

/// Waits until exactly the recorder `want` (or any, if `None`) records `stream`; returns it.
async fn wait_holder(recorders: &[Onair], stream: &str, want: Option<usize>, within: Duration) -> usize {
    let start = Instant::now();
    while start.elapsed() < within {
        let h = holders(recorders, stream).await;
        if let Some(&i) = h.first()
            && want.is_none_or(|w| w == i)
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no recorder ({want:?}) took stream {stream} within {within:?}");
}

/// The stream's recordings, oldest first.
async fn parts(url: &str, stream: &str) -> Vec<pb::Recording> {
    let mut recs = recordings_of(url, stream).await;
    recs.sort_by_key(|r| r.started_at.map(|t| (t.seconds, t.nanos)));
    recs
}

#[tokio::test]
async fn a_second_recorder_continues_the_broadcast_when_the_first_dies_or_drains() {
    let mut c = Cluster::start_with(1, false, false).await;
    c.add_recorder("rec-a").await;
    c.add_recorder("rec-b").await;
    let reg = c.registry.grpc_url();
    let base = format!("http://127.0.0.1:{}", c.gateways[0].http);
    let b = Browser::start("ha-broadcaster").await;
    let sid = b.go_live(&base, "Highly available").await;

    // One recorder takes it; its part holds media.
    let first = wait_holder(&c.recorders, &sid, None, LONG).await;
    let has_media = |n: usize| {
        let (reg, sid) = (reg.clone(), sid.clone());
        async move { parts(&reg, &sid).await.get(n).is_some_and(|r| r.bytes > 20_000) }
    };
    wait_until(LONG, "the first part to hold media", || has_media(0)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(holders(&c.recorders, &sid).await, vec![first], "still the same recorder");

    // SIGKILL: the other recorder claims the stream once the lease expires, and records on.
    let second = 1 - first;
    c.recorders[first].proc.kill();
    let killed = Instant::now();
    wait_holder(&c.recorders, &sid, Some(second), Duration::from_secs(10)).await;
    let claimed = killed.elapsed();
    wait_until(LONG, "the second part to hold media", || has_media(1)).await;
    let media_again = killed.elapsed();
    println!(
        "after SIGKILL: claimed by the other recorder in {claimed:?}, media in the new part after {media_again:?}"
    );
    assert!(claimed < Duration::from_secs(5), "the stream was claimed {claimed:?} after its recorder died");

    // The killed recorder comes back: it does not take the stream back (it is held).
    c.recorders[first].restart().await;
    c.recorders[first].wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holders(&c.recorders, &sid).await, vec![second], "the returning recorder took the stream back");

    // SIGTERM: the draining recorder finalizes its part and hands the stream over.
    let term = Instant::now();
    let code = c.recorders[second].proc.terminate(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "the draining recorder's exit");
    wait_holder(&c.recorders, &sid, Some(first), Duration::from_secs(10)).await;
    let handed = term.elapsed();
    wait_until(LONG, "the third part to hold media", || has_media(2)).await;
    println!("after SIGTERM: the other recorder took over {handed:?} after the signal");

    b.stop_broadcast().await;
    wait_until(LONG, "every part to be closed", || async {
        let p = parts(&reg, &sid).await;
        p.len() == 3 && p.iter().all(|r| r.state() != pb::RecordingState::Recording)
    })
    .await;
    let p = parts(&reg, &sid).await;
    for (i, r) in p.iter().enumerate() {
        assert_eq!(r.state(), pb::RecordingState::Complete, "part {i}: {r:?}");
        let path = c.recordings.join(&r.file_name);
        let (errors, frames) = media::decode(&path);
        println!("part {i}: {} bytes, {} ms, {frames} frames, note {:?}", r.bytes, r.duration_ms, r.error);
        assert!(frames > 10, "part {i} decodes to only {frames} frames ({errors})");
    }
    assert!(p[0].error.contains("continues in the next part"), "the lost part says so: {:?}", p[0]);
    assert!(p[1].error.is_empty() && p[2].error.is_empty(), "{p:?}");

    // The recordings page says which part is which.
    b.goto(&format!("{base}/recordings")).await;
    let labels = b
        .wait_for(
            "the parts' labels on /recordings",
            LONG,
            "const l = [...document.querySelectorAll('.js-part:not([hidden])')].map(e => e.textContent); \
             return l.length === 3 ? l : null",
        )
        .await;
    println!("recordings page: {labels} ({})", b.screenshot("recordings-parts").await.display());
    assert_eq!(labels, serde_json::json!(["Part 3 of 3", "Part 2 of 3", "Part 1 of 3"]), "newest first");
}
