//! The NAT lab: network namespaces (`ip netns`, veth, nftables) that model the internet between
//! onair and its users, so browsers reach the server the way real ones do.
//!
//! ```text
//!            public host  (namespace `<lab>-pub`, bridge br0)
//!            198.51.100.1  servers: onair (HTTPS), TURN
//!            203.0.113.1   gateway of the routers' WAN side
//!            default route: a veth that drops everything (the rest of the internet)
//!                 |
//!   +-------------+-------------+----------------+
//!   | 203.0.113.11              | 203.0.113.12   | ...      one WAN address per router
//! router 1                   router 2                      masquerade (`random`: symmetric),
//!   | 10.0.1.1                  | 10.0.2.1                 unsolicited inbound dropped,
//! home 1 (br0 10.0.1.2)      home 2 (br0 10.0.2.2)         optionally all UDP dropped
//! ```
//!
//! Only documentation ranges (RFC 5737) and private ranges are used, all inside the lab's own
//! namespaces; nothing touches the host's interfaces, routes or nftables. Every namespace name
//! starts with `onair-lab-<pid>-<n>-`, so parallel tests (nextest: one process each) never collide
//! and a later run deletes what a killed one left ([`Lab::build`]). Dropping the [`Lab`] kills
//! whatever still runs inside its namespaces and deletes them, also when the test panicked.
//!
//! A home can have two routers on its LAN (`HomeSpec::routers`): [`Lab::switch_router`] swaps its
//! default route mid-test, as a laptop moving from Wi-Fi to a phone hotspot.
//!
//! Code runs "on the public host" with [`Netns::block_on`]: a thread inside the namespace with its
//! own Tokio runtime, so the ordinary helpers (`Onair::start`, `Coturn`, gRPC clients, 127.0.0.1
//! ports) work there unchanged: children inherit the namespace of the thread that spawns them.
//! Browsers run inside homes ([`crate::browser::Browser::start_in`]).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables): `scripts/install-deps.sh` installs both. Without
//! them [`Lab::build`] panics saying so; nothing is skipped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The public host's server address (onair, TURN, the recorder's media).
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The public host's address on the routers' side (their default gateway).
const WAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Every lab namespace name starts with this, then `<pid>-<n>-`.
const PREFIX: &str = "onair-lab-";

/// How a router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Linux's default masquerade: keeps the source port when it can, so one mapping serves every
    /// destination (hole punching works between two such homes).
    Cone,
    /// `masquerade random`: a new port per destination, so the port a STUN server saw is useless
    /// to a peer; only a relay (TURN) connects two such homes.
    Symmetric,
}

/// One router between a home and the public network.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    /// Address translation.
    pub nat: Nat,
    /// Drop every UDP packet from the home (a network that allows only TCP, e.g. HTTPS).
    pub block_udp: bool,
}

impl Router {
    /// A symmetric NAT.
    pub fn symmetric() -> Self {
        Self { nat: Nat::Symmetric, block_udp: false }
    }

    /// A port-preserving NAT.
    pub fn cone() -> Self {
        Self { nat: Nat::Cone, block_udp: false }
    }

    /// The same router, dropping all UDP from the home.
    #[must_use]
    pub fn blocking_udp(mut self) -> Self {
        self.block_udp = true;
        self
    }
}

/// A home: one host (where a browser runs) on a LAN with one or more routers; the first is the
/// default route at start.
#[derive(Debug, Clone)]
pub struct HomeSpec {
    /// Short name, used in namespace names and by [`Lab::home`].
    pub name: String,
    /// Its routers (at least one).
    pub routers: Vec<Router>,
}

/// A named network namespace (`ip netns`).
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside this namespace and returns its result (a panic in `f`
    /// propagates). Sockets made there stay in the namespace; processes spawned there start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                // A whole test's future runs here (debug builds make big futures).
                .stack_size(32 << 20)
                .spawn_scoped(s, || {
                    self.enter_current_thread();
                    f()
                })
                .unwrap()
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs the future made by `f` to completion on a current-thread Tokio runtime on a thread
    /// inside this namespace: "on this host". Everything the future spawns (tasks, child
    /// processes, the runtime's blocking threads) lives in the namespace too.
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        self.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(Box::pin(f())))
    }

    /// A TCP connection to `addr` as seen from inside this namespace (e.g. a chromedriver on the
    /// namespace's own 127.0.0.1).
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
        self.run(|| std::net::TcpStream::connect_timeout(&addr, timeout))
    }

    /// `ip netns exec NAME program`: a command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip netns exec NAME args...`, panicking with its output if it fails.
    pub fn exec(&self, args: &[&str]) {
        let (program, rest) = args.split_first().expect("a command");
        run_checked(self.command(program).args(rest));
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
        child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused the ruleset in {}: {}\n{ruleset}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `setns(2)` for the calling thread only (a network namespace is per thread).
    fn enter_current_thread(&self) {
        let path = PathBuf::from("/run/netns").join(&self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {} failed: {e}", self.name));
    }
}

/// A home as built: its host namespace and its routers.
#[derive(Debug, Clone)]
pub struct Home {
    /// Where the home's browser runs.
    pub host: Netns,
    /// Its routers, in [`HomeSpec::routers`] order.
    pub routers: Vec<Netns>,
    /// The host's LAN address.
    pub addr: Ipv4Addr,
    /// Each router's public (WAN) address.
    pub wan: Vec<Ipv4Addr>,
    lan_gateways: Vec<Ipv4Addr>,
    name: String,
}

/// A built lab; deleted on drop.
pub struct Lab {
    prefix: String,
    public: Netns,
    homes: Vec<Home>,
    /// Every namespace created, in creation order (deleted in reverse).
    created: Vec<Netns>,
}

/// Builds a [`Lab`].
#[derive(Debug, Default)]
pub struct LabBuilder {
    homes: Vec<HomeSpec>,
}

impl LabBuilder {
    /// Adds a home named `name` behind `routers` (the first is its default route).
    #[must_use]
    pub fn home(mut self, name: &str, routers: &[Router]) -> Self {
        assert!(!routers.is_empty(), "home {name} needs a router");
        assert!(routers.len() <= 2, "a home has at most two routers");
        self.homes.push(HomeSpec { name: name.to_owned(), routers: routers.to_vec() });
        self
    }

    /// Creates the namespaces, links, addresses, routes and rules. Panics with a clear message
    /// without root or without `ip`/`nft`.
    pub fn build(self) -> Lab {
        preflight();
        clean_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let mut lab = Lab { public: Netns { name: format!("{prefix}-pub") }, prefix, homes: vec![], created: vec![] };
        lab.build_public();
        let mut router_index = 0u8;
        for (h, spec) in self.homes.iter().enumerate() {
            let home = lab.build_home(u8::try_from(h + 1).unwrap(), spec, &mut router_index);
            lab.homes.push(home);
        }
        lab
    }
}

impl Lab {
    /// Starts describing a lab.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The public host (servers live at [`PUBLIC_IP`]).
    pub fn public(&self) -> &Netns {
        &self.public
    }

    /// The home named `name`.
    pub fn home(&self, name: &str) -> &Home {
        self.homes.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no home {name} in the lab"))
    }

    /// The lab's unique prefix (namespace names start with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Makes router `index` of home `name` its default route (the other one stays on the LAN but
    /// carries nothing new): the home's traffic leaves from another public address at once.
    pub fn switch_router(&self, name: &str, index: usize) {
        let home = self.home(name);
        let via = home.lan_gateways[index].to_string();
        home.host.exec(&["ip", "route", "replace", "default", "via", &via, "dev", "br0"]);
        // Connections tracked by the old router stay there: like a real move, nothing that was
        // flowing reaches its destination from the new address unless it is set up again.
    }

    fn add_netns(&mut self, name: String) -> Netns {
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("cannot run ip (iproute2)");
        assert!(
            out.status.success(),
            "the NAT lab needs root: `ip netns add {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns { name };
        self.created.push(ns.clone());
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn build_public(&mut self) {
        let name = self.public.name.clone();
        let public = self.add_netns(name);
        public.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        public.exec(&["ip", "link", "set", "br0", "up"]);
        public.exec(&["ip", "addr", "add", &format!("{PUBLIC_IP}/24"), "dev", "br0"]);
        public.exec(&["ip", "addr", "add", &format!("{WAN_GATEWAY}/24"), "dev", "br0"]);
        // The rest of the internet: a default route to a veth pair that ends in this namespace,
        // via a gateway (192.0.2.1, TEST-NET-1) with a made-up MAC that nothing owns, so the
        // frames are dropped on arrival. Packets to addresses outside the lab (a peer's private
        // candidate, say) vanish as they would out there, instead of failing with ENETUNREACH,
        // which makes coturn drop a TCP client's whole session; and nothing leaves the namespace.
        public.exec(&["ip", "link", "add", "inet0", "type", "veth", "peer", "name", "inet1"]);
        public.exec(&["ip", "link", "set", "inet0", "up"]);
        public.exec(&["ip", "link", "set", "inet1", "up"]);
        public.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "inet0"]);
        public.exec(&[
            "ip",
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "inet0",
            "nud",
            "permanent",
        ]);
        public.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "inet0",
            "src",
            &PUBLIC_IP.to_string(),
        ]);
        // Replies to the routers leave from the server address, not from 203.0.113.1: a server
        // bound to 0.0.0.0 would otherwise answer from an address the NATs never talked to.
        public.exec(&[
            "ip",
            "route",
            "replace",
            "203.0.113.0/24",
            "dev",
            "br0",
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            &PUBLIC_IP.to_string(),
        ]);
    }

    fn build_home(&mut self, h: u8, spec: &HomeSpec, router_index: &mut u8) -> Home {
        let host = self.add_netns(format!("{}-{}", self.prefix, spec.name));
        host.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        host.exec(&["ip", "link", "set", "br0", "up"]);
        let addr = Ipv4Addr::new(10, 0, h, 2);
        host.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "br0"]);
        let (mut routers, mut wan, mut lan_gateways) = (vec![], vec![], vec![]);
        for (r, router) in spec.routers.iter().enumerate() {
            *router_index += 1;
            let k = *router_index;
            let ns = self.add_netns(format!("{}-{}-r{r}", self.prefix, spec.name));
            let wan_addr = Ipv4Addr::new(203, 0, 113, 10 + k);
            let lan_addr = Ipv4Addr::new(10, 0, h, if r == 0 { 1 } else { 254 });
            // WAN: a veth from the router to the public bridge (created inside the namespaces,
            // so its names are local to them and never appear on the host).
            let port = format!("r{k}");
            ns.exec(&["ip", "link", "add", "wan", "type", "veth", "peer", "name", &port, "netns", &self.public.name]);
            self.public.exec(&["ip", "link", "set", &port, "master", "br0", "up"]);
            ns.exec(&["ip", "link", "set", "wan", "up"]);
            ns.exec(&["ip", "addr", "add", &format!("{wan_addr}/24"), "dev", "wan"]);
            ns.exec(&["ip", "route", "add", "default", "via", &WAN_GATEWAY.to_string()]);
            // LAN: a veth from the router to the home's bridge.
            let lan_port = format!("r{r}");
            ns.exec(&["ip", "link", "add", "lan", "type", "veth", "peer", "name", &lan_port, "netns", &host.name]);
            host.exec(&["ip", "link", "set", &lan_port, "master", "br0", "up"]);
            ns.exec(&["ip", "link", "set", "lan", "up"]);
            ns.exec(&["ip", "addr", "add", &format!("{lan_addr}/24"), "dev", "lan"]);
            ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            ns.nft(&router_rules(*router));
            routers.push(ns);
            wan.push(wan_addr);
            lan_gateways.push(lan_addr);
        }
        host.exec(&["ip", "route", "add", "default", "via", &lan_gateways[0].to_string(), "dev", "br0"]);
        Home { host, routers, addr, wan, lan_gateways, name: spec.name.clone() }
    }
}

/// The router's nftables: masquerade out of `wan`, forward only what the home started (and what
/// belongs to it), accept nothing new from the WAN; optionally drop all UDP from the home.
fn router_rules(r: Router) -> String {
    let masquerade = match r.nat {
        Nat::Cone => "masquerade",
        Nat::Symmetric => "masquerade random",
    };
    let udp = if r.block_udp { "iifname \"lan\" meta l4proto udp drop\n" } else { "" };
    // The empty prerouting nat chain is needed: without it replies are not translated back.
    format!(
        "table ip onair_lab_nat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat;
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname \"wan\" {masquerade}
  }}
}}
table inet onair_lab_filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {udp}ct state established,related accept
    iifname \"lan\" oifname \"wan\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"wan\" ct state != {{ established, related }} drop
  }}
}}
"
    )
}

fn run_checked(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails clearly when the lab cannot work here.
fn preflight() {
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let ok = Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success())
            || Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(ok, "the NAT lab needs `{tool}`: apt-get install {package} (scripts/install-deps.sh does)");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
    assert_eq!(uid, Some("0"), "the NAT lab needs root (ip netns, veth, nftables); CI runs the tests as root");
}

/// Deletes lab namespaces whose creating process is gone (a run that was killed).
fn clean_stale() {
    for name in lab_namespaces() {
        let pid = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists()) {
            eprintln!("netlab: deleting stale namespace {name}");
            delete_netns(&name);
        }
    }
}

fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Kills what runs inside the namespace (processes the lab started there), then deletes it; its
/// veths go with it.
fn delete_netns(name: &str) {
    for _ in 0..50 {
        let out = Command::new("ip").args(["netns", "pids", name]).output().map(|o| o.stdout).unwrap_or_default();
        let pids: Vec<String> = String::from_utf8_lossy(&out).split_whitespace().map(str::to_owned).collect();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            delete_netns(&ns.name);
        }
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("prefix", &self.prefix).field("homes", &self.homes).finish_non_exhaustive()
    }
}
