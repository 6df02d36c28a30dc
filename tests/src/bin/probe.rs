//! Load probes behind `make bench` (not tests). Starts real processes with the
//! test harness and prints one table row per measurement.
//!
//! Usage: probe [registry|signaling|recorder|idle|turn|all]    (ONAIR_BIN selects the binary; release in `make bench`)
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use onair_proto::v1 as pb;
use onair_tests::cluster::Cluster;
use onair_tests::procs::proc_usage;
use onair_tests::registry::client;
use onair_tests::ws::Ws;
use onair_tests::{Mongo, Onair, Redis};
use serde_json::json;
use tokio::sync::Mutex;

const RUN: Duration = Duration::from_secs(5);
const CLIENTS: usize = 16;

struct Stats {
    ops: usize,
    errors: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
    fn row(&self, what: &str) {
        #[allow(clippy::cast_precision_loss)]
        let rate = self.ops as f64 / self.secs;
        let errors = if self.errors > 0 { format!(" ({} errors)", self.errors) } else { String::new() };
        println!("| {what}{errors} | {rate:.0} | {:.2} | {:.2} |", self.pct(0.5), self.pct(0.99));
    }
}

/// Runs `op` from `clients` tasks for `RUN`; collects the latency of successful calls
/// (`op` returns whether the call succeeded) and counts failures.
async fn hammer<F, Fut>(clients: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: Future<Output = bool> + Send,
{
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (op, lat, errors) = (op.clone(), Arc::clone(&lat), Arc::clone(&errors));
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0;
            while start.elapsed() < RUN {
                let t = Instant::now();
                if op(c, i).await {
                    mine.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            lat.lock().await.extend(mine);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let lat = Arc::try_unwrap(lat).unwrap().into_inner();
    Stats { ops: lat.len(), errors: errors.load(Ordering::Relaxed), secs: start.elapsed().as_secs_f64(), lat }
}

async fn registry_rows(label: &str, reg: &Onair) {
    let c = client(&reg.grpc_url()).await;
    let base = reg.grpc_url();
    // Baseline: the gRPC health check on the same server (transport + tonic, no store).
    let ch = tonic::transport::Channel::from_shared(base).unwrap().connect().await.unwrap();
    let health_client = onair_tests::health::HealthClient::new(ch);
    let health = hammer(CLIENTS, move |_, _| {
        let mut h = health_client.clone();
        async move { h.check("").await.is_ok() }
    })
    .await;
    health.row(&format!("{label}: baseline grpc.health Check"));
    let cc = c.clone();
    let create = hammer(CLIENTS, move |w, i| {
        let mut c = cc.clone();
        async move {
            let req = pb::CreateStreamRequest {
                title: format!("load {w}-{i}"),
                broadcaster: format!("p{w}-{i}"),
                node: "probe".into(),
                ..Default::default()
            };
            c.create_stream(req).await.is_ok()
        }
    })
    .await;
    create.row(&format!("{label}: CreateStream"));
    let list = hammer(CLIENTS, move |_, _| {
        let mut c = c.clone();
        async move {
            let req = pb::ListStreamsRequest {
                state: pb::StreamState::Live.into(),
                page_size: 20,
                page_token: String::new(),
            };
            c.list_streams(req).await.is_ok()
        }
    })
    .await;
    list.row(&format!("{label}: ListStreams (20/page, {} streams)", create.ops));
}

async fn registry() {
    println!("\n### Registry ({CLIENTS} concurrent clients, {RUN:?} per row)\n");
    println!("| what | req/s | p50 ms | p99 ms |\n|---|---|---|---|");
    let mem = Onair::start("probe-memory", &["--target", "registry", "--store", "memory"]).await;
    registry_rows("memory store", &mem).await;
    drop(mem);
    let dir = std::env::temp_dir().join(format!("onair-probe-{}", std::process::id()));
    let emb = Onair::start(
        "probe-embedded",
        &["--target", "registry", "--store", "embedded", "--data-dir", dir.to_str().unwrap()],
    )
    .await;
    registry_rows("embedded store (journal)", &emb).await;
    drop(emb);
    let _ = std::fs::remove_dir_all(&dir);
    let (mongo, redis) = (Mongo::start().await, Redis::start().await);
    let (uri, url) = (mongo.uri(), redis.url());
    let reg = Onair::start("probe-mongo", &["--target", "registry", "--mongodb-uri", &uri, "--redis-url", &url]).await;
    registry_rows("MongoDB store (secantusdb test server)", &reg).await;
}

/// Pairs of sockets: broadcasters on gateway 0, watchers on gateway 1; each broadcaster sends
/// `rate` candidate signals per second to its watcher for `RUN`. Latency: send → receive.
async fn signaling_run(label: &str, b_port: u16, w_port: u16, pairs: usize, rate: u32) {
    let mut tasks = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(pairs + 1));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..pairs {
        let (ready, stop) = (Arc::clone(&ready), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut b = Ws::connect(b_port).await;
            let mut w = Ws::connect(w_port).await;
            let sid = b.publish(&format!("pair {i}")).await["id"].as_str().unwrap().to_owned();
            w.send(json!({"type": "watch", "stream_id": sid})).await;
            b.expect("watcher_joined").await;
            ready.wait().await;
            let t0 = Instant::now();
            let (mut sent, mut lat) = (0u64, Vec::new());
            let every = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut tick = tokio::time::interval(every);
            let mut received = 0u64;
            while t0.elapsed() < RUN && !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        let at = t0.elapsed().as_micros();
                        b.send(json!({"type": "signal", "to": w.peer_id, "kind": "candidate", "payload": {"t": at}})).await;
                        sent += 1;
                    }
                    v = w.next(Duration::from_secs(2)) => {
                        if let Some(v) = v && v["type"] == "signal" {
                            let at = v["payload"]["t"].as_u64().unwrap_or(0);
                            lat.push(t0.elapsed().saturating_sub(Duration::from_micros(at)));
                            received += 1;
                        }
                    }
                }
            }
            // drain what is still in flight
            while received < sent {
                match w.next(Duration::from_secs(2)).await {
                    Some(v) if v["type"] == "signal" => {
                        let at = v["payload"]["t"].as_u64().unwrap_or(0);
                        lat.push(t0.elapsed().saturating_sub(Duration::from_micros(at)));
                        received += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (sent, received, lat)
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    let (mut sent, mut received, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (s, r, l) = t.await.unwrap();
        sent += s;
        received += r;
        lat.extend(l);
    }
    let stats = Stats { ops: usize::try_from(received).unwrap(), errors: 0, secs: start.elapsed().as_secs_f64(), lat };
    stats.row(&format!("{label}: {pairs} pairs × {rate} msg/s offered (sent {sent}, delivered {received})"));
}

async fn signaling() {
    println!("\n### Signaling relay (browser WebSocket → gateway → signaling → Redis → gateway → browser)\n");
    println!("| what | delivered msg/s | p50 ms | p99 ms |\n|---|---|---|---|");
    let aio = Onair::start("probe-aio", &["--store", "memory", "--max-sockets-per-ip", "0"]).await;
    aio.wait_ready().await;
    signaling_run("baseline: all-in-one, one process, no Redis", aio.http, aio.http, 100, 40).await;
    drop(aio);
    let c = Cluster::start(2, false).await;
    // Every list change reaches every open socket (the watcher page's live list), so setting up
    // N pairs costs O(N²) frames; 100-150 pairs keep the set-up within the probe's budget here.
    for (pairs, rate) in [(100, 40), (150, 40)] {
        signaling_run("two-gateway cluster", c.gateways[0].http, c.gateways[1].http, pairs, rate).await;
    }
}

/// RSS with N idle WebSockets open (each got its `welcome` and `streams`): of the all-in-one
/// (which also keeps signaling's directory of the peers), and of one gateway of a cluster.
async fn idle() {
    let counts: Vec<usize> = std::env::var("PROBE_IDLE_SOCKETS")
        .ok()
        .map_or_else(|| vec![1000, 5000], |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    println!("\n### Idle WebSockets (RSS of the process holding them)\n");
    println!(
        "| process | sockets | RSS idle (MiB) | RSS with the sockets (MiB) | RSS per socket (KiB) |\n|---|---|---|---|---|"
    );
    for &n in &counts {
        let aio = Onair::start("probe-idle", &["--store", "memory", "--max-sockets-per-ip", "0"]).await;
        aio.wait_ready().await;
        idle_row("all-in-one", &aio, n).await;
    }
    for &n in &counts {
        let c = onair_tests::cluster::Cluster::start_tuned(1, false, false, None, &["--max-sockets-per-ip", "0"]).await;
        c.gateways[0].wait_ready().await;
        idle_row("cluster gateway", &c.gateways[0], n).await;
    }
}

/// Opens `n` idle sockets to `o` and prints its RSS before and with them.
async fn idle_row(what: &str, o: &Onair, n: usize) {
    let pid = o.proc.pid().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, before) = proc_usage(pid);
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let url = format!("ws://127.0.0.1:{}/ws", o.http);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        // welcome + streams: the server has set the socket up completely.
        for _ in 0..2 {
            let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        }
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, after) = proc_usage(pid);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!("| {what} | {n} | {:.1} | {:.1} | {per:.1} |", before as f64 / 1024.0, after as f64 / 1024.0);
}

/// CPU % of one core and RSS in MiB of `pid` over `window`.
async fn sample(pid: u32, window: Duration) -> (f64, f64) {
    let (t0, _) = proc_usage(pid);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (t1, rss) = proc_usage(pid);
    #[allow(clippy::cast_precision_loss)]
    let cpu = (t1 - t0) as f64 / 100.0 / start.elapsed().as_secs_f64() * 100.0;
    #[allow(clippy::cast_precision_loss)]
    let rss_mib = rss as f64 / 1024.0;
    (cpu, rss_mib)
}

async fn recorder() {
    use onair_tests::browser::Browser;
    println!("\n### Recorder (Chromium fake camera 640x480 VP8 + Opus per broadcast, 10 s samples)\n");
    println!(
        "| concurrent recordings | recorder CPU (% of one core) | recorder RSS (MiB) | per stream CPU % | per stream RSS MiB |"
    );
    println!("|---|---|---|---|---|");
    let c = Cluster::start_with(1, false, true).await;
    let pid = c.recorder.as_ref().unwrap().proc.pid().unwrap();
    let base = format!("http://127.0.0.1:{}", c.gateways[0].http);
    let (idle_cpu, idle_rss) = sample(pid, Duration::from_secs(5)).await;
    println!("| 0 (baseline, idle) | {idle_cpu:.1} | {idle_rss:.1} | – | – |");
    let mut browsers = Vec::new();
    for n in [1usize, 5] {
        while browsers.len() < n {
            let b = Browser::start(&format!("probe-b{}", browsers.len())).await;
            b.go_live(&base, &format!("probe {}", browsers.len())).await;
            browsers.push(b);
        }
        tokio::time::sleep(Duration::from_secs(4)).await; // let every recording reach steady state
        let (cpu, rss) = sample(pid, Duration::from_secs(10)).await;
        #[allow(clippy::cast_precision_loss)]
        let k = n as f64;
        println!("| {n} | {cpu:.1} | {rss:.1} | {:.1} | {:.1} |", (cpu - idle_cpu) / k, (rss - idle_rss) / k);
    }
    for b in &browsers {
        b.stop_broadcast().await;
    }
}

/// One TURN load run: `clients` uclient sessions in pairs (`-y`), each sending 1200-byte
/// messages every `interval_ms` through its allocation to its partner's. Returns (payload Mbit/s
/// received by the clients, server CPU % of one core, CPU ms per Mbit relayed).
async fn turn_load(pid: u32, port: u16, secret: &str, clients: usize, interval_ms: u64) -> (f64, f64, f64) {
    let messages = 10_000 / interval_ms; // 10 s
    let (t0, _) = proc_usage(pid);
    let start = Instant::now();
    let out = tokio::process::Command::new("turnutils_uclient")
        .args(["-y", "-c", "-l", "1200", "-m", &clients.to_string(), "-n", &messages.to_string()])
        .args(["-z", &interval_ms.to_string(), "-p", &port.to_string(), "-W", secret, "-u", "bench", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("turnutils_uclient (Debian coturn) runs");
    let secs = start.elapsed().as_secs_f64();
    let (t1, _) = proc_usage(pid);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let received: f64 = text
        .rsplit("tot_recv_bytes ~ ")
        .next()
        .filter(|_| text.contains("tot_recv_bytes ~ "))
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let mbit = received * 8.0 / 1e6;
    #[allow(clippy::cast_precision_loss)]
    let cpu_s = (t1 - t0) as f64 / 100.0;
    (mbit / secs, cpu_s / secs * 100.0, if mbit > 0.0 { cpu_s * 1000.0 / mbit } else { f64::NAN })
}

async fn turn() {
    use onair_tests::turn::Coturn;
    println!(
        "\n### TURN relay (turnutils_uclient -y over UDP: clients in pairs, each message relayed through two \
         allocations, 1200-byte payloads; 10 s per row)\n"
    );
    println!(
        "| server | clients × rate | relayed payload (Mbit/s) | server CPU (% of one core) | CPU ms per Mbit relayed |"
    );
    println!("|---|---|---|---|---|");
    let secret = "bench-secret";
    let loads = [(20usize, 10u64), (40, 5)];
    let onair = Onair::start(
        "probe-turn",
        &[
            "--target",
            "turn",
            "--turn-secret",
            secret,
            "--turn-addr",
            "127.0.0.1:0",
            "--public-addr",
            "127.0.0.1",
            "--turn-relay-ports",
            "23000-23999",
            "--turn-allow-peer",
            "127.0.0.0/8",
            "--turn-user-quota",
            "1000",
            "--turn-max-kbps",
            "1000000",
        ],
    )
    .await;
    let coturn = Coturn::start_with_relay_ports(
        secret,
        onair_tests::procs::LOCALHOST,
        onair_tests::free_port(),
        Some((24000, 24999)),
    )
    .await;
    for (clients, interval) in loads {
        #[allow(clippy::cast_precision_loss)]
        let rate = 1200.0 * 8.0 * 1000.0 / interval as f64 / 1e6;
        for (name, pid, port) in [
            ("onair (embedded)", onair.proc.pid().unwrap(), onair.addrs["turn"].port()),
            ("coturn (baseline)", coturn.proc.pid().unwrap(), coturn.port),
        ] {
            let (mbps, cpu, per) = turn_load(pid, port, secret, clients, interval).await;
            println!("| {name} | {clients} × {rate:.2} Mbit/s | {mbps:.1} | {cpu:.1} | {per:.1} |");
        }
    }
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::env::consts::ARCH
    );
    if what == "registry" || what == "all" {
        registry().await;
    }
    if what == "signaling" || what == "all" {
        signaling().await;
    }
    if what == "recorder" || what == "all" {
        recorder().await;
    }
    if what == "idle" || what == "all" {
        idle().await;
    }
    if what == "turn" || what == "all" {
        turn().await;
    }
}
