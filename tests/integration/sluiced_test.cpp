// Real-kernel tests of the daemon's parts: sluiced run against a throw-away network namespace
// (its netlink sockets and every HTTP server live there), and health-check node ports served
// inside a namespace. Needs root; the root namespace's nftables are never touched.
#include <doctest/doctest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../unit/http_client.h"
#include "apiserver.h"
#include "sluice/healthcheck.h"
#include "sluice/lease_http.h"
#include "sluice/netns.h"
#include "testbed.h"

extern char** environ;

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;

namespace {

// sluiced as a child process, killed (SIGKILL, by pid) if a test leaves it running.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Exit code, or -1 if it did not exit within `timeout` (or died from a signal).
  int wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
};

std::optional<testing::RawResponse> getIn(const Netns& ns, uint16_t port, const std::string& path) {
  return testing::httpGet(port, path, "", "127.0.0.1", ns.path());
}

// Polls until `path` answers (the daemon is up), at most `timeout`.
std::optional<testing::RawResponse> waitFor(const Netns& ns, uint16_t port, const std::string& path,
                                            std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto r = getIn(ns, port, path)) return r;
    std::this_thread::sleep_for(50ms);
  }
  return std::nullopt;
}

// Polls the /status of the sluiced in `ns` (127.0.0.1:10249) until `pred` holds, at most 10 s.
std::optional<nlohmann::json> waitForStatus(const Netns& ns, const std::function<bool(const nlohmann::json&)>& pred) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto r = getIn(ns, 10249, "/status"); r && r->status == 200) {
      auto j = nlohmann::json::parse(r->body);
      if (pred(j)) return j;
    }
    std::this_thread::sleep_for(50ms);
  }
  return std::nullopt;
}

// A manifest file in a fresh directory, replaced atomically by write() as editors do.
struct TempManifest {
  std::string dir;
  std::string path;
  explicit TempManifest(const std::string& text) {
    char tmpl[] = "/tmp/sluiced-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    path = dir + "/services.yaml";
    write(text);
  }
  ~TempManifest() { std::filesystem::remove_all(dir); }
  void write(const std::string& text) const {
    std::ofstream(path + ".tmp") << text;
    std::filesystem::rename(path + ".tmp", path);
  }
};

// Service test/web on 198.19.0.10:80 → 8080 on backends 1..n of the topology.
std::string webManifest(int n) {
  std::string out =
      "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: test}\n"
      "spec: {clusterIP: 198.19.0.10, clusterIPs: [198.19.0.10], ports: [{name: http, protocol: TCP, port: 80}]}\n"
      "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
      "metadata: {name: web-1, namespace: test, labels: {kubernetes.io/service-name: web}}\n"
      "addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n";
  for (int i = 1; i <= n; ++i)
    out += "- addresses: [" + Topology::backendIP(i, IPFamily::kV4).toString() + "]\n  nodeName: node-1\n";
  return out;
}

// TCP servers on port 8080 of backends 1..n, answering "backend-N".
std::vector<std::unique_ptr<Server>> startBackends(Topology& t, int n) {
  std::vector<std::unique_ptr<Server>> servers;
  for (int i = 1; i <= n; ++i) {
    auto s = Server::start(t.backend(i), Protocol::kTCP, IPFamily::kV4, 8080, "backend-" + std::to_string(i));
    REQUIRE(s);
    servers.push_back(std::move(s).value());
  }
  return servers;
}

// sluiced for the topology's node namespace on a manifest, status on 127.0.0.1:10249 there.
std::vector<std::string> nodeDaemonArgs(Topology& t, const TempManifest& manifest) {
  return {SLUICED_PATH, "--netns", t.node().path(), "--source", "file:" + manifest.path, "--hostname-override",
          "node-1", "--cluster-cidr", Topology::podCIDR(IPFamily::kV4).toString(), "--healthz-bind-address",
          "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249", "--min-sync-period", "0s",
          "--drain-timeout", "1s"};
}

}  // namespace

TEST_CASE("sluiced: serves health, metrics and status in its netns, SIGTERM keeps the rules, --cleanup removes them") {
  auto ns = Netns::create("sluiced");
  REQUIRE(ns);
  const std::string netns = ns->path();
  TempManifest manifest("");  // an empty manifest: no Services, the base table only
  const std::vector<std::string> common = {SLUICED_PATH, "--netns", netns, "--source", "file:" + manifest.path,
                                           "--hostname-override", "node-1"};
  std::vector<std::string> args = common;
  for (const char* a : {"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249",
                        "--sync-period", "1s", "--min-sync-period", "100ms"})
    args.push_back(a);
  Child daemon(args);
  REQUIRE(daemon.pid() > 0);

  auto healthz = waitFor(*ns, 10256, "/healthz", 10s);
  REQUIRE(healthz);
  CHECK(healthz->status == 200);
  CHECK(healthz->header("x-content-type-options") == "nosniff");
  CHECK(nlohmann::json::parse(healthz->body)["nodeEligible"] == true);
  auto livez = getIn(*ns, 10256, "/livez");
  REQUIRE(livez);
  CHECK(livez->status == 200);
  // The admin server is only on the metrics address; the healthz server has no /metrics.
  CHECK(getIn(*ns, 10256, "/metrics")->status == 404);

  // The first sync committed both tables in the namespace (not in ours).
  auto tables = execIn(*ns, {"nft", "list", "tables"});
  REQUIRE(tables);
  CHECK(tables->find("table ip sluice") != std::string::npos);
  CHECK(tables->find("table ip6 sluice") != std::string::npos);

  auto metrics = getIn(*ns, 10249, "/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  CHECK(metrics->header("content-type") == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(metrics->body.find("kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1") != std::string::npos);
  CHECK(metrics->body.find("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"}") != std::string::npos);
  CHECK(metrics->body.find("kubeproxy_proxy_healthz_total{code=\"200\"} 1") != std::string::npos);

  auto status = getIn(*ns, 10249, "/status");
  REQUIRE(status);
  auto j = nlohmann::json::parse(status->body);
  CHECK(j["nodeName"] == "node-1");
  CHECK(j["netns"] == netns);
  REQUIRE(j["families"].size() == 2);
  CHECK(j["families"][0]["lastOk"] == true);
  CHECK(j["families"][0]["lastFull"] == true);
  auto page = getIn(*ns, 10249, "/");
  REQUIRE(page);
  CHECK(page->header("content-type") == "text/html; charset=utf-8");
  CHECK(page->body.find("<h1>sluiced on node-1</h1>") != std::string::npos);

  // SIGHUP reloads and keeps serving.
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  std::this_thread::sleep_for(200ms);
  CHECK(getIn(*ns, 10256, "/healthz")->status == 200);

  // The periodic full sync runs (sync period 1 s; the reload asked for one more).
  std::this_thread::sleep_for(1300ms);
  auto later = getIn(*ns, 10249, "/metrics");
  REQUIRE(later);
  CHECK(later->body.find("kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1\n") == std::string::npos);

  REQUIRE(::kill(daemon.pid(), SIGTERM) == 0);
  CHECK(daemon.wait(5s) == 0);
  CHECK_FALSE(getIn(*ns, 10256, "/healthz"));  // servers are gone
  tables = execIn(*ns, {"nft", "list", "tables"});
  REQUIRE(tables);
  CHECK(tables->find("table ip sluice") != std::string::npos);  // rules stay in place

  std::vector<std::string> cleanupArgs = common;
  cleanupArgs.push_back("--cleanup");
  Child cleanup(cleanupArgs);
  CHECK(cleanup.wait(10s) == 0);
  tables = execIn(*ns, {"nft", "list", "tables"});
  REQUIRE(tables);
  CHECK(tables->find("sluice") == std::string::npos);
}

TEST_CASE("sluiced: a taken healthz port is a runtime failure (exit 1) naming the flag") {
  auto ns = Netns::create("sluiced-busy");
  REQUIRE(ns);
  HttpServerOptions o;
  o.address = "127.0.0.1";
  o.port = 10256;
  o.netns = ns->path();
  HttpServer squatter(o);
  squatter.route("GET", "/", [](const HttpRequest&) { return HttpResponse::text(200, "x"); });
  REQUIRE(squatter.start().isOk());
  Child daemon({SLUICED_PATH, "--netns", ns->path(), "--source", "file:/nonexistent", "--healthz-bind-address",
                "127.0.0.1:10256", "--metrics-bind-address", ""});
  CHECK(daemon.wait(10s) == 1);
}

TEST_CASE("health-check node ports listen inside the node namespace") {
  auto ns = Netns::create("hc");
  REQUIRE(ns);
  ServiceHealthOptions o;
  o.addresses = {"0.0.0.0"};
  o.netns = ns->path();
  ServiceHealthServers servers(o);
  const ObjectName web{"default", "web"};
  REQUIRE(servers.update({{web, {30999, 3}}}).empty());

  auto r = getIn(*ns, 30999, "/");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->header("x-load-balancing-endpoint-weight") == "3");
  CHECK(nlohmann::json::parse(r->body)["localEndpoints"] == 3);

  // Not in this (the test's) namespace: either nothing listens there, or someone else does.
  if (auto here = testing::httpGet(30999, "/")) CHECK(here->body.find("localEndpoints") == std::string::npos);

  REQUIRE(servers.update({{web, {30999, 0}}}).empty());
  CHECK(getIn(*ns, 30999, "/")->status == 503);
  servers.stop();
  CHECK_FALSE(getIn(*ns, 30999, "/"));
}

TEST_CASE("sluiced: a file source's Service carries traffic, a manifest edit moves it, /status and /explain show it") {
  auto topo = Topology::create({2, false, false});
  REQUIRE(topo);
  Topology& t = **topo;
  auto servers = startBackends(t, 2);
  TempManifest manifest(webManifest(2));
  Child daemon(nodeDaemonArgs(t, manifest));
  REQUIRE(daemon.pid() > 0);
  const IPAddress web = IPAddress::parse("198.19.0.10").value();

  auto statusWhere = [&](const auto& pred) { return waitForStatus(t.node(), pred); };
  auto programmed = statusWhere([](const nlohmann::json& j) {
    return j["families"].size() == 1 && j["families"][0]["endpoints"] == 2 && j["families"][0]["lastOk"] == true;
  });
  REQUIRE(programmed);
  CHECK((*programmed)["families"][0]["services"] == 1);
  REQUIRE((*programmed)["sources"].size() == 1);
  CHECK((*programmed)["sources"][0]["name"] == "file:" + manifest.path);
  CHECK((*programmed)["sources"][0]["synced"] == true);

  auto before = spread(t.client(), Protocol::kTCP, web, 80, 30);
  CHECK(before["backend-1"] > 0);
  CHECK(before["backend-2"] > 0);
  CHECK(before["backend-1"] + before["backend-2"] == 30);

  // sluiced's own first (full, unheard) sync was no drift; someone flushing its chain is, and
  // the one drift monitor has the IPv4 plane repair it.
  CHECK((*programmed)["families"][0]["driftRepairs"] == 0);
  REQUIRE(execIn(t.node(), {"nft", "flush", "chain", "ip", "sluice", "services"}).isOk());
  REQUIRE(statusWhere([](const nlohmann::json& j) { return j["families"][0]["driftRepairs"] == 1; }));
  bool repaired = false;
  for (int i = 0; i < 50 && !repaired; ++i) {
    auto out = execIn(t.node(), {"nft", "list", "chain", "ip", "sluice", "services"});
    repaired = out.isOk() && out->find("vmap @service-ips") != std::string::npos;
    if (!repaired) std::this_thread::sleep_for(20ms);
  }
  REQUIRE(repaired);
  auto again = spread(t.client(), Protocol::kTCP, web, 80, 10);
  CHECK(again["backend-1"] + again["backend-2"] == 10);

  // The running daemon explains the same Service from its state.
  auto ex = getIn(t.node(), 10249, "/explain?src=198.18.1.100&dst=198.19.0.10&port=80&proto=tcp");
  REQUIRE(ex);
  REQUIRE(ex->status == 200);
  auto exj = nlohmann::json::parse(ex->body);
  CHECK(exj["service"]["name"] == "test/web");
  CHECK(exj["endpoints"].size() == 2);
  CHECK(exj["masquerade"] == false);

  // Backend 2 leaves the manifest: the file source sees the rename, the runner commits.
  manifest.write(webManifest(1));
  auto moved = statusWhere([](const nlohmann::json& j) { return j["families"][0]["endpoints"] == 1; });
  REQUIRE(moved);
  // Status reflects the commit once the runner has synced (it counts the state it committed).
  auto after = spread(t.client(), Protocol::kTCP, web, 80, 20);
  CHECK(after["backend-1"] == 20);
  CHECK(after.count("backend-2") == 0);
  auto ex2 = getIn(t.node(), 10249, "/explain?src=198.18.1.100&dst=198.19.0.10&port=80&proto=tcp&format=text");
  REQUIRE(ex2);
  CHECK(ex2->body.find("198.18.1.11:8080  p=1.000") != std::string::npos);

  auto metrics = getIn(t.node(), 10249, "/metrics");
  REQUIRE(metrics);
  CHECK(metrics->body.find("kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}") !=
        std::string::npos);
  CHECK(metrics->body.find("kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}") !=
        std::string::npos);

  REQUIRE(::kill(daemon.pid(), SIGTERM) == 0);
  CHECK(daemon.wait(5s) == 0);
  // The rules stay: traffic still flows with sluiced stopped.
  CHECK(spread(t.client(), Protocol::kTCP, web, 80, 5)["backend-1"] == 5);
  servers.clear();
}

TEST_CASE("sluiced: endpoints registered through the embedded lease API carry traffic, one that stops renewing leaves") {
  auto topo = Topology::create({2, false, false});
  REQUIRE(topo);
  Topology& t = **topo;
  auto servers = startBackends(t, 2);
  // The Service comes from the file; its endpoints only from leases.
  TempManifest manifest(
      "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: test}\n"
      "spec: {clusterIP: 198.19.0.10, clusterIPs: [198.19.0.10], ports: [{name: http, protocol: TCP, port: 80}]}\n");
  std::ofstream(manifest.dir + "/token") << "lease-secret\n";
  std::vector<std::string> args = nodeDaemonArgs(t, manifest);
  args.insert(args.end(), {"--lease-backend", "embedded", "--lease-service", "test/web", "--lease-bind-address",
                           "127.0.0.1:10259", "--lease-token-file", manifest.dir + "/token",
                           "--lease-reconcile-interval", "100ms"});
  Child daemon(args);
  REQUIRE(daemon.pid() > 0);
  REQUIRE(waitFor(t.node(), 10249, "/status", 10s));
  // The admin server answers before the source and the lease API are started: wait for the
  // lease API itself (any answer; without the token it is 401).
  REQUIRE(waitFor(t.node(), 10259, "/v1/leases", 10s));
  const IPAddress web = IPAddress::parse("198.19.0.10").value();

  auto endpointsWhen = [&](int want, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto r = getIn(t.node(), 10249, "/status"); r && r->status == 200) {
        auto j = nlohmann::json::parse(r->body);
        if (j["families"].size() == 1 && j["families"][0]["endpoints"] == want && j["families"][0]["lastOk"] == true)
          return true;
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };

  // Two registrants (agents on the node) reach the API inside the node namespace: their
  // threads are started from a thread that joined it, so every connection they open is there.
  const std::string url = "http://127.0.0.1:10259";
  std::vector<std::unique_ptr<HttpLeaseStore>> clients;
  std::vector<std::unique_ptr<LeaseRegistrant>> registrants;
  for (int i = 1; i <= 2; ++i) {
    auto c = HttpLeaseStore::create({url, "lease-secret", 500ms});
    REQUIRE(c);
    LeaseSpec spec;
    spec.identity = "backend-" + std::to_string(i);
    spec.address = Topology::backendIP(i, IPFamily::kV4);
    spec.ports = {{"http", Protocol::kTCP, 8080}};
    spec.ttl = 500ms;
    clients.push_back(std::move(c).value());
    registrants.push_back(std::make_unique<LeaseRegistrant>(*clients.back(), spec));
  }
  REQUIRE(runInNetns(t.node().path(), [&] {
    for (auto& r : registrants) CHECK(r->start().isOk());
  }));
  REQUIRE(endpointsWhen(2, 5s));
  auto before = spread(t.client(), Protocol::kTCP, web, 80, 30);
  CHECK(before["backend-1"] > 0);
  CHECK(before["backend-2"] > 0);

  // backend-2's agent stops renewing (dies without releasing): out of the data plane within
  // TTL + one reconcile interval (plus a sync), while backend-1 keeps serving.
  const auto stopped = std::chrono::steady_clock::now();
  registrants[1]->stop(false);
  // The bound is TTL + interval plus slack for a sync on a loaded CI machine (as lease_test).
  CHECK(endpointsWhen(1, 500ms + 100ms + 1000ms));
  const auto took = std::chrono::steady_clock::now() - stopped;
  MESSAGE("endpoint left after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took >= 500ms - 500ms / 3 - 100ms);  // not before its TTL (less the renewal it had left)
  auto after = spread(t.client(), Protocol::kTCP, web, 80, 20);
  CHECK(after["backend-1"] == 20);
  CHECK(after.count("backend-2") == 0);

  // Without the token the API refuses to register anything.
  bool refused = false;
  REQUIRE(runInNetns(t.node().path(), [&] {
    auto c = HttpLeaseStore::create({url, "guess", 500ms});
    refused = c && (*c)->list().status().code() == Code::kPermissionDenied;
  }));
  CHECK(refused);

  REQUIRE(::kill(daemon.pid(), SIGTERM) == 0);
  CHECK(daemon.wait(5s) == 0);
  registrants.clear();
  servers.clear();
}

// The Kubernetes source end to end: Services from the test API server, and this node's Node
// object deciding /healthz eligibility and the zone that topology hints are matched against.
TEST_CASE("sluiced: the Node's zone re-plans topology hints (real traffic), its autoscaler taint turns /healthz 503") {
  auto topo = Topology::create({2, false, false});
  REQUIRE(topo);
  Topology& t = **topo;
  auto servers = startBackends(t, 2);
  testing::ApiServer api;
  api.create("services", {{"metadata", {{"namespace", "test"}, {"name", "web"}}},
                          {"spec", {{"clusterIP", "198.19.0.10"}, {"clusterIPs", {"198.19.0.10"}},
                                    {"trafficDistribution", "PreferClose"},
                                    {"ports", {{{"name", "http"}, {"protocol", "TCP"}, {"port", 80}}}}}}});
  nlohmann::json endpoints = nlohmann::json::array();
  for (int i : {1, 2})
    endpoints.push_back({{"addresses", {Topology::backendIP(i, IPFamily::kV4).toString()}},
                         {"conditions", {{"ready", true}}},
                         {"nodeName", "node-" + std::to_string(i)},
                         {"hints", {{"forZones", {{{"name", i == 1 ? "zone-a" : "zone-b"}}}}}}});
  api.create("endpointslices", {{"metadata", {{"namespace", "test"}, {"name", "web-1"},
                                              {"labels", {{"kubernetes.io/service-name", "web"}}}}},
                                {"addressType", "IPv4"},
                                {"ports", {{{"name", "http"}, {"protocol", "TCP"}, {"port", 8080}}}},
                                {"endpoints", endpoints}});
  auto nodeIn = [](const std::string& zone, bool toBeDeleted) {
    nlohmann::json taints = nlohmann::json::array();
    if (toBeDeleted) taints.push_back({{"key", "ToBeDeletedByClusterAutoscaler"}, {"effect", "NoSchedule"}});
    return nlohmann::json{{"metadata", {{"name", "node-1"}, {"labels", {{"topology.kubernetes.io/zone", zone}}}}},
                          {"spec", {{"taints", taints}}}};
  };
  api.create("nodes", nodeIn("zone-a", false));
  api.start();  // on 127.0.0.1 of this namespace: sluiced's API client runs here, its sockets in the node's

  TempManifest unused("");
  std::vector<std::string> args = nodeDaemonArgs(t, unused);
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--source") args[i + 1] = "kubernetes";
  for (const std::string& a : {std::string("--master"), api.url()}) args.push_back(a);
  Child daemon(args);
  REQUIRE(daemon.pid() > 0);
  const IPAddress web = IPAddress::parse("198.19.0.10").value();

  auto statusWhere = [&](const auto& pred) { return waitForStatus(t.node(), pred); };
  auto inZone = [&](const std::string& zone) {
    return statusWhere([&](const nlohmann::json& j) {
      return j["nodeWatch"].is_object() && j["nodeWatch"]["zone"] == zone && j["families"][0]["endpoints"] == 2 &&
             j["families"][0]["lastOk"] == true;
    });
  };
  auto zoneA = inZone("zone-a");
  REQUIRE(zoneA);
  CHECK((*zoneA)["nodeWatch"]["present"] == true);
  CHECK((*zoneA)["nodeWatch"]["eligible"] == true);
  // The zone may have arrived after the first sync; traffic decides.
  auto spreadWhen = [&](const std::string& backend) {
    std::map<std::string, int> got;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      got = spread(t.client(), Protocol::kTCP, web, 80, 12);
      if (got[backend] == 12) break;
      std::this_thread::sleep_for(100ms);
    }
    return got;
  };
  CHECK(spreadWhen("backend-1")["backend-1"] == 12);

  // The Node moves to zone-b: both planes are rebuilt and the hints now pick backend 2.
  const uint64_t syncsBefore = (*zoneA)["families"][0]["syncs"].get<uint64_t>();
  api.update("nodes", nodeIn("zone-b", false));
  auto zoneB = inZone("zone-b");
  REQUIRE(zoneB);
  auto resynced = statusWhere([&](const nlohmann::json& j) {
    return j["families"][0]["syncs"].get<uint64_t>() > syncsBefore && j["families"][0]["lastFull"] == true &&
           j["families"][0]["lastOk"] == true;
  });
  CHECK(resynced);
  auto after = spread(t.client(), Protocol::kTCP, web, 80, 12);
  CHECK(after["backend-2"] == 12);

  // The cluster autoscaler marks the node: /healthz 503, /livez 200; unmarked: 200 again.
  api.update("nodes", nodeIn("zone-b", true));
  auto healthzBecomes = [&](int code) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto r = getIn(t.node(), 10256, "/healthz"); r && r->status == code) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };
  CHECK(healthzBecomes(503));
  CHECK(getIn(t.node(), 10256, "/livez")->status == 200);
  CHECK(nlohmann::json::parse(getIn(t.node(), 10256, "/healthz")->body)["nodeEligible"] == false);
  api.update("nodes", nodeIn("zone-b", false));
  CHECK(healthzBecomes(200));

  REQUIRE(::kill(daemon.pid(), SIGTERM) == 0);
  CHECK(daemon.wait(5s) == 0);
  servers.clear();
}
