// Prometheus text exposition of the metrics registry, and the proxy's metric set.
#include <doctest/doctest.h>

#include <limits>
#include <stdexcept>

#include "builders.h"
#include "sluice/metrics.h"
#include "sluice/proxy_metrics.h"

using namespace sluice;
using namespace sluice::metrics;

TEST_CASE("metrics: counters and gauges with labels, sorted, with HELP and TYPE") {
  Registry r;
  auto& requests = r.counter("http_requests_total", "Requests served", {"code", "method"});
  auto& temp = r.gauge("a_temperature", "Temperature");
  requests.with({"200", "GET"}).inc();
  requests.with({"200", "GET"}).inc(2);
  requests.with({"404", "GET"}).inc();
  requests.with({"200", "GET"}).inc(-5);  // ignored: counters never go down
  temp.get().set(21.5);
  temp.get().dec();
  CHECK(r.expose() ==
        "# HELP a_temperature Temperature\n"
        "# TYPE a_temperature gauge\n"
        "a_temperature 20.5\n"
        "# HELP http_requests_total Requests served\n"
        "# TYPE http_requests_total counter\n"
        "http_requests_total{code=\"200\",method=\"GET\"} 3\n"
        "http_requests_total{code=\"404\",method=\"GET\"} 1\n");
}

TEST_CASE("metrics: histogram buckets are cumulative, +Inf equals _count") {
  Registry r;
  auto& h = r.histogram("sync_seconds", "Sync time", {0.25, 1, 10}, {"ip_family"});
  for (double v : {0.125, 0.25, 0.5, 2.0, 20.0}) h.with({"IPv4"}).observe(v);
  CHECK(r.expose() ==
        "# HELP sync_seconds Sync time\n"
        "# TYPE sync_seconds histogram\n"
        "sync_seconds_bucket{ip_family=\"IPv4\",le=\"0.25\"} 2\n"  // 0.25 itself falls in le=0.25
        "sync_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 3\n"
        "sync_seconds_bucket{ip_family=\"IPv4\",le=\"10\"} 4\n"
        "sync_seconds_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 5\n"
        "sync_seconds_sum{ip_family=\"IPv4\"} 22.875\n"
        "sync_seconds_count{ip_family=\"IPv4\"} 5\n");
}

TEST_CASE("metrics: histogram without labels") {
  Registry r;
  r.histogram("h", "x", {1}).get().observe(3);
  CHECK(r.expose() ==
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n");
}

TEST_CASE("metrics: escaping of HELP text and label values") {
  Registry r;
  r.gauge("g", "line one\nback\\slash \"quotes stay\"", {"path"}).with({"C:\\dir\n\"x\""}).set(1);
  CHECK(r.expose() ==
        "# HELP g line one\\nback\\\\slash \"quotes stay\"\n"
        "# TYPE g gauge\n"
        "g{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n");
}

TEST_CASE("metrics: special values and number formatting") {
  CHECK(formatValue(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(formatValue(-std::numeric_limits<double>::infinity()) == "-Inf");
  CHECK(formatValue(std::numeric_limits<double>::quiet_NaN()) == "NaN");
  CHECK(formatValue(3) == "3");
  CHECK(formatValue(0.001) == "0.001");
  CHECK(formatValue(1795646596.25) == "1795646596.25");
}

TEST_CASE("metrics: wiring mistakes are caught at registration") {
  Registry r;
  CHECK_THROWS_AS(r.counter("bad-name", "x"), std::logic_error);
  CHECK_THROWS_AS(r.counter("ok", "x", {"__reserved"}), std::logic_error);
  CHECK_THROWS_AS(r.histogram("h", "x", {1, 1}), std::logic_error);
  CHECK_THROWS_AS(r.histogram("h2", "x", {1}, {"le"}), std::logic_error);
  auto& c = r.counter("c_total", "x", {"a"});
  CHECK(&r.counter("c_total", "x", {"a"}) == &c);  // asking again shares the family
  CHECK_THROWS_AS(r.gauge("c_total", "x", {"a"}), std::logic_error);
  CHECK_THROWS_AS(c.with({"1", "2"}), std::logic_error);
  CHECK(validMetricName("kubeproxy:rate_5m"));
  CHECK_FALSE(validLabelName("a:b"));
}

TEST_CASE("metrics: collect hooks run before every exposition") {
  Registry r;
  auto& g = r.gauge("reads", "x");
  int n = 0;
  r.onCollect([&] { g.get().set(++n); });
  CHECK(r.expose().find("reads 1\n") != std::string::npos);
  CHECK(r.expose().find("reads 2\n") != std::string::npos);
}

TEST_CASE("metrics: bucket helpers follow Prometheus' definitions") {
  CHECK(exponentialBuckets(0.001, 2, 3) == std::vector<double>{0.001, 0.002, 0.004});
  CHECK(linearBuckets(1, 1, 3) == std::vector<double>{1, 2, 3});
  CHECK_THROWS_AS(exponentialBuckets(0, 2, 3), std::logic_error);
}

TEST_CASE("proxy metrics: kube-proxy's names, labels and buckets") {
  Registry r;
  ProxyMetrics m(r);
  DataPlane::SyncResult full;
  full.full = true;
  full.operations = 42;
  full.planTime = std::chrono::milliseconds(2);
  full.applyTime = std::chrono::milliseconds(3);
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1700000000));
  m.recordSync(IPFamily::kV4, full, now);
  DataPlane::SyncResult failed;
  failed.status = Status(Code::kInternal, "kernel said no");
  m.recordSync(IPFamily::kV6, failed, now);
  const std::string text = r.expose();
  for (const char* line : {
           "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1\n",
           "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.008\"} 1\n",
           "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 0\n",
           "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"16.384\"} 1\n",
           "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1\n",
           "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1700000000\n",
           "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 1\n",
           "sluice_sync_operations{ip_family=\"IPv4\"} 42\n",
           "# TYPE kubeproxy_network_programming_duration_seconds histogram\n",
           "# TYPE kubeproxy_proxy_healthz_total counter\n",
           "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge\n",
           "# TYPE sluice_conntrack_insert_failed_total counter\n",
           "# TYPE sluice_draining_endpoints gauge\n",
       }) {
    CHECK_MESSAGE(text.find(line) != std::string::npos, line);
  }
  // A failed sync leaves the last-success timestamp alone.
  CHECK(text.find("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"}") == std::string::npos);
  CHECK(text.find("sluice_build_info{version=\"") != std::string::npos);
}

TEST_CASE("proxy metrics: services with a Local policy and no local endpoint") {
  using namespace sluice::testing;
  Registry r;
  ProxyMetrics m(r);
  Snapshot snap;
  // iTP Local with endpoints only on another node: counted as internal.
  Service a = clusterIPService("default", "a", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}});
  a.internalTrafficPolicy = TrafficPolicy::kLocal;
  // eTP Local LoadBalancer with a local endpoint: not counted.
  Service b = clusterIPService("default", "b", "198.18.100.2", {{"", Protocol::kTCP, 80, 30080}});
  b.type = ServiceType::kLoadBalancer;
  b.externalTrafficPolicy = TrafficPolicy::kLocal;
  snap.upsertService(a);
  snap.upsertService(b);
  EndpointSlice sa;
  sa.id = {"default", "a-1"};
  sa.serviceName = "a";
  sa.ports = {{"", Protocol::kTCP, 8080}};
  sa.endpoints = {endpoint("198.18.2.10", true, true, false, "other-node")};
  EndpointSlice sb = sa;
  sb.id = {"default", "b-1"};
  sb.serviceName = "b";
  sb.endpoints = {endpoint("198.18.2.11", true, true, false, "node-1")};
  snap.upsertSlice(sa);
  snap.upsertSlice(sb);
  ProxyConfig cfg;
  cfg.nodeName = "node-1";
  m.recordSnapshot(snap, cfg);
  const std::string text = r.expose();
  CHECK(text.find("kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 1\n") != std::string::npos);
  CHECK(text.find("kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 0\n") != std::string::npos);
  CHECK(text.find("sluice_services{ip_family=\"IPv4\"} 2\n") != std::string::npos);
}
