// StateStore and SyncRunner against the fake backend: ownership per source, readiness gating,
// coalescing, failure → full sync with backoff, metrics hooks.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "builders.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;

namespace {

Service web(const char* vip = "198.19.0.10") {
  return clusterIPService("default", "web", vip, {{"http", Protocol::kTCP, 80, 0}});
}

EndpointSlice webSlice(std::vector<Endpoint> eps, const std::string& name = "web-1") {
  return slice("default", name, "web", {{"http", Protocol::kTCP, 8080}}, std::move(eps));
}

void syncAll(StateSink& sink) {
  sink.synced(ResourceKind::kService);
  sink.synced(ResourceKind::kEndpointSlice);
}

struct RecordingObserver : SyncObserver {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<SyncReport> reports;
  std::vector<std::chrono::nanoseconds> latencies;
  void onSync(const SyncReport& r) override {
    std::lock_guard l(mu);
    reports.push_back(r);
    cv.notify_all();
  }
  void onProgrammingLatency(std::chrono::nanoseconds d) override {
    std::lock_guard l(mu);
    latencies.push_back(d);
  }
  // Waits until `pred(reports)` holds (bounded).
  template <class Pred>
  bool waitFor(Pred pred) {
    std::unique_lock l(mu);
    return cv.wait_for(l, 5s, [&] { return pred(reports); });
  }
};

bool hasChain(nft::FakeBackend& fake, const std::string& name) {
  auto* t = fake.table(nft::Family::kIPv4, "sluice");
  return t && t->chains.count(name) > 0;
}

// A runner over the fake backend with one source, "file", and a recording observer.
struct RunnerFixture {
  nft::FakeBackend fake;
  DataPlane dp{ProxyConfig{}, fake};
  StateStore store;
  StateSink& src = store.sink("file");
  RecordingObserver obs;
  std::unique_ptr<SyncRunner> runner;
  explicit RunnerFixture(SyncOptions opts) : runner(std::make_unique<SyncRunner>(store, dp, opts, &obs)) {}
};

const std::string kWebChain = names::serviceChain({"default", "web"}, Protocol::kTCP, "http");

}  // namespace

TEST_CASE("StateStore: one source's replace never removes another source's objects") {
  StateStore store;
  StateSink& file = store.sink("file");
  StateSink& leases = store.sink("leases");
  file.upsertService(web());
  leases.upsertSlice(webSlice({endpoint("198.18.1.11")}, "lease-1"));
  file.replaceSlices({});  // the file has no slices: must not remove the lease's slice
  leases.replaceServices({});
  store.withSnapshot([&](Snapshot& s) {
    CHECK(s.service({"default", "web"}) != nullptr);
    CHECK(s.slicesFor({"default", "web"}).size() == 1);
  });
  CHECK(store.serviceOwner({"default", "web"}) == "file");
  CHECK(store.sliceOwner({"default", "lease-1"}) == "leases");
  // Its owner's replace does remove it.
  leases.replaceSlices({});
  store.withSnapshot([&](Snapshot& s) { CHECK(s.slicesFor({"default", "web"}).empty()); });
  // A remove by a non-owner is ignored too.
  leases.removeService({"default", "web"});
  store.withSnapshot([&](Snapshot& s) { CHECK(s.service({"default", "web"}) != nullptr); });
}

// The store records no owner for the objects of the first source attached (it is implied by the
// Snapshot); taking an object over and giving it back must still move it between sources.
TEST_CASE("StateStore: the last source to deliver an object owns it, the first source attached too") {
  StateStore store;
  StateSink& file = store.sink("file");
  StateSink& leases = store.sink("leases");
  auto present = [&] { return store.withSnapshot([](Snapshot& s) { return s.service({"default", "web"}) != nullptr; }); };
  file.upsertService(web());
  CHECK(store.serviceOwner({"default", "web"}) == "file");
  leases.upsertService(web());
  CHECK(store.serviceOwner({"default", "web"}) == "leases");
  file.replaceServices({});  // not the file's any more: stays
  file.removeService({"default", "web"});
  CHECK(present());
  file.upsertService(web());
  CHECK(store.serviceOwner({"default", "web"}) == "file");
  leases.replaceServices({});  // not the leases' any more: stays
  CHECK(present());
  file.replaceServices({});
  CHECK_FALSE(present());
  CHECK(store.serviceOwner({"default", "web"}).empty());

  file.upsertSlice(webSlice({endpoint("198.18.1.11")}, "web-1"));
  file.upsertSlice(webSlice({endpoint("198.18.1.12")}, "web-2"));
  leases.upsertSlice(webSlice({endpoint("198.18.1.12")}, "web-2"));
  file.replaceSlices({webSlice({endpoint("198.18.1.13")}, "web-3")});
  CHECK(store.sliceOwner({"default", "web-1"}).empty());
  CHECK(store.sliceOwner({"default", "web-2"}) == "leases");
  CHECK(store.sliceOwner({"default", "web-3"}) == "file");
  store.withSnapshot([&](Snapshot& s) {
    const auto& slices = s.slicesFor({"default", "web"});
    CHECK(slices.size() == 2);
    CHECK(slices.count({"default", "web-2"}) == 1);
    CHECK(s.slices().size() == 1);
  });
}

TEST_CASE("StateStore: identical re-delivery is not a change, problems are kept per object") {
  StateStore store;
  int wakes = 0;
  store.setOnChange([&] { ++wakes; });
  StateSink& src = store.sink("file");
  src.upsertService(web());
  src.upsertSlice(webSlice({endpoint("198.18.1.11")}));
  store.withSnapshot([](Snapshot& s) { s.takeDirty(); });
  const int before = wakes;
  src.replaceServices({web()});
  src.replaceSlices({webSlice({endpoint("198.18.1.11")})});
  CHECK(wakes == before);
  store.withSnapshot([](Snapshot& s) { CHECK(s.dirty().empty()); });
  src.upsertSlice(webSlice({endpoint("198.18.1.12")}));
  CHECK(wakes == before + 1);

  src.problem({"Service default/bad", "spec.ports[0].port", "out of range"});
  src.problem({"Service default/bad", "spec.ports[0].port", "out of range"});
  CHECK(store.problems().at("Service default/bad").size() == 1);
  src.problemCleared("Service default/bad");
  CHECK(store.problems().empty());
}

TEST_CASE("SyncRunner: nothing is programmed before every source synced both kinds") {
  nft::FakeBackend fake;
  DataPlane dp(ProxyConfig{}, fake);
  StateStore store;
  StateSink& file = store.sink("file");
  StateSink& leases = store.sink("leases");
  SyncRunner runner(store, dp);
  file.upsertService(web());
  file.upsertSlice(webSlice({endpoint("198.18.1.11")}));
  syncAll(file);
  leases.synced(ResourceKind::kService);
  CHECK(runner.syncOnce().code() == Code::kFailedPrecondition);
  CHECK(fake.transactionsApplied() == 0);
  leases.synced(ResourceKind::kEndpointSlice);
  REQUIRE(runner.syncOnce());
  CHECK(hasChain(fake, kWebChain));
}

TEST_CASE("SyncRunner: changes are coalesced, partial after full, failures force a full retry") {
  RunnerFixture fx(SyncOptions{.initialBackoff = 20ms});
  nft::FakeBackend& fake = fx.fake;
  StateStore& store = fx.store;
  StateSink& src = fx.src;
  RecordingObserver& obs = fx.obs;
  SyncRunner& runner = *fx.runner;
  src.upsertService(web());
  src.upsertSlice(webSlice({endpoint("198.18.1.11")}));
  syncAll(src);
  runner.start();
  REQUIRE(obs.waitFor([](auto& r) { return !r.empty() && r.back().status.isOk(); }));
  CHECK(obs.reports.front().full);
  CHECK(hasChain(fake, kWebChain));

  // A burst of changes while the runner is busy or idle ends in the last state.
  for (int i = 12; i < 40; ++i) {
    std::string addr = "198.18.1." + std::to_string(i);
    src.upsertSlice(webSlice({endpoint(addr.c_str())}));
  }
  REQUIRE(obs.waitFor([&](auto&) { return store.withSnapshot([](Snapshot& s) { return s.dirty().empty(); }); }));
  runner.stop();
  {
    std::lock_guard l(obs.mu);
    CHECK(obs.reports.size() < 30);  // coalesced: fewer syncs than changes
    CHECK_FALSE(obs.reports.back().full);
    CHECK(!obs.latencies.empty());
  }
  CHECK(fake.dump().find("198.18.1.39") != std::string::npos);
  CHECK(fake.dump().find("198.18.1.38") == std::string::npos);

  // The next transaction fails: the runner retries after a backoff, in full.
  fake.failNextAt(0, Status(Code::kUnavailable, "injected"));
  const size_t before = obs.reports.size();
  runner.start();
  src.upsertSlice(webSlice({endpoint("198.18.1.50")}));
  REQUIRE(obs.waitFor([&](auto& r) { return r.size() >= before + 2 && r.back().status.isOk(); }));
  runner.stop();
  std::lock_guard l(obs.mu);
  CHECK_FALSE(obs.reports[before].status.isOk());
  CHECK(obs.reports.back().full);
  CHECK(runner.stats().failures == 1);
  CHECK(fake.dump().find("198.18.1.50") != std::string::npos);
}

TEST_CASE("SyncRunner: requestFullSync and the sync period replace the whole table") {
  RunnerFixture fx(SyncOptions{.syncPeriod = 100ms});
  StateSink& src = fx.src;
  RecordingObserver& obs = fx.obs;
  SyncRunner& runner = *fx.runner;
  src.upsertService(web());
  syncAll(src);
  runner.start();
  // Periodic: at least three full syncs within a bounded wait, without any change.
  REQUIRE(obs.waitFor([](auto& r) {
    int full = 0;
    for (auto& x : r) full += x.full && x.status.isOk();
    return full >= 3;
  }));
  runner.requestFullSync();
  const auto n = runner.stats().fullSyncs;
  REQUIRE(obs.waitFor([&](auto&) { return runner.stats().fullSyncs > n; }));
  runner.stop();
}

TEST_CASE("SyncRunner: sync hooks bracket full syncs, failed ones too, and see every sync") {
  RunnerFixture fx(SyncOptions{});
  std::vector<std::string> calls;
  fx.runner->setSyncHooks({[&] { calls.push_back("before"); },
                           [&](const SyncReport& r) {
                             calls.push_back(std::string(r.full ? "full " : "partial ") + (r.status.isOk() ? "ok" : "failed"));
                           }});
  fx.src.upsertService(web());
  CHECK(fx.runner->syncOnce().code() == Code::kFailedPrecondition);
  CHECK(calls.empty());  // nothing planned, nothing to bracket
  syncAll(fx.src);
  REQUIRE(fx.runner->syncOnce());
  fx.src.upsertSlice(webSlice({endpoint("198.18.1.11")}));
  REQUIRE(fx.runner->syncOnce());
  fx.fake.failNextAt(0, Status(Code::kUnavailable, "injected"));
  fx.runner->requestFullSync();
  CHECK_FALSE(fx.runner->syncOnce());
  REQUIRE(fx.runner->syncOnce());  // the retry is full
  CHECK(calls == std::vector<std::string>{"before", "full ok", "partial ok", "before", "full failed", "before", "full ok"});
  // The fake backend has no ruleset generation to report.
  std::lock_guard l(fx.obs.mu);
  CHECK_FALSE(fx.obs.reports.back().generation.has_value());
}

TEST_CASE("SyncRunner: listeners see the committed state and what changed") {
  struct Listener : CommitListener {
    std::vector<std::set<ObjectName>> changed;
    std::vector<bool> full;
    size_t chains = 0;
    void afterCommit(const CommitInfo& info) override {
      changed.push_back(info.changed);
      full.push_back(info.full);
      chains = 0;
      for (auto& [_, f] : info.planner.fragments()) chains += f.chains.size();
    }
  } listener;
  nft::FakeBackend fake;
  DataPlane dp(ProxyConfig{}, fake);
  StateStore store;
  StateSink& src = store.sink("file");
  SyncRunner runner(store, dp);
  runner.addListener(&listener);
  src.upsertService(web());
  src.upsertService(clusterIPService("default", "db", "198.19.0.11", {{"", Protocol::kTCP, 5432, 0}}));
  src.upsertSlice(webSlice({endpoint("198.18.1.11")}));
  syncAll(src);
  REQUIRE(runner.syncOnce());
  src.upsertSlice(webSlice({endpoint("198.18.1.12")}));
  REQUIRE(runner.syncOnce());
  REQUIRE(listener.changed.size() == 2);
  CHECK(listener.full[0]);
  CHECK(listener.changed[0].size() == 2);
  CHECK_FALSE(listener.full[1]);
  CHECK(listener.changed[1] == std::set<ObjectName>{{"default", "web"}});
  CHECK(listener.chains == 1);
}

TEST_CASE("SyncRunner: when idle after a full sync it widens the count windows, a bounded step per commit") {
  RunnerFixture fx(SyncOptions{.widenChains = 2});
  std::mutex mu;
  std::vector<SyncReport> hooked;  // afterSync sees the widening commits (the drift monitor must)
  fx.runner->setSyncHooks({{}, [&](const SyncReport& r) {
                             std::lock_guard l(mu);
                             hooked.push_back(r);
                           }});
  for (int i = 0; i < 5; ++i) {
    const std::string name = "svc" + std::to_string(i), vip = "198.19.0." + std::to_string(20 + i);
    fx.src.upsertService(clusterIPService("default", name, vip.c_str(), {{"http", Protocol::kTCP, 80, 0}}));
    fx.src.upsertSlice(slice("default", name + "-1", name, {{"http", Protocol::kTCP, 8080}},
                             {endpoint(("198.18.1." + std::to_string(i)).c_str()),
                              endpoint(("198.18.2." + std::to_string(i)).c_str())}));
  }
  syncAll(fx.src);
  fx.runner->start();
  auto stats = [&] { return fx.runner->stats(); };
  bool done = false;
  auto hookedCount = [&] {
    std::lock_guard l(mu);
    return hooked.size();
  };
  // stats() changes before the hooks run: wait for both.
  for (int i = 0; i < 500 && !done; ++i) {
    done = stats().syncs >= 1 && stats().narrowChains == 0 && hookedCount() >= 4;
    if (!done) std::this_thread::sleep_for(10ms);
  }
  REQUIRE(done);
  // 5 chains, 2 per step.
  CHECK(stats().widenSteps == 3);
  CHECK(stats().syncs == 1);
  CHECK(stats().failures == 0);
  {
    std::lock_guard l(mu);
    REQUIRE(hooked.size() == 4);
    CHECK(hooked[0].full);
    for (size_t i = 1; i < hooked.size(); ++i) {
      CHECK_FALSE(hooked[i].full);
      CHECK(hooked[i].status.isOk());
      CHECK(hooked[i].operations == (i < 3 ? 9u : 5u));  // per chain flush + 3 rules; the gates
    }
  }
  // The metrics observer saw the sync, not the idle work.
  {
    std::lock_guard l(fx.obs.mu);
    CHECK(fx.obs.reports.size() == 1);
  }
  const auto& rules = fx.fake.table(nft::Family::kIPv4, "sluice")
                          ->chains.at(names::serviceChain({"default", "svc0"}, Protocol::kTCP, "http"))
                          .rules;
  CHECK(rules.size() == 3);
  fx.runner->stop();
}
