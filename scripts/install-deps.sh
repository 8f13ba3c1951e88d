#!/usr/bin/env bash
# Installs everything sluice needs to build, test and benchmark on Debian (12 "bookworm").
# Run as root. Idempotent: apt-get skips what is already installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  # toolchain
  g++ cmake make pkg-config
  # libraries sluice links
  libnftnl-dev libmnl-dev libnetfilter-conntrack-dev nlohmann-json3-dev libfmt-dev libssl-dev libboost-dev
  libyaml-cpp-dev libspdlog-dev libcli11-dev libsystemd-dev libsimdjson-dev
  # tests and benchmarks (etcd-server: the lease tests run a real etcd on loopback; clang: fuzzers)
  doctest-dev libbenchmark-dev python3 time gnuplot-nox etcd-server clang
  # tools the real-kernel tests and the comparison script use (the product never runs them)
  iproute2 nftables iptables conntrack
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
