//! The runtime image under podman: built once per test process by `deploy/image.sh` (the same
//! `deploy/Dockerfile` operators build with Docker, its `runtime` stage on a debootstrapped Debian
//! base), run with host networking and every listener on 127.0.0.1:0, its ports read from what the
//! container prints, removed on drop.
//!
//! The binary in the image is the one the test build produced (`onair_bin()`, passed as the
//! Dockerfile's prebuilt binary): what is under test is the image — base, paths, user, entrypoint,
//! runtime libraries, read-only root, volumes, signals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::procs::{Onair, Proc, onair_bin, unique};

/// The uid:gid the image runs as (deploy/Dockerfile `USER`).
pub const UID: u32 = 10001;

/// The tag the tests build (one per machine; rebuilt by every test process, a few seconds).
pub const TEST_IMAGE: &str = "localhost/onair:test";

/// `podman` as it must run on this machine class: runc (crun cannot run here), as root.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// Limits podman passes to every container: no runtime here may raise them above the host's.
pub const LIMITS: [&str; 4] = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"];

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn repo_root() -> PathBuf {
    crate::cluster::repo_root()
}

/// Fails (never skips) when the container tooling is missing.
fn require_tools() {
    for tool in ["podman", "buildah", "runc", "debootstrap"] {
        let found =
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: the container tests need podman, buildah, runc and debootstrap (run `make deps`, i.e. scripts/install-deps.sh)"
        );
    }
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "the container tests run podman as root (as CI does)");
}

/// Builds [`TEST_IMAGE`] from the test build's binary (once per process) and returns its tag.
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_tools();
        let start = Instant::now();
        let out = run(Command::new(repo_root().join("deploy/image.sh")).arg(onair_bin()).arg(TEST_IMAGE));
        assert!(
            out.status.success(),
            "deploy/image.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{} in {:.1?}", String::from_utf8_lossy(&out.stdout).trim(), start.elapsed());
    });
    TEST_IMAGE
}

/// The image's HEALTHCHECK command (deploy/Dockerfile), without its leading `CMD`.
pub fn healthcheck() -> Vec<String> {
    let out = run(podman().args(["image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image()]));
    assert!(out.status.success(), "podman image inspect: {}", String::from_utf8_lossy(&out.stderr));
    let test: Vec<String> = serde_json::from_slice(&out.stdout).expect("the image has a HEALTHCHECK");
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "HEALTHCHECK must be exec form: {test:?}");
    test[1..].to_vec()
}

/// A host directory mounted into a container, owned by the image's user; removed on drop.
pub struct Volume {
    /// The host path.
    pub path: PathBuf,
}

impl Volume {
    /// A fresh empty directory owned by [`UID`].
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("onair-volume-{label}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(UID), Some(UID)).unwrap();
        Self { path }
    }

    /// Every file under the volume, relative to it (sorted).
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One running container of the image; `podman rm -f` on drop.
pub struct Container {
    /// Its (unique) name.
    pub name: String,
    /// The `onair` inside: the attached `podman run` process (its output is the container's) and the
    /// ports it printed.
    pub onair: Onair,
}

impl Container {
    /// `podman run` of [`image()`] as the chart runs it: the image's user, a read-only root
    /// filesystem with a tmpfs at /tmp, `volume` at /data (the image's `ONAIR_DATA_DIR`), host
    /// networking; `args` go to the entrypoint, followed by every listener on 127.0.0.1:0.
    pub async fn run(label: &str, volume: &Volume, args: &[&str]) -> Self {
        let image = image();
        let name = format!("onair-test-{label}-{}-{}", std::process::id(), unique());
        // --read-only-tmpfs=false: only what the test mounts is writable (podman's default adds tmpfs at
        // /run and /var/tmp too). --no-healthcheck: podman would run the image's HEALTHCHECK from systemd
        // timers (there is no systemd here) against the default admin port; the tests run it themselves.
        let mut all: Vec<String> = [
            "--runtime",
            "runc",
            "run",
            "--name",
            &name,
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            "/tmp",
            "--network",
            "host",
            "--no-healthcheck",
        ]
        .map(String::from)
        .to_vec();
        all.extend(LIMITS.map(String::from));
        all.extend(["--volume".into(), format!("{}:/data", volume.path.display())]);
        all.extend(["--env".into(), "RUST_LOG=info,onair=debug".into(), image.into()]);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        for flag in ["--grpc-addr", "--admin-addr", "--http-addr"] {
            all.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let proc = Proc::spawn(&name, "podman", all, vec![]);
        // Remove the container even if start-up fails (the Onair below panics then).
        let guard = Remove(name.clone());
        let onair = Onair::attach(proc).await;
        std::mem::forget(guard);
        Self { name, onair }
    }

    /// `podman exec` in the container (as the image's user); returns the output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        run(podman().arg("exec").arg(&self.name).args(cmd))
    }

    /// `podman inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        let out = run(podman().args(["inspect", "--format", format, &self.name]));
        assert!(out.status.success(), "podman inspect: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman stop -t GRACE` (SIGTERM, SIGKILL after `grace`): returns the container's exit code
    /// (137 if it had to be killed) and how long it took to stop.
    pub async fn stop(&mut self, grace: Duration) -> (i32, Duration) {
        let start = Instant::now();
        // Asynchronously: a blocking wait would stall this runtime, and with it the test's own gRPC
        // connections, whose close the container's graceful shutdown waits for.
        let mut stop = tokio::process::Command::from(podman());
        let out = stop.args(["stop", "-t", &grace.as_secs().to_string(), &self.name]).output().await;
        let out = out.unwrap_or_else(|e| panic!("cannot run podman stop: {e}"));
        let took = start.elapsed();
        assert!(out.status.success(), "podman stop: {}", String::from_utf8_lossy(&out.stderr));
        // Let the attached `podman run` copy the last output and exit.
        let wait = Instant::now();
        while !self.onair.proc.exited() && wait.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (self.inspect("{{.State.ExitCode}}").parse().unwrap(), took)
    }
}

struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = run(podman().args(["rm", "--force", "--time", "0", &self.0]));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        drop(Remove(self.name.clone()));
    }
}
