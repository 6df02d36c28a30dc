#!/usr/bin/env bash
# Builds the onair runtime image with podman, from deploy/Dockerfile (the file operators build with Docker),
# on a machine that reaches no image registry:
#
#   deploy/image.sh BINARY [TAG]      # `make image`: BINARY is the release build, TAG localhost/onair:dev
#   deploy/image.sh --base            # only step 1 (`make test` runs it before the tests)
#
# 1. The base: `debootstrap --variant=minbase bookworm` from the Debian mirror in the machine's apt sources,
#    trimmed like debian:bookworm-slim (no docs, man pages, locales, apt lists), imported into podman as
#    localhost/onair-base:bookworm-<key>. <key> hashes the recipe below, so a changed package list builds
#    a new base; an existing one is reused (podman's storage is the cache; the rootfs tarball is kept under
#    $ONAIR_TOOLS_DIR/image too, so a wiped podman storage re-imports it without debootstrap).
# 2. The image: the Dockerfile's `runtime` stage with RUNTIME_IMAGE=<the base> and BINARY_FROM=prebuilt,
#    i.e. BINARY copied in instead of compiled in the `builder` stage (no rust image to pull here). The
#    build context is a scratch directory holding just BINARY and the host's CA bundle.
#
# Prints the image's size on the last line ("onair image TAG: N MB"). Safe to run concurrently (flock).
# Needs root, podman, buildah, runc and debootstrap (scripts/install-deps.sh installs them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=${1:?usage: deploy/image.sh BINARY [TAG] | --base}
tag=${2:-localhost/onair:dev}
base_only=""; [[ $binary == --base ]] && base_only=1
TOOLS="${ONAIR_TOOLS_DIR:-/var/tmp/onair-tools}"
cache="$TOOLS/image"
# This machine class: crun cannot run containers (hybrid cgroups), and no runtime may raise limits.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)

# The base recipe: anything here changes the key, and so the base.
BASE_SUITE=bookworm
BASE_VARIANT=minbase
BASE_INCLUDE="libssl3"   # extra packages (comma-separated) beyond minbase: the binary needs libc, libgcc, libstdc++ and (relay DTLS/SRTP) libssl3
BASE_TRIM="usr/share/doc usr/share/man usr/share/info usr/share/locale usr/share/lintian var/lib/apt/lists var/cache/apt var/cache/debconf/templates.dat-old var/log"

log() { printf '\033[1;34m[image]\033[0m %s\n' "$*" >&2; }
die() { printf 'deploy/image.sh: %s\n' "$*" >&2; exit 1; }

[[ -n $base_only || -x $binary ]] || die "no executable at $binary (make release builds it)"
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null || die "$tool is not installed (run scripts/install-deps.sh)"
done
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, and podman with runc here)"

# The Debian mirror this machine's apt already uses (deb822 .sources or one-line .list), for `bookworm`.
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$BASE_SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " suite " ")) ok = 1
        }
        if (ok && uri != "") { print uri; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$BASE_SUITE" '$1 == "deb" && $3 == suite { print $2 }'
  done
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

key=$(printf '%s\n' "$BASE_SUITE" "$BASE_VARIANT" "$BASE_INCLUDE" "$BASE_TRIM" | sha256sum | cut -c1-12)
base="localhost/onair-base:$BASE_SUITE-$key"
tarball="$cache/base-$BASE_SUITE-$key.tar"
if ! "${PODMAN[@]}" image exists "$base"; then
  if [[ ! -s $tarball ]]; then
    url=$(mirror | head -n1)
    url=${url:-http://deb.debian.org/debian}
    root="$cache/rootfs-$key"
    rm -rf "$root"
    log "debootstrap --variant=$BASE_VARIANT $BASE_SUITE from $url (~40 s)"
    started=$SECONDS
    debootstrap --variant="$BASE_VARIANT" ${BASE_INCLUDE:+--include="$BASE_INCLUDE"} \
      "$BASE_SUITE" "$root" "$url" >"$cache/debootstrap-$key.log" 2>&1 \
      || die "debootstrap failed; see $cache/debootstrap-$key.log"
    for p in $BASE_TRIM; do
      rm -rf "${root:?}/$p" && mkdir -p "$root/$p"
    done
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    log "base rootfs in $((SECONDS - started)) s"
  fi
  log "podman import $tarball as $base"
  "${PODMAN[@]}" import --quiet "$tarball" "$base" >/dev/null
  # Older bases (other keys) are no longer referenced by the build; leave images in use alone.
  for old in "$cache"/base-*.tar; do [[ $old == "$tarball" ]] || rm -f "$old"; done
fi

if [[ -n $base_only ]]; then
  echo "onair base image $base: $(("$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$base")" / 1000000)) MB"
  exit 0
fi

# The image's inputs: the binary, the Dockerfile, the base. Unchanged (a label on the image says so):
# nothing to build, which keeps concurrent test processes from rebuilding the same image one after another.
inputs=$(cat "$binary" deploy/Dockerfile <(echo "$base") | sha256sum | cut -c1-16)
have=$("${PODMAN[@]}" image inspect --format '{{index .Labels "io.onair.inputs"}}' "$tag" 2>/dev/null || true)
if [[ $have != "$inputs" ]]; then
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/onair-image-ctx.XXXXXX")
  trap 'rm -rf "$ctx"' EXIT
  cp "$binary" "$ctx/onair"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  log "podman build -f deploy/Dockerfile --target runtime (RUNTIME_IMAGE=$base, BINARY_FROM=prebuilt) -t $tag"
  # The docker format keeps the Dockerfile's HEALTHCHECK (OCI images have no such field). The label marks
  # every stage's images, so the prune below removes only what earlier runs of this script left dangling
  # (not --layers=false: buildah 1.28 fails on it with a stage built FROM another stage).
  "${PODMAN[@]}" build --quiet --pull=never --format docker "${LIMITS[@]}" \
    --label io.onair.built-by=deploy-image.sh --label io.onair.inputs="$inputs" \
    --file deploy/Dockerfile --target runtime \
    --build-arg RUNTIME_IMAGE="$base" --build-arg BINARY_FROM=prebuilt \
    --tag "$tag" "$ctx" >/dev/null
  "${PODMAN[@]}" image prune --force --filter label=io.onair.built-by=deploy-image.sh >/dev/null || true
else
  log "$tag is up to date (binary, Dockerfile and base unchanged)"
fi
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$tag")
echo "onair image $tag: $((size / 1000000)) MB (base $base)"
