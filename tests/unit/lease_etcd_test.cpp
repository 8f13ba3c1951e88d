// The etcd lease store: the gateway's wire format against captured bodies (fixtures/etcd), then
// a real etcd started by the test — leases, renewals, watch resume, compaction, restarts and
// outages, with the reconciler on top.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "../etcd_fixture.h"
#include "../lease_helpers.h"
#include "sluice/lease_etcd.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;

namespace {

std::string fixture(const std::string& name) {
  std::ifstream in(std::string(SLUICE_FIXTURES_DIR) + "/etcd/" + name);
  REQUIRE_MESSAGE(in.good(), name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

// The JSON body of a raw `.http.txt` capture: the line starting with '{'.
std::string httpBody(const std::string& raw) {
  for (const auto& l : lines(raw))
    if (l[0] == '{') return l.substr(0, l.rfind('}') + 1);
  return "";
}

std::unique_ptr<EtcdServer> startEtcd() {
  auto e = EtcdServer::start();
  REQUIRE_MESSAGE(e.isOk(), e.status().toString());
  return std::move(e).value();
}

std::unique_ptr<EtcdLeaseStore> etcdStore(const EtcdServer& etcd, const std::string& prefix,
                                          std::chrono::milliseconds retry = 100ms) {
  auto s = EtcdLeaseStore::create({etcd.url(), prefix, 1000ms, retry});
  REQUIRE_MESSAGE(s.isOk(), s.status().toString());
  return std::move(s).value();
}

std::set<std::string> addrs(std::initializer_list<const char*> list) { return {list.begin(), list.end()}; }

// Waits until the store's listing (not a cached copy in a test) satisfies `pred`.
template <typename Pred>
bool waitListing(LeaseStore& store, Pred pred, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  do {
    auto l = store.list();
    if (l && pred(*l)) return true;
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < until);
  return false;
}

}  // namespace

TEST_CASE("etcd gateway: captured bodies decode as the store expects") {
  CHECK(etcd::base64Encode("/registry/masterleases/") == "L3JlZ2lzdHJ5L21hc3RlcmxlYXNlcy8=");
  CHECK(etcd::base64Decode("L3JlZ2lzdHJ5L21hc3RlcmxlYXNlcy8xMC4wLjAuMQ==").value() == "/registry/masterleases/10.0.0.1");
  CHECK(etcd::base64Decode("dg==").value() == "v");
  CHECK(etcd::base64Decode("").value().empty());
  CHECK_FALSE(etcd::base64Decode("abc").isOk());
  // kv-range-prefix.request.json: the prefix's range_end.
  auto req = nlohmann::json::parse(fixture("kv-range-prefix.request.json"));
  CHECK(etcd::base64Encode(etcd::prefixEnd("/registry/masterleases/")) == req["range_end"]);
  CHECK(etcd::prefixEnd("a\xff") == "b");

  auto grant = nlohmann::json::parse(fixture("lease-grant.response.json"));
  CHECK(etcd::intField(grant, "ID") == 2324035614441944871);
  CHECK(etcd::intField(grant, "TTL") == 15);
  // An unknown lease's keepalive answer has no TTL: gone.
  auto gone = nlohmann::json::parse(fixture("lease-keepalive-unknown-lease.response.jsonl"));
  CHECK(etcd::intField(gone["result"], "TTL") == 0);

  auto w = lines(fixture("watch-stream.response.jsonl"));
  REQUIRE(w.size() == 6);
  auto created = etcd::decodeWatchLine(w[0]);
  REQUIRE(created.isOk());
  CHECK(created->created);
  CHECK(created->headerRevision == 13);
  auto put = etcd::decodeWatchLine(w[1]);
  REQUIRE(put.isOk());
  REQUIRE(put->events.size() == 1);
  CHECK_FALSE(put->events[0].isDelete);  // PUT carries no type
  CHECK(put->events[0].kv.key == "/registry/masterleases/10.0.0.2");
  CHECK(put->events[0].kv.lease == 2324035614441944877);
  CHECK(put->events[0].kv.modRevision == 14);
  auto del = etcd::decodeWatchLine(w[5]);  // DELETE by TTL expiry
  REQUIRE(del.isOk());
  CHECK(del->events[0].isDelete);
  CHECK(del->events[0].kv.key == "/registry/masterleases/10.0.0.2");

  auto c = lines(fixture("watch-compacted.response.jsonl"));
  auto canceled = etcd::decodeWatchLine(c[1]);
  REQUIRE(canceled.isOk());
  CHECK(canceled->canceled);
  CHECK(canceled->compactRevision == 18);

  CHECK(etcd::statusFromReply(404, httpBody(fixture("lease-revoke-not-found.http.txt")), "revoke").code() ==
        Code::kNotFound);
  CHECK(etcd::statusFromReply(400, httpBody(fixture("kv-range-compacted.http.txt")), "range").code() ==
        Code::kAborted);
  CHECK(etcd::statusFromReply(503, "", "x").code() == Code::kUnavailable);
  CHECK(etcd::parseEndpoint("http://127.0.0.1:2379/").value().port == 2379);
  CHECK(etcd::parseEndpoint("127.0.0.1:2379").value().toString() == "http://127.0.0.1:2379");
  CHECK(etcd::parseEndpoint("https://etcd.example:12379").value().tls());
  CHECK(etcd::parseEndpoint("https://[fd00::1]:2379").value().host == "fd00::1");
  CHECK(etcd::parseEndpoint("127.0.0.1").status().code() == Code::kInvalidArgument);
  CHECK(etcd::parseEndpoint("https://[fd00::1]").status().code() == Code::kInvalidArgument);
  CHECK_FALSE(etcd::parseEndpoint("ftp://x:1").isOk());
  CHECK(EtcdLeaseStore::create({"http://127.0.0.1:1", "no-slash"}).status().code() == Code::kInvalidArgument);
}

TEST_CASE("etcd store: acquire, renew, supersede, release, expiry against a real etcd") {
  auto etcd = startEtcd();
  auto store = etcdStore(*etcd, "/sluice/leases/demo/api/");
  CHECK(store->name() == "etcd:" + etcd->url().substr(7) + "/sluice/leases/demo/api/");

  LeaseSpec spec = leaseSpec("a", "198.18.1.11", 8080, 1000ms);
  spec.nodeName = "node-1";
  auto a = store->acquire(spec, Clock::WallTime(std::chrono::seconds(1767225600)));
  REQUIRE_MESSAGE(a.isOk(), a.status().toString());
  auto l = store->list();
  REQUIRE_MESSAGE(l.isOk(), l.status().toString());
  REQUIRE(l->leases.size() == 1);
  CHECK(l->leases[0].spec == spec);
  CHECK(l->leases[0].generation == 1);
  CHECK(l->leases[0].leaseId == a->leaseId);
  CHECK(l->leases[0].renewTime == Clock::WallTime(std::chrono::seconds(1767225600)));

  LeaseHandle h = *a;
  REQUIRE(store->renew(h, {}).isOk());
  CHECK(h.generation == 2);
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.size() == 1 && l.leases[0].generation == 2; }, 2s));

  // A second holder of the identity supersedes the first: the old handle cannot renew (or
  // overwrite), and releasing it leaves the new one alone.
  auto b = store->acquire(leaseSpec("a", "198.18.1.12", 8080, 1000ms), {});
  REQUIRE(b.isOk());
  LeaseHandle stale = h;
  CHECK(store->renew(stale, {}).code() == Code::kNotFound);
  CHECK(store->release(h).isOk());
  CHECK(waitListing(*store, [](const LeaseListing& l) {
    return l.leases.size() == 1 && l.leases[0].spec.address.toString() == "198.18.1.12";
  }, 2s));
  CHECK(store->release(*b).isOk());
  CHECK(store->release(*b).isOk());  // gone already: success
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.empty(); }, 2s));
  LeaseHandle released = *b;
  CHECK(store->renew(released, {}).code() == Code::kNotFound);

  // Not renewed: etcd deletes the key when the lease runs out (1 s TTL), the watch sees it.
  auto c = store->acquire(leaseSpec("c", "198.18.1.13", 8080, 1000ms), {});
  REQUIRE(c.isOk());
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.size() == 1; }, 2s));
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.empty(); }, 4s));

  // Garbage under the prefix is reported, not fatal.
  REQUIRE(etcd->client().put("/sluice/leases/demo/api/junk", "not json", 0).isOk());
  CHECK(waitListing(*store, [](const LeaseListing& l) {
    return l.errors.size() == 1 && l.errors[0].problem.object == "Lease /sluice/leases/demo/api/junk";
  }, 2s));
  CHECK(store->acquire(leaseSpec("bad/id", "198.18.1.13", 8080, 1000ms), {}).status().code() ==
        Code::kInvalidArgument);
}

// Production etcd serves https and asks for client certificates (kube-apiserver's --etcd-cafile,
// --etcd-certfile, --etcd-keyfile); the store reaches it with the same TLS client as the API server.
TEST_CASE("etcd store over TLS with client certificates, against a real etcd") {
  auto started = EtcdServer::start({.tls = true});
  REQUIRE_MESSAGE(started.isOk(), started.status().toString());
  auto& etcd = **started;
  REQUIRE(etcd.url().rfind("https://", 0) == 0);

  EtcdLeaseStoreConfig cfg{etcd.url(), "/sluice/leases/tls/", 1000ms, 100ms};
  cfg.tls = etcd.clientTls();
  auto store = EtcdLeaseStore::create(cfg);
  REQUIRE_MESSAGE(store.isOk(), store.status().toString());
  auto a = (*store)->acquire(leaseSpec("a", "198.18.1.21", 8080, 1000ms), {});
  REQUIRE_MESSAGE(a.isOk(), a.status().toString());
  CHECK(waitListing(**store, [](const LeaseListing& l) {
    return l.leases.size() == 1 && l.leases[0].spec.address.toString() == "198.18.1.21";
  }, 2s));  // the watch runs over TLS too
  REQUIRE((*store)->release(*a).isOk());
  CHECK(waitListing(**store, [](const LeaseListing& l) { return l.leases.empty(); }, 2s));

  // Without a client certificate etcd refuses the handshake; trusting another CA refuses etcd.
  EtcdLeaseStoreConfig noCert = cfg;
  noCert.tls.certData.clear();
  noCert.tls.keyData.clear();
  auto refused = EtcdLeaseStore::create(noCert).value()->acquire(leaseSpec("b", "198.18.1.22", 8080, 1000ms), {});
  CHECK(refused.status().code() == Code::kUnavailable);
  EtcdLeaseStoreConfig otherCa = cfg;
  otherCa.tls.caData = testing::makeCa("some other CA").certPem;
  auto untrusted = EtcdLeaseStore::create(otherCa).value()->acquire(leaseSpec("b", "198.18.1.22", 8080, 1000ms), {});
  CHECK(untrusted.status().code() == Code::kUnavailable);
  CHECK_MESSAGE(untrusted.status().message().find("certificate") != std::string::npos, untrusted.status().toString());
}

TEST_CASE("etcd store: watch resumes after an etcd restart and ranges again after compaction") {
  auto etcd = startEtcd();
  // A long retry interval leaves a window after the restart in which the test writes and
  // compacts before the watch comes back.
  auto store = etcdStore(*etcd, "/sluice/leases/w/", 1500ms);
  auto writer = etcdStore(*etcd, "/sluice/leases/w/");
  auto a = writer->acquire(leaseSpec("a", "198.18.1.11", 8080, 10000ms), {});
  REQUIRE(a.isOk());
  REQUIRE(store->list().isOk());
  CHECK(store->stats().ranges == 1);
  REQUIRE(writer->acquire(leaseSpec("b", "198.18.1.12", 8080, 10000ms), {}).isOk());
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.size() == 2; }, 2s));
  CHECK(store->stats().ranges == 1);  // followed by the watch, not by reading again

  REQUIRE(etcd->restart().isOk());
  // While the watch is down the store says so instead of answering from a stale cache.
  CHECK(store->list().status().code() == Code::kUnavailable);
  REQUIRE(writer->release(*a).isOk());
  REQUIRE(writer->acquire(leaseSpec("c", "198.18.1.13", 8080, 10000ms), {}).isOk());
  auto rev = etcd->client().rangePrefix("/");
  REQUIRE(rev.isOk());
  REQUIRE(etcd->client().compact(rev->revision).isOk());

  CHECK(waitListing(*store, [](const LeaseListing& l) {
    std::set<std::string> ids;
    for (const auto& r : l.leases) ids.insert(r.spec.identity);
    return ids == std::set<std::string>{"b", "c"};
  }, 5s));
  auto st = store->stats();
  CHECK(st.compactions >= 1);
  CHECK(st.ranges >= 2);
  // New writes flow through the new watch.
  REQUIRE(writer->acquire(leaseSpec("d", "198.18.1.14", 8080, 10000ms), {}).isOk());
  CHECK(waitListing(*store, [](const LeaseListing& l) { return l.leases.size() == 3; }, 2s));
}

namespace {

struct EtcdReconcilerRig {
  std::unique_ptr<EtcdServer> etcd = startEtcd();
  std::unique_ptr<EtcdLeaseStore> observerStore = etcdStore(*etcd, "/sluice/leases/demo/api/");
  std::unique_ptr<EtcdLeaseStore> registrantStore = etcdStore(*etcd, "/sluice/leases/demo/api/");
  RecordingSink sink;
  std::unique_ptr<LeaseSource> source;

  explicit EtcdReconcilerRig(std::optional<LeaseSpec> self = {}) {
    LeaseReconcilerConfig cfg;
    cfg.service = {"demo", "api"};
    cfg.interval = 200ms;
    cfg.self = std::move(self);
    source = std::make_unique<LeaseSource>(*observerStore, cfg);
  }
  ~EtcdReconcilerRig() { source->stop(); }
};

}  // namespace

TEST_CASE("etcd reconciler: etcd restarted mid-run, a registrant's wall clock jumping") {
  EtcdReconcilerRig rig(leaseSpec("self", "198.18.1.10", 8080, 1000ms));
  ManualClock skewed;
  LeaseRegistrant a(*rig.registrantStore, leaseSpec("a", "198.18.1.11", 8080, 1000ms), {.clock = &skewed});
  LeaseRegistrant b(*rig.registrantStore, leaseSpec("b", "198.18.1.12", 8080, 1000ms));
  REQUIRE(a.start().isOk());
  REQUIRE(b.start().isOk());
  REQUIRE(rig.source->start(rig.sink).isOk());
  const auto all = addrs({"198.18.1.10", "198.18.1.11", "198.18.1.12"});
  REQUIRE(rig.sink.waitForAddresses(all, 5s));

  skewed.stepWall(-std::chrono::hours(1));
  REQUIRE(rig.etcd->restart().isOk());
  skewed.stepWall(std::chrono::hours(3));
  // Back to the same set, and it never went empty or lost a live member on the way.
  std::this_thread::sleep_for(1500ms);
  CHECK(rig.sink.addresses() == all);
  for (const auto& h : rig.sink.state().history) CHECK(RecordingSink::addressesOf(h) == all);

  // a dies (no release): gone within TTL + one interval, plus slack for a loaded machine.
  a.stop(false);
  CHECK(rig.sink.waitForAddresses(addrs({"198.18.1.10", "198.18.1.12"}), 3s));
  CHECK_FALSE(rig.sink.everPublishedEmpty());
  b.stop();
}

TEST_CASE("etcd reconciler: etcd unreachable for longer than a TTL") {
  EtcdReconcilerRig rig;
  LeaseRegistrant a(*rig.registrantStore, leaseSpec("a", "198.18.1.11", 8080, 1000ms));
  LeaseRegistrant dead(*rig.registrantStore, leaseSpec("dead", "198.18.1.12", 8080, 1000ms));
  REQUIRE(a.start().isOk());
  REQUIRE(dead.start().isOk());
  REQUIRE(rig.source->start(rig.sink).isOk());
  REQUIRE(rig.sink.waitForAddresses(addrs({"198.18.1.11", "198.18.1.12"}), 5s));
  const size_t before = rig.sink.state().history.size();

  REQUIRE(rig.etcd->stop().isOk());
  dead.stop(false);  // dies during the outage
  std::this_thread::sleep_for(2500ms);
  // Nothing published while the store cannot be read: the last set stands.
  CHECK(rig.sink.state().history.size() == before);
  CHECK(rig.sink.addresses() == addrs({"198.18.1.11", "198.18.1.12"}));

  REQUIRE(rig.etcd->restart().isOk());
  // a renews again (its lease survived in etcd's data dir); dead's lease runs out on etcd and
  // on the observer: the set converges to {a} without ever being empty.
  CHECK(rig.sink.waitForAddresses(addrs({"198.18.1.11"}), 5s));
  std::this_thread::sleep_for(500ms);
  CHECK(rig.sink.addresses() == addrs({"198.18.1.11"}));
  CHECK(a.holding());
  CHECK_FALSE(rig.sink.everPublishedEmpty());
  a.stop();
}
