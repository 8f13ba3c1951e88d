// The lease reconciler against the embedded store, stepped by a ManualClock: expiry on the
// observer's clock, kube-apiserver's empty-set guard, store outages, clock jumps, shutdown.
#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include "../lease_helpers.h"
#include "sluice/lease.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;

namespace {

const ObjectName kSvc{"demo", "api"};

LeaseReconcilerConfig reconcilerConfig(const Clock& clock, std::optional<LeaseSpec> self = {}) {
  LeaseReconcilerConfig cfg;
  cfg.service = kSvc;
  cfg.interval = 200ms;
  cfg.self = std::move(self);
  cfg.clock = &clock;
  return cfg;
}

LeaseHandle acquire(LeaseStore& store, const LeaseSpec& spec) {
  auto h = store.acquire(spec, {});
  REQUIRE_MESSAGE(h.isOk(), h.status().toString());
  return *h;
}

std::set<std::string> addrs(std::initializer_list<const char*> list) { return {list.begin(), list.end()}; }

// A manual clock, the embedded store on it and a sink: the setting of most cases below.
struct Rig {
  ManualClock clock;
  EmbeddedLeaseStore store{clock};
  RecordingSink sink;
};

}  // namespace

TEST_CASE("lease spec validation names the field") {
  LeaseSpec good = leaseSpec("a", "198.18.1.11", 8080, 1s);
  CHECK(validateLeaseSpec(good).isOk());
  struct Case {
    const char* what;
    std::function<void(LeaseSpec&)> mutate;
    const char* field;
  };
  const Case cases[] = {
      {"empty identity", [](LeaseSpec& s) { s.identity = ""; }, "identity"},
      {"slash in identity", [](LeaseSpec& s) { s.identity = "a/b"; }, "identity"},
      {"zero ttl", [](LeaseSpec& s) { s.ttl = 0ms; }, "ttl"},
      {"unspecified address", [](LeaseSpec& s) { s.address = IPAddress::parse("0.0.0.0").value(); }, "address"},
      {"port 0", [](LeaseSpec& s) { s.ports[0].port = 0; }, "ports"},
      {"duplicate port name", [](LeaseSpec& s) { s.ports.push_back(s.ports[0]); }, "ports"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    LeaseSpec s = good;
    c.mutate(s);
    Status st = validateLeaseSpec(s);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK(st.message().find(c.field) != std::string::npos);
  }
}

TEST_CASE("embedded store: acquire, renew, release, expiry on its own clock") {
  ManualClock clock;
  EmbeddedLeaseStore store(clock);
  int changes = 0;
  store.setOnChange([&] { ++changes; });

  LeaseHandle a = acquire(store, leaseSpec("a", "198.18.1.11", 8080, 1s));
  CHECK(a.generation == 1);
  CHECK(changes == 1);
  clock.advance(900ms);
  REQUIRE(store.renew(a, clock.wallNow()).isOk());
  CHECK(a.generation == 2);
  clock.advance(900ms);  // 1.8 s after acquire, 0.9 s after the renewal: alive
  auto l = store.list();
  REQUIRE(l.isOk());
  REQUIRE(l->leases.size() == 1);
  CHECK(l->leases[0].generation == 2);
  CHECK(l->leases[0].renewTime == clock.wallNow() - 900ms);

  clock.advance(100ms);  // exactly TTL after the renewal: gone
  CHECK(store.list()->leases.empty());
  CHECK(store.renew(a, {}).code() == Code::kNotFound);

  // A second acquire of the same identity supersedes the first holder's handle.
  LeaseHandle b1 = acquire(store, leaseSpec("b", "198.18.1.12", 8080, 1s));
  LeaseHandle b2 = acquire(store, leaseSpec("b", "198.18.1.13", 8080, 1s));
  CHECK(store.renew(b1, {}).code() == Code::kNotFound);
  CHECK(store.release(b1).isOk());  // superseded: success, and b2 stays
  REQUIRE(store.list()->leases.size() == 1);
  CHECK(store.list()->leases[0].spec.address.toString() == "198.18.1.13");
  CHECK(store.release(b2).isOk());
  CHECK(store.release(b2).isOk());  // already gone: still success
  CHECK(store.list()->leases.empty());
  CHECK(store.acquire(leaseSpec("", "198.18.1.13", 8080, 1s), {}).status().code() == Code::kInvalidArgument);
  store.setOnChange({});
}

TEST_CASE("reconciler publishes live leases and drops one TTL after its last observed renewal") {
  Rig rig;
  auto& [clock, store, sink] = rig;
  LeaseEndpointReconciler rec(store, reconcilerConfig(clock));

  LeaseHandle a = acquire(store, leaseSpec("a", "198.18.1.11", 8080, 1s));
  LeaseHandle b = acquire(store, leaseSpec("b", "198.18.1.12", 8080, 1s));
  auto out = rec.reconcileOnce(sink);
  REQUIRE(out.status.isOk());
  CHECK(out.published);
  CHECK(out.live == 2);
  auto st = sink.state();
  CHECK(st.synced.count(ResourceKind::kEndpointSlice) == 1);
  REQUIRE(st.slices.size() == 1);
  const EndpointSlice& slice = st.slices[0];
  CHECK(slice.id.ns == "demo");
  CHECK(slice.id.name.rfind("api-leases-ipv4-", 0) == 0);
  CHECK(slice.serviceName == "api");
  CHECK(slice.ports == std::vector<EndpointPort>{{"http", Protocol::kTCP, 8080}});
  CHECK(RecordingSink::addressesOf(st.slices) == addrs({"198.18.1.11", "198.18.1.12"}));

  // Same state again: nothing new is published.
  clock.advance(200ms);
  CHECK_FALSE(rec.reconcileOnce(sink).published);

  // a keeps renewing, b stops. Steps of 200 ms; b was last seen at t=0.
  for (int i = 0; i < 3; ++i) {
    REQUIRE(store.renew(a, {}).isOk());
    clock.advance(200ms);
    REQUIRE(rec.reconcileOnce(sink).status.isOk());
  }
  // t = 800 ms: b still inside its TTL.
  CHECK(sink.addresses() == addrs({"198.18.1.11", "198.18.1.12"}));
  REQUIRE(store.renew(a, {}).isOk());
  clock.advance(200ms);  // t = 1000 ms: b's TTL ran out on the observer's clock
  auto o = rec.reconcileOnce(sink);
  CHECK(o.published);
  CHECK(o.live == 1);
  CHECK(sink.addresses() == addrs({"198.18.1.11"}));
  CHECK(rec.nextDeadline() <= clock.monotonicNow() + 200ms);
  (void)b;
}

TEST_CASE("reconciler: slices per family and port set, one endpoint per address") {
  Rig rig;
  auto& [clock, store, sink] = rig;
  LeaseEndpointReconciler rec(store, reconcilerConfig(clock));
  acquire(store, leaseSpec("a", "198.18.1.11", 8080, 1s));
  acquire(store, leaseSpec("a2", "198.18.1.11", 8080, 1s));  // same address twice
  acquire(store, leaseSpec("b", "198.18.1.12", 9090, 1s));   // another port set
  acquire(store, leaseSpec("c", "fd00:1::c", 8080, 1s));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  auto st = sink.state();
  REQUIRE(st.slices.size() == 3);
  int v4 = 0, v6 = 0;
  for (const auto& s : st.slices) {
    (s.addressType == IPFamily::kV4 ? v4 : v6)++;
    CHECK(s.endpoints.size() == 1);
    CHECK(s.endpoints[0].ready);
  }
  CHECK(v4 == 2);
  CHECK(v6 == 1);
}

TEST_CASE("reconciler never publishes an empty set while its own lease should exist") {
  ManualClock clock;
  // A store that lost its data and drops writes: acquire and renew "succeed" into the void, the
  // listing stays empty although our own lease should be in it.
  struct WriteDroppingStore final : LeaseStore {
    std::string name() const override { return "dropping"; }
    Result<LeaseHandle> acquire(const LeaseSpec& s, Clock::WallTime) override {
      return LeaseHandle{s.identity, 99, 1, s.ttl};
    }
    Status renew(LeaseHandle&, Clock::WallTime) override { return Status::ok(); }
    Status release(const LeaseHandle&) override { return Status::ok(); }
    Result<LeaseListing> list() override { return listing; }
    void setOnChange(std::function<void()>) override {}
    LeaseListing listing;
  } dropping;
  LeaseEndpointReconciler guarded(dropping, reconcilerConfig(clock, leaseSpec("self", "198.18.1.10", 8080, 1s)));
  RecordingSink sink2;
  auto out = guarded.reconcileOnce(sink2);
  CHECK(out.status.code() == Code::kFailedPrecondition);
  CHECK_FALSE(out.published);
  CHECK(sink2.state().history.empty());
  CHECK(sink2.state().synced.empty());  // nothing ever delivered: the proxy programs nothing yet

  // The store had the leases, then loses them: the published set stands.
  dropping.listing.leases = {LeaseRecord{leaseSpec("other", "198.18.1.11", 8080, 1s), 5, 1, {}}};
  clock.advance(200ms);
  REQUIRE(guarded.reconcileOnce(sink2).status.isOk());
  CHECK(sink2.addresses() == addrs({"198.18.1.11"}));
  dropping.listing.leases.clear();
  clock.advance(200ms);
  CHECK(guarded.reconcileOnce(sink2).status.code() == Code::kFailedPrecondition);
  CHECK(sink2.addresses() == addrs({"198.18.1.11"}));
  CHECK_FALSE(sink2.everPublishedEmpty());

  // Without an own lease, an empty store is a legitimate empty set.
  LeaseEndpointReconciler plain(dropping, reconcilerConfig(clock));
  RecordingSink sink3;
  CHECK(plain.reconcileOnce(sink3).published);
  CHECK(sink3.everPublishedEmpty());
}

TEST_CASE("reconciler: store unreachable for longer than a TTL keeps the last set, then recovers") {
  ManualClock clock;
  EmbeddedLeaseStore inner(clock);
  SwitchableStore store(inner);
  RecordingSink sink;
  LeaseEndpointReconciler rec(store, reconcilerConfig(clock, leaseSpec("self", "198.18.1.10", 8080, 1s)));
  LeaseHandle live = acquire(store, leaseSpec("live", "198.18.1.11", 8080, 1s));
  acquire(store, leaseSpec("dead", "198.18.1.12", 8080, 1s));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  CHECK(sink.addresses() == addrs({"198.18.1.10", "198.18.1.11", "198.18.1.12"}));
  const size_t published = sink.state().history.size();

  // Down for 3 s (3 TTLs); passes fail and publish nothing.
  store.setDown(true);
  for (int i = 0; i < 15; ++i) {
    clock.advance(200ms);
    CHECK(rec.reconcileOnce(sink).status.code() == Code::kUnavailable);
  }
  CHECK(sink.state().history.size() == published);

  // The store comes back. The embedded store expired everything on its own clock meanwhile;
  // the live registrant finds its lease gone and acquires it again. The dead one is put back
  // as it was, as an etcd that extends every lease on restart would still hold it.
  store.setDown(false);
  CHECK(store.renew(live, {}).code() == Code::kNotFound);
  live = acquire(store, leaseSpec("live", "198.18.1.11", 8080, 1s));
  acquire(inner, leaseSpec("dead", "198.18.1.12", 8080, 1s));
  clock.advance(200ms);
  auto out = rec.reconcileOnce(sink);
  REQUIRE(out.status.isOk());
  // Not stale in the other direction either: nobody was expired for the outage.
  CHECK(sink.addresses() == addrs({"198.18.1.10", "198.18.1.11", "198.18.1.12"}));
  // "dead" leaves within one TTL (plus a pass) of connected time; the others stay.
  bool gone = false;
  for (int i = 0; i < 7 && !gone; ++i) {
    REQUIRE(store.renew(live, {}).isOk());
    clock.advance(200ms);
    REQUIRE(rec.reconcileOnce(sink).status.isOk());
    gone = sink.addresses() == addrs({"198.18.1.10", "198.18.1.11"});
  }
  CHECK(gone);
  CHECK_FALSE(sink.everPublishedEmpty());
}

TEST_CASE("reconciler: the observer's clock jumping forward expires nobody by itself") {
  Rig rig;
  auto& [clock, inner, sink] = rig;
  LeaseEndpointReconciler rec(inner, reconcilerConfig(clock));
  LeaseHandle a = acquire(inner, leaseSpec("a", "198.18.1.11", 8080, 1s));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  // The store in this process jumps with us, so renew in it after the jump, as a remote
  // registrant would have done all along; the observer saw no renewal for an hour of its clock.
  clock.advance(std::chrono::hours(1));
  REQUIRE(acquire(inner, leaseSpec("a", "198.18.1.11", 8080, 1s)).generation == 1);
  auto out = rec.reconcileOnce(sink);
  REQUIRE(out.status.isOk());
  CHECK(out.live == 1);
  CHECK(sink.addresses() == addrs({"198.18.1.11"}));
  CHECK_FALSE(sink.everPublishedEmpty());
  (void)a;
}

TEST_CASE("reconciler: same generation seen across a jump still expires one TTL later") {
  ManualClock clock;
  // A store whose listing does not expire (as etcd right after a restart): the observer alone
  // must expire the lease that is never renewed.
  struct FrozenStore final : LeaseStore {
    LeaseListing listing;
    std::string name() const override { return "frozen"; }
    Result<LeaseHandle> acquire(const LeaseSpec&, Clock::WallTime) override { return Status(Code::kInternal, ""); }
    Status renew(LeaseHandle&, Clock::WallTime) override { return Status(Code::kInternal, ""); }
    Status release(const LeaseHandle&) override { return Status::ok(); }
    Result<LeaseListing> list() override { return listing; }
    void setOnChange(std::function<void()>) override {}
  } store;
  LeaseRecord r;
  r.spec = leaseSpec("a", "198.18.1.11", 8080, 1s);
  r.leaseId = 7;
  r.generation = 3;
  LeaseRecord r2 = r;
  r2.spec = leaseSpec("b", "198.18.1.12", 8080, 1s);
  store.listing.leases = {r, r2};
  RecordingSink sink;
  LeaseEndpointReconciler rec(store, reconcilerConfig(clock));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  clock.advance(std::chrono::hours(1));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  CHECK(sink.addresses() == addrs({"198.18.1.11", "198.18.1.12"}));
  // b renews, a does not: a leaves one TTL (+ the 2-interval slack) after the jump.
  for (int i = 0; i < 8; ++i) {
    store.listing.leases[1].generation++;
    clock.advance(200ms);
    REQUIRE(rec.reconcileOnce(sink).status.isOk());
  }
  CHECK(sink.addresses() == addrs({"198.18.1.12"}));
}

TEST_CASE("reconciler shutdown removes its own lease and reconciles once more") {
  Rig rig;
  auto& [clock, store, sink] = rig;
  LeaseEndpointReconciler rec(store, reconcilerConfig(clock, leaseSpec("self", "198.18.1.10", 8080, 1s)));
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  CHECK(sink.addresses() == addrs({"198.18.1.10"}));
  auto out = rec.shutdown(sink);
  REQUIRE(out.status.isOk());
  CHECK(out.published);
  CHECK(sink.addresses().empty());  // the own lease was the last one: empty is right now
  CHECK(store.list()->leases.empty());
  // Later passes do not bring it back.
  clock.advance(200ms);
  REQUIRE(rec.reconcileOnce(sink).status.isOk());
  CHECK(store.list()->leases.empty());
}

TEST_CASE("LeaseSource with registrants on real time, a registrant's wall clock stepping changes nothing") {
  EmbeddedLeaseStore store;
  RecordingSink sink;
  LeaseReconcilerConfig cfg;
  cfg.service = kSvc;
  cfg.interval = 100ms;
  Service svc;
  svc.id = kSvc;
  svc.clusterIPs = {IPAddress::parse("198.19.0.1").value()};
  svc.ports = {{"http", Protocol::kTCP, 80, 0}};
  cfg.serviceObject = svc;
  LeaseSource source(store, cfg);
  CHECK(source.name() == "leases:embedded");

  ManualClock skewed;  // only its wall clock is used by the registrant
  LeaseRegistrant a(store, leaseSpec("a", "198.18.1.11", 8080, 300ms), {.clock = &skewed});
  LeaseRegistrant b(store, leaseSpec("b", "198.18.1.12", 8080, 300ms));
  REQUIRE(a.start().isOk());
  REQUIRE(b.start().isOk());
  REQUIRE(source.start(sink).isOk());
  CHECK(source.start(sink).code() == Code::kFailedPrecondition);
  CHECK(sink.waitForAddresses(addrs({"198.18.1.11", "198.18.1.12"}), 3s));
  CHECK(sink.state().services == std::vector<Service>{svc});
  CHECK(sink.state().synced == std::set<ResourceKind>{ResourceKind::kService, ResourceKind::kEndpointSlice});

  // Step a's wall clock an hour back, then two hours forward, for several TTLs.
  skewed.stepWall(-std::chrono::hours(1));
  std::this_thread::sleep_for(400ms);
  skewed.stepWall(std::chrono::hours(2));
  std::this_thread::sleep_for(400ms);
  CHECK(sink.addresses() == addrs({"198.18.1.11", "198.18.1.12"}));
  auto listing = store.list();
  REQUIRE(listing.isOk());
  REQUIRE(listing->leases.size() == 2);
  CHECK(listing->leases[0].renewTime > skewed.wallNow() - std::chrono::hours(1) - 1s);  // the label follows it
  CHECK(a.renewals() >= 3);

  // a dies without releasing (stop(false)): it leaves within TTL + one interval (+ slack for a
  // loaded machine); b is never touched.
  a.stop(false);
  CHECK(sink.waitForAddresses(addrs({"198.18.1.12"}), 2s));
  // b releases: gone at once (the store notifies the source).
  b.stop();
  CHECK(sink.waitForAddresses(std::set<std::string>{}, 1s));
  source.stop();
  source.stop();
  CHECK(sink.state().problems.empty());
}
