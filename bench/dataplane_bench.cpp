// Ladders for the control plane: planning, diffing, netlink encoding and kernel commits at
// 10 → 100 000 endpoints (Services × 10 endpoints). Kernel benchmarks run in a network
// namespace of their own, created with unshare() on a private thread and gone when its last
// socket closes, so nothing touches the caller's namespace. They need CAP_NET_ADMIN and are
// skipped (with a message) without it.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <future>
#include <thread>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "private_netns.h"
#include "workload.h"

namespace {

using namespace sluice;

ProxyConfig benchConfig() {
  ProxyConfig cfg;
  cfg.nodeName = "node-0";
  cfg.clusterCIDRs = {IPPrefix::parse("198.18.0.0/15").value()};
  return cfg;
}

constexpr uint32_t kEndpoints = 10;

void servicesLadder(benchmark::internal::Benchmark* b) {
  for (int n : {1, 10, 100, 1000, 10000}) b->Arg(n);
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// Desired state → full transaction (what a first sync or a drift repair computes).
void BM_PlanFull(benchmark::State& state) {
  const auto services = uint32_t(state.range(0));
  Snapshot snap;
  bench::fillSnapshot(snap, services, kEndpoints);
  Planner planner(benchConfig());
  for (auto _ : state) {
    auto plan = planner.planFull(snap);
    benchmark::DoNotOptimize(plan.tx.size());
  }
  state.counters["endpoints"] = double(services * kEndpoints);
}
BENCHMARK(BM_PlanFull)->Apply(servicesLadder);

// One endpoint added or removed with N Services committed: the partial plan (diff).
void BM_PlanOneEndpointChange(benchmark::State& state) {
  const auto services = uint32_t(state.range(0));
  Snapshot snap;
  bench::fillSnapshot(snap, services, kEndpoints);
  Planner planner(benchConfig());
  planner.commit(planner.planFull(snap));
  snap.takeDirty();
  bool extra = false;
  for (auto _ : state) {
    extra = !extra;
    snap.upsertSlice(bench::benchSlice(services / 2, kEndpoints, extra));
    auto plan = planner.planPartial(snap, snap.takeDirty());
    benchmark::DoNotOptimize(plan.tx.size());
    planner.commit(std::move(plan));
  }
}
BENCHMARK(BM_PlanOneEndpointChange)->Apply(servicesLadder);

// Transaction → netlink batch bytes (libnftnl encoding), without a kernel.
void BM_EncodeFull(benchmark::State& state) {
  const auto services = uint32_t(state.range(0));
  Snapshot snap;
  bench::fillSnapshot(snap, services, kEndpoints);
  Planner planner(benchConfig());
  auto plan = planner.planFull(snap);
  size_t bytes = 0, messages = 0;
  for (auto _ : state) {
    auto batch = nft::NetlinkBackend::encode(plan.tx, 1, &messages);
    bytes = batch.size();
    benchmark::DoNotOptimize(batch.data());
  }
  state.counters["bytes"] = double(bytes);
  state.counters["messages"] = double(messages);
}
BENCHMARK(BM_EncodeFull)->Apply(servicesLadder);

using bench::inPrivateNetns;

// Desired state → committed in the kernel: target P1 is ≤ 0.5 s at 10 000 × 10.
void BM_KernelFullSync(benchmark::State& state) {
  const auto services = uint32_t(state.range(0));
  Snapshot snap;
  bench::fillSnapshot(snap, services, kEndpoints);
  inPrivateNetns(state, [&](nft::NetlinkBackend& backend) {
    for (auto _ : state) {
      DataPlane dp(benchConfig(), backend);  // fresh mirror: every sync is a full one
      auto r = dp.sync(snap);
      if (!r.status) state.SkipWithError(r.status.toString().c_str());
      state.counters["messages"] = double(backend.lastStats().messages);
    }
  });
}
BENCHMARK(BM_KernelFullSync)->Apply(servicesLadder)->Iterations(3);

// Runs `step(dp, snap)` per iteration against a DataPlane whose N Services are committed in a
// private network namespace; every step must be a successful partial sync.
// The count windows are widened first, as sluiced does when idle after its first full sync.
template <typename Step>
void measureChanges(benchmark::State& state, Step&& step, ProxyConfig cfg = benchConfig()) {
  const auto services = uint32_t(state.range(0));
  Snapshot snap;
  bench::fillSnapshot(snap, services, kEndpoints);
  inPrivateNetns(state, [&](nft::NetlinkBackend& backend) {
    DataPlane dp(cfg, backend);
    if (auto r = dp.sync(snap); !r.status) {
      state.SkipWithError(r.status.toString().c_str());
      return;
    }
    while (dp.narrowChains() > 0)
      if (auto r = dp.widen(1000); !r.status) {
        state.SkipWithError(r.status.toString().c_str());
        return;
      }
    for (auto _ : state) {
      step(snap, services);
      auto r = dp.sync(snap);
      if (!r.status || r.full) state.SkipWithError("partial sync failed");
    }
  });
}

// One endpoint added/removed with N Services in the kernel: target P2 is ≤ 1 ms at 10 000 and
// a 10k/100 ratio ≤ 1.5.
void BM_KernelOneEndpointChange(benchmark::State& state) {
  bool extra = false;
  measureChanges(state, [&](Snapshot& snap, uint32_t services) {
    extra = !extra;
    snap.upsertSlice(bench::benchSlice(services / 2, kEndpoints, extra));
  });
}
BENCHMARK(BM_KernelOneEndpointChange)->Apply(servicesLadder);

// The same without count gates (ProxyConfig::countWindow = 0): every count change rewrites the
// Service's dnat rule, and the kernel re-validates the whole table.
void BM_KernelOneEndpointChangeUngated(benchmark::State& state) {
  bool extra = false;
  ProxyConfig cfg = benchConfig();
  cfg.countWindow = 0;
  measureChanges(
      state,
      [&](Snapshot& snap, uint32_t services) {
        extra = !extra;
        snap.upsertSlice(bench::benchSlice(services / 2, kEndpoints, extra));
      },
      cfg);
}
BENCHMARK(BM_KernelOneEndpointChangeUngated)->Apply(servicesLadder);

// The same Service's endpoint replaced by another (count unchanged): only map elements change,
// no rule is added, so the kernel does not re-validate the table.
void BM_KernelOneEndpointReplaced(benchmark::State& state) {
  bool flip = false;
  measureChanges(state, [&](Snapshot& snap, uint32_t services) {
    flip = !flip;
    EndpointSlice s = bench::benchSlice(services / 2, kEndpoints, flip);
    if (flip) s.endpoints.erase(s.endpoints.begin());  // endpoints 1..10 instead of 0..9
    snap.upsertSlice(std::move(s));
  });
}
BENCHMARK(BM_KernelOneEndpointReplaced)->Apply(servicesLadder);

}  // namespace

BENCHMARK_MAIN();
