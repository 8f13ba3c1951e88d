#!/usr/bin/env bash
# Builds sluice and runs the demo: Services programmed over netlink into a throw-away network
# namespace topology, real traffic through their IPs, and which backends answered.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target sluice-demo
exec ./build/proxy/sluice-demo "$@"
