#!/usr/bin/env bash
# Builds sluice and runs every test: unit layers and real-kernel tests in throw-away network
# namespaces (root required). SLUICE_SANITIZE=1 builds with ASan+UBSan into build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
source scripts/build-flags.sh
build=build flags=("${sluice_build_flags[@]}")
if [[ "${SLUICE_SANITIZE:-0}" == 1 ]]; then
  build=build-asan flags=("${sluice_sanitize_flags[@]}")
fi
cmake -S . -B "$build" "${flags[@]}"
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure
