// KubernetesSource end to end: apiserver double → HTTP → reflectors → decoder → StateSink.
#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "apiserver.h"
#include "pki.h"
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

TEST_CASE("kubernetes source: services and slices reach the sink; a bad object is reported and skipped") {
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
