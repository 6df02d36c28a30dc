#!/usr/bin/env bash
# Renders nginx/nginx.conf.template to stdout.
#
#   deploy/render-nginx.sh LISTEN PREFIX GATEWAY...
#
# LISTEN   the plain-http listen address: "8080" or "127.0.0.1:8080"
# PREFIX   absolute, writable directory for the pid file, logs and temp files
# GATEWAY  a gateway's HTTP port on 127.0.0.1 ("18080") or HOST:PORT ("10.0.0.5:8080"); one or more
#
# Example (unprivileged):
#   d=$(mktemp -d); deploy/render-nginx.sh 127.0.0.1:8000 "$d" 18080 18081 >"$d/nginx.conf"
#   nginx -p "$d" -c "$d/nginx.conf" -e stderr -g 'daemon off;'
set -euo pipefail

usage() { echo "usage: $0 LISTEN PREFIX GATEWAY..." >&2; exit 2; }
(($# >= 3)) || usage
listen=$1 prefix=$2
shift 2

[[ $listen =~ ^([A-Za-z0-9.-]+:|\[[0-9A-Fa-f:]+\]:)?[0-9]+$ ]] || { echo "bad LISTEN: $listen" >&2; exit 2; }
[[ $prefix == /* ]] || { echo "PREFIX must be an absolute path: $prefix" >&2; exit 2; }
[[ $prefix != *[[:space:]\;\{\}\'\"\$]* ]] || { echo "PREFIX must not contain spaces or nginx syntax: $prefix" >&2; exit 2; }
prefix=${prefix%/}

upstreams=""
for gw in "$@"; do
  if [[ $gw =~ ^[0-9]+$ ]]; then
    gw="127.0.0.1:$gw"
  elif [[ ! $gw =~ ^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]+$ ]]; then
    echo "bad GATEWAY: $gw" >&2; exit 2
  fi
  upstreams+="        server $gw max_fails=2 fail_timeout=5s;"$'\n'
done
upstreams=${upstreams%$'\n'}

template="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/nginx/nginx.conf.template"
out=""
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^[[:space:]]*@UPSTREAMS@[[:space:]]*$ ]]; then
    out+="$upstreams"$'\n'
    continue
  fi
  line=${line//@LISTEN@/"$listen"}
  line=${line//@PREFIX@/"$prefix"}
  out+="$line"$'\n'
done <"$template"

# Every placeholder must be filled: a leftover one would reach nginx as a literal.
if grep -nE '^[^#]*@[A-Z]+@' <<<"$out" >&2; then
  echo "render-nginx.sh: unfilled placeholder in $template" >&2
  exit 1
fi
printf '%s' "$out"
