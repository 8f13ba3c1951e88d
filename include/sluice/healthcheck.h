// sluice/healthcheck.h — kube-proxy's health answers: the node proxy's /healthz and /livez,
// and one health-check node port server per LoadBalancer Service with
// externalTrafficPolicy: Local (service-semantics §5).
//
// ProxierHealth is the state behind /healthz: a change was queued (queuedUpdate) and not
// programmed (updated) within healthTimeout → unhealthy; kube-proxy uses 2 × sync period.
// /healthz is also 503 while the node is not eligible (being deleted, or tainted
// ToBeDeletedByClusterAutoscaler); /livez ignores that.
//
// ServiceHealthServers runs the health-check node ports: 200 with the number of local Ready
// endpoints when there is at least one (and the proxy is healthy), else 503, so a cloud load
// balancer only sends traffic to nodes that can serve it without another hop.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sluice/http_server.h"
#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/planner.h"

namespace sluice {

struct ProxyMetrics;

using WallClock = std::function<std::chrono::system_clock::time_point()>;

class ProxierHealth {
 public:
  explicit ProxierHealth(std::chrono::nanoseconds healthTimeout, WallClock clock = {});

  // A Service/EndpointSlice change for `family` arrived and awaits programming. Only the
  // oldest pending change counts: later ones do not push the deadline back.
  void queuedUpdate(IPFamily family);
  // `family`'s rules now reflect everything queued so far.
  void updated(IPFamily family);
  // From the Node object: false when it has a deletionTimestamp or the autoscaler's
  // ToBeDeletedByClusterAutoscaler taint. True until told otherwise.
  void setNodeEligible(bool eligible);

  struct State {
    bool healthy = true;  // the proxy's own health (node eligibility not included)
    bool nodeEligible = true;
    std::chrono::system_clock::time_point lastUpdated;  // latest updated() of any family
    std::chrono::system_clock::time_point now;
  };
  State state() const;
  bool isHealthy() const { return state().healthy; }
  std::chrono::nanoseconds healthTimeout() const { return timeout_; }

 private:
  std::chrono::nanoseconds timeout_;
  WallClock clock_;
  mutable std::mutex mu_;
  std::map<IPFamily, std::chrono::system_clock::time_point> lastUpdated_;
  std::map<IPFamily, std::chrono::system_clock::time_point> oldestQueued_;
  bool nodeEligible_ = true;
};

// kube-proxy's /healthz and /livez answers (JSON, nosniff). They count into
// kubeproxy_proxy_healthz_total / _livez_total when `metrics` is given.
HttpResponse healthzResponse(const ProxierHealth& health, ProxyMetrics* metrics = nullptr);
HttpResponse livezResponse(const ProxierHealth& health, ProxyMetrics* metrics = nullptr);
// Routes GET /healthz and /livez of `server` to the above.
void addHealthRoutes(HttpServer& server, const ProxierHealth& health, ProxyMetrics* metrics = nullptr);

// RFC 3339 UTC with nanoseconds, "2026-11-25T22:10:10.123456789Z" (time_point{} → "0001-01-01T00:00:00Z",
// Go's zero time, as kube-proxy prints a proxy that never synced).
std::string formatTimestamp(std::chrono::system_clock::time_point t);

// One health-check node port.
struct ServiceHealth {
  uint16_t nodePort = 0;
  int localEndpoints = 0;  // local Ready endpoints
  bool operator==(const ServiceHealth&) const = default;
};

// The health-check node ports `snapshot` asks for: every proxied LoadBalancer Service with
// externalTrafficPolicy Local and a healthCheckNodePort, with its number of distinct local
// Ready endpoints (address:port, across its ports, as kube-proxy counts them).
std::map<ObjectName, ServiceHealth> serviceHealthFromSnapshot(const Snapshot& snapshot, const ProxyConfig& cfg);

// The body and status of one health-check answer (exposed for tests and node agents).
HttpResponse serviceHealthResponse(const ObjectName& service, int localEndpoints, bool proxyHealthy);

struct ServiceHealthOptions {
  // Addresses to listen on for every health-check port: kube-proxy listens on every address
  // ("0.0.0.0") unless --nodeport-addresses narrows it to the node IPs it selects.
  std::vector<std::string> addresses = {"0.0.0.0"};
  std::string netns;  // namespace the sockets are created in (see netns.h)
  // Applied to each server (address, port and netns are set per server).
  HttpServerOptions server;
};

class ServiceHealthServers {
 public:
  // `proxier` (may be null: then always healthy) must outlive this object.
  explicit ServiceHealthServers(ServiceHealthOptions options, const ProxierHealth* proxier = nullptr,
                                ProxyMetrics* metrics = nullptr);
  ~ServiceHealthServers();

  // Makes `services` the served set: closes the servers of Services that are gone or whose port
  // changed, opens new ones, and updates endpoint counts in place (no socket is touched for a
  // count change). A port that cannot be opened (in use) is reported as a Problem for that
  // Service and retried by the next update(); the other Services are served regardless.
  std::vector<Problem> update(const std::map<ObjectName, ServiceHealth>& services);
  // Closes every server.
  void stop();

  // What is being served right now: Service → its port and count.
  std::map<ObjectName, ServiceHealth> served() const;

 private:
  struct Instance;
  ServiceHealthOptions options_;
  const ProxierHealth* proxier_;
  ProxyMetrics* metrics_;
  mutable std::mutex mu_;  // guards instances_ (updates vs. served())
  std::map<ObjectName, std::unique_ptr<Instance>> instances_;
};

}  // namespace sluice
