#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer) for SECONDS each: first the saved crash
# inputs in fuzz/regressions/<target> (each must pass), then fuzzing from fuzz/corpus/<target> plus
# the corpus earlier runs grew under $FUZZ_WORK_DIR. Fails on the first crash, saying how to replay it.
#
# Under CI (CI set) the run is reproducible: the committed corpus only, a fixed seed, new units
# kept in a scratch dir. What a CI run finds, the same command finds again on any machine; the
# open-ended search (the growing corpus, random seeds) is `make fuzz`'s.
#
# No sanitizer (-s none): the workspace forbids unsafe code, so what fuzzing can find is a panic, an
# overflow (debug assertions are on: -a), unbounded memory or time, and those need no ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/onair-fuzz-target}"
WORK="${FUZZ_WORK_DIR:-/var/tmp/onair-fuzz}"
log() { printf '\033[1;34m[fuzz]\033[0m %s\n' "$*"; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: cargo fuzz needs a nightly toolchain (rustup toolchain list shows none)" >&2
  exit 1
fi
FUZZ=(cargo +nightly fuzz)
OPTS=(-s none -a --target-dir "$TARGET_DIR" --fuzz-dir fuzz)

log "build (first time: several minutes; then cached in $TARGET_DIR)"
"${FUZZ[@]}" build "${OPTS[@]}"
for target in $("${FUZZ[@]}" list --fuzz-dir fuzz); do
  mkdir -p "$WORK/corpus/$target" "$WORK/artifacts/$target" "fuzz/regressions/$target"
  if compgen -G "fuzz/regressions/$target/*" >/dev/null; then
    log "$target: replaying fuzz/regressions/$target"
    "${FUZZ[@]}" run "${OPTS[@]}" "$target" "fuzz/regressions/$target" -- -runs=0
  fi
  corpus="$WORK/corpus/$target"
  seed=()
  if [[ -n "${CI:-}" ]]; then
    corpus="$(mktemp -d)"
    seed=(-seed=1)
  fi
  mkdir -p "fuzz/corpus/$target"
  log "$target: ${SECONDS_EACH}s"
  if ! "${FUZZ[@]}" run "${OPTS[@]}" "$target" "$corpus" "fuzz/corpus/$target" -- "${seed[@]}" \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/$target/" 2>"$WORK/$target.log"; then
    tail -40 "$WORK/$target.log" >&2
    echo "fuzz: $target found a crash (in $WORK/artifacts/$target/). Replay it with" >&2
    echo "  cargo +nightly fuzz run ${OPTS[*]} $target <file>" >&2
    echo "then fix it, copy the file into fuzz/regressions/$target/ and add a unit test next to the code." >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$WORK/$target.log" | tr '\n' ' ' | sed "s/^/  $target: /"
  echo
done
