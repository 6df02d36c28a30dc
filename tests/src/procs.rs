//! Child processes with logs, kill-on-drop and restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/install-deps.sh put the Python venv and helm (`$ONAIR_TOOLS_DIR`).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("ONAIR_TOOLS_DIR").map_or_else(|| PathBuf::from("/var/tmp/onair-tools"), PathBuf::from)
}

/// Starts a server that cannot bind port 0 itself (redis-server, secantusd, nginx) on a port that
/// was free a moment ago; if another process took it meanwhile (the server exits), tries a new one.
pub async fn start_on_free_port(name: &str, program: PathBuf, args: impl Fn(u16) -> Vec<String>) -> (Proc, u16) {
    start_on_free_port_at(name, program, LOCALHOST, args).await
}

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Like [`start_on_free_port`] for a server listening on `ip` (e.g. a podman bridge's host address).
pub async fn start_on_free_port_at(
    name: &str,
    program: PathBuf,
    ip: IpAddr,
    args: impl Fn(u16) -> Vec<String>,
) -> (Proc, u16) {
    for _ in 0..3 {
        let port = free_port();
        let mut proc = Proc::spawn(name, &program, args(port), vec![]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) && !proc.exited() {
            // Ours, not a socket another process took the free port for meanwhile (the server then
            // fails to bind, while the port answers).
            if port_open_at(ip, port) && proc.pid().is_some_and(|pid| listens(pid, port)) {
                return (proc, port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("{name} did not come up on {port}; retrying on another port:\n{}", proc.output());
    }
    panic!("{name} ({}) would not start on any free port", program.display());
}

/// Whether process `pid` holds a listening TCP socket on `port` (the inodes of its network
/// namespace's TCP tables, /proc/PID/net/tcp{,6}, against its open file descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        for line in std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex, st 0A is LISTEN, field 9 the socket inode.
            let local_port = f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// A port nobody uses right now (TCP and UDP), for servers that cannot bind port 0 and report it.
///
/// Picked below the kernel's ephemeral range (32768–60999 here): a port the kernel hands out for a
/// port-0 bind or an outgoing connection can be taken by any process between our pick and the
/// server's bind (seen in CI: Redis restarted on its port found another test's server there).
/// Below the range only explicit picks compete, and each process walks its own sequence.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // 10000..32000
    let seed = std::process::id().wrapping_mul(7_919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(LOW + seed.wrapping_add(n.wrapping_mul(104_729)) % SPAN).unwrap();
        let tcp = TcpListener::bind((LOCALHOST, port)).is_ok();
        if tcp && std::net::UdpSocket::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with `what` then.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_value(timeout, what, || {
        let f = cond();
        async move { f.await.then_some(()) }
    })
    .await;
}

/// Polls `value` every 20 ms until it gives something or `timeout` passes (panics with `what`
/// then); returns what it gave.
pub async fn wait_until_value<T, F, Fut>(timeout: Duration, what: &str, mut value: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = value().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Whether something accepts connections on `port`.
pub fn port_open(port: u16) -> bool {
    port_open_at(LOCALHOST, port)
}

/// Whether something accepts connections on `ip:port`.
pub fn port_open_at(ip: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(100)).is_ok()
}

/// Waits until something accepts connections on `port`.
pub async fn wait_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(20), &format!("{what} to listen on {port}"), || async move { port_open(port) })
        .await;
}

/// A child process restarted with the same command line; killed on drop.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    generation: u32,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("onair-test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Proc {
    /// Starts `program args` with stdout and stderr appended to a log file.
    pub fn spawn(name: &str, program: impl AsRef<Path>, args: Vec<String>, envs: Vec<(String, String)>) -> Self {
        let log = log_dir().join(format!("{name}-{}-{}.log", std::process::id(), unique()));
        let mut p = Self {
            name: name.to_owned(),
            program: program.as_ref().to_owned(),
            args,
            generation: 0,
            envs,
            log,
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        if self.generation > 0 {
            use std::io::Write;
            let _ = writeln!(&out, "---- restart {} ----", self.generation);
        }
        self.generation += 1;
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child =
            cmd.spawn().unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
    }

    /// Whether the process has exited (it must not, while a test expects it up).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code (`None`: killed by a
    /// signal). Panics if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let c = self.child.as_mut().expect("the process was never started");
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            assert!(start.elapsed() < timeout, "{} still running after {timeout:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap, with the process's own children (nginx's workers outlive a killed master
    /// and keep its port).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let children = children_of(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in children {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            }
        }
    }

    /// SIGTERM, then wait up to `timeout` for exit; returns the exit code (None if it had to be killed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts the same command line again (after `kill`/`terminate`).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Replaces the value after `flag` in the command line (for the next start).
    fn set_arg(&mut self, flag: &str, value: String) {
        if let Some(i) = self.args.iter().position(|a| a == flag)
            && let Some(v) = self.args.get_mut(i + 1)
        {
            *v = value;
        }
    }

    /// What the process printed since it was last (re)started.
    pub fn output(&self) -> String {
        let all = std::fs::read_to_string(&self.log).unwrap_or_default();
        match all.rfind("---- restart ") {
            Some(i) => all[i..].to_owned(),
            None => all,
        }
    }

    /// Waits until the current run's output contains `needle` (a log line written by a task that
    /// may still be running when the test sees its effect); panics after `timeout`.
    pub async fn wait_output(&self, needle: &str, timeout: Duration) {
        let what = format!("{needle:?} in the output of {}", self.name);
        wait_until(timeout, &what, || std::future::ready(self.output().contains(needle))).await;
    }

    /// Everything every run of the process printed.
    pub fn full_output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ({}) ----\n{}", self.name, self.log.display(), tail(&self.output(), 60));
        }
    }
}

/// The fields of `/proc/{pid}/stat` after the command name, from `state` on (the name, in
/// parentheses, may hold spaces): index 1 is the parent's pid, 11 and 12 user and system ticks.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().map(str::to_owned).collect()
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).get(1).and_then(|pp| pp.parse::<u32>().ok()) == Some(pid))
        .collect()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// An own redis-server on a free port (not the machine's shared one).
pub struct Redis {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
    /// The address it listens on.
    pub ip: IpAddr,
}

impl Redis {
    /// Starts redis-server and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_at(LOCALHOST).await
    }

    /// Starts redis-server listening on `ip` only.
    pub async fn start_at(ip: IpAddr) -> Self {
        // Protected mode refuses clients from anywhere but loopback; off when bound to another address
        // (a podman bridge's: host-local, for containers).
        let protected = if ip.is_loopback() { "yes" } else { "no" };
        let (proc, port) = start_on_free_port_at("redis", "redis-server".into(), ip, |port| {
            let args = ["--port", &port.to_string(), "--bind", &ip.to_string(), "--protected-mode", protected];
            args.into_iter().chain(["--save", "", "--appendonly", "no"]).map(String::from).collect()
        })
        .await;
        Self { proc, port, ip }
    }

    /// `redis://IP:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.ip, self.port)
    }

    /// Restarts it on the same port (data is lost, as after a crash).
    pub async fn restart(&mut self) {
        self.proc.restart();
        wait_port(self.port, "redis-server").await;
    }
}

/// A MongoDB-wire-compatible server (PyPI `secantusdb`, in memory) on a free port.
pub struct Mongo {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
    /// The address it listens on.
    pub ip: IpAddr,
}

impl Mongo {
    /// Starts the server and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_at(LOCALHOST).await
    }

    /// Starts the server listening on `ip` only.
    pub async fn start_at(ip: IpAddr) -> Self {
        let bin = tools_dir().join("venv/bin/secantusd-py");
        let (proc, port) = start_on_free_port_at("mongo", bin, ip, |port| {
            ["--host", &ip.to_string(), "--port", &port.to_string(), "--storage-path", ":memory:"]
                .map(String::from)
                .to_vec()
        })
        .await;
        Self { proc, port, ip }
    }

    /// Connection string for the driver.
    pub fn uri(&self) -> String {
        format!("mongodb://{}:{}/?retryWrites=false&directConnection=true", self.ip, self.port)
    }

    /// Starts it again on the same port after `proc.kill()`.
    pub async fn restart(&mut self) {
        self.proc.restart();
        wait_port(self.port, "secantusd").await;
    }
}

/// Path of the `onair` binary under test: `$ONAIR_BIN`, else next to the test's target dir.
pub fn onair_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ONAIR_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test-binary> → target/debug/onair
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("onair");
    assert!(bin.exists(), "{} not found: run `cargo build -p onair` first (make test does)", bin.display());
    bin
}

/// A running `onair` process with its ports.
pub struct Onair {
    /// The process.
    pub proc: Proc,
    /// gRPC port: the registry's in the all-in-one, else the one service's (`--grpc-addr`).
    pub grpc: u16,
    /// Admin HTTP port.
    pub admin: u16,
    /// Gateway HTTP port (0 for targets without a gateway).
    pub http: u16,
    /// Every address the process printed, by service: `registry`, `signaling`, `recorder`,
    /// `gateway`, `admin`.
    pub addrs: std::collections::BTreeMap<String, SocketAddr>,
}

/// What `onair` prints for each listener: "onair: <service> ... listening on [http://]ADDR".
fn printed_addrs(output: &str) -> std::collections::BTreeMap<String, SocketAddr> {
    let mut out = std::collections::BTreeMap::new();
    for line in output.lines().filter_map(|l| l.strip_prefix("onair: ")) {
        let Some((head, tail)) = line.split_once(" listening on ") else { continue };
        let service = head.split_whitespace().next().unwrap_or_default();
        let addr = tail
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if let Ok(a) = addr.parse() {
            out.insert(service.to_owned(), a);
        }
    }
    out
}

impl Onair {
    /// Starts `onair` with `args`, every listener on port 0; reads the ports it printed and waits
    /// until they accept connections.
    pub async fn start(name: &str, args: &[&str]) -> Self {
        Self::start_on(name, SocketAddr::new(LOCALHOST, 0), args).await
    }

    /// Like [`Onair::start`] with the gateway on `http` (e.g. a NAT lab's public address, port
    /// 443); gRPC and admin stay on 127.0.0.1.
    pub async fn start_on(name: &str, http: SocketAddr, args: &[&str]) -> Self {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        for (flag, addr) in [("--grpc-addr", "127.0.0.1:0".to_owned()), ("--admin-addr", "127.0.0.1:0".to_owned())] {
            all.extend([flag.to_owned(), addr]);
        }
        all.extend(["--http-addr".to_owned(), http.to_string()]);
        // A private data dir per process unless the test passes --data-dir (flags beat env).
        let data = std::env::temp_dir().join(format!("onair-data-{name}-{}-{}", std::process::id(), unique()));
        let envs = vec![
            ("RUST_LOG".to_owned(), "info,onair=debug".to_owned()),
            ("ONAIR_DATA_DIR".to_owned(), data.display().to_string()),
            // With --otlp-endpoint: spans leave within 200 ms (the SDK's default batches every 5 s).
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        ];
        Self::attach(Proc::spawn(name, onair_bin(), all, envs)).await
    }

    /// Wraps a process that runs `onair` some other way (e.g. `podman run`, whose output is the
    /// container's): reads the ports it printed and waits until they accept connections.
    pub async fn attach(proc: Proc) -> Self {
        let mut o = Self { proc, grpc: 0, admin: 0, http: 0, addrs: Default::default() };
        o.wait_healthy().await;
        o
    }

    /// Starts `onair` with `args` (listeners on port 0) expecting it to refuse to start: returns its
    /// exit code and everything it printed, within 20 s.
    pub async fn start_expecting_exit(name: &str, args: &[&str]) -> (Option<i32>, String) {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        for flag in ["--grpc-addr", "--admin-addr", "--http-addr"] {
            all.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let data = std::env::temp_dir().join(format!("onair-data-{name}-{}-{}", std::process::id(), unique()));
        let envs = vec![("ONAIR_DATA_DIR".to_owned(), data.display().to_string())];
        let mut proc = Proc::spawn(name, onair_bin(), all, envs);
        let code = proc.wait_exit(Duration::from_secs(20)).await;
        (code, proc.output())
    }

    /// Waits until the process printed its admin address and every port accepts connections;
    /// fails at once if the process exits.
    pub async fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            assert!(!self.proc.exited(), "onair exited at start-up:\n{}", self.proc.output());
            assert!(start.elapsed() < Duration::from_secs(20), "onair did not listen within 20 s");
            let addrs = printed_addrs(&self.proc.output());
            let reachable =
                |a: &SocketAddr| port_open_at(if a.ip().is_unspecified() { LOCALHOST } else { a.ip() }, a.port());
            if addrs.contains_key("admin") && addrs.values().all(reachable) {
                let port = |s: &str| addrs.get(s).map_or(0, SocketAddr::port);
                self.admin = port("admin");
                self.http = port("gateway");
                self.grpc = ["registry", "signaling", "recorder"].into_iter().map(port).find(|p| *p != 0).unwrap_or(0);
                self.addrs = addrs;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:GRPC`.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// GET on the admin port; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The un-labelled metric `name` from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.admin_get("/metrics").await;
        metric(&body, name).unwrap_or(0)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until(Duration::from_secs(20), "/readyz to pass", || async { self.admin_get("/readyz").await.0 == 200 })
            .await;
    }

    /// GET on the gateway HTTP port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// Starts it again on the ports it had (clients keep their URLs).
    pub async fn restart(&mut self) {
        self.proc.kill();
        let (grpc, admin, http) = (self.grpc, self.admin, self.http);
        let http_ip = self.addrs.get("gateway").map_or(LOCALHOST, SocketAddr::ip);
        for (flag, ip, port) in
            [("--grpc-addr", LOCALHOST, grpc), ("--admin-addr", LOCALHOST, admin), ("--http-addr", http_ip, http)]
        {
            if port != 0 {
                self.proc.set_arg(flag, SocketAddr::new(ip, port).to_string());
            }
        }
        self.proc.start();
        self.wait_healthy().await;
    }
}

/// A number unique within this test process (for file and directory names).
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One HTTP/1.1 GET on `ip:port` (no client crate needed): the response head and the body.
async fn raw_get(ip: IpAddr, port: u16, path: &str) -> std::io::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_owned(), body.to_owned()),
        None => (text, String::new()),
    })
}

fn status_of(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

async fn local_get(port: u16, path: &str) -> (String, String) {
    let get = raw_get(LOCALHOST, port, path);
    tokio::time::timeout(Duration::from_secs(10), get).await.expect("GET timed out").expect("GET failed")
}

/// GET on `127.0.0.1:port`; returns (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let (head, body) = local_get(port, path).await;
    (status_of(&head).unwrap_or(0), body)
}

/// GET on `127.0.0.1:port`; returns the status and the response head's headers (names lower-cased).
pub async fn http_head_of(port: u16, path: &str) -> (u16, Vec<(String, String)>) {
    let (head, _) = local_get(port, path).await;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status_of(&head).unwrap_or(0), headers)
}

/// Like [`http_get`] on `ip:port`, for probes: `None` if the connection or the request fails.
pub async fn http_get_at(ip: IpAddr, port: u16, path: &str) -> Option<(u16, String)> {
    let (head, body) = raw_get(ip, port, path).await.ok()?;
    Some((status_of(&head)?, body))
}

/// The value of the un-labelled metric `name` in a Prometheus text exposition, if present.
pub fn metric(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU time (user + system, in clock ticks) and RSS (KiB) of a process.
pub fn proc_usage(pid: u32) -> (u64, u64) {
    let f = stat_fields(pid);
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}
