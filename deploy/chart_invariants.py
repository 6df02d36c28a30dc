#!/usr/bin/env python3
"""Invariants of the onair Helm chart, checked against the real binary.

    deploy/chart_invariants.py PATH/TO/onair [-v]

Renders helm/onair with its default values, with ci/production-values.yaml, with the production
values plus the ServiceMonitor, with ci/turn-values.yaml, with ci/relay-values.yaml (the relay behind a
LoadBalancer) and with the relay off, then checks every rendered object against the rules below and against
`onair --help` (the flags, their env vars and the --target values the binary really has):

- the CLI contract (helm/onair/files/cli.yaml): every flag exists, with the env var the binary reads;
- every Deployment/StatefulSet container: liveness (/healthz) and readiness (/readyz) probes on the admin
  port, cpu+memory requests and limits, runAsNonRoot, readOnlyRootFilesystem, no privilege escalation,
  all capabilities dropped, RuntimeDefault seccomp, a preStop hook, enough termination grace;
- every `--flag` in args and every ONAIR_*/OTEL_* env var (container env, ConfigMap and Secret keys)
  exists in the help; --target values are among its possible values and match the component;
- container ports match the listen addresses in env (ONAIR_HTTP_ADDR port == containerPort "http" ...,
  ONAIR_RELAY_PORT == containerPort "relay-udp"); ports named *-udp are UDP, the others TCP;
- the relay: a Deployment with Redis, the registry and signaling URLs, the cluster secret and a fixed
  relay port; ONAIR_RTC_IP from status.podIP on the pod network and unset with hostNetwork; its media
  port (UDP, and relay-tcp on the same port for ICE-TCP) behind a Service only without hostNetwork,
  with one replica behind a load balancer; its NetworkPolicy lets both in;
- writable paths (data dir, the recorder's recordings dir) are on writable mounted volumes;
- recordings: the recorder (read-write) and the gateway (read-only) mount one shared PersistentVolumeClaim
  at the same ONAIR_RECORDINGS_DIR; the chart's claim is ReadWriteMany; the recorder StatefulSet has no
  volumeClaimTemplates (its replicas share the streams through leases in Redis, and the one volume);
- Services target named container ports of the pods they select, TCP only (the recorder's media goes to
  its pod IP, never through a Service) but for TURN's and the relay's media Services; the Ingress routes
  /ws and / to the gateway Service's http port with WebSocket timeouts; HPAs, PDBs, NetworkPolicies and
  the ServiceMonitor select what they should (the relay's policy lets its UDP port in, and no gRPC).

Prints one line per failure (every check with -v) and a closing line "N passed, M failed"; exits 1 when
anything failed. Needs Python 3 with PyYAML (the yamllint venv has it) and helm ($ONAIR_TOOLS_DIR/bin/helm
or $HELM).
"""

import base64
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "onair")
CONTRACT = os.path.join(CHART, "files", "cli.yaml")
TOOLS = os.environ.get("ONAIR_TOOLS_DIR", "/var/tmp/onair-tools")
HELM = os.environ.get("HELM", os.path.join(TOOLS, "bin", "helm"))
KUBE_VERSION = os.environ.get("ONAIR_KUBE_VERSION", "1.30.0")
RELEASE = "onair"
NAMESPACE = "onair"

COMPONENTS = {  # component -> (kind, minimum terminationGracePeriodSeconds)
    "gateway": ("Deployment", 60),
    "signaling": ("Deployment", 1),
    "registry": ("Deployment", 1),
    "recorder": ("StatefulSet", 120),
    "relay": ("Deployment", 1),
}
# Components rendered only when enabled (the "turn" variant enables them).
OPTIONAL_COMPONENTS = {"turn": ("Deployment", 1)}
ADDR_ENV = {"ONAIR_HTTP_ADDR": "http", "ONAIR_GRPC_ADDR": "grpc", "ONAIR_ADMIN_ADDR": "admin", "ONAIR_TURN_ADDR": "turn"}
# Env vars that hold a bare port number (UDP-only ports), and their container port.
PORT_ENV = {"ONAIR_RELAY_PORT": "relay-udp"}
LISTEN_PORTS = {"gateway": "http", "signaling": "grpc", "registry": "grpc", "recorder": "grpc", "turn": "turn",
                "relay": "relay-udp"}
# Env every pod of a component must have. The binary refuses to start gateway, signaling, recorder and
# relay without --redis-url; the relay calls signaling and the registry (their defaults are loopback) with
# the cluster secret, and its media port must be fixed (0 = a random one no Service or firewall can open).
NEEDS_ENV = {
    "gateway": ["ONAIR_REDIS_URL"],
    "signaling": ["ONAIR_REDIS_URL"],
    "recorder": ["ONAIR_REDIS_URL"],
    "relay": ["ONAIR_REDIS_URL", "ONAIR_REGISTRY_URL", "ONAIR_SIGNALING_URL", "ONAIR_CLUSTER_SECRET",
              "ONAIR_RELAY_PORT"],
}
RECORDINGS_ENV = "ONAIR_RECORDINGS_DIR"
# Components that mount the shared recordings volume, and whether they write to it.
RECORDINGS_MOUNTERS = {"recorder": True, "gateway": False}
EXISTING_CLAIM = "onair-recordings-nfs"
ENV_PREFIXES = ("ONAIR_", "OTEL_")

VARIANTS = [
    ("default", []),
    ("production", ["-f", os.path.join(CHART, "ci", "production-values.yaml")]),
    ("production+servicemonitor",
     ["-f", os.path.join(CHART, "ci", "production-values.yaml"), "--set", "serviceMonitor.enabled=true"]),
    ("turn", ["-f", os.path.join(CHART, "ci", "turn-values.yaml")]),
    ("relay", ["-f", os.path.join(CHART, "ci", "relay-values.yaml")]),
    ("relay-off", ["--set", "relay.enabled=false"]),
]
# Components a variant turns off: they must render nothing.
VARIANT_OFF = {"relay-off": {"relay"}}


class Results:
    def __init__(self, verbose):
        self.passed = 0
        self.failed = 0
        self.verbose = verbose
        self.failures = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok    {name}")
        else:
            self.failed += 1
            line = f"FAIL  {name}" + (f": {detail}" if detail else "")
            self.failures.append(line)
            print(line)
        return ok


# --- onair --help ---------------------------------------------------------------------------------

FLAG_LINE = re.compile(r"^\s{1,12}(?:-[A-Za-z0-9],\s+)?--([a-z0-9][a-z0-9-]*)")
ENV_MARK = re.compile(r"\[env:\s*([A-Za-z_][A-Za-z0-9_]*)(?:=[^\]]*)?\]")
POSSIBLE_INLINE = re.compile(r"\[possible values:\s*([^\]]*)\]")
POSSIBLE_ITEM = re.compile(r"^\s*-\s+([A-Za-z0-9][A-Za-z0-9_-]*)(?::|\s*$)")


def parse_help(text):
    """flag name -> {"env": str|None, "values": [str]} from clap's --help (long or short form)."""
    flags = {}
    current = None
    in_values = False
    for line in text.splitlines():
        m = FLAG_LINE.match(line)
        if m:
            current = m.group(1)
            flags[current] = {"env": None, "values": []}
            in_values = False
        if current is None:
            continue
        e = ENV_MARK.search(line)
        if e:
            flags[current]["env"] = e.group(1)
        p = POSSIBLE_INLINE.search(line)
        if p:
            flags[current]["values"] += [v.strip() for v in p.group(1).split(",") if v.strip()]
        if line.strip() == "Possible values:":
            in_values = True
            continue
        if in_values:
            item = POSSIBLE_ITEM.match(line)
            if item:
                flags[current]["values"].append(item.group(1))
            elif line.strip():
                in_values = False
    return flags


def load_help(binary, res):
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        res.check("binary: `onair --help` runs", False, f"{binary}: {e}")
        return None
    if not res.check("binary: `onair --help` runs", out.returncode == 0, out.stderr.strip()[:300]):
        return None
    flags = parse_help(out.stdout)
    res.check("binary: help lists flags with env vars",
              len(flags) > 3 and any(f["env"] for f in flags.values()), f"parsed {sorted(flags)}")
    return flags


# --- rendering ------------------------------------------------------------------------------------

def render(extra_args):
    cmd = [HELM, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION] + extra_args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def name_of(obj):
    return obj["metadata"]["name"]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def parse_duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]


# --- checks ---------------------------------------------------------------------------------------

def check_contract(res, helpflags):
    with open(CONTRACT) as f:
        contract = yaml.safe_load(f)
    targets = contract.get("targets") or []
    res.check("contract: lists the cluster targets", sorted(targets) == sorted({**COMPONENTS, **OPTIONAL_COMPONENTS}),
              f"{targets}")
    seen = set()
    for entry in contract.get("flags", []):
        flag = entry.get("flag", "")
        label = f"contract {flag}"
        res.check(f"{label}: unique", flag not in seen)
        seen.add(flag)
        res.check(f"{label}: source is known",
                  entry.get("source") in ("arg", "port", "fieldRef", "config", "secret", "grace"),
                  f"{entry.get('source')}")
        res.check(f"{label}: targets are chart components",
                  bool(entry.get("targets")) and set(entry["targets"]) <= set(targets), f"{entry.get('targets')}")
        if entry.get("source") == "port":
            res.check(f"{label}: port is http, grpc, admin, turn or relay",
                      entry.get("port") in ("http", "grpc", "admin", "turn", "relay"))
            res.check(f"{label}: protocol is TCP or UDP", entry.get("protocol", "TCP") in ("TCP", "UDP"),
                      f"{entry.get('protocol')}")
        if "podNetworkOnly" in entry:
            res.check(f"{label}: podNetworkOnly are among its targets",
                      set(entry["podNetworkOnly"] or []) <= set(entry.get("targets") or []), f"{entry['podNetworkOnly']}")
        if helpflags is None:
            continue
        name = flag.lstrip("-")
        if res.check(f"{label}: flag exists in onair --help", name in helpflags, "missing from the binary"):
            res.check(f"{label}: env var is {entry.get('env')} as in onair --help",
                      helpflags[name]["env"] == entry.get("env"),
                      f"help says {helpflags[name]['env']}")
    if helpflags is not None and "target" in helpflags:
        possible = helpflags["target"]["values"]
        for t in targets:
            res.check(f"contract target {t}: is a --target possible value", t in possible,
                      f"help lists {possible}")
    return contract


def resolve_env(env, configmaps, secrets):
    """name -> value (None when not resolvable, e.g. fieldRef or an existingSecret)."""
    values = {}
    for e in env:
        if "value" in e:
            values[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                values[e["name"]] = configmaps.get(ref["name"], {}).get(ref["key"])
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                values[e["name"]] = secrets.get(ref["name"], {}).get(ref["key"])
            else:
                values[e["name"]] = None
        else:
            values[e["name"]] = None
    return values


def port_number(value, container_ports):
    if isinstance(value, int):
        return value
    return container_ports.get(value)


def check_workloads(res, variant, docs, helpflags, helpenvs):
    configmaps = {name_of(c): c.get("data") or {} for c in by_kind(docs, "ConfigMap")}
    secrets = {}
    for s in by_kind(docs, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        data.update(s.get("stringData") or {})
        secrets[name_of(s)] = data

    # ConfigMaps the pods read env variables from (others, like the Grafana dashboard, are not config).
    env_configmaps = set()
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    found = {}
    for w in workloads:
        comp = w["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        found[comp] = w
    off = VARIANT_OFF.get(variant, set())
    for comp, (kind, _) in COMPONENTS.items():
        w = found.get(comp)
        if comp in off:
            leftovers = [f"{d['kind']} {name_of(d)}" for d in docs
                         if d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == comp]
            res.check(f"[{variant}] {comp} off: nothing of it rendered", not leftovers, f"{leftovers}")
            continue
        res.check(f"[{variant}] {comp}: rendered as a {kind}", w is not None and w["kind"] == kind,
                  "missing" if w is None else w["kind"])

    pods = {}  # workload name -> (labels, {port name: number})
    recordings = {}  # component -> (ONAIR_RECORDINGS_DIR, claim name)
    for w in workloads:
        kind, wname = w["kind"], name_of(w)
        comp = w["metadata"].get("labels", {}).get("app.kubernetes.io/component", "?")
        tag = f"[{variant}] {kind} {wname}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        plabels = spec["template"]["metadata"].get("labels", {})
        res.check(f"{tag}: selector matches the pod labels", selects(spec["selector"]["matchLabels"], plabels))
        if kind == "Deployment":
            ru = spec.get("strategy", {}).get("rollingUpdate", {})
            if spec["template"]["spec"].get("hostNetwork"):
                # Host ports: the new pod cannot start beside the old one on the same node.
                res.check(f"{tag}: hostNetwork rolls one pod at a time without surge",
                          ru.get("maxUnavailable") == 1 and ru.get("maxSurge") == 0, f"{ru}")
            else:
                res.check(f"{tag}: rolling update with maxUnavailable 0", ru.get("maxUnavailable") == 0, f"{ru}")
        psc = pod.get("securityContext", {})
        grace = pod.get("terminationGracePeriodSeconds", 30)
        min_grace = COMPONENTS.get(comp, ("", 1))[1]
        res.check(f"{tag}: terminationGracePeriodSeconds >= {min_grace}", grace >= min_grace, f"{grace}")
        res.check(f"{tag}: no service account token", pod.get("automountServiceAccountToken") is False)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if comp == "recorder":
            # Recordings live on the one shared claim, not on a volume per pod.
            res.check(f"{tag}: no volumeClaimTemplates (recordings are on the shared volume)",
                      not spec.get("volumeClaimTemplates"), f"{spec.get('volumeClaimTemplates')}")
        if comp == "relay":
            res.check(f"{tag}: no gRPC port (the relay has no gRPC API)", not any(
                p.get("name") == "grpc" for c in pod["containers"] for p in c.get("ports", [])))

        all_ports = {}
        for c in pod["containers"]:
            ctag = f"{tag} container {c['name']}"
            sc = c.get("securityContext", {})
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            all_ports.update(ports)
            for p in c.get("ports", []):
                want = "UDP" if p.get("name", "").endswith("-udp") else "TCP"
                res.check(f"{ctag}: container port {p.get('name')} is {want}", p.get("protocol", "TCP") == want,
                          f"{p.get('protocol')}")

            # probes
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                p = c.get(probe)
                if not res.check(f"{ctag}: has {probe}", bool(p)):
                    continue
                hg = p.get("httpGet", {})
                res.check(f"{ctag}: {probe} is GET {path}", hg.get("path") == path, f"{hg}")
                res.check(f"{ctag}: {probe} targets the admin port",
                          "admin" in ports and port_number(hg.get("port"), ports) == ports["admin"],
                          f"port {hg.get('port')}, admin {ports.get('admin')}")

            # resources
            r = c.get("resources", {})
            for part in ("requests", "limits"):
                for res_name in ("cpu", "memory"):
                    res.check(f"{ctag}: resources.{part}.{res_name} set", res_name in (r.get(part) or {}))

            # security
            def eff(key):
                return sc.get(key, psc.get(key))
            res.check(f"{ctag}: runAsNonRoot true", eff("runAsNonRoot") is True)
            res.check(f"{ctag}: runAsUser 10001", eff("runAsUser") == 10001, f"{eff('runAsUser')}")
            res.check(f"{ctag}: readOnlyRootFilesystem true", sc.get("readOnlyRootFilesystem") is True)
            res.check(f"{ctag}: allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False)
            res.check(f"{ctag}: capabilities drop ALL", "ALL" in (sc.get("capabilities", {}).get("drop") or []))
            res.check(f"{ctag}: seccompProfile RuntimeDefault",
                      (eff("seccompProfile") or {}).get("type") == "RuntimeDefault")

            # preStop and shutdown grace
            pre = c.get("lifecycle", {}).get("preStop")
            res.check(f"{ctag}: has a preStop hook", bool(pre))
            sleep_s = 0
            if pre:
                if "sleep" in pre:
                    sleep_s = int(pre["sleep"].get("seconds", 0))
                else:
                    cmd = pre.get("exec", {}).get("command", [])
                    if len(cmd) == 2 and cmd[0].endswith("sleep") and str(cmd[1]).isdigit():
                        sleep_s = int(cmd[1])
                res.check(f"{ctag}: preStop sleeps (endpoints drain first)", sleep_s > 0, f"{pre}")

            # args
            args = [str(a) for a in c.get("args", [])]
            targets = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--target"]
            targets += [a.split("=", 1)[1] for a in args if a.startswith("--target=")]
            res.check(f"{ctag}: --target {comp} in args", targets == [comp], f"{args}")
            for a in args:
                if not a.startswith("--"):
                    continue
                flag = a[2:].split("=", 1)[0]
                if helpflags is not None:
                    res.check(f"{ctag}: arg --{flag} exists in onair --help", flag in helpflags,
                              "missing from the binary")
            if helpflags is not None and "target" in helpflags:
                for t in targets:
                    res.check(f"{ctag}: --target {t} is a possible value in onair --help",
                              t in helpflags["target"]["values"], f"help lists {helpflags['target']['values']}")

            # env
            env = c.get("env", [])
            names = [e["name"] for e in env]
            res.check(f"{ctag}: env names unique", len(names) == len(set(names)),
                      f"{[n for n in names if names.count(n) > 1]}")
            res.check(f"{ctag}: no envFrom (every variable is explicit)", not c.get("envFrom"))
            for n in names:
                if n.startswith(ENV_PREFIXES) and helpenvs is not None:
                    res.check(f"{ctag}: env {n} exists in onair --help", n in helpenvs, "missing from the binary")
            res.check(f"{ctag}: ONAIR_TARGET not set by env (args carry it)", "ONAIR_TARGET" not in names)
            for e in env:
                vf = e.get("valueFrom", {})
                if "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    env_configmaps.add(ref["name"])
                    res.check(f"{ctag}: env {e['name']} -> ConfigMap {ref['name']} key {ref['key']} exists",
                              ref["key"] in configmaps.get(ref["name"], {}))
                if "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    if ref["name"] in secrets:
                        res.check(f"{ctag}: env {e['name']} -> Secret {ref['name']} key {ref['key']} exists",
                                  ref["key"] in secrets[ref["name"]])
            byname = {e["name"]: e for e in env}
            node = byname.get("ONAIR_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            res.check(f"{ctag}: ONAIR_NODE_ID from metadata.name", node == "metadata.name", f"{node}")
            ip = byname.get("ONAIR_RTC_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if comp == "recorder" or (comp == "relay" and not pod.get("hostNetwork")):
                res.check(f"{ctag}: ONAIR_RTC_IP from status.podIP", ip == "status.podIP", f"{ip}")
            elif comp == "relay":
                # hostNetwork: the relay binds and announces every IPv4 address of its node.
                res.check(f"{ctag}: no ONAIR_RTC_IP with hostNetwork", "ONAIR_RTC_IP" not in byname,
                          f"{byname.get('ONAIR_RTC_IP')}")
            for need in NEEDS_ENV.get(comp, []):
                res.check(f"{ctag}: env {need} set", need in byname)
            values = resolve_env(env, configmaps, secrets)

            # listen addresses vs container ports
            for var, pname in ADDR_ENV.items():
                if pname in ports or var in values:
                    addr = values.get(var)
                    m = re.fullmatch(r"(?:.*):(\d+)", addr or "")
                    res.check(f"{ctag}: {var} port == containerPort {pname}",
                              bool(m) and pname in ports and int(m.group(1)) == ports[pname],
                              f"{var}={addr}, {pname}={ports.get(pname)}")
            for var, pname in PORT_ENV.items():
                if pname in ports or var in values:
                    num = values.get(var)
                    res.check(f"{ctag}: {var} == containerPort {pname} (fixed, not 0)",
                              str(num).isdigit() and int(num) != 0 and pname in ports and int(num) == ports[pname],
                              f"{var}={num}, {pname}={ports.get(pname)}")
            res.check(f"{ctag}: serves admin", "admin" in ports)
            want = LISTEN_PORTS.get(comp)
            if want:
                res.check(f"{ctag}: serves {want}", want in ports, f"{sorted(ports)}")

            grace_s = parse_duration_s(values.get("ONAIR_SHUTDOWN_GRACE"))
            if res.check(f"{ctag}: ONAIR_SHUTDOWN_GRACE set", grace_s is not None,
                         f"{values.get('ONAIR_SHUTDOWN_GRACE')}"):
                res.check(f"{ctag}: preStop sleep + shutdown grace < terminationGracePeriodSeconds",
                          sleep_s + grace_s < grace, f"{sleep_s}+{grace_s} >= {grace}")

            # writable paths are mounted volumes (the root filesystem is read-only)
            mounts = c.get("volumeMounts", [])
            for m in mounts:
                res.check(f"{ctag}: volumeMount {m['name']} has a volume", m["name"] in volumes)
            writable = [m for m in mounts if not m.get("readOnly")]
            if "ONAIR_DATA_DIR" in values:
                path = values["ONAIR_DATA_DIR"]
                res.check(f"{ctag}: ONAIR_DATA_DIR={path} is on a writable mounted volume",
                          mount_for(path, writable) is not None, f"{path}")

            # the shared recordings volume
            if comp in RECORDINGS_MOUNTERS:
                writes = RECORDINGS_MOUNTERS[comp]
                path = values.get(RECORDINGS_ENV)
                if res.check(f"{ctag}: {RECORDINGS_ENV} set", bool(path), f"{path}"):
                    m = mount_for(path, mounts)
                    if res.check(f"{ctag}: {RECORDINGS_ENV}={path} is a volume mount", m is not None and m["mountPath"] == path,
                                 f"{[x['mountPath'] for x in mounts]}"):
                        vol = volumes.get(m["name"], {})
                        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                        res.check(f"{ctag}: {RECORDINGS_ENV} is a PersistentVolumeClaim", bool(claim), f"{vol}")
                        if writes:
                            res.check(f"{ctag}: recordings mount is writable", not m.get("readOnly"), f"{m}")
                        else:
                            res.check(f"{ctag}: recordings mount is readOnly", m.get("readOnly") is True, f"{m}")
                            res.check(f"{ctag}: recordings volume is readOnly", (vol.get("persistentVolumeClaim") or {}).get("readOnly") is True, f"{vol}")
                        recordings[comp] = (path, claim)
            elif RECORDINGS_ENV in values:
                res.check(f"{ctag}: {RECORDINGS_ENV} only where the recordings volume is mounted", False,
                          f"{values[RECORDINGS_ENV]}")
        pods[wname] = (plabels, all_ports, comp)

    # recorder and gateway share one claim at one path; the chart's own claim can be mounted on many nodes
    if all(c in recordings for c in RECORDINGS_MOUNTERS):
        (rpath, rclaim), (gpath, gclaim) = recordings["recorder"], recordings["gateway"]
        res.check(f"[{variant}] recorder and gateway use the same {RECORDINGS_ENV}", rpath == gpath, f"{rpath} != {gpath}")
        res.check(f"[{variant}] recorder and gateway mount the same recordings claim", rclaim == gclaim,
                  f"{rclaim} != {gclaim}")
        pvcs = {name_of(p): p for p in by_kind(docs, "PersistentVolumeClaim")}
        if res.check(f"[{variant}] recordings claim {rclaim} is rendered", rclaim in pvcs, f"{sorted(pvcs)}"):
            modes = pvcs[rclaim]["spec"].get("accessModes", [])
            res.check(f"[{variant}] recordings claim is ReadWriteMany", "ReadWriteMany" in modes, f"{modes}")
    else:
        res.check(f"[{variant}] recorder and gateway both mount the recordings volume", False, f"{sorted(recordings)}")
    return pods, {n: d for n, d in configmaps.items() if n in env_configmaps}, secrets


def check_existing_claim(res):
    """recordings.persistence.existingClaim: both components mount it and the chart makes no claim."""
    tag = "[existingClaim]"
    try:
        docs = render(["--set", f"recordings.persistence.existingClaim={EXISTING_CLAIM}"])
    except (RuntimeError, yaml.YAMLError, OSError, subprocess.TimeoutExpired) as e:
        res.check(f"{tag} helm template renders", False, str(e)[:500])
        return
    res.check(f"{tag} no PersistentVolumeClaim rendered", not by_kind(docs, "PersistentVolumeClaim"))
    for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        comp = w["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if comp not in RECORDINGS_MOUNTERS:
            continue
        claims = [(v.get("persistentVolumeClaim") or {}).get("claimName") for v in w["spec"]["template"]["spec"].get("volumes", [])]
        res.check(f"{tag} {comp} mounts claim {EXISTING_CLAIM}", EXISTING_CLAIM in claims, f"{claims}")


def mount_for(path, mounts):
    """The mount that holds `path` (the deepest one), or None."""
    best = None
    for m in mounts:
        mp = m["mountPath"].rstrip("/") or "/"
        if path and (path == mp or path.startswith(mp.rstrip("/") + "/")):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    return best


def check_config(res, variant, configmaps, secrets, helpenvs):
    if helpenvs is None:
        return
    for cname, data in configmaps.items():
        for k in data:
            res.check(f"[{variant}] ConfigMap {cname}: key {k} exists in onair --help", k in helpenvs,
                      "missing from the binary")
    for sname, data in secrets.items():
        for k in data:
            res.check(f"[{variant}] Secret {sname}: key {k} exists in onair --help", k in helpenvs,
                      "missing from the binary")


def check_services(res, variant, docs, pods):
    services = {}
    for s in by_kind(docs, "Service"):
        tag = f"[{variant}] Service {name_of(s)}"
        sel = s["spec"].get("selector", {})
        matched = [p for p in pods.values() if selects(sel, p[0])]
        res.check(f"{tag}: selects a workload", bool(matched))
        ports = {}
        turn = any(m[2] == "turn" for m in matched)
        relay = any(m[2] == "relay" for m in matched)
        for p in s["spec"].get("ports", []):
            name = p.get("name") or ""
            if relay:
                # The relay: its admin port (TCP), or its media port (UDP, and the same port over TCP
                # for ICE-TCP) on a Service of its own.
                res.check(f"{tag}: port {name} is admin, relay-udp or relay-tcp",
                          name in ("admin", "relay-udp", "relay-tcp"))
                want = "UDP" if name == "relay-udp" else "TCP"
                res.check(f"{tag}: port {name} is {want}", p.get("protocol", "TCP") == want, f"{p.get('protocol')}")
                if name == "relay-udp":
                    all_ports = s["spec"].get("ports", [])
                    others = [q.get("name") for q in all_ports if q.get("name") not in (name, "relay-tcp")]
                    res.check(f"{tag}: the relay's media Service carries only relay-udp and relay-tcp", not others,
                              f"{others}")
                    tcp = [q for q in all_ports if q.get("name") == "relay-tcp"]
                    res.check(f"{tag}: relay-tcp (ICE-TCP) is on relay-udp's port", len(tcp) == 1
                              and tcp[0].get("port") == p.get("port"), f"{tcp}")
            elif turn:
                # TURN: its port over TCP and UDP, and the relay ports (UDP, numbered targets).
                res.check(f"{tag}: port {name} is turn, turn-udp or relay-N",
                          name in ("turn", "turn-udp") or name == f"relay-{p.get('port')}")
                want = "TCP" if name == "turn" else "UDP"
                res.check(f"{tag}: port {name} is {want}", p.get("protocol", "TCP") == want, f"{p.get('protocol')}")
                if name.startswith("relay-"):
                    ports[name] = p
                    continue
            else:
                res.check(f"{tag}: port {name} is named http, grpc or admin", name in ("http", "grpc", "admin"))
                res.check(f"{tag}: port {name} is TCP", p.get("protocol", "TCP") == "TCP", f"{p.get('protocol')}")
            if any(m[2] == "recorder" for m in matched):
                # WebRTC media goes browser -> recorder pod IP; the recorder's Services carry gRPC/admin only.
                res.check(f"{tag}: recorder Service exposes only grpc/admin", p.get("name") in ("grpc", "admin"),
                          f"{p.get('name')}")
            tp = p.get("targetPort", p.get("port"))
            for labels, cports, _ in matched:
                res.check(f"{tag}: targetPort {tp} is a container port",
                          (tp in cports) if isinstance(tp, str) else (tp in cports.values()))
            ports[p.get("name")] = p
        services[name_of(s)] = (s, ports, matched)
    return services


def check_relay(res, variant, docs, services):
    """The relay's media port: behind a Service only without hostNetwork, and then one relay per address."""
    relays = [d for d in by_kind(docs, "Deployment")
              if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"]
    media = [(n, s) for n, (s, sports, matched) in services.items()
             if "relay-udp" in sports and any(m[2] == "relay" for m in matched)]
    for d in relays:
        tag = f"[{variant}] relay {name_of(d)}"
        if d["spec"]["template"]["spec"].get("hostNetwork"):
            res.check(f"{tag}: hostNetwork, so no media Service", not media, f"{[n for n, _ in media]}")
            continue
        if not res.check(f"{tag}: without hostNetwork, a Service exposes relay-udp", bool(media)):
            continue
        for n, svc in media:
            if svc["spec"].get("type", "ClusterIP") == "ClusterIP":
                continue
            res.check(f"[{variant}] Service {n}: externalTrafficPolicy Local",
                      svc["spec"].get("externalTrafficPolicy") == "Local", f"{svc['spec'].get('externalTrafficPolicy')}")
            # Every relay announces the one load balancer address: a browser would reach any relay, not the
            # one signaling placed its stream on.
            res.check(f"{tag}: one replica behind the load balancer {n}", d["spec"].get("replicas", 1) <= 1,
                      f"replicas {d['spec'].get('replicas')}")


def check_ingress(res, variant, docs, services, must_exist):
    ingresses = by_kind(docs, "Ingress")
    if must_exist:
        res.check(f"[{variant}] an Ingress is rendered", bool(ingresses))
    gateway_svcs = {n for n, (_, _, matched) in services.items() if any(m[2] == "gateway" for m in matched)}
    for ing in ingresses:
        tag = f"[{variant}] Ingress {name_of(ing)}"
        ann = ing["metadata"].get("annotations", {})
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            v = ann.get(f"nginx.ingress.kubernetes.io/{a}", "0")
            res.check(f"{tag}: {a} >= 3600 (WebSocket)", str(v).isdigit() and int(v) >= 3600, f"{v}")
        rules = ing["spec"].get("rules", [])
        res.check(f"{tag}: has rules", bool(rules))
        for rule in rules:
            paths = {p["path"]: p for p in rule.get("http", {}).get("paths", [])}
            for want in ("/ws", "/"):
                p = paths.get(want)
                if not res.check(f"{tag} host {rule.get('host', '*')}: routes {want}", p is not None):
                    continue
                svc = p["backend"].get("service", {})
                sname, port = svc.get("name"), svc.get("port", {})
                res.check(f"{tag}: {want} goes to the gateway Service", sname in gateway_svcs,
                          f"{sname} not in {sorted(gateway_svcs)}")
                if sname in services:
                    sports = services[sname][1]
                    ok = port.get("name") == "http" or (
                        "number" in port and "http" in sports and port["number"] == sports["http"]["port"])
                    res.check(f"{tag}: {want} goes to the gateway's http port", ok, f"{port}")
        for tls in ing["spec"].get("tls", []) or []:
            hosts = {r.get("host") for r in rules}
            res.check(f"{tag}: TLS hosts are rule hosts", set(tls.get("hosts", [])) <= hosts)


def check_policies(res, variant, docs, pods, services, values_np, off=frozenset()):
    deployments = {name_of(d) for d in by_kind(docs, "Deployment")}
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for h in hpas:
        tag = f"[{variant}] HPA {name_of(h)}"
        ref = h["spec"]["scaleTargetRef"]
        res.check(f"{tag}: targets a rendered Deployment", ref.get("kind") == "Deployment" and ref.get("name") in deployments)
        dep = next((d for d in by_kind(docs, "Deployment") if name_of(d) == ref.get("name")), None)
        if dep is not None:
            res.check(f"{tag}: its Deployment leaves replicas to the HPA", "replicas" not in dep["spec"])
    scaled = {pods[h["spec"]["scaleTargetRef"]["name"]][2] for h in hpas if h["spec"]["scaleTargetRef"]["name"] in pods}
    for comp in ("gateway", "signaling"):
        res.check(f"[{variant}] {comp} has an HPA", comp in scaled)
    covered = set()
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        tag = f"[{variant}] PDB {name_of(pdb)}"
        res.check(f"{tag}: apiVersion policy/v1", pdb["apiVersion"] == "policy/v1")
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        matched = [p[2] for p in pods.values() if selects(sel, p[0])]
        res.check(f"{tag}: selects exactly one workload", len(matched) == 1, f"{matched}")
        covered.update(matched)
    for comp in set(COMPONENTS) - off:
        res.check(f"[{variant}] {comp} has a PodDisruptionBudget", comp in covered)
    nps = by_kind(docs, "NetworkPolicy")
    if values_np:
        res.check(f"[{variant}] NetworkPolicies rendered", bool(nps))
    np_covered = set()
    for np in nps:
        tag = f"[{variant}] NetworkPolicy {name_of(np)}"
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        matched = [p for p in pods.values() if selects(sel, p[0])]
        res.check(f"{tag}: selects a workload", bool(matched))
        for labels, cports, comp in matched:
            np_covered.add(comp)
            for rule in np["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if isinstance(p.get("port"), str):
                        res.check(f"{tag}: port {p['port']} is a container port of {comp}", p["port"] in cports)
            allowed = {p.get("port") for r in np["spec"].get("ingress", []) for p in r.get("ports", [])}
            if comp == "gateway":
                res.check(f"{tag}: lets http in", "http" in allowed)
            if comp == "relay":
                udp = [r for r in np["spec"].get("ingress", [])
                       if any(p.get("port") == "relay-udp" and p.get("protocol") == "UDP" for p in r.get("ports", []))]
                res.check(f"{tag}: lets relay-udp (UDP) in", bool(udp))
                tcp = [r for r in np["spec"].get("ingress", [])
                       if any(p.get("port") == "relay-tcp" and p.get("protocol") == "TCP" for p in r.get("ports", []))]
                res.check(f"{tag}: lets relay-tcp (ICE-TCP) in", bool(tcp))
                res.check(f"{tag}: no gRPC rule (the relay has no gRPC API)", "grpc" not in allowed)
                for r in udp:
                    # The recorder receives from the relay: this release's pods may always send to it.
                    if "from" in r:
                        res.check(f"{tag}: relay-udp lets this release's pods in", any(
                            selects(f.get("podSelector", {}).get("matchLabels", {}), labels) for f in r["from"]))
    if nps:
        for comp in set(COMPONENTS) - off:
            res.check(f"[{variant}] {comp} is covered by a NetworkPolicy", comp in np_covered)
    for sm in [d for d in docs if d.get("kind") == "ServiceMonitor"]:
        tag = f"[{variant}] ServiceMonitor {name_of(sm)}"
        res.check(f"{tag}: apiVersion monitoring.coreos.com/v1", sm["apiVersion"] == "monitoring.coreos.com/v1")
        sel = sm["spec"]["selector"].get("matchLabels", {})
        scraped = [n for n, (s, sports, _) in services.items()
                   if selects(sel, s["metadata"].get("labels", {})) and "admin" in sports]
        comps = {m[2] for n in scraped for m in services[n][2]}
        res.check(f"{tag}: scrapes every component's admin Service", comps == set(COMPONENTS) - off, f"{sorted(comps)}")
        eps = sm["spec"].get("endpoints", [])
        res.check(f"{tag}: endpoint admin /metrics",
                  any(e.get("port") == "admin" and e.get("path") == "/metrics" for e in eps), f"{eps}")


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv[1:]
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    res = Results(verbose)
    helpflags = load_help(args[0], res)
    helpenvs = None if helpflags is None else {f["env"] for f in helpflags.values() if f["env"]}
    check_contract(res, helpflags)

    for variant, extra in VARIANTS:
        try:
            docs = render(extra)
        except (RuntimeError, yaml.YAMLError, OSError, subprocess.TimeoutExpired) as e:
            res.check(f"[{variant}] helm template renders", False, str(e)[:500])
            continue
        res.check(f"[{variant}] helm template renders", True)
        pods, configmaps, secrets = check_workloads(res, variant, docs, helpflags, helpenvs)
        check_config(res, variant, configmaps, secrets, helpenvs)
        services = check_services(res, variant, docs, pods)
        check_relay(res, variant, docs, services)
        check_ingress(res, variant, docs, services, must_exist=variant.startswith("production"))
        check_policies(res, variant, docs, pods, services, values_np=variant.startswith("production") or variant == "relay",
                       off=VARIANT_OFF.get(variant, set()))
        if variant.endswith("servicemonitor"):
            res.check(f"[{variant}] ServiceMonitor rendered", any(d.get("kind") == "ServiceMonitor" for d in docs))
    check_existing_claim(res)

    if helpflags is not None:
        wanted = set()
        with open(CONTRACT) as f:
            for entry in yaml.safe_load(f).get("flags", []):
                if entry.get("flag", "").lstrip("-") not in helpflags:
                    wanted.add(entry.get("flag"))
        if wanted:
            print(f"flags the chart uses that the binary lacks: {' '.join(sorted(wanted))}")
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
