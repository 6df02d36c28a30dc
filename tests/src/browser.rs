//! Real Chromium driven over WebDriver (chromedriver), with the fake camera and
//! microphone. A minimal W3C WebDriver client: sessions, navigation, scripts,
//! screenshots. Everything else is done with JavaScript in the page.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netlab::Netns;
use crate::procs::{Proc, free_port, wait_port};

/// Chromium flags known to work here (see DESIGN.md).
pub const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,800",
];

/// Where a chromedriver listens: 127.0.0.1:`port` here, or inside a lab namespace.
#[derive(Debug, Clone)]
struct Driver {
    port: u16,
    netns: Option<Netns>,
}

impl Driver {
    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        match &self.netns {
            None => tokio::net::TcpStream::connect(addr).await,
            Some(ns) => {
                let s = ns.tcp_connect(addr, Duration::from_secs(5))?;
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            }
        }
    }
}

/// One HTTP/1.1 request with a JSON body; returns (status, JSON).
async fn request(driver: &Driver, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let port = driver.port;
    let mut s = driver.connect().await.expect("chromedriver unreachable");
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), read).await.expect("webdriver timed out");
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    (status, serde_json::from_str(&payload).unwrap_or(Value::Null))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A chromedriver process and one browser session.
pub struct Browser {
    driver: Proc,
    conn: Driver,
    session: String,
    profile: PathBuf,
    /// Deleted on drop: the profile, or the whole `HOME` of a browser in a namespace.
    dir: PathBuf,
    /// Name used in logs and screenshots.
    pub name: String,
}

impl Browser {
    /// Starts chromedriver and a fresh Chromium session (own profile directory).
    pub async fn start(name: &str) -> Self {
        let port = free_port();
        let driver = Proc::spawn(
            &format!("chromedriver-{name}"),
            "chromedriver",
            vec![format!("--port={port}"), "--allowed-ips=127.0.0.1".into()],
            vec![],
        );
        wait_port(port, "chromedriver").await;
        let profile = std::env::temp_dir().join(format!("onair-chrome-{name}-{}-{port}", std::process::id()));
        Self::session(name, driver, Driver { port, netns: None }, profile.clone(), profile, &[]).await
    }

    /// Starts chromedriver, and so Chromium, inside the namespace `netns` (a NAT lab home), with
    /// its own `HOME` whose NSS database (`~/.pki/nssdb`, what Chromium on Linux trusts) holds
    /// `ca_pem` as a trusted CA: HTTPS pages of a server with a certificate of that CA are a
    /// secure context, as on a real machine with a real certificate.
    pub async fn start_in(name: &str, netns: &Netns, ca_pem: &str) -> Self {
        Self::start_in_with(name, netns, ca_pem, &[]).await
    }

    /// [`Browser::start_in`] with more Chromium flags (e.g. a camera file:
    /// `--use-file-for-fake-video-capture=F`).
    pub async fn start_in_with(name: &str, netns: &Netns, ca_pem: &str, flags: &[String]) -> Self {
        Self::start_in_niced(name, netns, ca_pem, flags, 0).await
    }

    /// [`Browser::start_in_with`] at scheduling niceness `nice` (0: as this process): on two cores
    /// shared by several Chromiums, a niced broadcaster (whose encoder adapts) leaves the watchers
    /// the CPU their receive timestamps need, which bandwidth estimates are made of.
    pub async fn start_in_niced(name: &str, netns: &Netns, ca_pem: &str, flags: &[String], nice: i32) -> Self {
        let id = format!("{name}-{}-{}", std::process::id(), crate::unique());
        let home = std::env::temp_dir().join(format!("onair-chrome-home-{id}"));
        trust_ca(&home, ca_pem);
        // Only this process's browsers listen inside the home: one port each.
        let port = 9515 + u16::try_from(crate::unique() % 1000).unwrap();
        let ip_netns = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            netns.name().into(),
            "chromedriver".into(),
            format!("--port={port}"),
        ];
        let args: Vec<String> = ["-n".to_owned(), nice.to_string()].into_iter().chain(ip_netns).collect();
        let driver = Proc::spawn(
            &format!("chromedriver-{name}"),
            "nice",
            args,
            vec![("HOME".into(), home.display().to_string())],
        );
        let conn = Driver { port, netns: Some(netns.clone()) };
        let start = Instant::now();
        while conn.connect().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver in {} did not listen", netns.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self::session(name, driver, conn, home.join("profile"), home, flags).await
    }

    async fn session(name: &str, driver: Proc, conn: Driver, profile: PathBuf, dir: PathBuf, flags: &[String]) -> Self {
        std::fs::create_dir_all(&profile).unwrap();
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| (*s).to_owned()).chain(flags.iter().cloned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let (status, v) = request(&conn, "POST", "/session", Some(&caps)).await;
        assert_eq!(status, 200, "cannot start Chromium: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Self { driver, conn, session, profile, dir, name: name.to_owned() }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = request(&self.conn, method, &format!("/session/{}{path}", self.session), body.as_ref()).await;
        assert_eq!(status, 200, "{} {path} failed: {v}", self.name);
        v["value"].clone()
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body; `arguments` available) and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Runs `script` as an async function body (`await` allowed) and returns what it resolves to.
    pub async fn eval_async(&self, script: &str) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, (e) => done({{error: String(e)}}));"
        );
        self.cmd("POST", "/execute/async", Some(json!({"script": wrapped, "args": []}))).await
    }

    /// Polls `script` every 100 ms until it returns something truthy; returns it. Panics after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(script).await;
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if start.elapsed() > timeout {
                let shot = self.screenshot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                let status = self.eval("return document.body ? document.body.innerText.slice(0, 2000) : ''").await;
                let console = self.console().await;
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; screenshot {}; page text: {status}\nconsole:\n{console}",
                    self.name,
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser console's messages since the last call (chromedriver's log endpoint), one a line.
    pub async fn console(&self) -> String {
        let (_, v) = request(
            &self.conn,
            "POST",
            &format!("/session/{}/se/log", self.session),
            Some(&json!({"type": "browser"})),
        )
        .await;
        v["value"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Opens /broadcast at `base`, waits for the camera, goes live with `title`; returns the stream id.
    pub async fn go_live(&self, base: &str, title: &str) -> String {
        self.go_live_at(&format!("{base}/broadcast"), title).await
    }

    /// Like [`Browser::go_live`] on the broadcast page at `url` (e.g. with `#access_token=`).
    pub async fn go_live_at(&self, url: &str, title: &str) -> String {
        let long = Duration::from_secs(20);
        self.goto(url).await;
        self.wait_for(
            "the camera preview",
            long,
            "const v = document.getElementById('preview'); return v && v.videoWidth > 0",
        )
        .await;
        self.eval(&format!(
            "const t = document.getElementById('title'); t.value = {}; t.dispatchEvent(new Event('input', {{bubbles: true}})); document.getElementById('go-live').click(); return true",
            Value::String(title.into())
        ))
        .await;
        self.wait_for("status Live", long, "return document.getElementById('status').textContent.trim() === 'Live'")
            .await;
        self.screenshot("broadcast-live").await;
        self.wait_for(
            "the stream id",
            long,
            "return (window.onair && window.onair.state && window.onair.state.stream && window.onair.state.stream.id) || ''",
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Clicks Stop on the broadcast page.
    pub async fn stop_broadcast(&self) {
        self.eval("document.getElementById('stop').click(); return true").await;
    }

    /// Saves a PNG screenshot under the temp dir; returns its path.
    pub async fn screenshot(&self, label: &str) -> PathBuf {
        let v = self.cmd("GET", "/screenshot", None).await;
        let path = std::env::temp_dir().join(format!("onair-{}-{label}.png", self.name));
        if let Some(b64) = v.as_str() {
            let png =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).expect("screenshot is base64");
            std::fs::write(&path, png).unwrap();
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let (conn, session) = (self.conn.clone(), self.session.clone());
        // Best effort: end the session so Chromium exits, then kill the driver.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        request(&conn, "DELETE", &format!("/session/{session}"), None),
                    )
                    .await;
                });
            }
        })
        .join();
        self.driver.kill();
        // Chromium outlives a killed chromedriver if the session could not be ended: kill it by its profile.
        let _ = std::process::Command::new("pkill")
            .args(["-f", "--"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates an NSS database under `home/.pki/nssdb` trusting `ca_pem` for TLS servers
/// (`certutil`, Debian package `libnss3-tools`).
fn trust_ca(home: &std::path::Path, ca_pem: &str) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let ca = home.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let dbarg = format!("sql:{}", db.display());
    for args in [
        vec!["-N", "-d", &dbarg, "--empty-password"],
        vec!["-A", "-d", &dbarg, "-t", "C,,", "-n", "onair test CA", "-i", ca.to_str().unwrap()],
    ] {
        let out = std::process::Command::new("certutil")
            .args(&args)
            .output()
            .expect("cannot run certutil: apt-get install libnss3-tools (scripts/install-deps.sh does)");
        assert!(out.status.success(), "certutil {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Opens the watcher page, waits for `title` in the live list (no reload), clicks it, and
/// returns the click → first decoded frame time in ms.
pub async fn watch(w: &Browser, title: &str) -> f64 {
    let find = format!(
        "return [...document.querySelectorAll('#streams [data-stream-id]')].find(li => li.textContent.includes({})) || null",
        Value::String(title.into())
    );
    w.wait_for("the stream in the live list", Duration::from_secs(20), &format!("{find} ? true : false")).await;
    w.eval(&format!(
        "const li = (() => {{ {find} }})(); const p = document.getElementById('player'); window.__t0 = performance.now(); window.__first = null; \
         const cb = () => {{ if (p.videoWidth > 0) window.__first = performance.now() - window.__t0; else p.requestVideoFrameCallback(cb); }}; \
         p.requestVideoFrameCallback(cb); (li.querySelector('button') || li).click(); return true"
    ))
    .await;
    let first = w.wait_for("the first video frame", Duration::from_secs(20), "return window.__first").await;
    // Real frames keep coming: currentTime advances.
    let t1 = w.eval("return document.getElementById('player').currentTime").await.as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t2 = w.eval("return document.getElementById('player').currentTime").await.as_f64().unwrap();
    assert!(t2 > t1, "currentTime does not advance ({t1} → {t2})");
    let width = w.eval("return document.getElementById('player').videoWidth").await;
    assert!(width.as_u64().unwrap() > 0);
    first.as_f64().unwrap()
}

/// Clicks Leave on the watcher page and waits for the player to close.
pub async fn leave(w: &Browser) {
    w.eval("document.getElementById('leave').click(); return true").await;
    w.wait_for("the player to stop", Duration::from_secs(30), "return document.getElementById('stage').hidden").await;
}

/// The median.
pub fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
