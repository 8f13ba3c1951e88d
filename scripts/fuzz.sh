#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for SECONDS (default 20)
# from a seed corpus made of the shared Kubernetes fixtures. Exits non-zero on the first crash,
# leak or sanitizer report (libFuzzer writes the input to build-fuzz/crash-*).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
seconds="${1:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-fuzz"
fixtures="${SLUICE_FIXTURES_DIR:-$root/../shared/fixtures}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSLUICE_BUILD_FUZZERS=ON -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j2 --target watch_fuzz manifest_fuzz

# Seeds: every k8s fixture (first byte = the target's mode byte), kept across runs so a long run
# continues where the last one stopped.
for target in watch manifest; do
  corpus="$build/corpus/$target"
  mkdir -p "$corpus"
  for f in "$fixtures"/k8s/*/*.json "$fixtures"/k8s/*/*.jsonl; do
    [ -e "$f" ] || continue
    seed="$corpus/seed-$(basename "$f")"
    [ -e "$seed" ] || { printf '\x10'; cat "$f"; } >"$seed"
  done
done

cd "$build"
for target in watch manifest; do
  echo "== ${target}_fuzz for ${seconds}s"
  # -timeout turns an input that hangs the parser into a reported failure (yaml-cpp 0.7 has such
  # loops); the outer timeout is the backstop, so CI can never wait on a fuzzer.
  timeout --kill-after=10 "$((seconds + 120))" \
    "./tests/fuzz/${target}_fuzz" -max_total_time="$seconds" -timeout=10 -max_len=65536 -rss_limit_mb=2048 \
    -print_final_stats=1 "corpus/$target" 2>&1 | tail -n 12
  test "${PIPESTATUS[0]}" -eq 0
done
echo "fuzz: no crash in ${seconds}s per target"
