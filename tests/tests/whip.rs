//! WHIP ingest and WHEP playback: the HTTP protocol with a plain client (every status code, ETag
//! and If-Match, trickle PATCH, DELETE twice, a session URL through the other gateway), auth with
//! bearer tokens, and interop with an independent WebRTC stack (GStreamer's webrtcbin) through
//! nginx: a WHIP stream is listed, watched in Chromium and recorded; a Chromium broadcast plays
//! in a WHEP player.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use onair_auth::{Grants, Minter, Scope};
use onair_proto::v1 as pb;
use onair_tests::browser::{Browser, watch};
use onair_tests::cluster::Cluster;
use onair_tests::registry::{assert_fits, finished_recording, longest_since, recording_started, shortest_since};
use onair_tests::tls::Response;
use onair_tests::whip::{GstClient, offer, post_sdp, request};
use onair_tests::{Onair, media, wait_until};
use serde_json::Value;
use str0m::media::Direction;

const LONG: Duration = Duration::from_secs(30);

fn location(r: &Response) -> String {
    r.header("location").unwrap_or_else(|| panic!("no Location: {r:?}")).to_owned()
}

async fn live_titles(port: u16) -> Vec<(String, String, u64)> {
    let (_, body) = onair_tests::procs::http_get(port, "/api/streams").await;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or("").to_owned(),
                        s["title"].as_str().unwrap_or("").to_owned(),
                        s["viewers"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn whip_and_whep_speak_http_as_the_rfcs_say_through_any_gateway() {
    let mut c = Cluster::start_with(2, true, false).await;
    let front = c.front();
    let (gw0, gw1) = (c.gateways[0].http, c.gateways[1].http);
    let publish_offer = offer(Direction::SendOnly);

    // No relay up: WebRTC media has nowhere to go.
    let r = post_sdp(front, "/whip/ProtoCam", &publish_offer, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    c.add_relay("relay-0").await;

    // Discovery and CORS.
    let r = request(front, "OPTIONS", "/whip", &[("Origin", "https://obs.example")], "").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("Authorization"));

    // Bad requests.
    let r = request(front, "POST", "/whip", &[("Content-Type", "text/plain")], "v=0").await;
    assert_eq!(r.status, 415, "{r:?}");
    let r = post_sdp(front, "/whip", "", &[]).await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = post_sdp(front, "/whip", "this is not an SDP offer", &[]).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("not an SDP offer"), "{r:?}");
    let huge = "a".repeat(100_000);
    let r = post_sdp(front, "/whip", &huge, &[]).await;
    assert_eq!(r.status, 413, "{r:?}");

    // Publish: 201 with the answer, the session URL, its ETag and the stream.
    let asked = Instant::now();
    let r = post_sdp(front, "/whip/ProtoCam", &publish_offer, &[]).await;
    let answered = asked.elapsed();
    assert_eq!(r.status, 201, "{r:?}");
    println!("WHIP POST → 201 in {answered:?}");
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert!(r.body.starts_with("v=0") && r.body.contains("a=candidate"), "{}", r.body);
    let session = location(&r);
    let answer = r.body.clone();
    assert!(session.starts_with("/session/relay-0~"), "{session}");
    let etag = r.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let stream = r.header("onair-stream-id").unwrap().to_owned();
    wait_until(LONG, "the WHIP stream in the live list", || async {
        live_titles(gw1).await.iter().any(|(id, title, _)| id == &stream && title == "ProtoCam")
    })
    .await;
    // A named channel has one publisher: a second encoder on it is told so.
    let r = post_sdp(gw1, "/whip/ProtoCam", &publish_offer, &[]).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("already live"), "{r:?}");

    // Trickle ICE through the *other* gateway: the session URL names its relay.
    let frag = "a=ice-ufrag:{U}\r\na=ice-pwd:{P}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n";
    let ufrag = publish_offer.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).unwrap().trim();
    let own = frag.replace("{U}", ufrag).replace("{P}", "x");
    let sdpfrag = ("Content-Type", "application/trickle-ice-sdpfrag");
    let r = request(gw1, "PATCH", &session, &[sdpfrag, ("If-Match", &etag)], &own).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = request(gw0, "PATCH", &session, &[sdpfrag, ("If-Match", "\"stale\"")], &own).await;
    assert_eq!(r.status, 412, "{r:?}");
    // An ICE restart: new credentials → 200, our new ones in an sdpfrag, a new ETag (RFC 9725 §4.4.1).
    let restart = frag.replace("{U}", "newufrag").replace("{P}", "newpassword");
    let r = request(gw0, "PATCH", &session, &[sdpfrag], &restart).await;
    assert_eq!(r.status, 428, "a restart without If-Match: {r:?}");
    let r = request(gw0, "PATCH", &session, &[sdpfrag, ("If-Match", "*")], &restart).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/trickle-ice-sdpfrag"), "{r:?}");
    let ours = |sdp: &str| sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).map(str::to_owned);
    assert!(ours(&r.body).is_some_and(|u| Some(&u) != ours(&answer).as_ref()), "new credentials: {r:?}");
    assert!(r.body.contains("a=ice-pwd:") && r.body.contains("a=candidate:"), "{r:?}");
    let restarted = r.header("etag").unwrap().to_owned();
    assert_ne!(restarted, etag, "a new ICE session, a new ETag");
    let r = request(gw1, "PATCH", &session, &[sdpfrag, ("If-Match", &etag)], &restart).await;
    assert_eq!(r.status, 412, "the ETag before the restart is stale: {r:?}");
    let r = request(gw1, "PATCH", &session, &[sdpfrag, ("If-Match", &restarted)], &restart).await;
    assert_eq!(r.status, 204, "trickle on the new ICE session: {r:?}");
    let r = request(gw0, "PATCH", &session, &[sdpfrag, ("If-Match", "*")], "a=ice-ufrag:third\r\n").await;
    assert_eq!(r.status, 400, "a restart without a password: {r:?}");
    let r = request(gw0, "PATCH", &session, &[("Content-Type", "application/sdp")], &own).await;
    assert_eq!(r.status, 415, "{r:?}");
    let forged = format!("{}~{}", session.rsplit_once('~').unwrap().0, "0".repeat(32));
    let r = request(gw0, "PATCH", &forged, &[sdpfrag], &own).await;
    assert_eq!(r.status, 404, "a guessed secret: {r:?}");
    for bad in ["/session/nonsense", "/session/relay-0~x~", "/session/gw-0~p~s"] {
        let r = request(gw0, "DELETE", bad, &[], "").await;
        assert_eq!(r.status, 404, "{bad}: {r:?}");
    }

    // WHEP: watch the stream with a receive-only offer; it counts as a viewer.
    let r = post_sdp(front, "/whep/no-such-stream", &offer(Direction::RecvOnly), &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = post_sdp(front, &format!("/whep/{stream}"), &offer(Direction::RecvOnly), &[]).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body.contains("a=sendonly"), "the relay sends: {}", r.body);
    let watching = location(&r);
    wait_until(LONG, "the WHEP viewer counted", || async {
        live_titles(gw0).await.iter().any(|(id, _, viewers)| id == &stream && *viewers == 1)
    })
    .await;
    assert_eq!(request(gw1, "DELETE", &watching, &[], "").await.status, 200);
    assert_eq!(request(gw0, "DELETE", &watching, &[], "").await.status, 404, "DELETE twice");
    wait_until(LONG, "the viewer gone", || async {
        live_titles(gw0).await.iter().any(|(id, _, viewers)| id == &stream && *viewers == 0)
    })
    .await;

    // DELETE ends the stream; a second DELETE finds nothing.
    assert_eq!(request(gw0, "DELETE", &session, &[], "").await.status, 200);
    assert_eq!(request(gw1, "DELETE", &session, &[], "").await.status, 404, "DELETE twice");
    wait_until(LONG, "the WHIP stream to end", || async {
        !live_titles(gw1).await.iter().any(|(id, ..)| id == &stream)
    })
    .await;
    // The registry ends the stream a moment before the directory forgets its broadcaster.
    wait_until(LONG, "WHEP of the ended stream to answer 404", || async {
        post_sdp(front, &format!("/whep/{stream}"), &offer(Direction::RecvOnly), &[]).await.status == 404
    })
    .await;

    // A flood of new sessions from one address is refused before it costs a peer or a stream.
    let mut flood = Vec::new();
    for _ in 0..15 {
        flood.push(post_sdp(gw1, "/whip/Flood", "", &[]).await);
    }
    let limited = flood.iter().find(|r| r.status == 429).unwrap_or_else(|| panic!("no 429 in {flood:?}"));
    assert!(limited.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()), "{limited:?}");
    assert!(limited.body.contains("too many new sessions"), "{limited:?}");
}

const SECRET: &str = "whip-test-auth-secret";

/// POSTs like an encoder honouring `Retry-After`: a server that just started answers 503 until its
/// relay's first load report reached signaling (up to a second); any other answer is returned.
async fn publish_once_a_relay_is_up(port: u16, path: &str, sdp: &str, extra: &[(&str, &str)]) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_sdp(port, path, sdp, extra).await;
        if r.status != 503 || Instant::now() > deadline {
            return r;
        }
        assert!(r.body.contains("no relay is up"), "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn token(grants: Grants, ttl: Duration) -> String {
    Minter::hs256(SECRET).unwrap().mint("obs", grants, ttl, SystemTime::now()).unwrap()
}

#[tokio::test]
async fn whip_needs_a_publish_grant_when_auth_is_on() {
    let o = Onair::start("whip-auth", &["--store", "memory", "--auth-secret", SECRET, "--auto-record", "false"]).await;
    let sdp = offer(Direction::SendOnly);
    let r = post_sdp(o.http, "/whip/Studio", &sdp, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.body.contains("publish grant") && r.body.contains("Authorization: Bearer"), "{}", r.body);
    let r = post_sdp(o.http, "/whip/Studio", &sdp, &[("Authorization", "Bearer e30.e30.e30")]).await;
    assert_eq!(r.status, 401, "a forged token: {r:?}");
    let watcher = token(Grants { subscribe: Some(Scope::Any), ..Grants::default() }, Duration::from_secs(60));
    let r = post_sdp(o.http, "/whip/Studio", &sdp, &[("Authorization", &format!("Bearer {watcher}"))]).await;
    assert_eq!(r.status, 403, "{r:?}");
    let other =
        token(Grants { publish: Some(Scope::Only("Other".into())), ..Grants::default() }, Duration::from_secs(60));
    let r = post_sdp(o.http, "/whip/Studio", &sdp, &[("Authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(r.status, 403, "a grant for another name: {r:?}");
    let studio =
        token(Grants { publish: Some(Scope::Only("Studio".into())), ..Grants::default() }, Duration::from_secs(60));
    let r = publish_once_a_relay_is_up(o.http, "/whip/Studio", &sdp, &[("Authorization", &format!("Bearer {studio}"))])
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let stream = r.header("onair-stream-id").unwrap().to_owned();
    let r = post_sdp(o.http, &format!("/whep/{stream}"), &offer(Direction::RecvOnly), &[]).await;
    assert_eq!(r.status, 401, "watching needs a subscribe grant: {r:?}");
    let r = post_sdp(
        o.http,
        &format!("/whep/{stream}"),
        &offer(Direction::RecvOnly),
        &[("Authorization", &format!("Bearer {watcher}"))],
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test]
async fn a_whip_publisher_past_its_live_streams_gets_429_saying_why() {
    let o = Onair::start(
        "whip-limited",
        &["--store", "memory", "--auth-secret", SECRET, "--auto-record", "false", "--max-live-per-subject", "1"],
    )
    .await;
    let obs = token(Grants { publish: Some(Scope::Any), ..Grants::default() }, Duration::from_secs(60));
    let bearer = format!("Bearer {obs}");
    let r = publish_once_a_relay_is_up(o.http, "/whip/One", &offer(Direction::SendOnly), &[("Authorization", &bearer)])
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = post_sdp(o.http, "/whip/Two", &offer(Direction::SendOnly), &[("Authorization", &bearer)]).await;
    assert_eq!(r.status, 429, "the publisher's own limit, not the server's capacity: {r:?}");
    assert!(r.body.contains("\"obs\" already has 1 live streams") && r.body.contains("end one first"), "{r:?}");
    assert!(r.header("retry-after").is_none(), "waiting alone does not free a slot: {r:?}");
}

#[tokio::test]
async fn gstreamer_publishes_over_whip_and_chromium_watches_the_recorded_stream() {
    let mut c = Cluster::start_with(2, true, true).await;
    // libnice (GStreamer) never uses loopback: the relay's media on every interface.
    c.add_relay_on("relay-0", None).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let w = Browser::start("whip-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    let gst = GstClient::start("gst-whip", "whip", &format!("{base}/whip/GstCam"), &["--seconds", "12"]);
    let created = gst.wait_event("created", LONG).await;
    let stream = created["stream_id"].as_str().unwrap().to_owned();
    assert!(!stream.is_empty(), "{created}");
    gst.wait_event("connected", LONG).await;
    let connected_at = Instant::now();

    let first = watch(&w, "GstCam").await;
    println!("Chromium watcher of a GStreamer WHIP stream: click → first frame {first:.0} ms");
    w.screenshot("whip-watcher").await;

    // The client DELETEs its session at the end: the stream ends, the recording completes.
    let deleted = gst.wait_event("deleted", LONG).await;
    assert_eq!(deleted["status"], 200, "{deleted}");
    let least = shortest_since(connected_at);
    let reg = c.registry.grpc_url();
    let rec = finished_recording(&reg, &stream, LONG).await;
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    let most = longest_since(recording_started(&reg, &stream).await);
    let path = c.recordings.join(&rec.file_name);
    let probe = media::probe(&path);
    assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
    assert_fits(media::duration(&probe).expect("a duration"), (least, most));
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(frames > 60, "only {frames} frames decoded");
}

#[tokio::test]
async fn gstreamer_plays_a_chromium_broadcast_over_whep() {
    let mut c = Cluster::start_with(2, true, false).await;
    c.add_relay_on("relay-0", None).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let b = Browser::start("whep-broadcaster").await;
    let stream = b.go_live(&base, "For WHEP").await;
    let gst = GstClient::start("gst-whep", "whep", &format!("{base}/whep/{stream}"), &["--seconds", "6"]);
    gst.wait_event("created", LONG).await;
    gst.wait_event("connected", LONG).await;
    let frames = gst.wait_event("frames", LONG).await;
    let video = frames["video"].as_u64().unwrap();
    let audio = frames["audio"].as_u64().unwrap();
    assert!(video > 30, "GStreamer decoded only {video} video frames of the broadcast: {frames}");
    assert!(audio > 10, "GStreamer decoded only {audio} audio buffers: {frames}");
    let deleted = gst.wait_event("deleted", LONG).await;
    assert_eq!(deleted["status"], 200, "{deleted}");
}

#[tokio::test]
async fn an_h264_whip_stream_as_obs_sends_it_plays_in_chromium_and_is_recorded_to_mp4() {
    let mut c = Cluster::start_with(2, true, true).await;
    c.add_relay_on("relay-0", None).await;
    let base = format!("http://127.0.0.1:{}", c.front());
    let w = Browser::start("h264-watcher").await;
    w.goto(&format!("{base}/watcher")).await;
    let args = ["--codec", "h264", "--seconds", "8"];
    let gst = GstClient::start("gst-whip-h264", "whip", &format!("{base}/whip/H264Cam"), &args);
    let created = gst.wait_event("created", LONG).await;
    let stream = created["stream_id"].as_str().unwrap().to_owned();
    gst.wait_event("connected", LONG).await;
    let connected_at = Instant::now();

    // The relay forwards H.264 as it came (the watcher is offered the publisher's codec).
    let first = watch(&w, "H264Cam").await;
    println!("Chromium watcher of an H.264 WHIP stream: click → first frame {first:.0} ms");
    let deleted = gst.wait_event("deleted", LONG).await;
    assert_eq!(deleted["status"], 200, "{deleted}");
    let least = shortest_since(connected_at);

    // WebM holds VP8 here: an H.264 stream is recorded to fragmented MP4, cataloged as such.
    let reg = c.registry.grpc_url();
    let rec = finished_recording(&reg, &stream, LONG).await;
    assert_eq!(rec.state(), pb::RecordingState::Complete, "{rec:?}");
    assert_eq!(rec.file_name, format!("{}.mp4", rec.id), "{rec:?}");
    assert_eq!((rec.video_codec.as_str(), rec.audio_codec.as_str()), ("H264", "OPUS"), "{rec:?}");
    assert!(rec.error.is_empty(), "{rec:?}");
    let most = longest_since(recording_started(&reg, &stream).await);
    let path = c.recordings.join(&rec.file_name);
    let probe = media::probe(&path);
    assert_eq!(media::codecs(&probe), vec!["h264", "opus"], "{probe}");
    assert_fits(media::duration(&probe).expect("a duration"), (least, most));
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(frames > 60, "only {frames} frames decoded");

    // Served as video/mp4 through nginx (a .webm URL for it is not found), and it plays on /recordings.
    let file = format!("/recordings/{}", rec.file_name);
    let r = request(c.front(), "GET", &file, &[("Range", "bytes=0-99")], "").await;
    assert_eq!((r.status, r.header("content-type")), (206, Some("video/mp4")), "{r:?}");
    let r = request(c.front(), "GET", &format!("/recordings/{}.webm", rec.id), &[], "").await;
    assert_eq!(r.status, 404, "{r:?}");
    w.goto(&format!("{base}/recordings")).await;
    let playing = format!(
        "const v = document.querySelector('[data-recording-id=\"{}\"] video'); \
         if (v && v.readyState >= 1 && v.paused) {{ v.muted = true; v.play().catch(() => {{}}); }} \
         return v && v.videoWidth > 0 && v.currentTime > 0.5",
        rec.id
    );
    w.wait_for("the MP4 recording to play on /recordings", LONG, &playing).await;
    w.screenshot("h264-recordings").await;
}

#[tokio::test]
async fn whip_answers_carry_the_ice_servers_and_p2p_mode_has_no_whip() {
    let ice = ["--ice-servers", "stun:stun.example.org:3478,turn:turn.example.org:3478", "--turn-secret", "s3cret"];
    let mut args = vec!["--store", "memory", "--auto-record", "false"];
    args.extend(ice);
    let o = Onair::start("whip-ice", &args).await;
    let r = publish_once_a_relay_is_up(o.http, "/whip/Linked", &offer(Direction::SendOnly), &[]).await;
    assert_eq!(r.status, 201, "{r:?}");
    let links: Vec<&str> = r.headers.iter().filter(|(n, _)| n == "link").map(|(_, v)| v.as_str()).collect();
    assert!(links.contains(&"<stun:stun.example.org:3478>; rel=\"ice-server\""), "{links:?}");
    let turn = links.iter().find(|l| l.starts_with("<turn:turn.example.org:3478>")).expect("a TURN link");
    assert!(
        turn.contains("username=\"") && turn.contains("credential=\"") && turn.contains("credential-type=\"password\"")
    );
    assert_eq!(request(o.http, "DELETE", &location(&r), &[], "").await.status, 200);

    // Peer to peer: no relay carries media, so no WHIP or WHEP.
    let p2p = Onair::start("whip-p2p", &["--store", "memory", "--auto-record", "false", "--media", "p2p"]).await;
    let r = post_sdp(p2p.http, "/whip/Nope", &offer(Direction::SendOnly), &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no relay"), "{}", r.body);
}

/// RFC 9725 §4.3.2: a WHIP client restarts ICE with a PATCH (say its network changed); the relay
/// renegotiates the same connection (same DTLS session), answers its new credentials, and the
/// stream keeps reaching a WHEP watcher.
#[tokio::test]
async fn an_ice_restart_over_patch_keeps_the_stream_flowing_to_a_whep_watcher() {
    use onair_tests::whip::{RtcPeer, ice_frag, with_ice_of};
    use str0m::{Event, IceConnectionState};

    let mut c = Cluster::start_with(1, false, false).await;
    c.add_relay("relay-0").await;
    let gw = c.gateways[0].http;

    let (mut publisher, offer_sdp, pending) = RtcPeer::new(Direction::SendOnly).await;
    let r = publish_once_a_relay_is_up(gw, "/whip/Restart", &offer_sdp, &[]).await;
    assert_eq!(r.status, 201, "{r:?}");
    let (session, etag, stream) =
        (location(&r), r.header("etag").unwrap().to_owned(), r.header("onair-stream-id").unwrap().to_owned());
    let answer = r.body.clone();
    publisher.accept(pending, &answer);
    let key = |p: &mut RtcPeer, e: Option<&Event>, keyframe: &mut bool| match e {
        Some(Event::KeyframeRequest(_)) => *keyframe = true,
        None => {
            p.send_frame(std::mem::take(keyframe));
        }
        _ => {}
    };
    let mut keyframe = true;
    let connected = publisher
        .drive(LONG, |p, e| {
            key(p, e, &mut keyframe);
            !matches!(e, Some(Event::Connected))
        })
        .await;
    assert!(connected, "the WHIP publisher connects");

    // A WHEP watcher, driven in its own task, timestamps every frame it receives.
    let (mut watcher, watch_offer, watch_pending) = RtcPeer::new(Direction::RecvOnly).await;
    let r = post_sdp(gw, &format!("/whep/{stream}"), &watch_offer, &[]).await;
    assert_eq!(r.status, 201, "{r:?}");
    watcher.accept(watch_pending, &r.body);
    let (watch_session, watch_etag, watch_answer) =
        (location(&r), r.header("etag").unwrap().to_owned(), r.body.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let watching = tokio::spawn(async move {
        let mut frames = Vec::new();
        let mut count = |e: Option<&Event>| {
            if let Some(Event::MediaData(_)) = e {
                frames.push(Instant::now());
            }
        };
        watcher
            .drive(Duration::from_secs(6), |_, e| {
                count(e);
                true
            })
            .await;
        // The WHEP side restarts too (its renegotiation is the relay's answer to a new offer).
        let mut api = watcher.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api.apply().expect("an ICE-restart offer");
        let sdpfrag = ("Content-Type", "application/trickle-ice-sdpfrag");
        let r = request(
            gw,
            "PATCH",
            &watch_session,
            &[sdpfrag, ("If-Match", &watch_etag)],
            &ice_frag(&offer.to_sdp_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        watcher.accept(pending, &with_ice_of(&watch_answer, &r.body));
        let restarted = Instant::now();
        let mut states = Vec::new();
        watcher
            .drive(LONG, |_, e| {
                count(e);
                if let Some(Event::IceConnectionStateChange(s)) = e {
                    states.push(*s);
                }
                !stopped.load(std::sync::atomic::Ordering::SeqCst)
            })
            .await;
        (frames, restarted, states)
    });
    publisher
        .drive(Duration::from_secs(3), |p, e| {
            key(p, e, &mut keyframe);
            true
        })
        .await;

    // The restart: new credentials of ours in an sdpfrag, If-Match with the ETag.
    let old_ufrag = publisher.rtc.direct_api().local_ice_credentials().ufrag;
    let mut api = publisher.rtc.sdp_api();
    api.ice_restart(true);
    let (restart_offer, restart_pending) = api.apply().expect("an ICE-restart offer");
    let frag = ice_frag(&restart_offer.to_sdp_string());
    assert!(!frag.contains(&old_ufrag), "{frag}");
    let sdpfrag = ("Content-Type", "application/trickle-ice-sdpfrag");
    let restarted_at = Instant::now();
    let r = request(gw, "PATCH", &session, &[sdpfrag, ("If-Match", &etag)], &frag).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.header("etag"), Some(etag.as_str()), "{r:?}");
    publisher.accept(restart_pending, &with_ice_of(&answer, &r.body));
    let mut states = Vec::new();
    publisher
        .drive(Duration::from_secs(10), |p, e| {
            if let Some(Event::IceConnectionStateChange(s)) = e {
                states.push(*s);
            }
            key(p, e, &mut keyframe);
            true
        })
        .await;
    assert!(
        states.contains(&IceConnectionState::Checking)
            && matches!(states.last(), Some(IceConnectionState::Connected | IceConnectionState::Completed)),
        "the publisher's ICE restarted and connected again with the relay's new credentials: {states:?}"
    );
    assert!(publisher.rtc.is_connected(), "the same connection (DTLS kept) carries on");

    // The watcher got the stream before, between and after both restarts.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (frames, watcher_restarted, watcher_states) = watching.await.unwrap();
    let before = frames.iter().filter(|t| **t < restarted_at).count();
    let between =
        frames.iter().filter(|t| **t > restarted_at + Duration::from_secs(1) && **t < watcher_restarted).count();
    let after = frames.iter().filter(|t| **t > watcher_restarted + Duration::from_secs(1)).count();
    println!("WHEP watcher: {before} frames before the WHIP ICE restart, {between} until its own, {after} after it");
    assert!(
        matches!(watcher_states.last(), Some(IceConnectionState::Connected | IceConnectionState::Completed))
            && watcher_states.contains(&IceConnectionState::Checking),
        "the WHEP watcher's ICE restarted: {watcher_states:?}"
    );
    assert!(before >= 20 && between >= 20 && after >= 60, "frames before {before}, between {between}, after {after}");
    assert_eq!(request(gw, "DELETE", &session, &[], "").await.status, 200);
}
