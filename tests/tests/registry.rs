//! Black-box tests of the stream registry over gRPC, against real processes:
//! the same contract on the MongoDB store and on the embedded store, the change
//! feed across replicas, MongoDB outages, persistence and retention.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use onair_tests::{Mongo, Onair, Redis, registry::client, wait_until};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

type Client = StreamRegistryClient<Channel>;

fn create(title: &str, peer: &str) -> pb::CreateStreamRequest {
    pb::CreateStreamRequest {
        title: title.into(),
        broadcaster: peer.into(),
        node: "gw-test".into(),
        ..Default::default()
    }
}

fn list(state: pb::StreamState, page_size: u32, page_token: &str) -> pb::ListStreamsRequest {
    pb::ListStreamsRequest { state: state.into(), page_size, page_token: page_token.into() }
}

fn recording(id: &str, stream_id: &str) -> pb::Recording {
    pb::Recording {
        id: id.into(),
        stream_id: stream_id.into(),
        file_name: format!("{id}.webm"),
        title: "rec".into(),
        ..Default::default()
    }
}

async fn code_of<T: std::fmt::Debug>(fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Code {
    fut.await.expect_err("call should fail").code()
}

/// The behaviour every store must show, through the public gRPC API.
async fn contract(mut c: Client) {
    // create + get
    let s = c.create_stream(create("  Morning show ", "peer-a")).await.unwrap().into_inner();
    assert_eq!(s.title, "Morning show");
    assert_eq!(s.state(), pb::StreamState::Live);
    assert_eq!((s.broadcaster.as_str(), s.node.as_str()), ("peer-a", "gw-test"));
    assert!(s.started_at.is_some() && s.ended_at.is_none());
    let got = c.get_stream(pb::GetStreamRequest { id: s.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, s);

    // one live stream per broadcaster
    assert_eq!(code_of(c.create_stream(create("again", "peer-a"))).await, Code::AlreadyExists);

    // bad arguments
    for bad in
        [create("", "p1"), create("   ", "p1"), create(&"x".repeat(201), "p1"), create("t", ""), create("t", "a/b")]
    {
        assert_eq!(code_of(c.create_stream(bad)).await, Code::InvalidArgument);
    }
    assert_eq!(code_of(c.get_stream(pb::GetStreamRequest { id: "no-such".into() })).await, Code::NotFound);
    assert_eq!(code_of(c.get_stream(pb::GetStreamRequest { id: String::new() })).await, Code::InvalidArgument);
    assert_eq!(code_of(c.list_streams(list(pb::StreamState::Unspecified, 101, ""))).await, Code::InvalidArgument);
    assert_eq!(code_of(c.list_streams(list(pb::StreamState::Unspecified, 5, "garbage"))).await, Code::InvalidArgument);
    let bad_state = pb::ListStreamsRequest { state: 42, ..Default::default() };
    assert_eq!(code_of(c.list_streams(bad_state)).await, Code::InvalidArgument);

    // paging: 25 more streams, newest first, no duplicates, no gaps
    let mut ids = vec![s.id.clone()];
    for i in 0..25 {
        ids.push(c.create_stream(create(&format!("s{i}"), &format!("peer-{i}"))).await.unwrap().into_inner().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c.list_streams(list(pb::StreamState::Live, 10, &token)).await.unwrap().into_inner();
        pages += 1;
        seen.extend(page.streams.iter().map(|s| s.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, every stream exactly once");
    let default_page = c.list_streams(list(pb::StreamState::Unspecified, 0, "")).await.unwrap().into_inner();
    assert_eq!(default_page.streams.len(), 20);

    // end twice: idempotent
    let ended = c.end_stream(pb::EndStreamRequest { id: s.id.clone() }).await.unwrap().into_inner();
    assert_eq!(ended.state(), pb::StreamState::Ended);
    assert!(ended.ended_at.is_some());
    let again = c.end_stream(pb::EndStreamRequest { id: s.id.clone() }).await.unwrap().into_inner();
    assert_eq!(again, ended);
    assert_eq!(code_of(c.end_stream(pb::EndStreamRequest { id: "nope".into() })).await, Code::NotFound);
    let ended_only = c.list_streams(list(pb::StreamState::Ended, 0, "")).await.unwrap().into_inner();
    assert_eq!(ended_only.streams.iter().map(|s| &s.id).collect::<Vec<_>>(), vec![&s.id]);
    // the broadcaster may go live again once its stream ended
    c.create_stream(create("back", "peer-a")).await.unwrap();

    // at most --max-live-per-subject (default 3) live streams per owner, which the stream keeps
    let owned = |i: u32| pb::CreateStreamRequest { owner: "owner-o".into(), ..create("owned", &format!("peer-o{i}")) };
    for i in 0..3 {
        assert_eq!(c.create_stream(owned(i)).await.unwrap().into_inner().owner, "owner-o");
    }
    let full = c.create_stream(owned(3)).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("\"owner-o\" already has 3 live streams"), "{}", full.message());

    // viewers
    let live_id = ids[0].clone();
    let v = c.set_viewers(pb::SetViewersRequest { id: live_id.clone(), viewers: 7 }).await.unwrap().into_inner();
    assert_eq!(v.viewers, 7);

    // recordings
    let r = c
        .add_recording(pb::AddRecordingRequest { recording: Some(recording("rec-1", &live_id)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), pb::RecordingState::Recording);
    assert_eq!(
        code_of(c.add_recording(pb::AddRecordingRequest { recording: Some(recording("rec-1", &live_id)) })).await,
        Code::AlreadyExists
    );
    let mut traversal = recording("rec-2", &live_id);
    traversal.file_name = "../../etc/passwd".into();
    assert_eq!(
        code_of(c.add_recording(pb::AddRecordingRequest { recording: Some(traversal) })).await,
        Code::InvalidArgument
    );
    assert_eq!(code_of(c.add_recording(pb::AddRecordingRequest { recording: None })).await, Code::InvalidArgument);
    let done = c
        .update_recording(pb::UpdateRecordingRequest {
            id: "rec-1".into(),
            duration_ms: Some(6000),
            bytes: Some(123_456),
            video_codec: Some("H264".into()),
            audio_codec: Some("OPUS".into()),
            state: pb::RecordingState::Complete.into(),
            error: None,
            file_name: Some("rec-1.mp4".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.duration_ms, done.bytes, done.state()), (6000, 123_456, pb::RecordingState::Complete));
    assert_eq!((done.video_codec.as_str(), done.file_name.as_str()), ("H264", "rec-1.mp4"));
    for bad in ["../rec-1.mp4", "", "a/b.mp4"] {
        let rename =
            pb::UpdateRecordingRequest { id: "rec-1".into(), file_name: Some(bad.into()), ..Default::default() };
        assert_eq!(code_of(c.update_recording(rename)).await, Code::InvalidArgument, "{bad:?}");
    }
    let unknown = pb::UpdateRecordingRequest { id: "rec-x".into(), ..Default::default() };
    assert_eq!(code_of(c.update_recording(unknown)).await, Code::NotFound);
    assert_eq!(c.get_recording(pb::GetRecordingRequest { id: "rec-1".into() }).await.unwrap().into_inner(), done);
    c.add_recording(pb::AddRecordingRequest { recording: Some(recording("rec-3", &ids[1])) }).await.unwrap();
    let all = c.list_recordings(pb::ListRecordingsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.recordings.len(), 2);
    let of_stream = c
        .list_recordings(pb::ListRecordingsRequest { stream_id: live_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_stream.recordings.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["rec-1"]);
    let one =
        c.list_recordings(pb::ListRecordingsRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(one.recordings.len(), 1);
    let two = c
        .list_recordings(pb::ListRecordingsRequest {
            page_size: 1,
            page_token: one.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.recordings.len(), 1);
    assert_ne!(one.recordings[0].id, two.recordings[0].id);
    assert!(two.next_page_token.is_empty());

    // a caller-chosen id (signaling picks it) is kept; taken or malformed ids are refused
    let chosen = pb::CreateStreamRequest { id: "chosen-id-1".into(), ..create("chosen", "peer-chosen") };
    assert_eq!(c.create_stream(chosen).await.unwrap().into_inner().id, "chosen-id-1");
    let taken = pb::CreateStreamRequest { id: "chosen-id-1".into(), ..create("taken", "peer-other") };
    assert_eq!(code_of(c.create_stream(taken)).await, Code::AlreadyExists);
    for bad in ["..", "a/b", "has space"] {
        let req = pb::CreateStreamRequest { id: bad.into(), ..create("bad id", "peer-bad") };
        assert_eq!(code_of(c.create_stream(req)).await, Code::InvalidArgument, "id {bad:?}");
    }
}

async fn mongo_registry(mongo: &Mongo, redis: &Redis, name: &str, extra: &[&str]) -> Onair {
    let uri = mongo.uri();
    let url = redis.url();
    let mut args = vec!["--target", "registry", "--store", "mongodb", "--mongodb-uri", &uri, "--redis-url", &url];
    args.extend_from_slice(extra);
    Onair::start(name, &args).await
}

#[tokio::test]
async fn registry_contract_on_mongodb() {
    let (mongo, redis) = (Mongo::start().await, Redis::start().await);
    let reg = mongo_registry(&mongo, &redis, "registry-mongo", &[]).await;
    contract(client(&reg.grpc_url()).await).await;
    // Metrics count calls by method and code.
    let (status, body) = reg.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"onair_grpc_server_handled_total{method="onair.v1.StreamRegistry/CreateStream",code="OK"}"#),
        "{body}"
    );
    assert!(body.contains(r#"code="ALREADY_EXISTS""#));
    assert!(body.contains("onair_grpc_server_handling_seconds_bucket"));
}

#[tokio::test]
async fn registry_contract_on_embedded_store() {
    let dir = tempdir();
    let data = dir.to_str().unwrap();
    let reg = Onair::start(
        "registry-embedded",
        &["--target", "all", "--store", "embedded", "--data-dir", data, "--auto-record", "false"],
    )
    .await;
    contract(client(&reg.grpc_url()).await).await;
}

#[tokio::test]
async fn registry_contract_on_memory_store() {
    let reg = Onair::start(
        "registry-memory",
        &["--target", "all", "--store", "memory", "--data-dir", "/nonexistent", "--auto-record", "false"],
    )
    .await;
    contract(client(&reg.grpc_url()).await).await;
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("onair-test-{}-{}", std::process::id(), onair_tests::free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn embedded_store_keeps_catalog_across_restart() {
    let dir = tempdir();
    let data = dir.to_str().unwrap();
    let mut reg = Onair::start("registry-restart", &["--target", "all", "--data-dir", data]).await;
    let mut c = client(&reg.grpc_url()).await;
    let live = c.create_stream(create("survives", "p-live")).await.unwrap().into_inner();
    let ended = c.create_stream(create("ended", "p-ended")).await.unwrap().into_inner();
    let ended = c.end_stream(pb::EndStreamRequest { id: ended.id }).await.unwrap().into_inner();
    c.add_recording(pb::AddRecordingRequest { recording: Some(recording("r-keep", &live.id)) }).await.unwrap();
    assert_eq!(reg.proc.terminate(Duration::from_secs(10)).await, Some(0), "clean exit on SIGTERM");
    reg.restart().await;
    let mut c = client(&reg.grpc_url()).await;
    assert_eq!(c.get_stream(pb::GetStreamRequest { id: live.id.clone() }).await.unwrap().into_inner(), live);
    assert_eq!(c.get_stream(pb::GetStreamRequest { id: ended.id.clone() }).await.unwrap().into_inner(), ended);
    let r = c.get_recording(pb::GetRecordingRequest { id: "r-keep".into() }).await.unwrap().into_inner();
    assert_eq!(r.stream_id, live.id);
    // and a SIGKILL loses nothing that was acknowledged
    let after = c.create_stream(create("after kill", "p-kill")).await.unwrap().into_inner();
    reg.proc.kill();
    reg.restart().await;
    let mut c = client(&reg.grpc_url()).await;
    assert_eq!(c.get_stream(pb::GetStreamRequest { id: after.id.clone() }).await.unwrap().into_inner(), after);
}

async fn next_event(s: &mut tonic::Streaming<pb::StreamEvent>) -> pb::stream_event::Event {
    let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("no stream event within 5 s")
        .expect("watch stream ended")
        .expect("watch stream failed");
    ev.event.expect("event without payload")
}

#[tokio::test]
async fn two_replicas_racing_to_create_a_broadcasters_stream_make_one_live_stream() {
    let (mongo, redis) = (Mongo::start().await, Redis::start().await);
    let replicas = [
        mongo_registry(&mongo, &redis, "registry-race-1", &[]).await,
        mongo_registry(&mongo, &redis, "registry-race-2", &[]).await,
    ];
    for r in &replicas {
        r.proc.wait_output("mongodb indexes ready", Duration::from_secs(10)).await;
    }
    let clients = [client(&replicas[0].grpc_url()).await, client(&replicas[1].grpc_url()).await];
    for round in 0..5 {
        let peer = format!("racer-{round}");
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..16 {
            let mut c = clients[i % 2].clone();
            let req = create(&format!("race {round}.{i}"), &peer);
            calls.spawn(async move { c.create_stream(req).await.map_err(|e| (e.code(), e.message().to_owned())) });
        }
        let mut live = 0;
        while let Some(r) = calls.join_next().await {
            match r.unwrap() {
                Ok(_) => live += 1,
                Err((Code::AlreadyExists, m)) => assert_eq!(m, format!("{peer} already has a live stream")),
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(live, 1, "round {round}: {live} live streams for one broadcaster");
    }
}

#[tokio::test]
async fn watch_streams_sees_changes_made_through_another_replica() {
    let (mongo, redis) = (Mongo::start().await, Redis::start().await);
    let r1 = mongo_registry(&mongo, &redis, "registry-1", &[]).await;
    let r2 = mongo_registry(&mongo, &redis, "registry-2", &[]).await;
    let mut c1 = client(&r1.grpc_url()).await;
    let mut c2 = client(&r2.grpc_url()).await;
    let before = c1.create_stream(create("already live", "p0")).await.unwrap().into_inner();

    let mut watch = c2.watch_streams(pb::WatchStreamsRequest {}).await.unwrap().into_inner();
    match next_event(&mut watch).await {
        pb::stream_event::Event::Snapshot(snap) => assert_eq!(snap.streams, vec![before.clone()]),
        other => panic!("first event must be the snapshot, got {other:?}"),
    }
    let t0 = Instant::now();
    let s = c1.create_stream(create("via replica 1", "p1")).await.unwrap().into_inner();
    match next_event(&mut watch).await {
        pb::stream_event::Event::Started(got) => assert_eq!(got, s),
        other => panic!("expected started, got {other:?}"),
    }
    let latency = t0.elapsed();
    c1.set_viewers(pb::SetViewersRequest { id: s.id.clone(), viewers: 3 }).await.unwrap();
    match next_event(&mut watch).await {
        pb::stream_event::Event::Updated(got) => assert_eq!(got.viewers, 3),
        other => panic!("expected updated, got {other:?}"),
    }
    c1.end_stream(pb::EndStreamRequest { id: s.id.clone() }).await.unwrap();
    match next_event(&mut watch).await {
        pb::stream_event::Event::Ended(got) => assert_eq!((got.state(), got.id), (pb::StreamState::Ended, s.id)),
        other => panic!("expected ended, got {other:?}"),
    }
    println!("cross-replica change latency: {latency:?}");
    assert!(latency < Duration::from_secs(1), "change took {latency:?}");
}

#[tokio::test]
async fn watch_streams_resyncs_after_redis_restart() {
    let (mongo, mut redis) = (Mongo::start().await, Redis::start().await);
    let r1 = mongo_registry(&mongo, &redis, "registry-a", &[]).await;
    let mut c = client(&r1.grpc_url()).await;
    let mut watch = c.watch_streams(pb::WatchStreamsRequest {}).await.unwrap().into_inner();
    assert!(matches!(next_event(&mut watch).await, pb::stream_event::Event::Snapshot(_)));
    redis.restart().await;
    // After the bus reconnects, the watcher gets a fresh snapshot, then live changes again.
    match next_event(&mut watch).await {
        pb::stream_event::Event::Snapshot(_) => {}
        other => panic!("expected a resync snapshot, got {other:?}"),
    }
    // Changes flow again once the publisher has reconnected too (bounded retries).
    for attempt in 0..20 {
        let s = c.create_stream(create("after restart", &format!("p-r{attempt}"))).await.unwrap().into_inner();
        let got = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
        if let Ok(Some(Ok(pb::StreamEvent { event: Some(pb::stream_event::Event::Started(started)) }))) = got {
            assert_eq!(started.id, s.id);
            return;
        }
    }
    panic!("no change delivered after the Redis restart");
}

#[tokio::test]
async fn mongodb_outage_is_unavailable_fast_and_recovers() {
    let (mut mongo, redis) = (Mongo::start().await, Redis::start().await);
    let reg = mongo_registry(&mongo, &redis, "registry-outage", &[]).await;
    let mut c = client(&reg.grpc_url()).await;
    wait_until(Duration::from_secs(10), "/readyz to pass", || async { reg.admin_get("/readyz").await.0 == 200 }).await;
    c.create_stream(create("before", "p1")).await.unwrap();

    mongo.proc.kill();
    let t0 = Instant::now();
    let err = c.list_streams(list(pb::StreamState::Unspecified, 0, "")).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("mongodb://"), "no raw driver text leaks: {}", err.message());
    assert!(took < Duration::from_millis(2500), "UNAVAILABLE took {took:?}");
    assert_eq!(code_of(c.create_stream(create("during", "p2"))).await, Code::Unavailable);
    let (status, body) = reg.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mongodb"), "{body}");

    mongo.restart().await;
    let back = Instant::now();
    // Bounded like wait_until, but a failure says what the last attempt got.
    let (mut recovered, mut last) = (false, None);
    while !recovered && back.elapsed() < Duration::from_secs(15) {
        match c.create_stream(create("after", "p3")).await {
            Ok(_) => recovered = true,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "no recovery 15 s after MongoDB is back; last: {last:?}");
    wait_until(Duration::from_secs(10), "/readyz to pass again", || async { reg.admin_get("/readyz").await.0 == 200 })
        .await;
    println!("UNAVAILABLE answered in {took:?}; recovered {:?} after MongoDB listened again", back.elapsed());
}

#[tokio::test]
async fn ended_streams_are_purged_after_retention() {
    let reg = Onair::start("registry-retention", &["--store", "memory", "--ended-retention", "1s"]).await;
    let mut c = client(&reg.grpc_url()).await;
    let s = c.create_stream(create("short", "p1")).await.unwrap().into_inner();
    let live = c.create_stream(create("stays", "p2")).await.unwrap().into_inner();
    c.end_stream(pb::EndStreamRequest { id: s.id.clone() }).await.unwrap();
    wait_until(Duration::from_secs(5), "the ended stream to be purged", || {
        let mut c = c.clone();
        let id = s.id.clone();
        async move { c.get_stream(pb::GetStreamRequest { id }).await.is_err_and(|e| e.code() == Code::NotFound) }
    })
    .await;
    c.get_stream(pb::GetStreamRequest { id: live.id }).await.unwrap();
}

#[tokio::test]
async fn health_protocol_and_admin_endpoints() {
    let reg = Onair::start("registry-health", &["--store", "memory"]).await;
    assert_eq!(reg.admin_get("/healthz").await.0, 200);
    wait_until(Duration::from_secs(5), "/readyz 200", || async { reg.admin_get("/readyz").await.0 == 200 }).await;
    let channel = Channel::from_shared(reg.grpc_url()).unwrap().connect().await.unwrap();
    let mut health = onair_tests::health::HealthClient::new(channel);
    wait_until(Duration::from_secs(5), "gRPC health SERVING", || {
        let mut h = health.clone();
        async move { h.check("onair.v1.StreamRegistry").await.ok() == Some(1) }
    })
    .await;
    assert_eq!(health.check("").await.ok(), Some(1));
}

#[tokio::test]
async fn reflection_only_client_lists_services_and_calls_list_streams() {
    let reg = Onair::start("registry-reflection", &["--store", "memory"]).await;
    let python = onair_tests::tools_dir().join("venv/bin/python");
    let script = onair_tests::tests_dir().join("reflection_client.py");
    let out =
        tokio::process::Command::new(python).arg(script).arg(format!("127.0.0.1:{}", reg.grpc)).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("onair.v1.StreamRegistry"), "{stdout}");
    assert!(stdout.contains("grpc.health.v1.Health"), "{stdout}");
    assert!(stdout.contains("via reflection"), "{stdout}");
}

#[tokio::test]
async fn sigterm_is_not_held_by_a_client_that_stopped_answering() {
    use tokio::io::AsyncWriteExt;
    let mut reg = Onair::start("registry-stalled-client", &["--store", "memory", "--auto-record", "false"]).await;
    // An HTTP/2 connection whose client then goes silent: it never acknowledges the server's
    // SETTINGS nor the PING that comes with a graceful GOAWAY, as a stalled or partitioned peer would.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", reg.grpc)).await.unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    client(&reg.grpc_url()).await.list_streams(list(pb::StreamState::Unspecified, 0, "")).await.unwrap();

    let t0 = Instant::now();
    let code = reg.proc.terminate(Duration::from_secs(20)).await;
    let took = t0.elapsed();
    println!("exited {code:?} {took:?} after SIGTERM with a silent client connected");
    assert_eq!(code, Some(0), "exit code after SIGTERM (None = still running after 20 s)");
    // The default grace is 25 s: the connection drain (3 s) bounds it, not the grace.
    assert!(took < Duration::from_secs(6), "SIGTERM took {took:?} with a silent client connected");
    drop(stalled);
}
