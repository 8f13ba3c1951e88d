// KubernetesSource end to end: apiserver double → HTTP → reflectors → decoder → StateSink.
#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "apiserver.h"
#include "http_client.h"
#include "pki.h"
#include "sluice/healthcheck.h"
#include "sluice/kube_source.h"

namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using sluice::ObjectName;

using sluice::testing::eventually;

class RecordingSink : public sluice::StateSink {
 public:
  void upsertService(sluice::Service s) override {
    std::lock_guard l(mu);
    services[s.id] = s;
  }
  void removeService(const ObjectName& id) override {
    std::lock_guard l(mu);
    services.erase(id);
  }
  void upsertSlice(sluice::EndpointSlice s) override {
    std::lock_guard l(mu);
    slices[s.id] = s;
  }
  void removeSlice(const ObjectName& id) override {
    std::lock_guard l(mu);
    slices.erase(id);
  }
  void replaceServices(std::vector<sluice::Service> all) override {
    std::lock_guard l(mu);
    services.clear();
    for (auto& s : all) services[s.id] = s;
  }
  void replaceSlices(std::vector<sluice::EndpointSlice> all) override {
    std::lock_guard l(mu);
    slices.clear();
    for (auto& s : all) slices[s.id] = s;
  }
  void synced(sluice::ResourceKind kind) override {
    std::lock_guard l(mu);
    syncedKinds.push_back(kind);
  }
  void problem(sluice::Problem p) override {
    std::lock_guard l(mu);
    problems[p.object] = p;
  }
  void problemCleared(const std::string& object) override {
    std::lock_guard l(mu);
    problems.erase(object);
  }
  template <class F>
  auto with(F f) {
    std::lock_guard l(mu);
    return f(*this);
  }

  std::mutex mu;
  std::map<ObjectName, sluice::Service> services;
  std::map<ObjectName, sluice::EndpointSlice> slices;
  std::vector<sluice::ResourceKind> syncedKinds;
  std::map<std::string, sluice::Problem> problems;
};

json service(const std::string& name, const std::string& ip) {
  return {{"metadata", {{"namespace", "default"}, {"name", name}}},
          {"spec", {{"type", "ClusterIP"}, {"clusterIP", ip}, {"clusterIPs", {ip}},
                    {"ports", json::array({{{"name", "http"}, {"protocol", "TCP"}, {"port", 80}}})}}}};
}

json slice(const std::string& name, const std::string& svc, const std::string& ip) {
  return {{"metadata", {{"namespace", "default"}, {"name", name},
                        {"labels", {{"kubernetes.io/service-name", svc}}}}},
          {"addressType", "IPv4"},
          {"endpoints", json::array({{{"addresses", {ip}}, {"conditions", {{"ready", true}}}}})},
          {"ports", json::array({{{"name", "http"}, {"protocol", "TCP"}, {"port", 8080}}})}};
}

sluice::KubernetesSourceOptions fast(std::vector<std::string> servers) {
  sluice::KubernetesSourceOptions o;
  o.client.servers = std::move(servers);
  o.watchLease = 2000ms;
  o.requestTimeout = 2000ms;
  o.connectTimeout = 500ms;
  o.backoffInitial = 10ms;
  o.backoffMax = 100ms;
  return o;
}

}  // namespace

TEST_CASE("kubernetes source: services and slices reach the sink, a bad object is reported and skipped") {
  sluice::testing::ApiServer server;
  server.create("services", service("web", "198.18.0.10"));
  server.create("services", service("broken", "not-an-ip"));
  server.create("endpointslices", slice("web-abc", "web", "198.18.1.1"));
  server.start();
  RecordingSink sink;
  sluice::KubernetesSource source(fast({server.url()}));
  CHECK(source.name() == "kubernetes:" + server.url());
  REQUIRE(source.start(sink));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.syncedKinds.size() == 2; }); }));
  sink.with([](auto& s) {
    CHECK(s.services.size() == 1);
    CHECK(s.services.count({"default", "web"}));
    REQUIRE(s.slices.count({"default", "web-abc"}));
    CHECK(s.slices.at({"default", "web-abc"}).serviceName == "web");
    REQUIRE(s.problems.count("Service default/broken"));
    CHECK(s.problems.at("Service default/broken").field.find("clusterIP") != std::string::npos);
  });
  // The watch goes on after the bad object; fixing it clears the problem.
  server.update("services", service("broken", "198.18.0.11"));
  server.create("endpointslices", slice("web-def", "web", "198.18.1.2"));
  REQUIRE(eventually([&] {
    return sink.with([](auto& s) {
      return s.services.count({"default", "broken"}) && s.slices.size() == 2 && s.problems.empty();
    });
  }));
  // A valid object turning invalid is removed (not left stale) and reported.
  server.update("services", service("web", "garbage"));
  REQUIRE(eventually([&] {
    return sink.with([](auto& s) {
      return !s.services.count({"default", "web"}) && s.problems.count("Service default/web");
    });
  }));
  server.remove("endpointslices", "default", "web-abc");
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.slices.size() == 1; }); }));
  auto stats = source.stats();
  CHECK(stats.lists == 2);
  CHECK(stats.invalidObjects >= 2);
  source.stop();
  source.stop();
}

// Watched slices take the stream decoder's fast path; an invalid one falls back to the DOM
// decoder, whose problem names the field, and the slice's last good version is withdrawn.
TEST_CASE("kubernetes source: a watched slice turning invalid and back") {
  sluice::testing::ApiServer server;
  server.start();
  RecordingSink sink;
  sluice::KubernetesSource source(fast({server.url()}));
  REQUIRE(source.start(sink));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.syncedKinds.size() == 2; }); }));
  server.create("endpointslices", slice("web-abc", "web", "198.18.1.1"));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.slices.size() == 1; }); }));
  server.update("endpointslices", slice("web-abc", "web", "198.18.1.999"));
  REQUIRE(eventually([&] {
    return sink.with([](auto& s) {
      return s.slices.empty() && s.problems.count("EndpointSlice default/web-abc");
    });
  }));
  sink.with([](auto& s) {
    CHECK(s.problems.at("EndpointSlice default/web-abc").field == "endpoints[0].addresses[0]");
  });
  server.update("endpointslices", slice("web-abc", "web", "198.18.1.2"));
  REQUIRE(eventually([&] {
    return sink.with([](auto& s) {
      return s.problems.empty() && s.slices.count({"default", "web-abc"}) &&
             s.slices.at({"default", "web-abc"}).endpoints.at(0).addresses.at(0) ==
                 sluice::IPAddress::parse("198.18.1.2").value();
    });
  }));
  CHECK(source.stats().invalidObjects == 1);
  source.stop();
}

TEST_CASE("kubernetes source: legacy Endpoints become slices, and go away with them") {
  sluice::testing::ApiServer server;
  server.create("services", service("web", "198.18.0.10"));
  server.create("endpoints",
                {{"metadata", {{"namespace", "default"}, {"name", "web"}}},
                 {"subsets", json::array({{{"addresses", json::array({{{"ip", "198.18.1.1"}}})},
                                           {"ports", json::array({{{"name", "http"}, {"port", 8080}, {"protocol", "TCP"}}})}}})}});
  server.start();
  RecordingSink sink;
  auto options = fast({server.url()});
  options.legacyEndpoints = true;
  sluice::KubernetesSource source(options);
  REQUIRE(source.start(sink));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.syncedKinds.size() == 2; }); }));
  sink.with([](auto& s) {
    REQUIRE(s.slices.size() == 1);
    const auto& sl = s.slices.begin()->second;
    CHECK(sl.serviceName == "web");
    REQUIRE(sl.endpoints.size() == 1);
    CHECK(sl.endpoints[0].addresses[0].toString() == "198.18.1.1");
  });
  server.remove("endpoints", "default", "web");
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.slices.empty(); }); }));
  bool sawEndpointsPath = false;
  for (auto& r : server.requests()) sawEndpointsPath |= r.target.rfind("/api/v1/endpoints?", 0) == 0;
  CHECK(sawEndpointsPath);
}

TEST_CASE("kubernetes source: over TLS with a CA bundle and a bearer token") {
  auto ca = sluice::testing::makeCa("ca");
  auto leaf = sluice::testing::issueCert(ca, "apiserver", {"IP:127.0.0.1"});
  sluice::testing::ApiServerOptions so;
  so.tls = true;
  so.certPem = leaf.certPem;
  so.keyPem = leaf.keyPem;
  so.tokens = {"tok"};
  sluice::testing::ApiServer server(so);
  server.create("services", service("web", "198.18.0.10"));
  server.start();
  RecordingSink sink;
  auto options = fast({server.url()});
  options.client.tls.caData = ca.certPem;
  options.client.token = "tok";
  sluice::KubernetesSource source(options);
  REQUIRE(source.start(sink));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.services.size() == 1; }); }));
}

TEST_CASE("kubernetes source: start rejects a config it can never use") {
  RecordingSink sink;
  sluice::KubernetesSource none(sluice::KubernetesSourceOptions{});
  CHECK(none.start(sink).code() == sluice::Code::kInvalidArgument);
  sluice::KubernetesSource bad(fast({"tcp://x"}));
  CHECK(bad.start(sink).code() == sluice::Code::kInvalidArgument);
}

// --- The Node watch ------------------------------------------------------------------------------

namespace {

json node(const std::string& name, const std::string& zone, bool toBeDeleted = false) {
  json taints = json::array({{{"key", "node.kubernetes.io/unschedulable"}, {"effect", "NoSchedule"}}});
  if (toBeDeleted) taints.push_back({{"key", "ToBeDeletedByClusterAutoscaler"}, {"value", "1764064800"}, {"effect", "NoSchedule"}});
  return {{"metadata", {{"name", name}, {"labels", {{"topology.kubernetes.io/zone", zone}}}}},
          {"spec", {{"podCIDR", "198.18.64.0/24"}, {"taints", taints}}},
          {"status", {{"addresses", json::array({{{"type", "InternalIP"}, {"address", "198.18.0.11"}}})}}}};
}

// What a node agent does with the Node: the latest NodeInfo, every one delivered, and the
// eligibility in a ProxierHealth whose /healthz answer the test reads.
struct NodeRecorder {
  sluice::ProxierHealth health{std::chrono::seconds(60)};
  std::mutex mu;
  std::vector<sluice::NodeInfo> seen;
  void operator()(const sluice::NodeInfo& n) {
    health.setNodeEligible(n.eligible());
    std::lock_guard l(mu);
    seen.push_back(n);
  }
  std::optional<sluice::NodeInfo> last() {
    std::lock_guard l(mu);
    if (seen.empty()) return std::nullopt;
    return seen.back();
  }
  size_t count() {
    std::lock_guard l(mu);
    return seen.size();
  }
  int healthz() const { return sluice::healthzResponse(health).status; }
  int livez() const { return sluice::livezResponse(health).status; }
};

sluice::KubernetesSourceOptions watchingNode(const std::string& url, NodeRecorder& rec) {
  auto o = fast({url});
  o.watchNode = "node-1";
  o.onNode = [&rec](const sluice::NodeInfo& n) { rec(n); };
  return o;
}

}  // namespace

TEST_CASE("test apiserver: Nodes are cluster-scoped and filtered by fieldSelector metadata.name") {
  sluice::testing::ApiServer server;
  server.create("nodes", node("node-1", "zone-a"));
  server.create("nodes", node("node-2", "zone-b"));
  server.create("services", service("web", "198.18.0.10"));
  server.start();
  CHECK(server.get("nodes", "", "node-1"));  // stored without a namespace
  auto list = sluice::testing::httpGet(server.port(), "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-1");
  REQUIRE(list);
  REQUIRE(list->status == 200);
  auto j = json::parse(list->body);
  CHECK(j["kind"] == "NodeList");
  REQUIRE(j["items"].size() == 1);
  CHECK(j["items"][0]["metadata"]["name"] == "node-1");
  CHECK_FALSE(j["items"][0]["metadata"].contains("namespace"));
  list = sluice::testing::httpGet(server.port(), "/api/v1/nodes?fieldSelector=metadata.name!%3Dnode-1");
  REQUIRE(list);
  j = json::parse(list->body);
  REQUIRE(j["items"].size() == 1);
  CHECK(j["items"][0]["metadata"]["name"] == "node-2");
  // Namespaced Services know metadata.namespace too; Nodes only the name.
  auto svc = sluice::testing::httpGet(server.port(), "/api/v1/services?fieldSelector=metadata.namespace%3Ddefault");
  REQUIRE(svc);
  CHECK(json::parse(svc->body)["items"].size() == 1);
  auto bad = sluice::testing::httpGet(server.port(), "/api/v1/nodes?fieldSelector=metadata.namespace%3Ddefault");
  REQUIRE(bad);
  CHECK(bad->status == 400);
  CHECK(json::parse(bad->body)["message"] == "field label not supported: metadata.namespace");
  auto namespaced = sluice::testing::httpGet(server.port(), "/api/v1/namespaces/default/nodes");
  REQUIRE(namespaced);
  CHECK(namespaced->status == 404);
  auto one = sluice::testing::httpGet(server.port(), "/api/v1/nodes/node-2");
  REQUIRE(one);
  CHECK(json::parse(one->body)["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-b");
}

TEST_CASE("kubernetes source: the Node watch delivers eligibility and zone, /healthz follows the taint") {
  sluice::testing::ApiServer server;
  server.create("services", service("web", "198.18.0.10"));
  server.create("nodes", node("node-2", "zone-b"));  // another node: never delivered
  server.start();
  RecordingSink sink;
  NodeRecorder rec;
  sluice::KubernetesSource source(watchingNode(server.url(), rec));
  REQUIRE(source.start(sink));

  // No Node yet: reported absent, still eligible; the Services do not wait for it.
  REQUIRE(eventually([&] { return rec.count() >= 1 && sink.with([](auto& s) { return s.syncedKinds.size() == 2; }); }));
  CHECK_FALSE(rec.last()->present);
  CHECK(rec.last()->name == "node-1");
  CHECK(rec.healthz() == 200);

  server.create("nodes", node("node-1", "zone-a"));
  REQUIRE(eventually([&] { return rec.last()->present; }));
  CHECK(rec.last()->zone == "zone-a");
  CHECK(rec.healthz() == 200);

  // The autoscaler's taint: /healthz 503, /livez unaffected; and back.
  server.update("nodes", node("node-1", "zone-a", true));
  REQUIRE(eventually([&] { return rec.healthz() == 503; }));
  CHECK(rec.livez() == 200);
  CHECK(rec.last()->toBeDeleted);
  server.update("nodes", node("node-1", "zone-a"));
  REQUIRE(eventually([&] { return rec.healthz() == 200; }));

  // A zone move and a deletion in progress.
  json deleting = node("node-1", "zone-c");
  deleting["metadata"]["deletionTimestamp"] = "2026-11-26T06:00:00Z";
  server.update("nodes", deleting);
  REQUIRE(eventually([&] { return rec.last()->zone == "zone-c"; }));
  CHECK(rec.last()->deletionPending);
  CHECK(rec.healthz() == 503);

  // A Node the decoder rejects: a problem naming it; nothing delivered, the last one stands.
  const size_t before = rec.count();
  json broken = node("node-1", "zone-d");
  broken["spec"]["taints"] = "oops";
  server.update("nodes", broken);
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.problems.count("Node node-1") == 1; }); }));
  sink.with([](auto& s) { CHECK(s.problems.at("Node node-1").field == "spec.taints"); });
  CHECK(rec.count() == before);
  CHECK(rec.last()->zone == "zone-c");

  // Deleted: absent again (and eligible: a proxy that cannot see its Node keeps serving).
  server.remove("nodes", "", "node-1");
  REQUIRE(eventually([&] { return !rec.last()->present; }));
  CHECK(rec.healthz() == 200);
  sink.with([](auto& s) { CHECK(s.problems.empty()); });

  server.update("nodes", node("node-2", "zone-x"));  // not ours: no delivery
  server.create("services", service("late", "198.18.0.11"));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.services.size() == 2; }); }));
  {
    std::lock_guard l(rec.mu);
    for (const auto& n : rec.seen) CHECK(n.name == "node-1");
  }
  bool selected = false;
  for (const auto& r : server.requests())
    if (r.target.rfind("/api/v1/nodes?", 0) == 0) {
      auto it = r.query.find("fieldSelector");
      selected = it != r.query.end() && it->second == "metadata.name=node-1";
      if (!selected) break;
    }
  CHECK(selected);
  source.stop();
}

TEST_CASE("kubernetes source: a forbidden Node watch never holds up Services, it retries and recovers") {
  sluice::testing::ApiServerOptions so;
  so.forbiddenResources = {"nodes"};
  auto server = std::make_unique<sluice::testing::ApiServer>(so);
  server->create("services", service("web", "198.18.0.10"));
  server->create("endpointslices", slice("web-abc", "web", "198.18.1.1"));
  server->create("nodes", node("node-1", "zone-a", true));
  server->start();
  RecordingSink sink;
  NodeRecorder rec;
  sluice::KubernetesSource source(watchingNode(server->url(), rec));
  REQUIRE(source.start(sink));
  REQUIRE(eventually([&] { return sink.with([](auto& s) { return s.syncedKinds.size() == 2 && s.slices.size() == 1; }); }));
  auto nodeRequests = [&](const sluice::testing::ApiServer& srv) {
    size_t n = 0;
    for (const auto& r : srv.requests()) n += r.target.rfind("/api/v1/nodes?", 0) == 0;
    return n;
  };
  REQUIRE(eventually([&] { return nodeRequests(*server) >= 3; }));  // retried with backoff
  CHECK(rec.count() == 0);  // nothing known: the agent keeps its default (eligible)
  CHECK(rec.healthz() == 200);
  CHECK(eventually([&] { return source.stats().errors >= 3; }));  // the client counts after the reply
  sink.with([](auto& s) { CHECK(s.problems.empty()); });  // an RBAC gap is not a bad object

  // RBAC fixed (a new server on the same port with the same objects): the Node arrives.
  const uint16_t port = server->port();
  server->stop();
  sluice::testing::ApiServer fixed;
  fixed.create("services", service("web", "198.18.0.10"));
  fixed.create("endpointslices", slice("web-abc", "web", "198.18.1.1"));
  fixed.create("nodes", node("node-1", "zone-a", true));
  fixed.start(port);
  REQUIRE(eventually([&] { return rec.count() >= 1 && rec.last()->present; }));
  CHECK(rec.last()->toBeDeleted);
  CHECK(rec.healthz() == 503);
  source.stop();
}
