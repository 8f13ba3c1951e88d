// Target P5: a watch event received → its kernel commit, at min sync period 0, p99 ≤ 5 ms.
//
// The real path: an EndpointSlice change enters the StateStore through a source's sink, the
// SyncRunner's thread wakes, plans a partial sync and commits it with the netlink backend into
// a private network namespace (unshare() on a private thread; gone with its last socket). Each
// iteration changes one endpoint of one Service (same endpoint count: an element replacement)
// or, in the "count" variants, adds/removes one: after the runner has widened every chain's
// count window (idle work after the first full sync, docs/design.md §3 "Count gates") that
// moves a count gate, elements only; in the "unwidened" variant (SyncOptions::widenChains = 0)
// the chain's rules are rewritten, which makes the kernel validate the whole table, as every
// count change did before count gates. Reported per size: p50/p99/max of the runner's own
// network-programming latency (store received → committed) and of the caller-observed latency
// (sink call → commit observed), in microseconds. Needs CAP_NET_ADMIN + CAP_SYS_ADMIN.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"
#include "private_netns.h"
#include "workload.h"

namespace {

using namespace sluice;
using Clock = std::chrono::steady_clock;
constexpr uint32_t kEndpoints = 10;

struct CommitWaiter : SyncObserver {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t commits = 0;
  std::chrono::nanoseconds lastLatency{0};
  Clock::time_point lastCommit;
  void onProgrammingLatency(std::chrono::nanoseconds d) override {
    std::lock_guard l(mu);
    ++commits;
    lastLatency = d;
    lastCommit = Clock::now();
    cv.notify_all();
  }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

// Service i's slice in its `changed` form (one endpoint replaced, or one added) or not.
EndpointSlice sliceVariant(uint32_t i, bool changed, bool changeCount) {
  EndpointSlice s = bench::benchSlice(i, kEndpoints, changeCount && changed);
  if (!changeCount && changed) s.endpoints[0].addresses = {bench::endpointIP(i, kEndpoints, kEndpoints)};
  return s;
}

void eventToCommit(benchmark::State& state, bool changeCount, bool widen = true) {
  const auto services = uint32_t(state.range(0));
  std::string error;
  std::vector<double> runnerUs, observedUs;
  double widenSeconds = 0;
  uint64_t widenSteps = 0;
  const bool ran = bench::inPrivateNetns(state, [&](nft::NetlinkBackend& backend) {
    ProxyConfig cfg;
    cfg.nodeName = "node-0";
    cfg.clusterCIDRs = {IPPrefix::parse("198.18.0.0/15").value()};
    DataPlane dp(cfg, backend);
    StateStore store;
    CommitWaiter waiter;
    SyncRunner runner(store, dp, SyncOptions{.minSyncPeriod = std::chrono::milliseconds(0), .widenChains = widen ? 1000u : 0u},
                      &waiter);
    StateSink& sink = store.sink("bench");
    {
      std::vector<Service> svcs;
      std::vector<EndpointSlice> slices;
      for (uint32_t i = 0; i < services; ++i) {
        svcs.push_back(bench::benchService(i));
        slices.push_back(bench::benchSlice(i, kEndpoints));
      }
      sink.replaceServices(std::move(svcs));
      sink.replaceSlices(std::move(slices));
    }
    runner.start();
    auto waitCommits = [&](uint64_t n) {
      std::unique_lock l(waiter.mu);
      return waiter.cv.wait_for(l, std::chrono::seconds(10), [&] { return waiter.commits >= n; });
    };
    sink.synced(ResourceKind::kService);
    sink.synced(ResourceKind::kEndpointSlice);
    if (!waitCommits(1)) {
      error = "first full sync did not commit";
      return;
    }
    // Measured in the steady state: after the idle widening that follows the first full sync.
    const auto widenStart = Clock::now();
    while (widen && runner.stats().narrowChains > 0 && Clock::now() - widenStart < std::chrono::seconds(120))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (widen && runner.stats().narrowChains > 0) {
      error = "the count windows were not widened within 120 s";
      return;
    }
    widenSeconds = std::chrono::duration<double>(Clock::now() - widenStart).count();
    widenSteps = runner.stats().widenSteps;
    uint64_t n = 0;
    std::vector<bool> changed(services, false);  // every upsert must differ from the last one
    for (auto _ : state) {
      ++n;
      const auto i = uint32_t(n * 7919 % services);
      changed[i] = !changed[i];
      const auto t0 = Clock::now();
      sink.upsertSlice(sliceVariant(i, changed[i], changeCount));
      if (!waitCommits(n + 1)) {
        state.SkipWithError("a change was not committed within 10 s");
        break;
      }
      std::lock_guard l(waiter.mu);
      runnerUs.push_back(double(waiter.lastLatency.count()) / 1e3);
      observedUs.push_back(double(std::chrono::duration_cast<std::chrono::nanoseconds>(waiter.lastCommit - t0).count()) / 1e3);
      state.SetIterationTime(observedUs.back() / 1e6);
    }
    runner.stop();
    if (runner.stats().failures) error = "a sync failed";
  });
  if (!ran) return;
  if (!error.empty()) {
    state.SkipWithError(error.c_str());
    return;
  }
  state.counters["runner_p50_us"] = percentile(runnerUs, 0.50);
  state.counters["runner_p99_us"] = percentile(runnerUs, 0.99);
  state.counters["observed_p50_us"] = percentile(observedUs, 0.50);
  state.counters["observed_p99_us"] = percentile(observedUs, 0.99);
  state.counters["observed_max_us"] = percentile(observedUs, 1.0);
  state.counters["widen_s"] = widenSeconds;
  state.counters["widen_steps"] = double(widenSteps);
}

void BM_EventToCommit_ReplaceEndpoint(benchmark::State& state) { eventToCommit(state, false); }
void BM_EventToCommit_EndpointCount(benchmark::State& state) { eventToCommit(state, true); }
void BM_EventToCommit_EndpointCountUnwidened(benchmark::State& state) { eventToCommit(state, true, false); }

void ladder(benchmark::internal::Benchmark* b) {
  for (int n : {10, 1000, 10000}) b->Arg(n);
  b->Unit(benchmark::kMicrosecond)->UseManualTime()->Iterations(1000);
}

BENCHMARK(BM_EventToCommit_ReplaceEndpoint)->Apply(ladder);
BENCHMARK(BM_EventToCommit_EndpointCount)->Apply(ladder);
BENCHMARK(BM_EventToCommit_EndpointCountUnwidened)->Apply(ladder);

}  // namespace

BENCHMARK_MAIN();
