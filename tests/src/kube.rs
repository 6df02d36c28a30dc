//! The helm chart's rendered workloads, run as podman containers the way a kubelet would run them.
//!
//! `helm template` renders the chart; [`Workloads::start`] reads every Deployment and StatefulSet and
//! starts each pod's one container from its spec alone: image, command/args, env (values, ConfigMap and
//! Secret keys, the downward API's pod name and IP), volumes (emptyDir, the PersistentVolumeClaim as a
//! host directory shared by every pod that claims it, read-only mounts), the securityContext (user,
//! groups and fsGroup, read-only root, dropped capabilities, no privilege escalation), resource limits
//! (memory, cpu), then polls the
//! readiness probe and checks the liveness probe. Each pod gets its own address on a private podman
//! bridge network (host-local), and every Service name resolves to the address of a pod it selects.
//! A spec field this runner does not know fails the test instead of being ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::container::{LIMITS, podman};
use crate::procs::{Proc, http_get_at, tools_dir, unique};

/// The rendered manifests (`helm template`), as JSON documents.
pub struct Rendered {
    /// Every non-empty document.
    pub docs: Vec<Value>,
}

fn repo_root() -> PathBuf {
    crate::cluster::repo_root()
}

impl Rendered {
    /// `helm template onair helm/onair --namespace NS -f VALUES` with `values` (YAML text).
    pub fn helm_template(namespace: &str, values: &str) -> Self {
        let helm = tools_dir().join("bin/helm");
        assert!(helm.exists(), "{} not found: run `make deps` (scripts/install-deps.sh)", helm.display());
        let file = std::env::temp_dir().join(format!("onair-chart-values-{}-{}.yaml", std::process::id(), unique()));
        std::fs::write(&file, values).unwrap();
        let out = std::process::Command::new(&helm)
            .args(["template", "onair"])
            .arg(repo_root().join("helm/onair"))
            .args(["--namespace", namespace, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
        // YAML → JSON with the venv's PyYAML (yamllint's dependency), so the tests need no YAML crate.
        let py = tools_dir().join("venv/bin/python");
        let mut child = std::process::Command::new(py)
            .args([
                "-c",
                "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        }
        let json = child.wait_with_output().unwrap();
        assert!(json.status.success(), "cannot parse the rendered YAML");
        Self { docs: serde_json::from_slice(&json.stdout).unwrap() }
    }

    /// Every document of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.to_owned();
        self.docs.iter().filter(move |d| d["kind"] == kind.as_str())
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart references {kind} {name:?}, which it does not render"))
    }
}

/// A private podman bridge network for one test; removed on drop.
pub struct Network {
    /// Its name.
    pub name: String,
    prefix: String,
    next: u8,
    infra: String,
}

impl Network {
    /// Creates a /24 network nobody else uses (tries a few), and starts a placeholder container on it
    /// so its bridge, and the host's address on it ([`Network::host`]), exist before any pod.
    pub fn create(image: &str) -> Self {
        let name = format!("onair-test-{}-{}", std::process::id(), unique());
        let first = std::process::id() % 200;
        for i in 0..20 {
            let prefix = format!("10.89.{}", 20 + (first + i * 7) % 200);
            let out = podman()
                .args(["network", "create", "--disable-dns", "--subnet", &format!("{prefix}.0/24"), &name])
                .output()
                .unwrap();
            if !out.status.success() {
                continue;
            }
            let infra = format!("{name}-infra");
            let mut run = podman();
            run.args(["run", "-d", "--name", &infra, "--network", &name, "--ip", &format!("{prefix}.254")]);
            run.args(LIMITS).args(["--no-healthcheck", "--entrypoint", "/bin/sleep", image, "infinity"]);
            let out = run.output().unwrap();
            let net = Self { name, prefix, next: 10, infra };
            assert!(
                out.status.success(),
                "cannot start a container on {}: {}",
                net.name,
                String::from_utf8_lossy(&out.stderr)
            );
            return net;
        }
        panic!("no free 10.89.x.0/24 subnet for a podman network");
    }

    /// The host's address on the bridge (where Redis and MongoDB listen).
    pub fn host(&self) -> IpAddr {
        format!("{}.1", self.prefix).parse().unwrap()
    }

    fn allocate(&mut self) -> IpAddr {
        self.next += 1;
        format!("{}.{}", self.prefix, self.next).parse().unwrap()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.infra]).output();
        let _ = podman().args(["network", "rm", "--force", &self.name]).output();
    }
}

/// One pod: one container started from a rendered pod template.
pub struct Pod {
    /// The pod name (`metadata.name`: the node id the chart passes).
    pub name: String,
    /// The component (`app.kubernetes.io/component`).
    pub component: String,
    /// Its address.
    pub ip: IpAddr,
    /// Named container ports.
    pub ports: BTreeMap<String, u16>,
    /// The container (podman) name.
    pub container: String,
    /// The attached `podman run`: the container's output.
    pub proc: Proc,
    spec: Value,
    grace: u64,
}

impl Pod {
    /// The number of a named container port.
    pub fn port(&self, name: &str) -> u16 {
        *self.ports.get(name).unwrap_or_else(|| panic!("{} has no port named {name:?}", self.name))
    }

    fn probe_port(&self, probe: &Value) -> u16 {
        match &probe["httpGet"]["port"] {
            Value::String(name) => self.port(name),
            Value::Number(n) => u16::try_from(n.as_u64().unwrap()).unwrap(),
            other => panic!("{}: unsupported probe port {other}", self.name),
        }
    }

    /// GET of a probe (`livenessProbe`, `readinessProbe`): whether it passes (200..400), as a kubelet
    /// judges it.
    pub async fn probe(&self, which: &str) -> bool {
        let probe = &self.spec[which];
        assert!(probe["httpGet"].is_object(), "{}: {which} must be an httpGet probe: {probe}", self.name);
        let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
        let get = http_get_at(self.ip, self.probe_port(probe), path);
        matches!(tokio::time::timeout(timeout, get).await, Ok(Some((200..=399, _))))
    }

    /// Waits until the readiness probe passes; panics with the pod's output after `within`.
    pub async fn wait_ready(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.probe("readinessProbe").await {
                return start.elapsed();
            }
            assert!(!self.proc.exited(), "pod {} exited before it was ready:\n{}", self.name, self.proc.output());
            assert!(start.elapsed() < within, "pod {} not ready within {within:?}:\n{}", self.name, self.proc.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What a kubelet does to delete the pod: the preStop hook, then SIGTERM, SIGKILL once
    /// `terminationGracePeriodSeconds` (counted from the start of the hook) is over. Returns the exit code
    /// (137 if killed) and how long it took.
    pub async fn delete(&mut self) -> (i32, Duration) {
        let start = Instant::now();
        if let Some(cmd) = self.spec["lifecycle"]["preStop"]["exec"]["command"].as_array() {
            let cmd: Vec<&str> = cmd.iter().map(|c| c.as_str().unwrap()).collect();
            let out = podman().arg("exec").arg(&self.container).args(&cmd).output().unwrap();
            assert!(out.status.success(), "{}: the preStop hook {cmd:?} failed: {out:?}", self.name);
        }
        let left = self.grace.saturating_sub(start.elapsed().as_secs()).max(1);
        let out = podman().args(["stop", "-t", &left.to_string(), &self.container]).output().unwrap();
        assert!(out.status.success(), "podman stop {}: {}", self.container, String::from_utf8_lossy(&out.stderr));
        let took = start.elapsed();
        let wait = Instant::now();
        while !self.proc.exited() && wait.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let code = podman().args(["inspect", "--format", "{{.State.ExitCode}}", &self.container]).output().unwrap();
        (String::from_utf8_lossy(&code.stdout).trim().parse().unwrap(), took)
    }

    /// `terminationGracePeriodSeconds`.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.container]).output();
    }
}

/// Every Deployment's and StatefulSet's pods, running; with the host directories behind their volumes.
pub struct Workloads {
    /// The pods, in start order.
    pub pods: Vec<Pod>,
    /// The host directory of each PersistentVolumeClaim, by claim name.
    pub claims: BTreeMap<String, PathBuf>,
    dirs: Vec<PathBuf>,
}

struct Planned<'a> {
    name: String,
    ip: IpAddr,
    template: &'a Value,
    labels: &'a serde_json::Map<String, Value>,
}

fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn decode_b64(s: &str) -> String {
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).expect("Secret data is base64");
    String::from_utf8(bytes).unwrap()
}

fn fail_unknown(what: &str, obj: &Value, known: &[&str]) {
    if let Some(map) = obj.as_object() {
        for k in map.keys() {
            assert!(
                known.contains(&k.as_str()),
                "{what}: the runner does not implement `{k}` ({obj}); extend tests/src/kube.rs"
            );
        }
    }
}

impl Workloads {
    /// Starts every pod of every StatefulSet and Deployment (`spec.replicas`, 1 if unset) of `rendered`
    /// on `net` (their image must exist locally: nothing is pulled). Does not wait for readiness.
    pub fn start(rendered: &Rendered, net: &mut Network, namespace: &str) -> Self {
        let mut planned = Vec::new();
        for kind in ["StatefulSet", "Deployment"] {
            for w in rendered.of_kind(kind) {
                let name = w["metadata"]["name"].as_str().unwrap();
                let replicas = w["spec"]["replicas"].as_u64().unwrap_or(1);
                let template = &w["spec"]["template"];
                let labels = template["metadata"]["labels"].as_object().expect("pod template labels");
                assert!(
                    selects(&w["spec"]["selector"]["matchLabels"], labels),
                    "{name}: the selector does not match its pods"
                );
                for i in 0..replicas {
                    let pod =
                        if kind == "StatefulSet" { format!("{name}-{i}") } else { format!("{name}-{:x}", 0xa000 + i) };
                    planned.push(Planned { name: pod, ip: net.allocate(), template, labels });
                }
            }
        }
        // Service names resolve to a pod they select (the Service's port must be the pod's port: no
        // kube-proxy translates here).
        let mut hosts = Vec::new();
        for svc in rendered.of_kind("Service") {
            let name = svc["metadata"]["name"].as_str().unwrap();
            let Some(pod) = planned.iter().find(|p| selects(&svc["spec"]["selector"], p.labels)) else {
                panic!("Service {name} selects no pod");
            };
            for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
                let target = &port["targetPort"];
                let container = &pod.template["spec"]["containers"][0];
                let number = container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| match target {
                        Value::String(t) => p["name"] == *t,
                        _ => p["containerPort"] == *target,
                    })
                    .unwrap_or_else(|| {
                        panic!("Service {name}: targetPort {target} is no container port of {}", pod.name)
                    });
                assert_eq!(
                    port["port"], number["containerPort"],
                    "Service {name}: port and targetPort differ (unsupported here)"
                );
            }
            for host in
                [name.to_owned(), format!("{name}.{namespace}"), format!("{name}.{namespace}.svc.cluster.local")]
            {
                hosts.push(format!("{host}:{}", pod.ip));
            }
        }

        let mut me = Self { pods: Vec::new(), claims: BTreeMap::new(), dirs: Vec::new() };
        for p in &planned {
            let pod = me.start_pod(rendered, net, namespace, p, &hosts);
            me.pods.push(pod);
        }
        me
    }

    fn dir(&mut self, label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("onair-kube-{label}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&d).unwrap();
        self.dirs.push(d.clone());
        d
    }

    fn start_pod(&mut self, rendered: &Rendered, net: &Network, ns: &str, p: &Planned, hosts: &[String]) -> Pod {
        let spec = &p.template["spec"];
        fail_unknown(
            &format!("{} pod spec", p.name),
            spec,
            &[
                "serviceAccountName",
                "automountServiceAccountToken",
                "enableServiceLinks",
                "terminationGracePeriodSeconds",
                "securityContext",
                "containers",
                "volumes",
                "topologySpreadConstraints",
                "imagePullSecrets",
                "nodeSelector",
                "tolerations",
                "affinity",
            ],
        );
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{}: one container per pod expected", p.name);
        let c = &containers[0];
        fail_unknown(
            &format!("{} container", p.name),
            c,
            &[
                "name",
                "image",
                "imagePullPolicy",
                "args",
                "command",
                "env",
                "ports",
                "livenessProbe",
                "readinessProbe",
                "lifecycle",
                "resources",
                "securityContext",
                "volumeMounts",
            ],
        );
        let component = p.labels.get("app.kubernetes.io/component").and_then(Value::as_str).unwrap_or_default();
        let container = format!("{}-{}", net.name, p.name);
        let mut args: Vec<String> =
            ["run", "--name", &container, "--hostname", &p.name, "--network", &net.name].map(String::from).to_vec();
        args.extend(["--ip".into(), p.ip.to_string(), "--no-healthcheck".into(), "--pull".into(), "never".into()]);
        args.extend(LIMITS.map(String::from));
        for h in hosts {
            args.extend(["--add-host".into(), h.clone()]);
        }

        // securityContext: the container's over the pod's, field by field.
        let (psc, csc) = (&spec["securityContext"], &c["securityContext"]);
        fail_unknown(
            "pod securityContext",
            psc,
            &["runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy", "seccompProfile"],
        );
        fail_unknown(
            "container securityContext",
            csc,
            &[
                "runAsNonRoot",
                "runAsUser",
                "runAsGroup",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "privileged",
                "capabilities",
                "seccompProfile",
            ],
        );
        let pick = |k: &str| if csc[k].is_null() { psc[k].clone() } else { csc[k].clone() };
        let uid = pick("runAsUser").as_u64();
        let gid = pick("runAsGroup").as_u64();
        let fs_group = psc["fsGroup"].as_u64();
        if pick("runAsNonRoot") == Value::Bool(true) {
            assert!(uid.is_some_and(|u| u != 0), "{}: runAsNonRoot needs a non-zero runAsUser here", p.name);
        }
        if let Some(u) = uid {
            args.extend(["--user".into(), gid.map_or(u.to_string(), |g| format!("{u}:{g}"))]);
        }
        if let Some(g) = fs_group {
            args.extend(["--group-add".into(), g.to_string()]);
        }
        if csc["readOnlyRootFilesystem"] == Value::Bool(true) {
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if csc["allowPrivilegeEscalation"] == Value::Bool(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        assert_ne!(csc["privileged"], Value::Bool(true), "{}: privileged containers are not run here", p.name);
        for cap in csc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.extend(["--cap-drop".into(), cap.as_str().unwrap().to_lowercase()]);
        }
        for cap in csc["capabilities"]["add"].as_array().into_iter().flatten() {
            args.extend(["--cap-add".into(), cap.as_str().unwrap().to_lowercase()]);
        }
        for sc in [psc, csc] {
            let t = &sc["seccompProfile"]["type"];
            assert!(t.is_null() || t == "RuntimeDefault", "{}: seccomp {t} unsupported", p.name);
        }

        // Volumes: emptyDir → a fresh directory (0777, as a kubelet makes it); a claim → one directory
        // per claim, shared, group-owned by fsGroup with setgid (the kubelet's fsGroup ownership).
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap().to_owned();
            let dir = if v["emptyDir"].is_object() {
                let d = self.dir(&format!("{}-{name}", p.name));
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
                d
            } else if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                rendered.named("PersistentVolumeClaim", claim);
                if let Some(d) = self.claims.get(claim) {
                    d.clone()
                } else {
                    let d = self.dir(&format!("claim-{claim}"));
                    if let Some(g) = fs_group {
                        std::os::unix::fs::chown(&d, Some(0), Some(u32::try_from(g).unwrap())).unwrap();
                    }
                    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o2775)).unwrap();
                    self.claims.insert(claim.to_owned(), d.clone());
                    d
                }
            } else {
                panic!("{}: volume {v} is of a kind the runner does not implement", p.name);
            };
            volumes.insert(name, dir);
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            fail_unknown("volumeMount", m, &["name", "mountPath", "readOnly"]);
            let name = m["name"].as_str().unwrap();
            let dir = volumes.get(name).unwrap_or_else(|| panic!("{}: mount of undeclared volume {name}", p.name));
            let ro = if m["readOnly"] == Value::Bool(true) { ":ro" } else { "" };
            args.extend(["--volume".into(), format!("{}:{}{ro}", dir.display(), m["mountPath"].as_str().unwrap())]);
        }

        // Env, resolved as the kubelet does.
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                let cm = rendered.named("ConfigMap", r["name"].as_str().unwrap());
                let key = r["key"].as_str().unwrap();
                cm["data"][key].as_str().unwrap_or_else(|| panic!("{name}: ConfigMap has no key {key}")).to_owned()
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let s = rendered.named("Secret", r["name"].as_str().unwrap());
                let key = r["key"].as_str().unwrap();
                if let Some(v) = s["stringData"][key].as_str() {
                    v.to_owned()
                } else {
                    decode_b64(s["data"][key].as_str().unwrap_or_else(|| panic!("{name}: Secret has no key {key}")))
                }
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => p.name.clone(),
                    "metadata.namespace" => ns.to_owned(),
                    "status.podIP" => p.ip.to_string(),
                    other => panic!("{name}: fieldRef {other} not implemented"),
                }
            } else {
                panic!("{}: env {e} not implemented", p.name);
            };
            args.extend(["--env".into(), format!("{name}={value}")]);
        }

        // Limits as the kubelet sets them (requests only matter to the scheduler).
        let limits = &c["resources"]["limits"];
        fail_unknown("resources.limits", limits, &["cpu", "memory"]);
        if let Some(mem) = limits["memory"].as_str() {
            let podman_mem = ["Ki", "Mi", "Gi"]
                .iter()
                .find_map(|u| mem.strip_suffix(u).map(|n| format!("{n}{}", u[..1].to_lowercase())))
                .unwrap_or_else(|| panic!("{}: memory limit {mem} not in Ki/Mi/Gi", p.name));
            args.extend(["--memory".into(), podman_mem]);
        }
        if let Some(cpu) = limits["cpu"].as_str() {
            let cpus = cpu
                .strip_suffix('m')
                .map_or_else(|| cpu.parse::<f64>().unwrap(), |m| m.parse::<f64>().unwrap() / 1000.0);
            args.extend(["--cpus".into(), cpus.to_string()]);
        }

        let mut ports = BTreeMap::new();
        for port in c["ports"].as_array().into_iter().flatten() {
            let n = u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap();
            ports.insert(port["name"].as_str().unwrap_or_default().to_owned(), n);
        }
        if let Some(cmd) = c["command"].as_array() {
            assert_eq!(cmd.len(), 1, "{}: multi-word command unsupported", p.name);
            args.extend(["--entrypoint".into(), cmd[0].as_str().unwrap().to_owned()]);
        }
        args.push(c["image"].as_str().unwrap().to_owned());
        args.extend(c["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap().to_owned()));

        let mut all = vec!["--runtime".to_owned(), "runc".to_owned()];
        all.extend(args);
        let proc = Proc::spawn(&format!("pod-{}", p.name), "podman", all, vec![]);
        Pod {
            name: p.name.clone(),
            component: component.to_owned(),
            ip: p.ip,
            ports,
            container,
            proc,
            spec: c.clone(),
            grace: spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
        }
    }

    /// The pods of `component`.
    pub fn of(&self, component: &str) -> Vec<&Pod> {
        self.pods.iter().filter(|p| p.component == component).collect()
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = podman().args(["rm", "--force", "--time", "0", &p.container]).output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
