//! `make bench`: the relay under load. One synthetic VP8 publisher (1 Mbit/s, 30 frames/s) and N
//! subscribers from the project's load client (`onair_tests::relayload`: each a WebSocket peer with
//! its own str0m connection and UDP socket, all in this process), against the all-in-one with its
//! relay (`ONAIR_BIN`, the release build under `make bench`). For each N: the relay process's CPU per
//! forwarded datagram and datagrams per second per core (from /proc and its metrics over the
//! measured window), RSS per subscriber, frames lost, the longest gap, and the added latency
//! (publisher send → subscriber receive, one clock). The load client shares the machine's two cores.
//! Output: a markdown table on stdout. `RELAY_BENCH_N=50,100` picks the rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use onair_tests::relayload::{self, LoadConfig};

#[tokio::main]
async fn main() {
    let rows: Vec<usize> = std::env::var("RELAY_BENCH_N")
        .unwrap_or_else(|_| "50,100,200,400".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!("\n## Relay: one 1 Mbit/s 30 fps VP8 publisher, N subscribers (load client on the same machine)\n");
    println!(
        "| subscribers | relay CPU µs / datagram out | datagrams out / s | per relay core / s | datagrams / send call \
         | RSS / subscriber KiB | frames lost | longest gap ms | latency p50 / p99 / max ms | all playing after s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in rows {
        let onair = relayload::start_server(&format!("relay-bench-{n}"), &["--relay-max-subscribers", "100000"]).await;
        let pid = onair.proc.pid().expect("the relay's pid");
        let cfg = LoadConfig {
            subscribers: n,
            kbps: 1000,
            fps: 30,
            measure: Duration::from_secs(10),
            server: Some((pid, onair.admin)),
            silence_first_after: None,
        };
        let r = relayload::run(onair.http, &cfg).await;
        if r.server.seconds == 0.0 {
            println!("| {n} | not measured: {} of {n} subscribers playing within 60 s | | | | | | | | |", r.playing);
            continue;
        }
        let s = r.server;
        #[allow(clippy::cast_precision_loss)]
        let (per_dgram, rate) =
            (s.cpu_seconds * 1e6 / s.datagrams_out.max(1) as f64, s.datagrams_out as f64 / s.seconds.max(0.001));
        let per_core = if s.cpu_seconds > 0.0 { s.datagrams_out as f64 / s.cpu_seconds } else { 0.0 };
        #[allow(clippy::cast_precision_loss)]
        let per_call = s.datagrams_out as f64 / s.send_calls.max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let rss_per = s.rss_after_kib.saturating_sub(s.rss_before_kib) as f64 / n as f64;
        let lost: u64 =
            r.missing.iter().sum::<u64>() + r.received.iter().map(|got| r.sent.saturating_sub(*got + 1)).sum::<u64>();
        let gap = r.longest_gap.iter().max().copied().unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {n} | {per_dgram:.1} | {rate:.0} | {per_core:.0} | {per_call:.2} | {rss_per:.0} | {lost} of {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.1} |",
            r.sent * n as u64,
            ms(gap),
            ms(r.latency(0.5)),
            ms(r.latency(0.99)),
            ms(r.latency(1.0)),
            r.all_connected_after.as_secs_f64(),
        );
        drop(onair);
    }
}
