//! A real coturn (`turnserver`, Debian package `coturn`) on free loopback ports, and allocations
//! against it with coturn's own client (`turnutils_uclient`).

use std::process::Stdio;
use std::time::Duration;

use std::net::IpAddr;

use crate::procs::{LOCALHOST, Proc, free_port, port_open_at, wait_until};

/// `turnserver` with `use-auth-secret`: checks TURN REST API credentials made with `secret`.
pub struct Coturn {
    /// The process.
    pub proc: Proc,
    /// Its UDP and TCP port.
    pub port: u16,
    /// The address it listens and relays on.
    pub ip: IpAddr,
    dir: std::path::PathBuf,
}

impl Coturn {
    /// `turn:` URLs for `--ice-servers`: UDP and TCP (plus `stun:` on the same port).
    pub fn ice_servers(&self) -> String {
        let (ip, port) = (self.ip, self.port);
        format!("stun:{ip}:{port},turn:{ip}:{port},turn:{ip}:{port}?transport=tcp")
    }

    /// Starts coturn (no config file, no daemon, no CLI, no TLS) and waits for its TCP port.
    pub async fn start(secret: &str) -> Self {
        Self::start_at(secret, LOCALHOST, free_port()).await
    }

    /// Like [`Coturn::start`], listening and relaying on `ip:port` (e.g. a NAT lab's public
    /// address and the standard port 3478).
    pub async fn start_at(secret: &str, ip: IpAddr, port: u16) -> Self {
        Self::start_with_relay_ports(secret, ip, port, None).await
    }

    /// Like [`Coturn::start_at`], relaying on `relay` ports (min, max) instead of a window of 100
    /// derived from its port (so parallel tests rarely overlap; coturn skips ports it cannot bind
    /// anyway).
    pub async fn start_with_relay_ports(secret: &str, ip: IpAddr, port: u16, relay: Option<(u16, u16)>) -> Self {
        let dir = std::env::temp_dir().join(format!("onair-coturn-{}-{}", std::process::id(), crate::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let (min, max) = relay.unwrap_or((49152 + (port % 150) * 100, 49152 + (port % 150) * 100 + 99));
        let args = vec![
            "-n".to_owned(),
            format!("--listening-ip={ip}"),
            format!("--relay-ip={ip}"),
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
        wait_until(Duration::from_secs(20), &format!("turnserver to listen on {ip}:{port}"), || async move {
            port_open_at(ip, port)
        })
        .await;
        Self { proc, port, ip, dir }
    }

    /// TURN allocations on this coturn with `username`/`password`; see [`uclient`].
    pub async fn allocate(&self, username: &str, password: &str, tcp: bool) -> Result<String, String> {
        uclient_at(self.ip, if tcp { &["-t"] } else { &[] }, self.port, username, password).await
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
    uclient_at(LOCALHOST, flags, port, username, password).await
}

/// [`uclient_with`] against the server at `ip:port`.
pub async fn uclient_at(
    ip: IpAddr,
    flags: &[&str],
    port: u16,
    username: &str,
    password: &str,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("turnutils_uclient");
    cmd.args(flags);
    // -y: two clients relay to each other; -c: no RTCP pair (half the allocations); -n 1: one message.
    let (port, ip) = (port.to_string(), ip.to_string());
    cmd.args(["-y", "-c", "-n", "1", "-p", &port, "-u", username, "-w", password, &ip]);
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
