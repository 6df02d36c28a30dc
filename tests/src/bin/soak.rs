//! `make soak`: a cluster (two gateways behind nginx, signaling, registry on MongoDB, Redis) under a
//! realistic churn of broadcasters and watchers for many minutes, with one fault every interval
//! (gateway kill -9, gateway SIGTERM, Redis restarted empty, signaling kill -9, MongoDB and Redis
//! frozen). Not a test: it prints what it saw — messages delivered, refused with an error, lost;
//! resumes; orphaned streams; each long-lived process's memory and open files before and after.
//!
//! Usage: soak [--minutes M] [--pairs P] [--fault-every SECONDS]   (ONAIR_BIN selects the binary)
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use onair_proto::v1 as pb;
use onair_tests::Onair;
use onair_tests::cluster::Cluster;
use onair_tests::procs::proc_usage;
use serde_json::{Value, json};
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A message not delivered within this is judged.
const JUDGE_AFTER: Duration = Duration::from_secs(5);
/// Each side of a pair sends a marked candidate this often.
const SEND_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    lost_in_reconnect: AtomicU64,
    lost: AtomicU64,
    resumed: AtomicU64,
    resume_failed: AtomicU64,
    pairs_done: AtomicU64,
    setup_retries: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
    latencies_us: Mutex<Vec<u64>>,
}

struct Args {
    minutes: f64,
    pairs: usize,
    fault_every: Duration,
}

fn args() -> Args {
    let mut a = Args { minutes: 20.0, pairs: 40, fault_every: Duration::from_secs(60) };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for w in v.chunks(2) {
        match (w[0].as_str(), w.get(1)) {
            ("--minutes", Some(m)) => a.minutes = m.parse().expect("--minutes: a number"),
            ("--pairs", Some(p)) => a.pairs = p.parse().expect("--pairs: a number"),
            ("--fault-every", Some(s)) => {
                a.fault_every = Duration::from_secs(s.parse().expect("--fault-every: seconds"))
            }
            _ => panic!("usage: soak [--minutes M] [--pairs P] [--fault-every SECONDS]"),
        }
    }
    a
}

/// A tiny xorshift, seeded per pair: lifetimes that differ without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One browser-like socket through nginx: resumes its peer id when the connection drops.
struct Client {
    port: u16,
    ws: Option<Socket>,
    peer: String,
    token: String,
    /// When its connection dropped and when it was back, the last few times (messages around
    /// them are judged apart).
    outages: std::collections::VecDeque<(Instant, Instant)>,
    /// When the last `error` frame came.
    last_error: Option<Instant>,
}

async fn open(port: u16, path: &str) -> Option<(Socket, Value)> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (mut ws, _) =
        tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
    let welcome = tokio::time::timeout(Duration::from_secs(3), ws.next()).await.ok()??.ok()?;
    let welcome: Value = serde_json::from_str(welcome.to_text().ok()?).ok()?;
    (welcome["type"] == "welcome").then_some((ws, welcome))
}

impl Client {
    async fn connect(port: u16) -> Option<Self> {
        let (ws, welcome) = open(port, "/ws").await?;
        Some(Self {
            port,
            ws: Some(ws),
            peer: welcome["peer_id"].as_str()?.to_owned(),
            token: welcome["resume_token"].as_str()?.to_owned(),
            outages: std::collections::VecDeque::new(),
            last_error: None,
        })
    }

    async fn send(&mut self, v: &Value) -> bool {
        match &mut self.ws {
            Some(ws) => ws.send(Message::Text(v.to_string().into())).await.is_ok(),
            None => false,
        }
    }

    /// Reconnects with the resume token for up to 20 s, as the pages do; `false` if the server
    /// gave another peer id (the session was lost) or never answered.
    async fn resume(&mut self, counts: &Counts) -> bool {
        self.ws = None;
        let down = Instant::now();
        let token: String = self.token.bytes().map(|b| format!("%{b:02X}")).collect();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some((ws, welcome)) = open(self.port, &format!("/ws?resume={token}")).await {
                self.ws = Some(ws);
                if self.outages.len() == 16 {
                    self.outages.pop_front();
                }
                self.outages.push_back((down, Instant::now()));
                self.token = welcome["resume_token"].as_str().unwrap_or_default().to_owned();
                if welcome["peer_id"] == self.peer.as_str() {
                    counts.resumed.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                counts.resume_failed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        counts.resume_failed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The next frame (`batch` frames, which carry only list changes, are skipped whole: the soak
    /// follows signals and errors); `Err` when the connection is gone.
    async fn next(&mut self) -> Result<Value, ()> {
        let Some(ws) = &mut self.ws else { return Err(()) };
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).map_err(|_| ()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(()),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn close(mut self) {
        if let Some(ws) = &mut self.ws {
            let _ = ws.close(None).await;
        }
    }
}

/// Waits for a frame of type `ty` (up to `wait`), noting errors.
async fn wait_for(c: &mut Client, ty: &str, wait: Duration, counts: &Counts) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Ok(Ok(v)) if v["type"] == ty => return Some(v),
            Ok(Ok(v)) if v["type"] == "error" => note_error(counts, &v),
            Ok(Ok(_)) => {}
            Ok(Err(())) | Err(_) => return None,
        }
    }
}

fn note_error(counts: &Counts, v: &Value) {
    let code = v["code"].as_str().unwrap_or("?").to_owned();
    *counts.errors.lock().unwrap().entry(code).or_default() += 1;
}

/// Sets up one pair: a broadcaster live and a watcher paired with it.
async fn pair_up(port: u16, title: &str, counts: &Counts) -> Option<(Client, Client)> {
    for _ in 0..20 {
        let Some(mut b) = Client::connect(port).await else {
            counts.setup_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        b.send(&json!({"type": "publish", "title": title})).await;
        let Some(published) = wait_for(&mut b, "published", Duration::from_secs(5), counts).await else {
            counts.setup_retries.fetch_add(1, Ordering::Relaxed);
            b.close().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let stream = published["stream"]["id"].clone();
        let Some(mut w) = Client::connect(port).await else {
            b.close().await;
            continue;
        };
        w.send(&json!({"type": "watch", "stream_id": stream})).await;
        if wait_for(&mut b, "watcher_joined", Duration::from_secs(5), counts).await.is_some() {
            return Some((b, w));
        }
        counts.setup_retries.fetch_add(1, Ordering::Relaxed);
        w.close().await;
        b.send(&json!({"type": "unpublish"})).await;
        b.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

struct InFlight {
    sent: Instant,
}

impl Client {
    /// Whether a message sent at `sent` (by or to this client) overlapped one of its outages: from
    /// a second before the drop was noticed (what a dying socket took) to a second after it was
    /// back (routing catching up with the move).
    fn was_out_around(&self, sent: Instant) -> bool {
        let slack = Duration::from_secs(1);
        self.outages.iter().any(|&(down, up)| sent + slack >= down && sent <= up + slack) || self.ws.is_none()
    }
}

/// One pair's life: signals both ways until `lifetime` (resuming through faults), then both leave.
async fn pair_life(mut b: Client, mut w: Client, lifetime: Duration, id: String, counts: &Counts) {
    let end = Instant::now() + lifetime;
    let mut flying: HashMap<String, InFlight> = HashMap::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(SEND_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= end { break }
                for from_b in [true, false] {
                    let (from, to) = if from_b { (&mut b, &w) } else { (&mut w, &b) };
                    seq += 1;
                    let marker = format!("{id}-{seq}");
                    let msg = json!({"type": "signal", "to": to.peer, "kind": "candidate",
                                     "payload": {"candidate": marker}});
                    if from.send(&msg).await {
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        flying.insert(marker, InFlight { sent: Instant::now() });
                    }
                }
                judge(&mut flying, &b, &w, counts, false);
            }
            got = b.next() => if !receive(got, &mut b, &mut flying, counts).await { break },
            got = w.next() => if !receive(got, &mut w, &mut flying, counts).await { break },
        }
    }
    // Whatever is still in flight gets its full chance while both are still connected.
    let settle = Instant::now() + JUDGE_AFTER;
    while !flying.is_empty() && Instant::now() < settle {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            got = b.next() => if !receive(got, &mut b, &mut flying, counts).await { break },
            got = w.next() => if !receive(got, &mut w, &mut flying, counts).await { break },
        }
    }
    judge(&mut flying, &b, &w, counts, true);
    w.send(&json!({"type": "unwatch"})).await;
    w.close().await;
    b.send(&json!({"type": "unpublish"})).await;
    b.close().await;
    counts.pairs_done.fetch_add(1, Ordering::Relaxed);
}

/// Handles one frame of `c`; on a dropped connection, resumes. `false`: the pair is broken.
async fn receive(
    got: Result<Value, ()>,
    c: &mut Client,
    flying: &mut HashMap<String, InFlight>,
    counts: &Counts,
) -> bool {
    match got {
        Ok(v) if v["type"] == "signal" => {
            if let Some(m) = v["payload"]["candidate"].as_str().and_then(|m| flying.remove(m)) {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                counts
                    .latencies_us
                    .lock()
                    .unwrap()
                    .push(u64::try_from(m.sent.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            true
        }
        Ok(v) if v["type"] == "error" => {
            note_error(counts, &v);
            c.last_error = Some(Instant::now());
            true
        }
        Ok(_) => true,
        Err(()) => c.resume(counts).await,
    }
}

/// Judges the messages older than [`JUDGE_AFTER`] (all of them when `all`): refused (an error
/// came back to a side since it was sent), lost around a reconnect (a side's connection dropped
/// about then: a killed gateway takes what it held), or lost.
fn judge(flying: &mut HashMap<String, InFlight>, b: &Client, w: &Client, counts: &Counts, all: bool) {
    let now = Instant::now();
    flying.retain(|_, m| {
        if !all && now.duration_since(m.sent) < JUDGE_AFTER {
            return true;
        }
        let errored = |c: &Client| c.last_error.is_some_and(|t| t >= m.sent);
        let counter = if errored(b) || errored(w) {
            &counts.refused
        } else if b.was_out_around(m.sent) || w.was_out_around(m.sent) {
            &counts.lost_in_reconnect
        } else {
            &counts.lost
        };
        counter.fetch_add(1, Ordering::Relaxed);
        false
    });
}

/// Runs pairs one after another until `deadline`.
async fn pair_slot(slot: usize, port: u16, deadline: Instant, counts: Arc<Counts>, active: Arc<AtomicUsize>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (slot as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut generation = 0;
    // Stagger the start so setups do not all land at once.
    tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
    while Instant::now() + Duration::from_secs(15) < deadline {
        generation += 1;
        let id = format!("p{slot}g{generation}");
        let Some((b, w)) = pair_up(port, &format!("soak {id}"), &counts).await else { continue };
        active.fetch_add(1, Ordering::Relaxed);
        let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_secs(10));
        let lifetime = Duration::from_secs(20 + rng.below(40)).min(left);
        pair_life(b, w, lifetime, id, &counts).await;
        active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RSS (KiB) and open files of a process.
fn footprint(p: &Onair) -> (u64, usize) {
    let pid = p.proc.pid().unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (proc_usage(pid).1, fds)
}

async fn live_streams(c: &Cluster) -> usize {
    let mut reg = onair_tests::registry::client(&c.registry.grpc_url()).await;
    let mut n = 0;
    let mut token = String::new();
    for _ in 0..100 {
        let req = pb::ListStreamsRequest { state: pb::StreamState::Live.into(), page_size: 100, page_token: token };
        let Ok(page) = reg.list_streams(req).await else { return usize::MAX };
        let page = page.into_inner();
        n += page.streams.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    n
}

fn freeze(pid: u32, stop: bool) {
    let sig = if stop { "-STOP" } else { "-CONT" };
    let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Injects fault number `n` (they rotate); returns what it was.
async fn fault(c: &mut Cluster, n: usize) -> &'static str {
    match n % 6 {
        0 => {
            c.gateways[0].proc.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.gateways[0].restart().await;
            "gateway gw-0 kill -9, back after 1 s"
        }
        1 => {
            c.redis.proc.kill();
            c.redis.restart().await;
            "Redis restarted empty"
        }
        2 => {
            c.gateways[0].proc.terminate(Duration::from_secs(30)).await;
            c.gateways[0].restart().await;
            "gateway gw-0 SIGTERM (drain), restarted"
        }
        3 => {
            c.signaling.proc.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.signaling.restart().await;
            "signaling kill -9, back after 0.5 s"
        }
        4 => {
            let pid = c.mongo.proc.pid().unwrap();
            freeze(pid, true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            freeze(pid, false);
            "MongoDB frozen 5 s"
        }
        _ => {
            let pid = c.redis.proc.pid().unwrap();
            freeze(pid, true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            freeze(pid, false);
            "Redis frozen 5 s"
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut c = Cluster::start(2, true).await;
    let port = c.front();
    let watched = |c: &Cluster| vec![("gw-1", footprint(&c.gateways[1])), ("registry", footprint(&c.registry))];
    let idle_before = watched(&c);
    let counts = Arc::new(Counts::default());
    let active = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.minutes * 60.0);
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..a.pairs {
        slots.spawn(pair_slot(slot, port, deadline, Arc::clone(&counts), Arc::clone(&active)));
    }
    println!(
        "soak: {} pairs for {} min, a fault every {:?}, through nginx on :{port}",
        a.pairs, a.minutes, a.fault_every
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let loaded_before = watched(&c);
    let mut faults = 0;
    let mut next_fault = Instant::now() + a.fault_every;
    while Instant::now() + Duration::from_secs(30) < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Instant::now() >= next_fault {
            let at = started.elapsed().as_secs();
            let what = fault(&mut c, faults).await;
            faults += 1;
            next_fault = Instant::now() + a.fault_every;
            let (d, l, r) = (
                counts.delivered.load(Ordering::Relaxed),
                counts.lost.load(Ordering::Relaxed),
                counts.lost_in_reconnect.load(Ordering::Relaxed),
            );
            println!(
                "  t={at:>4}s fault {faults}: {what}; pairs live {}; so far delivered {d}, lost {l}, lost across reconnects {r}",
                active.load(Ordering::Relaxed)
            );
        }
    }
    let loaded_after = watched(&c);
    while slots.join_next().await.is_some() {}
    // Streams of sockets that closed are ended at once; give the resume grace (15 s) and a sweep.
    let mut orphans = live_streams(&c).await;
    let settle = Instant::now();
    while orphans > 0 && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        orphans = live_streams(&c).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_after = watched(&c);

    let n = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let mut lat = counts.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len().saturating_sub(1)) as f64 * p) as usize).map_or(f64::NAN, |v| *v as f64 / 1000.0);
    println!();
    println!("| soak ({:.0} min, {} pairs, {faults} faults) | figure |", a.minutes, a.pairs);
    println!("|---|---|");
    println!("| pairs completed | {} |", n(&counts.pairs_done));
    println!("| signals sent / delivered | {} / {} |", n(&counts.sent), n(&counts.delivered));
    println!("| refused with an error frame (routing down) | {} |", n(&counts.refused));
    println!(
        "| lost around a reconnect of either side (±1 s: what a dying socket held, routing catching up) | {} |",
        n(&counts.lost_in_reconnect)
    );
    println!("| **lost otherwise** | **{}** |", n(&counts.lost));
    println!("| delivery p50 / p99 / max (ms) | {:.2} / {:.2} / {:.0} |", pct(0.5), pct(0.99), pct(1.0));
    println!("| resumed / resume failed | {} / {} |", n(&counts.resumed), n(&counts.resume_failed));
    println!("| setup retries | {} |", n(&counts.setup_retries));
    println!("| error frames by code | {:?} |", counts.errors.lock().unwrap());
    println!("| **live streams left 30 s after every client left (orphans)** | **{orphans}** |");
    for (i, (name, _)) in idle_before.iter().enumerate() {
        let (ib, lb, la, ia) = (idle_before[i].1, loaded_before[i].1, loaded_after[i].1, idle_after[i].1);
        println!("| {name}: RSS KiB idle→loaded→loaded (end)→idle | {}→{}→{}→{} |", ib.0, lb.0, la.0, ia.0);
        println!("| {name}: open files idle→loaded→loaded (end)→idle | {}→{}→{}→{} |", ib.1, lb.1, la.1, ia.1);
    }
}
