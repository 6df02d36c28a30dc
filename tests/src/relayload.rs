//! A load client for the relay: one synthetic VP8 publisher and many subscribers in one process,
//! each a WebSocket peer (the browser protocol) with its own str0m WebRTC connection and UDP
//! socket, all driven by one task. Every frame the publisher sends carries its number and send
//! time, so each subscriber checks continuity (no frame missing after its first) and measures the
//! added latency (publisher send → subscriber receive, one clock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::Onair;
use crate::ws::Ws;

/// An all-in-one with its relay, ready for the load client: no recorder, no per-address socket limit
/// (every subscriber comes from 127.0.0.1), `extra` flags added.
pub async fn start_server(name: &str, extra: &[&str]) -> Onair {
    let dir = std::env::temp_dir().join(format!("onair-{name}-{}", std::process::id()));
    let dir = dir.to_str().unwrap_or_default().to_owned();
    let mut args = vec!["--store", "memory", "--auto-record", "false", "--max-sockets-per-ip", "0", "--data-dir", &dir];
    args.extend_from_slice(extra);
    let onair = Onair::start(name, &args).await;
    onair.wait_ready().await;
    onair
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Subscribers of the one stream.
    pub subscribers: usize,
    /// Publisher bitrate.
    pub kbps: u32,
    /// Publisher frame rate.
    pub fps: u32,
    /// How long frames are measured once every subscriber is connected.
    pub measure: Duration,
    /// The relay's process and admin port, to measure its CPU, memory and forwarded packets over
    /// the window.
    pub server: Option<(u32, u16)>,
    /// Subscriber 0 goes silent this long into the window: its connection and UDP socket stop
    /// answering (datagrams to it are read and dropped) while its WebSocket stays open, as when a
    /// watcher's network vanishes.
    pub silence_first_after: Option<Duration>,
}

/// The relay process over the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerUsage {
    /// CPU seconds it used in the window.
    pub cpu_seconds: f64,
    /// Datagrams it sent in the window (`onair_relay_datagrams_out_total`).
    pub datagrams_out: u64,
    /// System calls those took (`onair_relay_send_calls_total`: a segmented send carries several).
    pub send_calls: u64,
    /// Its RSS before the first subscriber, KiB.
    pub rss_before_kib: u64,
    /// Its RSS at the end of the window, KiB.
    pub rss_after_kib: u64,
    /// Window length, seconds.
    pub seconds: f64,
}

/// What each subscriber saw in the measured window, and what the publisher sent.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Frames the publisher sent in the window.
    pub sent: u64,
    /// Per subscriber: frames received in the window.
    pub received: Vec<u64>,
    /// Per subscriber: frames missing between the first and the last it received (in the window).
    pub missing: Vec<u64>,
    /// Per subscriber: the longest time between two frames in the window.
    pub longest_gap: Vec<Duration>,
    /// Added latency of every frame received in the window, sorted.
    pub latencies: Vec<Duration>,
    /// How long until every subscriber had its first frame.
    pub all_connected_after: Duration,
    /// The relay process over the window (with [`LoadConfig::server`]).
    pub server: ServerUsage,
    /// Subscribers that received a frame at all (all of them once the window opened).
    pub playing: usize,
    /// When subscriber 0 went silent, into the window (see [`LoadConfig::silence_first_after`]).
    pub silenced_at: Option<Duration>,
}

/// The relay's datagrams sent and the system calls they took, so far.
async fn send_counters(admin: u16) -> (u64, u64) {
    let (_, body) = crate::procs::http_get(admin, "/metrics").await;
    let count = |name| crate::procs::metric(&body, name).unwrap_or(0);
    (count("onair_relay_datagrams_out_total"), count("onair_relay_send_calls_total"))
}

impl LoadReport {
    /// The `q` quantile (0..=1) of the latencies.
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

enum Cmd {
    /// The publisher's socket must offer to the relay peer.
    PublisherOffer { reply: oneshot::Sender<String> },
    /// The relay's answer to the publisher.
    PublisherAnswer { sdp: String },
    /// The relay's offer to subscriber `idx`.
    SubscriberOffer { idx: usize, sdp: String, reply: oneshot::Sender<String> },
}

struct Peer {
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    timeout: Instant,
    /// Subscriber state.
    first: Option<u32>,
    last: Option<(u32, Instant)>,
    /// The publisher was asked for a keyframe (the relay's PLI): its next frame is one, as an
    /// encoder's would be.
    keyframe_wanted: bool,
}

const PUBLISHER: usize = usize::MAX;

fn sdp_of(v: &Value) -> String {
    v["payload"]["sdp"].as_str().unwrap_or_default().to_owned()
}

async fn bind() -> (Arc<UdpSocket>, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    let a = s.local_addr().expect("its address");
    (Arc::new(s), a)
}

fn new_rtc(local: SocketAddr) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_vp8(true)
        // The relay offers audio too: an answer without a codec for it would not parse.
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").expect("a host candidate"));
    rtc
}

/// A publisher's offer (VP8 video, send-only, a host candidate on `local`), as the load client's
/// synthetic publisher makes it: enough for the relay to learn the stream's codec.
pub fn publisher_offer(local: SocketAddr) -> String {
    let mut rtc = new_rtc(local);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    api.apply().map(|(offer, _)| offer.to_sdp_string()).expect("an offer")
}

/// Runs the load against the gateway on `port` (an all-in-one with a relay): publishes, joins
/// `subscribers`, sends frames until every subscriber got one, then measures for `measure`.
pub async fn run(port: u16, cfg: &LoadConfig) -> LoadReport {
    let (cmd_tx, mut cmds) = mpsc::channel::<Cmd>(1024);
    let rss_before = cfg.server.map_or(0, |(pid, _)| crate::procs::proc_usage(pid).1);
    let mut window_start_usage = (0u64, 0u64, 0u64);
    let (dgram_tx, mut dgrams) = mpsc::channel::<(usize, Vec<u8>, SocketAddr, Instant)>(65_536);

    // The publisher's signaling.
    let mut publisher = Ws::connect(port).await;
    let stream = publisher.publish("relay load").await["id"].as_str().unwrap_or_default().to_owned();
    let joined = publisher.expect("watcher_joined").await;
    let relay = joined["peer"].as_str().unwrap_or_default().to_owned();
    let tx = cmd_tx.clone();
    let pub_task = tokio::spawn(async move {
        let (reply, offer) = oneshot::channel();
        let _ = tx.send(Cmd::PublisherOffer { reply }).await;
        let Ok(sdp) = offer.await else { return publisher };
        let payload = json!({"type": "offer", "sdp": sdp});
        publisher.send(json!({"type": "signal", "to": relay, "kind": "offer", "payload": payload})).await;
        let answer = publisher.expect_where("signal", |v| v["kind"] == "answer").await;
        let _ = tx.send(Cmd::PublisherAnswer { sdp: sdp_of(&answer) }).await;
        publisher
    });

    // Subscribers' signaling: watch, answer the relay's offer.
    let mut sub_tasks = Vec::new();
    for idx in 0..cfg.subscribers {
        let tx = cmd_tx.clone();
        let stream = stream.clone();
        sub_tasks.push(tokio::spawn(async move {
            let mut ws = Ws::connect(port).await;
            ws.send(json!({"type": "watch", "stream_id": stream})).await;
            let offer = ws.expect_within("signal", Duration::from_secs(20), |v| v["kind"] == "offer").await;
            let (reply, answer) = oneshot::channel();
            let _ = tx.send(Cmd::SubscriberOffer { idx, sdp: sdp_of(&offer), reply }).await;
            if let Ok(sdp) = answer.await {
                let to = offer["from"].clone();
                let payload = json!({"type": "answer", "sdp": sdp});
                ws.send(json!({"type": "signal", "to": to, "kind": "answer", "payload": payload})).await;
            }
            ws
        }));
    }
    drop(cmd_tx);

    let mut peers: HashMap<usize, Peer> = HashMap::new();
    let mut pending: Option<SdpPendingOffer> = None;
    let mut video: Option<Mid> = None;
    let frame_bytes = usize::try_from(cfg.kbps * 1000 / 8 / cfg.fps.max(1)).unwrap_or(4000).max(16);
    let every = Duration::from_secs(1) / cfg.fps.max(1);
    let mut next_frame = tokio::time::Instant::now() + every;
    let started = Instant::now();
    let mut frame_no: u32 = 0;
    let mut report = LoadReport {
        received: vec![0; cfg.subscribers],
        missing: vec![0; cfg.subscribers],
        longest_gap: vec![Duration::ZERO; cfg.subscribers],
        ..Default::default()
    };
    let mut window: Option<(Instant, u32)> = None;
    let deadline = Instant::now() + Duration::from_secs(60) + cfg.measure;

    loop {
        let now = Instant::now();
        if now > deadline {
            break;
        }
        if let Some((since, _)) = window
            && now.duration_since(since) >= cfg.measure
        {
            break;
        }
        let next = peers.values().map(|p| p.timeout).min().unwrap_or(now + Duration::from_millis(50));
        let sleep = next.saturating_duration_since(now).min(Duration::from_millis(50));
        tokio::select! {
            c = cmds.recv() => match c {
                Some(Cmd::PublisherOffer { reply }) => {
                    let (socket, local) = bind().await;
                    let mut rtc = new_rtc(local);
                    let mut api = rtc.sdp_api();
                    video = Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
                    if let Some((offer, p)) = api.apply() {
                        pending = Some(p);
                        let _ = reply.send(offer.to_sdp_string());
                    }
                    spawn_reader(PUBLISHER, Arc::clone(&socket), dgram_tx.clone());
                    peers.insert(PUBLISHER, Peer { rtc, socket, local, timeout: now, first: None, last: None, keyframe_wanted: false });
                }
                Some(Cmd::PublisherAnswer { sdp }) => {
                    if let (Some(p), Some(pending), Ok(answer)) =
                        (peers.get_mut(&PUBLISHER), pending.take(), SdpAnswer::from_sdp_string(&sdp))
                    {
                        p.rtc.sdp_api().accept_answer(pending, answer).expect("the relay's answer");
                    }
                }
                Some(Cmd::SubscriberOffer { idx, sdp, reply }) => {
                    let (socket, local) = bind().await;
                    let mut rtc = new_rtc(local);
                    match SdpOffer::from_sdp_string(&sdp).map_err(|e| e.to_string())
                        .and_then(|o| rtc.sdp_api().accept_offer(o).map_err(|e| e.to_string()))
                    {
                        Ok(answer) => {
                            let _ = reply.send(answer.to_sdp_string());
                        }
                        Err(e) => eprintln!("relay load: subscriber {idx} cannot take the relay's offer: {e}"),
                    }
                    spawn_reader(idx, Arc::clone(&socket), dgram_tx.clone());
                    peers.insert(idx, Peer { rtc, socket, local, timeout: now, first: None, last: None, keyframe_wanted: false });
                }
                None => {}
            },
            d = dgrams.recv() => {
                let mut batch = Vec::with_capacity(64);
                if let Some(d) = d { batch.push(d); }
                while batch.len() < 256 {
                    match dgrams.try_recv() { Ok(d) => batch.push(d), Err(_) => break }
                }
                for (idx, data, source, at) in batch {
                    let Some(p) = peers.get_mut(&idx) else { continue };
                    let Ok(contents) = data.as_slice().try_into() else { continue };
                    let input = Input::Receive(at, Receive { proto: Protocol::Udp, source, destination: p.local, contents });
                    let _ = p.rtc.handle_input(input);
                    drive(idx, p, &mut report, window, started);
                }
            }
            () = tokio::time::sleep_until(next_frame) => {
                next_frame += every;
                if let (Some(p), Some(mid)) = (peers.get_mut(&PUBLISHER), video)
                    && p.rtc.is_connected()
                    && let Some(pt) = p.rtc.writer(mid).and_then(|w| w.payload_params().next().map(|pp| pp.pt()))
                {
                    frame_no += 1;
                    let mut data = vec![0u8; frame_bytes];
                    // VP8 payload header byte: bit 0 clear = keyframe (the first frame, and one
                    // after each keyframe request), inter otherwise.
                    let keyframe = frame_no == 1 || std::mem::take(&mut p.keyframe_wanted);
                    data[0] = u8::from(!keyframe);
                    let sent = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    data[1..9].copy_from_slice(&sent.to_be_bytes());
                    data[9..13].copy_from_slice(&frame_no.to_be_bytes());
                    let rtp_time = MediaTime::from_90khz(u64::from(frame_no) * 90_000 / u64::from(cfg.fps.max(1)));
                    if let Some(w) = p.rtc.writer(mid) {
                        let _ = w.write(pt, Instant::now(), rtp_time, data);
                    }
                    if window.is_some() {
                        report.sent += 1;
                    }
                    drive(PUBLISHER, p, &mut report, window, started);
                }
                if window.is_none() && peers.len() == cfg.subscribers + 1
                    && peers.iter().filter(|(i, _)| **i != PUBLISHER).all(|(_, p)| p.first.is_some())
                {
                    report.all_connected_after = started.elapsed();
                    if let Some((pid, admin)) = cfg.server {
                        let (datagrams, calls) = send_counters(admin).await;
                        window_start_usage = (crate::procs::proc_usage(pid).0, datagrams, calls);
                    }
                    window = Some((Instant::now(), frame_no));
                }
            }
            () = tokio::time::sleep(sleep) => {}
        }
        let now = Instant::now();
        if let (Some(after), Some((since, _))) = (cfg.silence_first_after, window)
            && now.duration_since(since) >= after
            && peers.remove(&0).is_some()
        {
            report.silenced_at = Some(now.duration_since(since));
        }
        for (idx, p) in &mut peers {
            if p.timeout <= now {
                let _ = p.rtc.handle_input(Input::Timeout(now));
                drive(*idx, p, &mut report, window, started);
            }
        }
    }
    if let (Some((pid, admin)), Some((since, _))) = (cfg.server, window) {
        let (ticks, rss) = crate::procs::proc_usage(pid);
        #[allow(clippy::cast_precision_loss)]
        let cpu_seconds = ticks.saturating_sub(window_start_usage.0) as f64 / 100.0;
        let (datagrams, calls) = send_counters(admin).await;
        report.server = ServerUsage {
            cpu_seconds,
            datagrams_out: datagrams.saturating_sub(window_start_usage.1),
            send_calls: calls.saturating_sub(window_start_usage.2),
            rss_before_kib: rss_before,
            rss_after_kib: rss,
            seconds: since.elapsed().as_secs_f64(),
        };
    }
    report.playing = peers.iter().filter(|(i, p)| **i != PUBLISHER && p.first.is_some()).count();
    if window.is_none() {
        let with_frames = report.playing;
        let connected = peers.values().filter(|p| p.rtc.is_connected()).count();
        eprintln!(
            "relay load: never measured: {} peers ({connected} connected, publisher connected: {}), {with_frames} \
             subscribers with a frame, {frame_no} frames sent",
            peers.len(),
            peers.get(&PUBLISHER).is_some_and(|p| p.rtc.is_connected()),
        );
    }
    report.latencies.sort();
    // Keep the sockets open until the end, then let everything go.
    let _publisher = pub_task.await;
    for t in sub_tasks {
        let _ = t.await;
    }
    report
}

fn spawn_reader(idx: usize, socket: Arc<UdpSocket>, tx: mpsc::Sender<(usize, Vec<u8>, SocketAddr, Instant)>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if tx.send((idx, buf[..n].to_vec(), from, Instant::now())).await.is_err() {
                return;
            }
        }
    });
}

/// Polls one peer until it only has a timeout left: sends what it transmits, accounts frames.
fn drive(idx: usize, p: &mut Peer, report: &mut LoadReport, window: Option<(Instant, u32)>, started: Instant) {
    for _ in 0..10_000 {
        match p.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                p.timeout = t;
                return;
            }
            Ok(Output::Transmit(t)) => {
                let _ = p.socket.try_send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(Event::MediaData(m))) if idx != PUBLISHER && m.data.len() >= 13 => {
                let now = Instant::now();
                let mut no = [0u8; 4];
                no.copy_from_slice(&m.data[9..13]);
                let no = u32::from_be_bytes(no);
                p.first.get_or_insert(no);
                let Some((since, first_in_window)) = window else {
                    p.last = Some((no, now));
                    continue;
                };
                if no > first_in_window {
                    report.received[idx] += 1;
                    if let Some((last, at)) = p.last {
                        if no > last + 1 && last >= first_in_window {
                            report.missing[idx] += u64::from(no - last - 1);
                        }
                        if at >= since {
                            report.longest_gap[idx] = report.longest_gap[idx].max(now.duration_since(at));
                        }
                    }
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&m.data[1..9]);
                    let sent = Duration::from_micros(u64::from_be_bytes(sent));
                    report.latencies.push(now.duration_since(started).saturating_sub(sent));
                }
                p.last = Some((no, now));
            }
            Ok(Output::Event(Event::KeyframeRequest(_))) if idx == PUBLISHER => p.keyframe_wanted = true,
            Ok(Output::Event(_)) => {}
            Err(_) => return,
        }
    }
}
