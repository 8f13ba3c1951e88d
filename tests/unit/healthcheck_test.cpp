// kube-proxy's health answers: ProxierHealth with a fake clock, /healthz and /livez bodies,
// health-check node port servers over real sockets on loopback.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "builders.h"
#include "http_client.h"
#include "sluice/healthcheck.h"
#include "sluice/metrics.h"
#include "sluice/proxy_metrics.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;
using std::chrono::system_clock;

namespace {

struct FakeClock {
  system_clock::time_point now = system_clock::time_point(std::chrono::seconds(1700000000));
  WallClock fn() {
    return [this] { return now; };
  }
};

// A port that was free a moment ago (the kernel hands out ephemeral ports round-robin, so it
// is not reused at once).
uint16_t freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

ServiceHealthOptions loopbackHealth() {
  ServiceHealthOptions o;
  o.addresses = {"127.0.0.1"};
  return o;
}

}  // namespace

TEST_CASE("proxier health: healthy while starting, unhealthy when a change waits past the timeout") {
  FakeClock clock;
  ProxierHealth h(60s, clock.fn());
  CHECK(h.isHealthy());  // nothing queued, nothing synced: starting up
  h.queuedUpdate(IPFamily::kV4);
  clock.now += 59s;
  CHECK(h.isHealthy());
  h.queuedUpdate(IPFamily::kV4);  // a later change does not move the deadline
  clock.now += 1s;
  CHECK_FALSE(h.isHealthy());
  h.updated(IPFamily::kV4);
  CHECK(h.isHealthy());
  CHECK(h.state().lastUpdated == clock.now);

  // One family stuck is enough.
  h.queuedUpdate(IPFamily::kV6);
  h.queuedUpdate(IPFamily::kV4);
  clock.now += 30s;
  h.updated(IPFamily::kV4);
  clock.now += 30s;
  CHECK_FALSE(h.isHealthy());
}

TEST_CASE("proxier health: /healthz and /livez answers as kube-proxy") {
  FakeClock clock;
  ProxierHealth h(60s, clock.fn());
  metrics::Registry registry;
  ProxyMetrics m(registry);

  HttpResponse ok = healthzResponse(h, &m);
  CHECK(ok.status == 200);
  CHECK(ok.contentType == "application/json");
  CHECK(std::find(ok.headers.begin(), ok.headers.end(), std::pair<std::string, std::string>{"X-Content-Type-Options", "nosniff"}) != ok.headers.end());
  CHECK(ok.body == R"({"lastUpdated": "2023-11-14T22:13:20.000000000Z","currentTime": "2023-11-14T22:13:20.000000000Z", "nodeEligible": true})");

  h.setNodeEligible(false);  // node being deleted: /healthz fails, /livez does not
  CHECK(healthzResponse(h, &m).status == 503);
  CHECK(healthzResponse(h, &m).body.find("\"nodeEligible\": false") != std::string::npos);
  CHECK(livezResponse(h, &m).status == 200);

  h.setNodeEligible(true);
  h.queuedUpdate(IPFamily::kV4);
  clock.now += 61s;
  HttpResponse stale = healthzResponse(h, &m);
  CHECK(stale.status == 503);
  // Never synced: Go's zero time, as kube-proxy prints it.
  CHECK(stale.body.find(R"("lastUpdated": "0001-01-01T00:00:00Z")") != std::string::npos);
  CHECK(livezResponse(h, &m).status == 503);

  const std::string text = registry.expose();
  CHECK(text.find("kubeproxy_proxy_healthz_total{code=\"200\"} 1\n") != std::string::npos);
  CHECK(text.find("kubeproxy_proxy_healthz_total{code=\"503\"} 3\n") != std::string::npos);
  CHECK(text.find("kubeproxy_proxy_livez_total{code=\"200\"} 1\n") != std::string::npos);
  CHECK(text.find("kubeproxy_proxy_livez_total{code=\"503\"} 1\n") != std::string::npos);
}

TEST_CASE("health-check answer: body, status and headers") {
  HttpResponse ok = serviceHealthResponse({"shop", "web"}, 2, true);
  CHECK(ok.status == 200);
  CHECK(ok.body == "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n"
                   "\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}");
  auto j = nlohmann::json::parse(ok.body);
  CHECK(j["service"]["namespace"] == "shop");
  CHECK(j["localEndpoints"] == 2);
  auto has = [](const HttpResponse& r, const char* name, const std::string& value) {
    return std::find(r.headers.begin(), r.headers.end(), std::pair<std::string, std::string>{name, value}) != r.headers.end();
  };
  CHECK(has(ok, "X-Load-Balancing-Endpoint-Weight", "2"));
  CHECK(has(ok, "X-Content-Type-Options", "nosniff"));
  CHECK(serviceHealthResponse({"shop", "web"}, 0, true).status == 503);
  CHECK(serviceHealthResponse({"shop", "web"}, 3, false).status == 503);  // proxy unhealthy
}

TEST_CASE("health-check ports from a snapshot: LoadBalancer + eTP Local, local Ready endpoints") {
  Snapshot snap;
  auto lb = [](const char* name, const char* ip, uint16_t hcPort) {
    Service s = clusterIPService("default", name, ip, {{"http", Protocol::kTCP, 80, 30080}, {"https", Protocol::kTCP, 443, 30443}});
    s.type = ServiceType::kLoadBalancer;
    s.externalTrafficPolicy = TrafficPolicy::kLocal;
    s.healthCheckNodePort = hcPort;
    return s;
  };
  snap.upsertService(lb("web", "198.18.100.1", 32001));
  Service cluster = lb("cluster", "198.18.100.2", 32002);
  cluster.externalTrafficPolicy = TrafficPolicy::kCluster;  // no health-check port served
  snap.upsertService(cluster);
  snap.upsertService(lb("nolocal", "198.18.100.3", 32003));

  EndpointSlice web;
  web.id = {"default", "web-1"};
  web.serviceName = "web";
  web.ports = {{"http", Protocol::kTCP, 8080}, {"https", Protocol::kTCP, 8443}};
  web.endpoints = {
      endpoint("198.18.2.10", true, true, false, "node-1"),
      endpoint("198.18.2.11", true, true, false, "node-1"),
      endpoint("198.18.2.12", false, true, true, "node-1"),  // terminating: not Ready, not counted
      endpoint("198.18.2.13", true, true, false, "node-2"),  // not local
  };
  snap.upsertSlice(web);
  EndpointSlice nolocal = web;
  nolocal.id = {"default", "nolocal-1"};
  nolocal.serviceName = "nolocal";
  nolocal.endpoints = {endpoint("198.18.2.20", true, true, false, "node-2")};
  snap.upsertSlice(nolocal);

  ProxyConfig cfg;
  cfg.nodeName = "node-1";
  auto hc = serviceHealthFromSnapshot(snap, cfg);
  REQUIRE(hc.size() == 2);
  // Two local Ready pods, each serving both ports: 4 distinct address:port pairs, as kube-proxy
  // counts endpoints (address:port) per Service.
  CHECK(hc.at({"default", "web"}) == ServiceHealth{32001, 4});
  CHECK(hc.at({"default", "nolocal"}) == ServiceHealth{32003, 0});
}

TEST_CASE("health-check servers: served over HTTP, updated incrementally") {
  FakeClock clock;
  ProxierHealth proxier(60s, clock.fn());
  metrics::Registry registry;
  ProxyMetrics m(registry);
  ServiceHealthServers servers(loopbackHealth(), &proxier, &m);
  const ObjectName web{"default", "web"}, api{"default", "api"};
  const uint16_t webPort = freePort(), apiPort = freePort();

  CHECK(servers.update({{web, {webPort, 2}}, {api, {apiPort, 0}}}).empty());
  auto r = httpGet(webPort, "/any/path");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->header("x-load-balancing-endpoint-weight") == "2");
  CHECK(r->header("content-type") == "application/json");
  CHECK(nlohmann::json::parse(r->body)["service"]["name"] == "web");
  auto a = httpGet(apiPort, "/");
  REQUIRE(a);
  CHECK(a->status == 503);
  CHECK(nlohmann::json::parse(a->body)["localEndpoints"] == 0);
  CHECK(registry.expose().find("sluice_healthcheck_node_port_servers 2\n") != std::string::npos);

  // A count change is visible at once and does not reopen the socket: a kept-alive
  // connection keeps working across it.
  HttpConnection kept("127.0.0.1", webPort);
  REQUIRE(kept.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
  REQUIRE(kept.read()->status == 200);
  CHECK(servers.update({{web, {webPort, 0}}, {api, {apiPort, 1}}}).empty());
  REQUIRE(kept.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
  auto after = kept.read();
  REQUIRE(after);
  CHECK(after->status == 503);
  CHECK(httpGet(apiPort, "/")->status == 200);

  // The proxy turning unhealthy turns every port to 503 with serviceProxyHealthy false.
  proxier.queuedUpdate(IPFamily::kV4);
  clock.now += 61s;
  auto sick = httpGet(apiPort, "/");
  REQUIRE(sick);
  CHECK(sick->status == 503);
  CHECK(nlohmann::json::parse(sick->body)["serviceProxyHealthy"] == false);
  proxier.updated(IPFamily::kV4);

  // Removing a Service closes its port; moving one to another port reopens it there.
  const uint16_t apiPort2 = freePort();
  CHECK(servers.update({{api, {apiPort2, 1}}}).empty());
  CHECK_FALSE(HttpConnection("127.0.0.1", webPort).connected());
  CHECK_FALSE(HttpConnection("127.0.0.1", apiPort).connected());
  CHECK(httpGet(apiPort2, "/")->status == 200);
  CHECK(servers.served() == std::map<ObjectName, ServiceHealth>{{api, {apiPort2, 1}}});

  servers.stop();
  CHECK_FALSE(HttpConnection("127.0.0.1", apiPort2).connected());
  CHECK(servers.served().empty());
}

TEST_CASE("health-check servers: a port in use is reported and retried, the others served") {
  HttpServerOptions squatterOptions;
  HttpServer squatter(squatterOptions);
  squatter.route("GET", "/", [](const HttpRequest&) { return HttpResponse::text(200, "squatter"); });
  REQUIRE(squatter.start().isOk());
  const uint16_t taken = squatter.port();
  const uint16_t free = freePort();

  ServiceHealthServers servers(loopbackHealth());
  const ObjectName a{"ns", "a"}, b{"ns", "b"};
  auto problems = servers.update({{a, {taken, 1}}, {b, {free, 1}}});
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].object == "Service ns/a");
  CHECK(problems[0].field == "spec.healthCheckNodePort");
  CHECK(problems[0].reason.find(std::to_string(taken)) != std::string::npos);
  CHECK(httpGet(free, "/")->status == 200);
  CHECK(servers.served().size() == 1);

  squatter.stop();
  CHECK(servers.update({{a, {taken, 1}}, {b, {free, 1}}}).empty());  // retried, now free
  auto r = httpGet(taken, "/");
  REQUIRE(r);
  CHECK(nlohmann::json::parse(r->body)["service"]["name"] == "a");
}

TEST_CASE("formatTimestamp: RFC 3339 UTC with nanoseconds") {
  CHECK(formatTimestamp(system_clock::time_point(std::chrono::seconds(0))) == "0001-01-01T00:00:00Z");
  CHECK(formatTimestamp(system_clock::time_point(std::chrono::seconds(86400) + std::chrono::microseconds(5))) ==
        "1970-01-02T00:00:00.000005000Z");
}
