//! `make bench`: onair's signaling against the stack it replaces, in the same run, with the same load
//! generator (`bench/signaling/load.js`: socket.io-client for the baseline, plain WebSocket for
//! onair), the same payload (a 205-byte trickled ICE candidate echoed back), the same pairing (the two
//! sides of a pair on different nodes) and the same accounting (CPU of every server process,
//! Redis included, read from /proc over the measured window).
//!
//! Baseline: two Node processes running socket.io 4.8 + @socket.io/redis-adapter 8.3 on one Redis
//! (`bench/signaling/server.js`). onair: two gateways + signaling + registry + Redis (+ the MongoDB-wire
//! server), the registry and MongoDB left out of the CPU sum as they take no part in relaying.
//! Output: a markdown table on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use onair_tests::Redis;
use onair_tests::cluster::{Cluster, repo_root};
use onair_tests::procs::{Proc, free_port, wait_port};
use serde_json::Value;

fn bench_dir() -> PathBuf {
    repo_root().join("bench/signaling")
}

/// One load scenario.
#[derive(Clone, Copy)]
struct Load {
    pairs: usize,
    /// Round trips per second per pair (paced), or 0 for closed loop.
    rate: u32,
    /// Messages in flight per pair (closed loop), or 0 for paced.
    window: u32,
}

impl Load {
    fn label(self) -> String {
        if self.window > 0 {
            format!("{} pairs, closed loop, window {}", self.pairs, self.window)
        } else {
            format!(
                "{} pairs × {} round trips/s (offered {} msg/s)",
                self.pairs,
                self.rate,
                self.pairs * self.rate as usize * 2
            )
        }
    }
}

const SCENARIOS: [Load; 4] = [
    Load { pairs: 100, rate: 20, window: 0 },
    Load { pairs: 400, rate: 20, window: 0 },
    Load { pairs: 100, rate: 0, window: 1 },
    Load { pairs: 100, rate: 0, window: 8 },
];

async fn run_load(stack: &str, a: &str, b: &str, load: Load, pids: &[u32]) -> Value {
    let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
    let (pairs, rate, window) = (load.pairs.to_string(), load.rate.to_string(), load.window.to_string());
    let out = tokio::process::Command::new("node")
        .arg(bench_dir().join("load.js"))
        .args(["--stack", stack, "--a", a, "--b", b, "--pairs", &pairs, "--rate", &rate, "--window", &window])
        .args(["--seconds", "10", "--warmup", "2", "--pids", &pids.join(",")])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out).await.expect("load generator timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("load generator failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// One table row; `names` label the processes of the per-process CPU column (in `--pids` order).
fn row(stack: &str, load: Load, r: &Value, names: &[&str]) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let each: Vec<String> = r["cpu_us_per_msg_each"]
        .as_array()
        .map(|a| a.iter().zip(names).map(|(v, n)| format!("{n} {:.0}", v.as_f64().unwrap_or(f64::NAN))).collect())
        .unwrap_or_default();
    println!(
        "| {} | {stack} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {} |",
        load.label(),
        f("delivered_per_s"),
        f("p50_ms"),
        f("p99_ms"),
        f("max_ms"),
        r["lost"],
        f("cpu_us_per_msg"),
        each.join(", "),
    );
}

/// The baseline's two Node servers on one Redis.
struct SocketIo {
    _redis: Redis,
    servers: Vec<(Proc, u16)>,
    redis_pid: u32,
}

impl SocketIo {
    async fn start() -> Self {
        let redis = Redis::start().await;
        let mut servers = Vec::new();
        for i in 0..2 {
            let port = free_port();
            let envs = vec![("PORT".to_owned(), port.to_string()), ("REDIS_URL".to_owned(), redis.url())];
            let script = bench_dir().join("server.js").display().to_string();
            let p = Proc::spawn(&format!("socketio-{i}"), "node", vec![script], envs);
            wait_port(port, "socket.io server").await;
            servers.push((p, port));
        }
        let redis_pid = redis.proc.pid().unwrap();
        Self { _redis: redis, servers, redis_pid }
    }

    fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(|(p, _)| p.pid()).chain([self.redis_pid]).collect()
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].1)
    }
}

#[tokio::main]
async fn main() {
    let node_modules = bench_dir().join("node_modules");
    assert!(node_modules.exists(), "run `npm ci --prefix bench/signaling` first (make bench does)");
    println!(
        "\n### Signaling: onair vs socket.io 4.8 + redis-adapter 8.3 (same load generator, same run; {} cores)\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!(
        "CPU: every server process that relays (Node servers + Redis; gateways + signaling + Redis), from /proc over the 10 s window.\n"
    );
    println!(
        "| load | stack | delivered msg/s | RTT p50 ms | p99 ms | max ms | lost | server CPU µs/msg | per process |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let lift = ["--max-sockets-per-ip", "0", "--ws-rate", "100000", "--ws-burst", "100000"];
    // VERSUS_SCENARIOS=0,2 runs only those (indices into SCENARIOS).
    let only: Option<Vec<usize>> =
        std::env::var("VERSUS_SCENARIOS").ok().map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    for (i, load) in SCENARIOS.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let sio = SocketIo::start().await;
        let r = run_load("socketio", &sio.url(0), &sio.url(1), load, &sio.pids()).await;
        row("socket.io + redis-adapter", load, &r, &["node A", "node B", "redis"]);
        drop(sio);

        let c = Cluster::start_tuned(2, false, false, None, &lift).await;
        let pids: Vec<u32> = [&c.gateways[0].proc, &c.gateways[1].proc, &c.signaling.proc, &c.redis.proc]
            .iter()
            .filter_map(|p| p.pid())
            .collect();
        let (a, b) =
            (format!("ws://127.0.0.1:{}/ws", c.gateways[0].http), format!("ws://127.0.0.1:{}/ws", c.gateways[1].http));
        let r = run_load("onair", &a, &b, load, &pids).await;
        row("onair (2 gateways + signaling)", load, &r, &["gw A", "gw B", "signaling", "redis"]);
    }
}
