#!/usr/bin/env bash
# Builds sluice and runs every test: unit layers and real-kernel tests in throw-away network
# namespaces (root required). SLUICE_SANITIZE=1 builds with ASan+UBSan into build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
build=build
# -g1 (line tables, which is what backtraces and sanitizer reports use) rather than -g: full
# debug info at -O2 costs gcc variable tracking on every function, a large share of build time.
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG")
if [[ "${SLUICE_SANITIZE:-0}" == 1 ]]; then
  build=build-asan
  # -O1: ASan's recommended level, fast enough to run and much cheaper to compile than -O2.
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
    -DSLUICE_SANITIZE=ON -DSLUICE_BUILD_BENCH=OFF)
fi
cmake -S . -B "$build" "${flags[@]}"
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure
