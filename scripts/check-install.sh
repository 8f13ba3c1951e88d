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
ex="$prefix/examples-build"
"$ex/plan-dry-run"

# The two node agents, first against the FakeBackend (no kernel, no privileges).
timeout 60 "$ex/weighted-agent" --config examples/weighted-backends.conf --dry-run | tee "$prefix/weighted.txt"
grep -q 'problem: examples/weighted-backends.conf:16' "$prefix/weighted.txt" || { echo "weighted-agent: bad line not reported" >&2; exit 1; }
timeout 60 "$ex/lease-agent" --dry-run

# Then for real, as root: each in a network namespace of its own (unshare --net), created for
# that one process and gone when it exits: never the root namespace's nftables.
if [[ $EUID -eq 0 ]] && unshare --net true 2>/dev/null; then
  timeout 60 unshare --net "$ex/weighted-agent" --config examples/weighted-backends.conf --once
  timeout 60 unshare --net "$ex/lease-agent"
  # Run mode: commit, see an edit of the file committed as a partial sync, stop on SIGTERM.
  conf="$prefix/weighted.conf" log="$prefix/weighted-run.log"
  cp examples/weighted-backends.conf "$conf"
  timeout 60 unshare --net "$ex/weighted-agent" --config "$conf" >"$log" 2>&1 &
  agent=$!
  wait_for() { for _ in $(seq 100); do grep -q "$1" "$log" && return 0; sleep 0.1; done; cat "$log" >&2; return 1; }
  wait_for 'sync full: committed'
  sleep 1.1  # a new mtime second, so the agent's poll sees the edit
  echo 'backend payments/ledger 198.18.7.22 1' >>"$conf"
  wait_for 'sync partial: committed, 1 Services planned'
  kill -TERM "$agent"
  wait "$agent"  # exit code 0: a clean stop
  cat "$log"
fi
# The .pc file is relocatable: it must point into $prefix, wherever that is.
flags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs --static sluice)
echo "pkg-config: $flags"
[[ "$flags" == *"-I$prefix/"* ]] || { echo "pkg-config does not point into $prefix" >&2; exit 1; }
g++ -std=c++20 -o "$prefix/plan-dry-run-pc" examples/plan_dry_run.cpp $flags
"$prefix/plan-dry-run-pc" >/dev/null
echo "install check: ok"
