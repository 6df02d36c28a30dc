//! The live list at scale: a socket opening while 10 000 streams are live gets the newest 200 and
//! the total (kilobytes, not megabytes); `/api/streams` pages through the rest without gaps or
//! repeats; the watcher page shows "Show more" and loads the next page.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::Onair;
use onair_tests::ws::Ws;
use serde_json::Value;

/// Creates `n` live streams through the registry API (as many broadcasters would), 16 at a time.
async fn create_streams(gw: &Onair, n: usize) {
    let client = onair_tests::registry::client(&gw.grpc_url()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut c = client.clone();
        tasks.spawn(async move {
            for i in (worker..n).step_by(16) {
                let req = pb::CreateStreamRequest {
                    title: format!("stream {i}"),
                    broadcaster: format!("bcaster-{i}"),
                    node: "gw".into(),
                    ..Default::default()
                };
                c.create_stream(req).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn api_streams(gw: &Onair, query: &str) -> Value {
    let (status, body) = gw.http_get(&format!("/api/streams{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn wait_total(gw: &Onair, n: u64) {
    let start = Instant::now();
    while api_streams(gw, "?limit=1").await["total"].as_u64() != Some(n) {
        assert!(start.elapsed() < Duration::from_secs(30), "the gateway's list never reached {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ten_thousand_live_streams_reach_a_new_socket_as_kilobytes_and_page_without_gaps() {
    // A long presence TTL: these streams have no broadcaster peer, which the orphan sweep would end.
    let gw = Onair::start(
        "lists",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--presence-ttl", "120s"],
    )
    .await;
    let t0 = Instant::now();
    create_streams(&gw, 10_000).await;
    println!("10 000 streams created in {:?}", t0.elapsed());
    wait_total(&gw, 10_000).await;

    let ws = Ws::connect(gw.http).await;
    let frame = ws.streams_frame.to_string();
    assert_eq!(ws.initial_streams.len(), 200);
    assert_eq!(ws.streams_frame["total"], 10_000);
    assert!(frame.len() < 100 * 1024, "the streams frame is {} bytes", frame.len());
    println!("streams frame with 10 000 live: {} bytes", frame.len());

    let mut seen = HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let q = if cursor.is_empty() { "?limit=500".to_owned() } else { format!("?limit=500&cursor={cursor}") };
        let page = api_streams(&gw, &q).await;
        pages += 1;
        for s in page["streams"].as_array().unwrap() {
            assert!(seen.insert(s["id"].as_str().unwrap().to_owned()), "{} listed twice", s["id"]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
        assert!(pages <= 20, "paging does not end");
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(pages, 20);

    let (status, body) = gw.http_get("/api/streams?limit=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = gw.http_get("/api/streams?cursor=garbage").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_burst_of_streams_going_live_reaches_a_socket_in_a_few_frames() {
    let gw = Onair::start(
        "lists-burst",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--presence-ttl", "120s"],
    )
    .await;
    let mut observer = Ws::connect(gw.http).await;
    let before = observer.messages;
    let n = 150;
    create_streams(&gw, n).await;
    let mut on = HashSet::new();
    while on.len() < n {
        let f = observer.next(Duration::from_secs(10)).await.expect("every stream_on in time");
        if f["type"] == "stream_on" {
            on.insert(f["stream"]["id"].as_str().unwrap().to_owned());
        }
        // A snapshot replaces the list (the gateway resyncs when its registry feed had a gap, as
        // under CI load, or when changes overflow a batch): it counts for the streams it holds.
        if f["type"] == "streams" {
            for s in f["streams"].as_array().unwrap() {
                on.insert(s["id"].as_str().unwrap().to_owned());
            }
        }
    }
    let messages = observer.messages - before;
    println!("{n} streams going live reached a socket in {messages} messages ({} batches)", observer.batches);
    assert!(observer.batches > 0, "nothing was coalesced");
    assert!(messages <= n / 3, "{n} list changes took {messages} messages");
}

#[tokio::test]
async fn the_watcher_page_shows_more_on_demand() {
    use onair_tests::browser::Browser;
    let gw = Onair::start(
        "lists-page",
        &["--store", "memory", "--media", "p2p", "--auto-record", "false", "--presence-ttl", "120s"],
    )
    .await;
    create_streams(&gw, 230).await;
    wait_total(&gw, 230).await;
    let w = Browser::start("lists-watcher").await;
    w.goto(&format!("http://127.0.0.1:{}/watcher", gw.http)).await;
    let long = Duration::from_secs(20);
    let cards = "return document.querySelectorAll('#streams [data-stream-id]').length";
    w.wait_for("the first 200 cards", long, &format!("{cards} === 200 || null")).await;
    let label = w.eval("return document.getElementById('streams-more-btn').textContent").await;
    assert_eq!(label, "Show more (30 more live)");
    assert_eq!(w.eval("return document.getElementById('stream-count').textContent").await, "230");
    w.eval("document.getElementById('streams-more').scrollIntoView({block: 'center'}); return true").await;
    w.screenshot("lists-more").await;
    w.eval("document.getElementById('streams-more-btn').click(); return true").await;
    w.wait_for("all 230 cards", long, &format!("{cards} === 230 || null")).await;
    assert_eq!(w.eval("return document.getElementById('streams-more').hidden").await, true);
}
