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
# The .pc file is relocatable: it must point into $prefix, wherever that is.
flags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs --static sluice)
echo "pkg-config: $flags"
[[ "$flags" == *"-I$prefix/"* ]] || { echo "pkg-config does not point into $prefix" >&2; exit 1; }
g++ -std=c++20 -o "$prefix/plan-dry-run-pc" examples/plan_dry_run.cpp $flags
"$prefix/plan-dry-run-pc" >/dev/null
echo "install check: ok"
