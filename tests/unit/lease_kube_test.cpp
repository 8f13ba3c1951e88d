// The Kubernetes lease store and endpoint publisher against the test API server over real TLS
// sockets: Lease objects (create, takeover, renew with resourceVersion, 409s, release, list),
// expiry on the observer's clock, the EndpointSlice/Endpoints written, and an API server
// outage longer than a TTL.
#include <doctest/doctest.h>

#include <thread>

#include "../lease_helpers.h"
#include "apiserver.h"
#include "pki.h"
#include "sluice/lease_kube.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::set<std::string> addrs(std::initializer_list<const char*> list) { return {list.begin(), list.end()}; }

// A TLS API server with a bearer token, and the client config that reaches it.
struct KubeRig {
  KeyPair ca = makeCa("ca");
  std::unique_ptr<ApiServer> server;
  kube::ClientConfig client;

  KubeRig() {
    KeyPair leaf = issueCert(ca, "apiserver", {"IP:127.0.0.1"});
    ApiServerOptions o;
    o.tls = true;
    o.certPem = leaf.certPem;
    o.keyPem = leaf.keyPem;
    o.tokens = {"lease-token"};
    server = std::make_unique<ApiServer>(o);
    server->start();
    client.servers = {server->url()};
    client.tls.caData = ca.certPem;
    client.token = "lease-token";
  }

  std::unique_ptr<KubeLeaseStore> store(const std::string& group = "web") {
    KubeLeaseStoreConfig c;
    c.client = client;
    c.ns = "sluice";
    c.group = group;
    c.requestTimeout = 1000ms;
    c.connectTimeout = 500ms;
    auto s = KubeLeaseStore::create(c);
    REQUIRE_MESSAGE(s.isOk(), s.status().toString());
    return std::move(s).value();
  }

  std::unique_ptr<KubeEndpointsPublisher> publisher(StateSink* next) {
    KubeEndpointsPublisherConfig c;
    c.client = client;
    c.service = {"default", "web"};
    c.retryInterval = 100ms;
    c.requestTimeout = 1000ms;
    c.connectTimeout = 500ms;
    c.next = next;
    auto p = KubeEndpointsPublisher::create(c);
    REQUIRE_MESSAGE(p.isOk(), p.status().toString());
    return std::move(p).value();
  }

  json lease(const std::string& name) const {
    auto obj = server->get("leases", "sluice", name);
    return obj ? *obj : json();
  }
  // Addresses of the EndpointSlice / Endpoints of default/web as stored by the server.
  std::set<std::string> sliceAddresses(const std::string& name = "web") const {
    std::set<std::string> out;
    if (auto s = server->get("endpointslices", "default", name))
      for (const json& e : s->value("endpoints", json::array())) out.insert(e["addresses"][0].get<std::string>());
    return out;
  }
  // Both the slice and the Endpoints hold `want` (the publisher writes them one after the other).
  bool published(const std::set<std::string>& want) const {
    return eventually([&] { return sliceAddresses() == want && endpointsAddresses() == want; }, std::chrono::seconds(3));
  }
  std::set<std::string> endpointsAddresses() const {
    std::set<std::string> out;
    if (auto s = server->get("endpoints", "default", "web"))
      for (const json& sub : s->value("subsets", json::array()))
        for (const json& a : sub.value("addresses", json::array())) out.insert(a["ip"].get<std::string>());
    return out;
  }
};

// Registrants and an observer on their own stores, the observer's LeaseSource publishing
// through a KubeEndpointsPublisher that forwards to `local` (the proxy's store, in sluiced).
struct ReconcilerRig {
  KubeRig rig;
  std::unique_ptr<KubeLeaseStore> registrants = rig.store();
  std::unique_ptr<KubeLeaseStore> observer = rig.store();
  RecordingSink local;
  std::unique_ptr<KubeEndpointsPublisher> publisher = rig.publisher(&local);
  LeaseReconcilerConfig rc{{"default", "web"}, std::nullopt, 100ms};
};

LeaseSpec fullSpec() {
  LeaseSpec s = leaseSpec("a", "198.18.1.11", 8080, 700ms);
  s.ports.push_back({"dns", Protocol::kUDP, 53});
  s.nodeName = "node-1";
  s.zone = "zone-a";
  return s;
}

}  // namespace

TEST_CASE("kubernetes lease store: acquire, renew, release and list Lease objects over TLS") {
  KubeRig rig;
  auto store = rig.store();
  CHECK(store->name() == "kubernetes:sluice/web");
  const auto t0 = Clock::WallTime(std::chrono::seconds(1795000000)) + 123456us;

  auto a = store->acquire(fullSpec(), t0);
  REQUIRE_MESSAGE(a.isOk(), a.status().toString());
  auto b = store->acquire(leaseSpec("b", "fd00::12", 8080, 2500ms), t0);
  REQUIRE(b.isOk());

  // The object as kubectl would show it.
  json obj = rig.lease("web-a");
  REQUIRE(obj.is_object());
  CHECK(obj["metadata"]["labels"][kLeaseGroupLabel] == "web");
  CHECK(obj["metadata"]["annotations"][kLeaseAddressAnnotation] == "198.18.1.11");
  CHECK(obj["metadata"]["annotations"][kLeasePortsAnnotation] == "http/TCP/8080,dns/UDP/53");
  CHECK(obj["metadata"]["annotations"][kLeaseTtlAnnotation] == "700");
  CHECK(obj["spec"]["holderIdentity"] == "a");
  CHECK(obj["spec"]["leaseDurationSeconds"] == 1);  // whole seconds, rounded up
  CHECK(obj["spec"]["renewTime"] == "2026-11-18T11:06:40.123456Z");
  CHECK(rig.lease("web-b")["spec"]["leaseDurationSeconds"] == 3);

  auto listing = store->list();
  REQUIRE(listing.isOk());
  REQUIRE(listing->leases.size() == 2);
  CHECK(listing->errors.empty());
  const LeaseRecord& ra = listing->leases[0];
  CHECK(ra.spec == fullSpec());  // address, ports, node, zone and the exact TTL round-trip
  CHECK(ra.leaseId == a->leaseId);
  CHECK(ra.renewTime == t0);
  CHECK(listing->leases[1].spec.address.toString() == "fd00::12");

  // A renewal is a PUT with the resourceVersion last seen: the record's generation moves.
  const uint64_t gen = a->generation;
  REQUIRE(store->renew(*a, t0 + 1s).isOk());
  CHECK(a->generation > gen);
  CHECK(rig.lease("web-a")["spec"]["renewTime"] == "2026-11-18T11:06:41.123456Z");
  auto puts = rig.server->requests();
  CHECK(std::any_of(puts.begin(), puts.end(), [](const RecordedRequest& r) {
    return r.method == "PUT" && r.target == "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/web-a" &&
           r.authorization == "Bearer lease-token";
  }));

  // Another group in the same namespace is not listed.
  auto other = rig.store("db");
  REQUIRE(other->acquire(leaseSpec("x", "198.18.1.99", 5432, 1s), t0).isOk());
  CHECK(store->list()->leases.size() == 2);

  REQUIRE(store->release(*a).isOk());
  CHECK(rig.lease("web-a").is_null());
  CHECK(store->release(*a).isOk());  // idempotent
  listing = store->list();
  REQUIRE(listing->leases.size() == 1);
  CHECK(listing->leases[0].spec.identity == "b");
  CHECK(store->renew(*a, t0).code() == Code::kNotFound);

  // Names Kubernetes would refuse are refused here, naming the identity.
  auto upper = store->acquire(leaseSpec("Upper", "198.18.1.13", 80, 1s), t0);
  CHECK(upper.status().code() == Code::kInvalidArgument);
  CHECK(upper.status().message().find("Upper") != std::string::npos);
}

TEST_CASE("kubernetes lease store: takeover, 409 on renew, conflicts that keep coming, bad objects") {
  KubeRig rig;
  auto first = rig.store();
  auto second = rig.store();  // another process
  const auto t = Clock::system().wallNow();

  auto h1 = first->acquire(leaseSpec("a", "198.18.1.11", 8080, 1s), t);
  REQUIRE(h1.isOk());
  // The same identity acquired elsewhere: AlreadyExists → GET → PUT with one more transition.
  auto h2 = second->acquire(leaseSpec("a", "198.18.1.12", 8080, 1s), t);
  REQUIRE(h2.isOk());
  CHECK(h2->leaseId != h1->leaseId);
  CHECK(second->stats().takeovers == 1);
  CHECK(rig.lease("web-a")["spec"]["leaseTransitions"] == 1);
  // The superseded holder's PUT conflicts, the re-read shows the lease is not its own any more.
  CHECK(first->renew(*h1, t).code() == Code::kNotFound);
  CHECK(first->stats().conflicts == 1);
  CHECK(first->release(*h1).isOk());  // leaves the successor alone
  CHECK(rig.lease("web-a")["metadata"]["annotations"][kLeaseAddressAnnotation] == "198.18.1.12");

  // Someone else wrote the object (an annotation added): 409 → re-get → one retry succeeds and
  // keeps the other writer's change.
  json edited = rig.lease("web-a");
  edited["metadata"]["annotations"]["example.com/owner"] = "ops";
  rig.server->update("leases", edited);
  REQUIRE(second->renew(*h2, t).isOk());
  CHECK(second->stats().conflicts == 1);
  CHECK(rig.lease("web-a")["metadata"]["annotations"]["example.com/owner"] == "ops");

  // A writer that keeps winning: the retry conflicts too, and that is reported, not hidden.
  rig.server->injectConflicts("leases", 2);
  Status s = second->renew(*h2, t);
  CHECK(s.code() == Code::kAborted);
  CHECK(s.message().find("conflicted twice") != std::string::npos);
  CHECK(second->renew(*h2, t).isOk());  // the next round goes through

  // Two stores racing to create one identity: one creates, the other takes over; both get a
  // distinct handle, and only the later one can renew.
  auto r1 = first->acquire(leaseSpec("race", "198.18.1.20", 8080, 1s), t);
  auto r2 = second->acquire(leaseSpec("race", "198.18.1.21", 8080, 1s), t);
  REQUIRE(r1.isOk());
  REQUIRE(r2.isOk());
  CHECK(first->renew(*r1, t).code() == Code::kNotFound);
  CHECK(second->renew(*r2, t).isOk());

  // A Lease of the group that does not decode is reported by name and field; the rest list.
  rig.server->create("leases", {{"metadata",
                                 {{"name", "web-junk"},
                                  {"namespace", "sluice"},
                                  {"labels", {{kLeaseGroupLabel, "web"}}},
                                  {"annotations", {{kLeaseAddressAnnotation, "not-an-ip"}}}}},
                                {"spec", {{"holderIdentity", "junk"}}}});
  auto listing = first->list();
  REQUIRE(listing.isOk());
  CHECK(listing->leases.size() == 2);
  REQUIRE(listing->errors.size() == 1);
  CHECK(listing->errors[0].problem.object == "Lease sluice/web-junk");
  CHECK(listing->errors[0].problem.field == std::string("metadata.annotations[") + kLeaseAddressAnnotation + "]");

  // A wrong token is a permission error, not "unavailable".
  KubeLeaseStoreConfig bad;
  bad.client = rig.client;
  bad.client.token = "wrong";
  bad.ns = "sluice";
  bad.group = "web";
  auto badStore = KubeLeaseStore::create(bad);
  REQUIRE(badStore.isOk());
  CHECK((*badStore)->list().status().code() == Code::kPermissionDenied);
  CHECK(KubeLeaseStore::create({rig.client, "sluice", "Not_A_Label"}).status().code() == Code::kInvalidArgument);
}

TEST_CASE("kubernetes lease reconciler: a registrant that stops renewing expires, slice and Endpoints follow") {
  ReconcilerRig r;
  auto& [rig, registrants, observer, local, publisher, rc] = r;
  LeaseSource source(*observer, rc);

  LeaseSpec sa = leaseSpec("a", "198.18.1.11", 8080, 400ms);
  sa.nodeName = "node-1";
  LeaseRegistrant a(*registrants, sa);
  LeaseRegistrant b(*registrants, leaseSpec("b", "198.18.1.12", 8080, 400ms));
  REQUIRE(a.start().isOk());
  REQUIRE(b.start().isOk());
  REQUIRE(source.start(*publisher).isOk());

  // The set reaches the local sink (forwarded) and the API server.
  CHECK(local.waitForAddresses(addrs({"198.18.1.11", "198.18.1.12"}), 3s));
  REQUIRE(rig.published(addrs({"198.18.1.11", "198.18.1.12"})));
  json slice = *rig.server->get("endpointslices", "default", "web");
  CHECK(slice["metadata"]["labels"]["kubernetes.io/service-name"] == "web");
  CHECK(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "lease-reconciler.sluice.io");
  CHECK(slice["addressType"] == "IPv4");
  CHECK(slice["ports"] == json::parse(R"([{"name":"http","port":8080,"protocol":"TCP"}])"));
  CHECK(slice["endpoints"][0]["nodeName"] == "node-1");
  CHECK(slice["endpoints"][0]["conditions"]["ready"] == true);
  json eps = *rig.server->get("endpoints", "default", "web");
  CHECK(eps["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true");
  CHECK(eps["subsets"][0]["ports"][0]["port"] == 8080);

  // b stops renewing (as if killed): gone within TTL + interval on the observer's clock — the
  // Lease object itself stays (Kubernetes never expires it), unchanged.
  const auto killed = std::chrono::steady_clock::now();
  b.stop(false);
  REQUIRE(eventually([&] { return rig.sliceAddresses() == addrs({"198.18.1.11"}); }, 3s));
  const auto took = std::chrono::steady_clock::now() - killed;
  CHECK(took >= 400ms - 400ms / 3 - 50ms);  // not before its TTL (less the renewal it had left)
  CHECK(rig.published(addrs({"198.18.1.11"})));
  CHECK(local.addresses() == addrs({"198.18.1.11"}));
  CHECK(rig.lease("web-b").is_object());

  // A second port set makes two slices: the reconciler's names; the "web" slice goes away.
  LeaseRegistrant c(*registrants, leaseSpec("c", "198.18.1.13", 9090, 400ms));
  REQUIRE(c.start().isOk());
  REQUIRE(eventually([&] { return rig.server->list("endpointslices").size() == 2 &&
                                  !rig.server->get("endpointslices", "default", "web"); }, 3s));
  for (const json& s : rig.server->list("endpointslices"))
    CHECK(s["metadata"]["name"].get<std::string>().rfind("web-leases-ipv4-", 0) == 0);
  REQUIRE(eventually([&] { return rig.endpointsAddresses() == addrs({"198.18.1.11", "198.18.1.13"}); }, 3s));
  CHECK(rig.server->get("endpoints", "default", "web")->at("subsets").size() == 2);

  c.stop();
  source.stop();
  a.stop();
  CHECK_FALSE(local.everPublishedEmpty());
  CHECK(publisher->stats().failures == 0);
}

// Kubernetes keeps a Lease object forever; the observer deletes one it has seen dead for
// collectAfter, and never one that changed after it was listed.
TEST_CASE("kubernetes lease reconciler: a dead registrant's Lease object is collected, a live one never") {
  ReconcilerRig r;
  auto& [rig, registrants, observer, local, publisher, rc] = r;
  rc.collectAfter = 300ms;
  LeaseSource source(*observer, rc);
  LeaseRegistrant a(*registrants, leaseSpec("a", "198.18.1.11", 8080, 300ms));
  LeaseRegistrant b(*registrants, leaseSpec("b", "198.18.1.12", 8080, 300ms));
  REQUIRE(a.start().isOk());
  REQUIRE(b.start().isOk());
  REQUIRE(source.start(*publisher).isOk());
  REQUIRE(rig.published(addrs({"198.18.1.11", "198.18.1.12"})));

  b.stop(false);  // dies without releasing
  REQUIRE(rig.published(addrs({"198.18.1.11"})));
  // (collect() counts after the DELETE returned, so wait for both.)
  CHECK(eventually([&] { return !rig.lease("web-b").is_object() && observer->stats().collected == 1; }, 3s));
  CHECK(rig.lease("web-a").is_object());

  // A record that is stale by the time collect() runs (renewed since) is left alone.
  auto listing = observer->list();
  REQUIRE(listing.isOk());
  REQUIRE(listing->leases.size() == 1);
  const LeaseRecord seen = listing->leases[0];
  REQUIRE(eventually([&] {
    auto now = observer->list();
    return now && now->leases.size() == 1 && now->leases[0].generation != seen.generation;
  }, 2s));
  REQUIRE(observer->collect(seen).isOk());
  CHECK(rig.lease("web-a").is_object());
  CHECK(observer->stats().collected == 1);

  source.stop();
  a.stop();
}

TEST_CASE("kubernetes lease reconciler: API server unreachable for longer than a TTL") {
  ReconcilerRig r;
  auto& [rig, registrants, observer, local, publisher, rc] = r;
  rc.self = leaseSpec("self", "198.18.1.10", 8080, 400ms);  // kube-apiserver's own lease
  LeaseSource source(*observer, rc);
  LeaseRegistrant a(*registrants, leaseSpec("a", "198.18.1.11", 8080, 400ms));
  LeaseRegistrant dead(*registrants, leaseSpec("dead", "198.18.1.12", 8080, 400ms));
  REQUIRE(a.start().isOk());
  REQUIRE(dead.start().isOk());
  REQUIRE(source.start(*publisher).isOk());
  const auto all = addrs({"198.18.1.10", "198.18.1.11", "198.18.1.12"});
  REQUIRE(rig.published(all));
  REQUIRE(eventually([&] { return local.addresses() == all; }, 3s));
  const size_t before = local.state().history.size();

  rig.server->refuseConnections();
  dead.stop(false);  // dies during the outage
  std::this_thread::sleep_for(1200ms);  // three TTLs
  // Nothing was published while the leases could not be read: no empty set, no set without
  // the live registrants, and the API server still holds the last good set.
  CHECK(local.state().history.size() == before);
  CHECK(local.addresses() == all);
  CHECK(rig.sliceAddresses() == all);
  CHECK(rig.endpointsAddresses() == all);

  rig.server->acceptConnections();
  // a and self renew again; dead's lease never changes again, so it leaves after one TTL of
  // connected time — the outage is not counted against anyone.
  REQUIRE(rig.published(addrs({"198.18.1.10", "198.18.1.11"})));
  CHECK(local.addresses() == addrs({"198.18.1.10", "198.18.1.11"}));
  CHECK(a.holding());
  CHECK_FALSE(local.everPublishedEmpty());

  // a leaves for good: only the reconciler's own endpoint is left.
  a.stop();
  REQUIRE(eventually([&] { return rig.sliceAddresses() == addrs({"198.18.1.10"}); }, 3s));
  source.stop();  // shutdown: own lease released, one more pass may publish the empty set
  CHECK(rig.lease("web-self").is_null());
  CHECK(eventually([&] { return rig.sliceAddresses().empty(); }, 3s));
}
