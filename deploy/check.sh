#!/usr/bin/env bash
# Every deploy check: the Helm chart, the Dockerfile, the nginx config. Exits non-zero if any fails.
#
#   deploy/check.sh
#
# Tools (installed by scripts/install-deps.sh) come from $ONAIR_TOOLS_DIR (default /var/tmp/onair-tools):
# bin/helm, venv/bin/{kubernetes-validate,yamllint,hadolint,python}. nginx from $NGINX or the PATH or
# /usr/sbin/nginx. The onair binary whose --help the chart is checked against: $ONAIR_BIN (default
# /var/tmp/onair-target/debug/onair). The Dockerfile is linted here; deploy/image.sh builds it with podman and
# tests/tests/container.rs runs the image (both part of `make test`).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${ONAIR_TOOLS_DIR:-/var/tmp/onair-tools}"
HELM="$TOOLS/bin/helm"
VENV="$TOOLS/venv/bin"
ONAIR_BIN="${ONAIR_BIN:-/var/tmp/onair-target/debug/onair}"
KUBE_VERSION="${ONAIR_KUBE_VERSION:-1.30.0}"
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
CHART=helm/onair
PROD_VALUES=$CHART/ci/production-values.yaml
RELAY_VALUES=$CHART/ci/relay-values.yaml

work="$(mktemp -d "${TMPDIR:-/tmp}/onair-deploy-check.XXXXXX")"
# nginx's prefix lives apart from $work (mode 0700), so an unprivileged nginx can reach it.
nginx_prefix="$(mktemp -d "${TMPDIR:-/tmp}/onair-nginx-check.XXXXXX")"
trap 'rm -rf "$work" "$nginx_prefix"' EXIT

if [[ -t 1 ]]; then blue=$'\033[1;34m' red=$'\033[1;31m' off=$'\033[0m'; else blue="" red="" off=""; fi

passed=() failed=()
step() {
  local name=$1; shift
  printf '%s==> %s%s\n' "$blue" "$name" "$off"
  if "$@"; then
    passed+=("$name")
  else
    printf '%sFAILED: %s%s\n' "$red" "$name" "$off"
    failed+=("$name")
  fi
}

missing=()
for tool in "$HELM" "$VENV/kubernetes-validate" "$VENV/yamllint" "$VENV/hadolint" "$VENV/python" "$NGINX"; do
  [[ -x $tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "missing tools: ${missing[*]} (run scripts/install-deps.sh)" >&2
  exit 1
fi

render() { # render OUT [helm args...]
  local out=$1; shift
  "$HELM" template onair "$CHART" --namespace onair --kube-version "$KUBE_VERSION" "$@" >"$out"
}

# --- Helm chart ---
step "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
step "helm lint --strict (production values)" "$HELM" lint --strict "$CHART" -f "$PROD_VALUES"
step "helm template (default values)" render "$work/default.yaml"
step "helm template (production values)" render "$work/production.yaml" -f "$PROD_VALUES"
step "helm template (production values + ServiceMonitor)" \
  render "$work/servicemonitor.yaml" -f "$PROD_VALUES" --set serviceMonitor.enabled=true
step "helm template (relay behind a LoadBalancer)" render "$work/relay.yaml" -f "$RELAY_VALUES"
# A value that breaks the schema must be refused.
schema_rejects() { ! "$HELM" template onair "$CHART" --set gateway.replicaCount=many >/dev/null 2>&1; }
step "values.schema.json rejects bad values" schema_rejects

validate() { # kubernetes-validate reads "-" as stdin; without a file argument it only prints usage.
  "$VENV/kubernetes-validate" --strict --kubernetes-version "$KUBE_VERSION" --quiet - <"$1"
}
step "kubernetes-validate --strict $KUBE_VERSION (default values)" validate "$work/default.yaml"
step "kubernetes-validate --strict $KUBE_VERSION (production values)" validate "$work/production.yaml"
step "kubernetes-validate --strict $KUBE_VERSION (relay behind a LoadBalancer)" validate "$work/relay.yaml"

step "yamllint (.yamllint, Chart.yaml, values, CI values, CLI contract)" \
  "$VENV/yamllint" --strict -c .yamllint .yamllint "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci/" "$CHART/files/"
for r in default production servicemonitor relay; do
  step "yamllint (rendered: $r)" "$VENV/yamllint" --strict -c .yamllint "$work/$r.yaml"
done

check_schema_json() { "$VENV/python" -c 'import json,sys; json.load(open(sys.argv[1]))' "$CHART/values.schema.json"; }
step "values.schema.json is JSON" check_schema_json

step "chart invariants against $ONAIR_BIN --help" "$VENV/python" deploy/chart_invariants.py "$ONAIR_BIN"

# --- Dockerfile ---
step "hadolint deploy/Dockerfile" "$VENV/hadolint" deploy/Dockerfile

# --- nginx ---
nginx_test() {
  local prefix=$nginx_prefix
  deploy/render-nginx.sh 127.0.0.1:18000 "$prefix" 18080 18081 >"$prefix/nginx.conf" || return 1
  if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
    # Test it the way it runs in the tests: unprivileged.
    chown -R 65534:65534 "$prefix"
    setpriv --reuid=65534 --regid=65534 --clear-groups "$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e stderr
  else
    "$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e stderr
  fi
}
step "nginx -t (rendered nginx/nginx.conf.template, unprivileged)" nginx_test

shell_syntax() { bash -n deploy/check.sh && bash -n deploy/render-nginx.sh && bash -n deploy/image.sh; }
step "bash -n deploy/*.sh" shell_syntax

echo
printf '%d passed, %d failed\n' "${#passed[@]}" "${#failed[@]}"
for f in "${failed[@]}"; do printf '  failed: %s\n' "$f"; done
((${#failed[@]} == 0))
