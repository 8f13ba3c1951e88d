#!/usr/bin/env bash
# Builds sluice and runs the demo: sluiced on a manifest file inside a throw-away network
# namespace topology; real traffic through the Service IP, a manifest edit and the drain it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target sluice-demo
exec ./build/proxy/sluice-demo "$@"
