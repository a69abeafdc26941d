#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on STABLE Rust (no
# cargo-fuzz, no nightly) and runs each over its kept corpus for a while; fails on a crash and
# names the input that crashed. docs/testing.md, "Fuzzing", says how to work with it.
#
#   fabric/fuzz/run.sh [target ...]            build, then run each target FUZZ_SECONDS (20)
#   fabric/fuzz/run.sh --build                 build only
#   fabric/fuzz/run.sh --seed                  write the seed corpus and merge it into corpus/
#   fabric/fuzz/run.sh --merge [target ...]    run, then minimize corpus/<target> with what it found
#
# Environment: FUZZ_SECONDS (per target), FUZZ_JOBS (cargo build jobs; default cargo's),
# FUZZ_ARGS (more libFuzzer flags), FUZZ_LOG_DIR (keep each target's log there). A crash's
# input and log stay in fabric/fuzz/artifacts/<target>/. Single-threaded: one process at a time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-20}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$here/target"
# libFuzzer's coverage on stable: SanitizerCoverage passes through -C passes / -C llvm-args
# (what cargo fuzz adds with -s none), and --cfg fuzzing as cargo fuzz sets it. RUSTFLAGS beats
# a target's rustflags (CI's crt-static), and --target keeps them off build scripts and proc
# macros, which must not be instrumented.
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
export CARGO_INCREMENTAL=0

mode=run
case "${1:-}" in
  --build) mode=build; shift ;;
  --seed) mode=seed; shift ;;
  --merge) mode=merge; shift ;;
esac
# The targets: the [[bin]] sections of Cargo.toml.
all=$(sed -n '/^\[\[bin\]\]/{n;s/^name = "\(.*\)"$/\1/p;}' Cargo.toml)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || read -r -d '' -a targets <<<"$all" || true

jobs=()
[ -n "${FUZZ_JOBS:-}" ] && jobs=(-j "$FUZZ_JOBS")
build_start=$(date +%s)
# The workspace's lock file, so the targets build the versions the node ships with; cargo adds
# libFuzzer's crates to it (and drops what the fuzz build does not use). Not kept in git.
cp ../../Cargo.lock Cargo.lock
cargo build --release --target "$triple" --bins ${jobs[@]+"${jobs[@]}"}
echo "fuzz build: $(( $(date +%s) - build_start )) s"
bin="$CARGO_TARGET_DIR/$triple/release"
[ "$mode" = build ] && exit 0

if [ "$mode" = seed ]; then
  # Any target writes every target's seeds when asked (weft_fabric::fuzzing::init).
  seeds="$here/corpus-seeds"
  rm -rf "$seeds"
  WEFT_FUZZ_WRITE_SEEDS="$seeds" "$bin/${targets[0]}" -runs=0 >/dev/null 2>&1
  for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    "$bin/$t" -merge=1 "corpus/$t" "$seeds/$t" 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' | sed "s/^/$t: /" || true
  done
  rm -rf "$seeds"
  exit 0
fi

work="$(mktemp -d -t weft-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p artifacts
failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz $t: no such target (have: $(echo $all))" >&2; exit 2; }
  mkdir -p "corpus/$t" "artifacts/$t" "$work/$t"
  log="$work/$t.log"
  start=$(date +%s)
  status=0
  # New inputs go to the first directory (scratch); the kept corpus is read, never written.
  # Each line of the log gets the seconds since the start, to see when coverage stopped growing.
  SECONDS=0
  set +e
  # shellcheck disable=SC2086
  "$bin/$t" "$work/$t" "corpus/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" ${FUZZ_ARGS:-} 2>&1 |
    while IFS= read -r line; do printf '%ss %s\n' "$SECONDS" "$line"; done >"$log"
  status=${PIPESTATUS[0]}
  set -e
  [ -n "${FUZZ_LOG_DIR:-}" ] && mkdir -p "$FUZZ_LOG_DIR" && cp "$log" "$FUZZ_LOG_DIR/"
  stats=$(grep -E '^[0-9]+s #[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 | cut -d' ' -f2- || true)
  runs=$(sed -n 's/^[0-9]*s stat::number_of_executed_units: *//p' "$log")
  # When the final coverage was first reached.
  plateau=$(awk '/ cov: / { for (i = 1; i < NF; i++) if ($i == "cov:") c = $(i + 1) + 0;
    if (c > best) { best = c; at = $1 } } END { print at }' "$log")
  if [ "$status" -ne 0 ]; then
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    cp "$log" "artifacts/$t/log.txt"
    echo "fuzz $t ... FAILED after $(( $(date +%s) - start )) s; input: fabric/fuzz/${crash:-artifacts/$t/}"
    { grep -E -A1 "panicked at" "$log" | head -n 2 | cut -c1-400; grep -E "SUMMARY" "$log"; } | sed 's/^/    /' || true
    echo "    reproduce: fabric/fuzz/run.sh --build && fabric/fuzz/target/$triple/release/$t fabric/fuzz/${crash:-artifacts/$t/<input>}"
    failed+=("$t")
  else
    echo "fuzz $t ... ok: ${runs:-?} runs in $(( $(date +%s) - start )) s, coverage last grew at ${plateau:-?}; ${stats:-no stats}"
  fi
  if [ "$mode" = merge ] && [ "$status" -eq 0 ]; then
    rm -rf "$work/$t.min" && mkdir "$work/$t.min"
    # Set cover: the fewest inputs that keep every feature (about half of what -merge=1 keeps).
    "$bin/$t" -set_cover_merge=1 "$work/$t.min" "corpus/$t" "$work/$t" >"$work/$t.merge.log" 2>&1
    cp corpus/"$t"/regression-* "$work/$t.min/" 2>/dev/null || true
    rm -rf "corpus/$t" && mv "$work/$t.min" "corpus/$t"
    echo "fuzz $t: corpus minimized to $(ls "corpus/$t" | wc -l) inputs ($(du -sk --apparent-size "corpus/$t" | cut -f1) KiB)"
  fi
done
rmdir artifacts/* artifacts 2>/dev/null || true
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each without a crash"
