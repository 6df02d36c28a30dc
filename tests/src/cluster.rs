//! A whole cluster of real processes: own redis-server, MongoDB-wire server,
//! registry, signaling, N gateways, and nginx in front.

use std::path::PathBuf;

use crate::procs::{Mongo, Onair, Proc, Redis, free_port, wait_port};

/// The `--cluster-secret` every test cluster's services share.
pub const CLUSTER_SECRET: &str = "cluster-test-secret-0123456789";

/// nginx started unprivileged-style with a rendered config (`nginx -p DIR -c FILE`).
pub struct Nginx {
    /// The process.
    pub proc: Proc,
    /// Its listen port.
    pub port: u16,
    /// Its prefix directory.
    pub dir: PathBuf,
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    crate::tests_dir().join("..")
}

impl Nginx {
    /// Renders nginx/nginx.conf.template for `gateways` (HTTP ports) and starts nginx.
    pub async fn start(gateways: &[u16]) -> Self {
        Self::start_upstreams(&gateways.iter().map(ToString::to_string).collect::<Vec<_>>()).await
    }

    /// Like [`Nginx::start`] with gateways as `HOST:PORT` (e.g. pod addresses).
    pub async fn start_upstreams(gateways: &[String]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("onair-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![format!("127.0.0.1:{port}"), dir.display().to_string()];
        args.extend(gateways.iter().cloned());
        let out = std::process::Command::new(repo_root().join("deploy/render-nginx.sh")).args(&args).output().unwrap();
        assert!(out.status.success(), "render-nginx.sh: {}", String::from_utf8_lossy(&out.stderr));
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, &out.stdout).unwrap();
        // Workers may run as an unprivileged user: let them reach the prefix.
        let _ = std::process::Command::new("chmod").args(["755", &dir.display().to_string()]).status();
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx");
        let proc = Proc::spawn(
            "nginx",
            nginx,
            ["-p", &dir.display().to_string(), "-c", &conf.display().to_string(), "-e", "stderr", "-g", "daemon off;"]
                .map(String::from)
                .to_vec(),
            vec![],
        );
        wait_port(port, "nginx").await;
        Self { proc, port, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything a cluster test needs.
pub struct Cluster {
    /// Own Redis.
    pub redis: Redis,
    /// MongoDB-wire server.
    pub mongo: Mongo,
    /// Registry service.
    pub registry: Onair,
    /// Signaling service.
    pub signaling: Onair,
    /// Gateways.
    pub gateways: Vec<Onair>,
    /// nginx in front of the gateways, if asked for.
    pub nginx: Option<Nginx>,
    /// The recorder, if asked for.
    pub recorder: Option<Onair>,
    /// The recordings directory shared by the recorder and the gateways.
    pub recordings: PathBuf,
    /// Relays added with [`Cluster::add_relay`].
    pub relays: Vec<Onair>,
    /// Recorders added with [`Cluster::add_recorder`].
    pub recorders: Vec<Onair>,
}

/// A cluster recorder's command line (without secrets): media on 127.0.0.1, files in `recordings`.
fn recorder_args(
    node: &str,
    redis: &str,
    registry: &str,
    signaling: &str,
    recordings: &std::path::Path,
) -> Vec<String> {
    let dir = recordings.display().to_string();
    let args = ["--target", "recorder", "--node-id", node, "--redis-url", redis, "--registry-url", registry];
    let rest = ["--signaling-url", signaling, "--recordings-dir", &dir, "--rtc-ip", "127.0.0.1"];
    args.iter().chain(rest.iter()).map(|a| (*a).to_owned()).collect()
}

impl Cluster {
    /// Starts Redis, MongoDB, registry, signaling, `gateways` gateways (node ids gw-0, gw-1, ...)
    /// and, if `with_nginx`, nginx; waits until every gateway is ready.
    pub async fn start(gateways: usize, with_nginx: bool) -> Self {
        Self::start_with(gateways, with_nginx, false).await
    }

    /// Like [`Cluster::start`], plus a recorder (node id `rec-0`) when `with_recorder`.
    pub async fn start_with(gateways: usize, with_nginx: bool, with_recorder: bool) -> Self {
        Self::start_secured(gateways, with_nginx, with_recorder, None).await
    }

    /// Like [`Cluster::start_with`], with auth on when `auth_secret` is given (`--auth-secret` on
    /// every gateway, registry and recorder). Every cluster's services share [`CLUSTER_SECRET`].
    pub async fn start_secured(
        gateways: usize,
        with_nginx: bool,
        with_recorder: bool,
        auth_secret: Option<&str>,
    ) -> Self {
        Self::start_tuned(gateways, with_nginx, with_recorder, auth_secret, &[]).await
    }

    /// Like [`Cluster::start_secured`], with `gateway_args` added to every gateway's command line
    /// (e.g. limits a benchmark must lift).
    pub async fn start_tuned(
        gateways: usize,
        with_nginx: bool,
        with_recorder: bool,
        auth_secret: Option<&str>,
        gateway_args: &[&str],
    ) -> Self {
        Self::start_all_with(gateways, with_nginx, with_recorder, auth_secret, gateway_args, &[]).await
    }

    /// Like [`Cluster::start_tuned`], with `every_args` on every service's command line (e.g.
    /// `--otlp-endpoint`).
    pub async fn start_all_with(
        gateways: usize,
        with_nginx: bool,
        with_recorder: bool,
        auth_secret: Option<&str>,
        gateway_args: &[&str],
        every_args: &[&str],
    ) -> Self {
        let secured = |args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = args.iter().chain(every_args).map(|s| (*s).to_owned()).collect();
            v.extend(["--cluster-secret".to_owned(), CLUSTER_SECRET.to_owned()]);
            let public = args.windows(2).any(|w| w[0] == "--target" && w[1] != "signaling");
            if let (Some(s), true) = (auth_secret, public) {
                v.extend(["--auth-secret".to_owned(), s.to_owned()]);
            }
            v
        };
        let start = |name: String, args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Onair::start(&name, &args).await
        };
        let recordings = std::env::temp_dir().join(format!("onair-recordings-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&recordings).unwrap();
        let rec_dir = recordings.display().to_string();
        let (redis, mongo) = tokio::join!(Redis::start(), Mongo::start());
        let (uri, url) = (mongo.uri(), redis.url());
        let registry =
            start("registry".into(), secured(&["--target", "registry", "--mongodb-uri", &uri, "--redis-url", &url]))
                .await;
        let reg_url = registry.grpc_url();
        let signaling = start(
            "signaling".into(),
            secured(&[
                "--target",
                "signaling",
                "--redis-url",
                &url,
                "--registry-url",
                &reg_url,
                "--presence-ttl",
                "4s",
            ]),
        )
        .await;
        let sig_url = signaling.grpc_url();
        let mut gws = Vec::new();
        for i in 0..gateways {
            let node = format!("gw-{i}");
            let args = [
                "--target",
                "gateway",
                "--node-id",
                &node,
                "--redis-url",
                &url,
                "--registry-url",
                &reg_url,
                "--signaling-url",
                &sig_url,
                "--recordings-dir",
                &rec_dir,
                "--resume-secret",
                "cluster-test-resume-secret",
            ];
            let mut args = secured(&args);
            args.extend(gateway_args.iter().map(|a| (*a).to_owned()));
            gws.push(start(node.clone(), args).await);
        }
        let recorder = if with_recorder {
            let args = recorder_args("rec-0", &url, &reg_url, &sig_url, &recordings);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = start("recorder".into(), secured(&args)).await;
            r.wait_ready().await;
            Some(r)
        } else {
            None
        };
        for g in &gws {
            g.wait_ready().await;
        }
        let nginx =
            if with_nginx { Some(Nginx::start(&gws.iter().map(|g| g.http).collect::<Vec<_>>()).await) } else { None };
        let relays = Vec::new();
        Self {
            redis,
            mongo,
            registry,
            signaling,
            gateways: gws,
            nginx,
            recorder,
            recordings,
            relays,
            recorders: Vec::new(),
        }
    }

    /// Starts another recorder (node id `node`, the shared recordings directory, no auth secret) and
    /// waits until it is ready.
    pub async fn add_recorder(&mut self, node: &str) -> &mut Onair {
        let (url, reg, sig) = (self.redis.url(), self.registry.grpc_url(), self.signaling.grpc_url());
        let mut args = recorder_args(node, &url, &reg, &sig, &self.recordings);
        args.extend(["--cluster-secret".to_owned(), CLUSTER_SECRET.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = Onair::start(node, &args).await;
        r.wait_ready().await;
        self.recorders.push(r);
        self.recorders.last_mut().expect("just pushed")
    }

    /// Starts a relay (node id `node`, media on 127.0.0.1) and waits until it is ready and
    /// signaling has heard its load (the next stream that goes live is placed on a relay).
    pub async fn add_relay(&mut self, node: &str) -> &Onair {
        self.add_relay_on(node, Some("127.0.0.1")).await
    }

    /// Like [`Cluster::add_relay`], with media on `rtc_ip`, or on every interface (`None`): for
    /// WebRTC stacks that never use loopback candidates (libnice, so GStreamer's webrtcbin).
    pub async fn add_relay_on(&mut self, node: &str, rtc_ip: Option<&str>) -> &Onair {
        let (url, reg, sig) = (self.redis.url(), self.registry.grpc_url(), self.signaling.grpc_url());
        let mut args = vec![
            "--target",
            "relay",
            "--node-id",
            node,
            "--redis-url",
            &url,
            "--registry-url",
            &reg,
            "--signaling-url",
            &sig,
            "--cluster-secret",
            CLUSTER_SECRET,
        ];
        if let Some(ip) = rtc_ip {
            args.extend(["--rtc-ip", ip]);
        }
        let r = Onair::start(node, &args).await;
        r.wait_ready().await;
        // Heartbeats (with the load) go out every second.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        self.relays.push(r);
        self.relays.last().expect("just pushed")
    }

    /// nginx's port (panics without nginx).
    pub fn front(&self) -> u16 {
        self.nginx.as_ref().expect("cluster started without nginx").port
    }
}
