#!/usr/bin/env bash
# Builds sluice and runs the demo: sluiced on a manifest file inside a throw-away network
# namespace topology; real traffic through the Service IP, a manifest edit and the drain it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
source scripts/build-flags.sh
cmake -S . -B build "${sluice_build_flags[@]}" >/dev/null
cmake --build build -j"$(nproc)" --target sluice-demo
exec ./build/proxy/sluice-demo "$@"
