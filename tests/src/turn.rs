//! A real coturn (`turnserver`, Debian package `coturn`) on free loopback ports, and allocations
//! against it with coturn's own client (`turnutils_uclient`).

use std::process::Stdio;
use std::time::Duration;

use crate::procs::{Proc, free_port, wait_port};

/// `turnserver` with `use-auth-secret`: checks TURN REST API credentials made with `secret`.
pub struct Coturn {
    /// The process.
    pub proc: Proc,
    /// Its UDP and TCP port (127.0.0.1).
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Coturn {
    /// Starts coturn (no config file, no daemon, no CLI, no TLS) and waits for its TCP port.
    pub async fn start(secret: &str) -> Self {
        Self::start_with_relay_ports(secret, None).await
    }

    /// [`Coturn::start`] relaying on `relay` ports (min, max) instead of a window of 100 derived
    /// from its port (so parallel tests rarely overlap; coturn skips ports it cannot bind anyway).
    pub async fn start_with_relay_ports(secret: &str, relay: Option<(u16, u16)>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("onair-coturn-{}-{}", std::process::id(), crate::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let (min, max) = relay.unwrap_or((49152 + (port % 150) * 100, 49152 + (port % 150) * 100 + 99));
        let args = vec![
            "-n".to_owned(),
            "--listening-ip=127.0.0.1".to_owned(),
            "--relay-ip=127.0.0.1".to_owned(),
            format!("--listening-port={port}"),
            format!("--min-port={min}"),
            format!("--max-port={max}"),
            "--use-auth-secret".to_owned(),
            format!("--static-auth-secret={secret}"),
            "--realm=onair.test".to_owned(),
            // The uclient's peer is its own relay on 127.0.0.1.
            "--allow-loopback-peers".to_owned(),
            "--no-tls".to_owned(),
            "--no-dtls".to_owned(),
            "--no-cli".to_owned(),
            "--log-file=stdout".to_owned(),
            "--simple-log".to_owned(),
            format!("--pidfile={}", dir.join("turnserver.pid").display()),
            format!("--userdb={}", dir.join("turndb").display()),
        ];
        let proc = Proc::spawn("coturn", "turnserver", args, vec![]);
        wait_port(port, "turnserver").await;
        Self { proc, port, dir }
    }

    /// TURN allocations on this coturn with `username`/`password`; see [`uclient`].
    pub async fn allocate(&self, username: &str, password: &str, tcp: bool) -> Result<String, String> {
        uclient(self.port, username, password, tcp).await
    }
}

/// TURN allocations on the TURN server at `127.0.0.1:port` with `username`/`password`
/// (long-term credentials), over UDP or TCP, followed by a relayed message (`turnutils_uclient
/// -y`: two clients relay to each other through two allocations, each the other's peer).
/// `Ok(output)` when the allocations succeeded and data was relayed, `Err(output)` otherwise.
pub async fn uclient(port: u16, username: &str, password: &str, tcp: bool) -> Result<String, String> {
    uclient_with(if tcp { &["-t"] } else { &[] }, port, username, password).await
}

/// [`uclient`] over TLS (`turns:`; the server certificate is not verified).
pub async fn uclient_tls(port: u16, username: &str, password: &str) -> Result<String, String> {
    uclient_with(&["-t", "-S"], port, username, password).await
}

/// [`uclient`] with extra `turnutils_uclient` flags (e.g. `-x`: ask for an IPv6 relayed address).
pub async fn uclient_with(flags: &[&str], port: u16, username: &str, password: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("turnutils_uclient");
    cmd.args(flags);
    // -y: two clients relay to each other; -c: no RTCP pair (half the allocations); -n 1: one message.
    cmd.args(["-y", "-c", "-n", "1", "-p", &port.to_string(), "-u", username, "-w", password, "127.0.0.1"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("turnutils_uclient did not finish within 30 s")
        .expect("cannot run turnutils_uclient (apt-get install coturn; scripts/install-deps.sh does)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Relayed messages came back through the allocations (the final tally, not just a 0 exit).
    let received = text
        .rsplit("tot_recv_msgs=")
        .next()
        .filter(|_| text.contains("tot_recv_msgs="))
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if out.status.success() && !text.contains("Cannot complete Allocation") && received > 0 {
        Ok(text)
    } else {
        Err(text)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
