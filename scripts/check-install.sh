#!/usr/bin/env bash
# Installs sluice into a temporary prefix and builds + runs the examples against it through
# find_package(sluice) and pkg-config, as a node agent would.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install build --prefix "$prefix" >/dev/null
cmake -S examples -B "$prefix/examples-build" -DCMAKE_PREFIX_PATH="$prefix"
cmake --build "$prefix/examples-build" -j"$(nproc)"
"$prefix/examples-build/plan-dry-run"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs sluice
echo "install check: ok"
