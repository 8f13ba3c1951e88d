// sluice-load: one full sync of N Services × E endpoints into a network namespace's kernel,
// then one endpoint added and removed (P2), printed as one JSON line for bench/compare.py.
//   sluice-load --services N --endpoints E --netns NAME [--changes K] [--count-window W]
//               [--widen-chains C]
// With count gates (W > 0) the count windows are widened C chains per commit after the full
// sync, as sluiced does when idle, before the changes are measured.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sluice/dataplane.h"
#include "workload.h"

namespace {

long vmHWMKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  uint32_t services = 1000, endpoints = 10, changes = 20, widenChains = 1000;
  sluice::ProxyConfig cfg;
  std::string netns;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--services") services = uint32_t(std::stoul(argv[i + 1]));
    else if (k == "--endpoints") endpoints = uint32_t(std::stoul(argv[i + 1]));
    else if (k == "--netns") netns = argv[i + 1];
    else if (k == "--changes") changes = uint32_t(std::stoul(argv[i + 1]));
    else if (k == "--count-window") cfg.countWindow = uint32_t(std::stoul(argv[i + 1]));
    else if (k == "--chains-per-map") cfg.chainsPerEndpointMap = uint32_t(std::stoul(argv[i + 1]));
    else if (k == "--widen-chains") widenChains = uint32_t(std::stoul(argv[i + 1]));
    else {
      fmt::print(stderr, "usage: sluice-load --services N --endpoints E --netns NAME [--changes K] [--count-window W]\n");
      return 2;
    }
  }
  if (netns.empty()) {
    fmt::print(stderr, "sluice-load: --netns is required (never loads into the caller's namespace)\n");
    return 2;
  }
  if (services > 16384 || uint64_t(services) * (endpoints + 1) > 114688) {
    fmt::print(stderr, "sluice-load: workload larger than the 198.18.0.0/15 address plan\n");
    return 2;
  }
  auto backend = sluice::nft::NetlinkBackend::open({netns});
  if (!backend) {
    fmt::print(stderr, "sluice-load: {}\n", backend.status().toString());
    return 1;
  }
  cfg.nodeName = "node-0";
  cfg.clusterCIDRs = {sluice::IPPrefix::parse("198.18.0.0/15").value()};
  sluice::DataPlane dp(cfg, **backend);

  auto t0 = std::chrono::steady_clock::now();
  sluice::Snapshot snap;
  sluice::bench::fillSnapshot(snap, services, endpoints);
  auto t1 = std::chrono::steady_clock::now();
  auto full = dp.sync(snap);
  auto t2 = std::chrono::steady_clock::now();
  if (!full.status) {
    fmt::print(stderr, "sluice-load: full sync failed: {}\n", full.status.toString());
    return 1;
  }
  const auto stats = (*backend)->lastStats();

  // Idle work: the count windows, a step at a time.
  double widenSeconds = 0, widenStepMax = 0;
  size_t widenSteps = 0;
  while (widenChains > 0 && dp.narrowChains() > 0) {
    auto a = std::chrono::steady_clock::now();
    auto r = dp.widen(widenChains);
    const double d = seconds(std::chrono::steady_clock::now() - a);
    if (!r.status) {
      fmt::print(stderr, "sluice-load: widening failed: {}\n", r.status.toString());
      return 1;
    }
    widenSeconds += d;
    widenStepMax = std::max(widenStepMax, d);
    ++widenSteps;
  }

  // A periodic full sync after that (it keeps the windows).
  double refullSeconds = 0;
  if (cfg.countWindow > 0) {
    dp.requestFullSync();
    auto a = std::chrono::steady_clock::now();
    auto r = dp.sync(snap);
    refullSeconds = seconds(std::chrono::steady_clock::now() - a);
    if (!r.status) {
      fmt::print(stderr, "sluice-load: second full sync failed: {}\n", r.status.toString());
      return 1;
    }
  }

  // P2: one endpoint added to / removed from one Service, `changes` times, spread over Services.
  std::vector<double> changeSeconds;
  for (uint32_t c = 0; c < changes; ++c) {
    const uint32_t i = (c * 7919u) % services;
    snap.upsertSlice(sluice::bench::benchSlice(i, endpoints, c % 2 == 0));
    auto a = std::chrono::steady_clock::now();
    auto r = dp.sync(snap);
    auto b = std::chrono::steady_clock::now();
    if (!r.status || r.full) {
      fmt::print(stderr, "sluice-load: endpoint change failed: {}\n", r.status.toString());
      return 1;
    }
    changeSeconds.push_back(seconds(b - a));
  }
  std::sort(changeSeconds.begin(), changeSeconds.end());
  nlohmann::json out = {
      {"impl", "sluice"},
      {"services", services},
      {"endpoints", endpoints},
      {"count_window", cfg.countWindow},
      {"seconds", seconds(t2 - t1)},
      {"build_seconds", seconds(t1 - t0)},
      {"plan_seconds", seconds(full.planTime)},
      {"commit_seconds", seconds(full.applyTime)},
      {"messages", stats.messages},
      {"bytes", stats.bytes},
      {"operations", full.operations},
      {"widen_seconds", widenSeconds},
      {"widen_steps", widenSteps},
      {"widen_step_max_seconds", widenStepMax},
      {"refull_seconds", refullSeconds},
      {"change_p50_seconds", changeSeconds.empty() ? 0.0 : changeSeconds[changeSeconds.size() / 2]},
      {"change_max_seconds", changeSeconds.empty() ? 0.0 : changeSeconds.back()},
      {"peak_rss_kb", vmHWMKb()},
  };
  fmt::print("{}\n", out.dump());
  return 0;
}
