#include "sluice/healthcheck.h"

#include <atomic>
#include <ctime>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "sluice/proxy_metrics.h"

namespace sluice {

using std::chrono::system_clock;

ProxierHealth::ProxierHealth(std::chrono::nanoseconds healthTimeout, WallClock clock)
    : timeout_(healthTimeout), clock_(clock ? std::move(clock) : WallClock([] { return system_clock::now(); })) {}

void ProxierHealth::queuedUpdate(IPFamily family) {
  std::lock_guard lock(mu_);
  oldestQueued_.try_emplace(family, clock_());  // keep the oldest: later changes do not extend the deadline
}

void ProxierHealth::updated(IPFamily family) {
  std::lock_guard lock(mu_);
  oldestQueued_.erase(family);
  lastUpdated_[family] = clock_();
}

void ProxierHealth::setNodeEligible(bool eligible) {
  std::lock_guard lock(mu_);
  nodeEligible_ = eligible;
}

ProxierHealth::State ProxierHealth::state() const {
  std::lock_guard lock(mu_);
  State s;
  s.now = clock_();
  s.nodeEligible = nodeEligible_;
  for (const auto& [family, last] : lastUpdated_) s.lastUpdated = std::max(s.lastUpdated, last);
  // As kube-proxy: a family that has never synced is healthy (starting up) — only a change
  // queued and not programmed within the timeout makes the proxy unhealthy. That includes a
  // first sync that never succeeds, since the first change is queued before it.
  for (const auto& [family, queued] : oldestQueued_) {
    if (s.now - queued >= timeout_) s.healthy = false;
  }
  return s;
}

std::string formatTimestamp(system_clock::time_point t) {
  if (t == system_clock::time_point{}) return "0001-01-01T00:00:00Z";
  const auto secs = std::chrono::floor<std::chrono::seconds>(t);
  const auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(t - secs).count();
  std::time_t tt = system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, nanos);
}

namespace {

HttpResponse healthJson(int status, std::string body) {
  HttpResponse r = HttpResponse::json(status, std::move(body));
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  return r;
}

}  // namespace

HttpResponse healthzResponse(const ProxierHealth& health, ProxyMetrics* metrics) {
  ProxierHealth::State s = health.state();
  const bool healthy = s.healthy && s.nodeEligible;
  // kube-proxy reports lastUpdated = now while healthy: older releases did, and probes compare.
  if (healthy) s.lastUpdated = s.now;
  if (metrics) metrics->healthzTotal.with({healthy ? "200" : "503"}).inc();
  return healthJson(healthy ? 200 : 503,
                    fmt::format(R"({{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {}}})",
                                formatTimestamp(s.lastUpdated), formatTimestamp(s.now), s.nodeEligible));
}

HttpResponse livezResponse(const ProxierHealth& health, ProxyMetrics* metrics) {
  ProxierHealth::State s = health.state();
  if (s.healthy) s.lastUpdated = s.now;
  if (metrics) metrics->livezTotal.with({s.healthy ? "200" : "503"}).inc();
  return healthJson(s.healthy ? 200 : 503, fmt::format(R"({{"lastUpdated": "{}","currentTime": "{}"}})",
                                                       formatTimestamp(s.lastUpdated), formatTimestamp(s.now)));
}

void addHealthRoutes(HttpServer& server, const ProxierHealth& health, ProxyMetrics* metrics) {
  server.route("GET", "/healthz", [&health, metrics](const HttpRequest&) { return healthzResponse(health, metrics); });
  server.route("GET", "/livez", [&health, metrics](const HttpRequest&) { return livezResponse(health, metrics); });
}

std::map<ObjectName, ServiceHealth> serviceHealthFromSnapshot(const Snapshot& snapshot, const ProxyConfig& cfg) {
  std::map<ObjectName, ServiceHealth> out;
  for (const auto& [id, svc] : snapshot.services()) {
    if (svc.type != ServiceType::kLoadBalancer || svc.externalTrafficPolicy != TrafficPolicy::kLocal ||
        svc.healthCheckNodePort == 0 || !skipReason(svc, cfg).empty())
      continue;
    std::set<std::pair<IPAddress, uint16_t>> local;
    for (const ServicePort& port : svc.ports) {
      for (const ResolvedEndpoint& ep : resolveEndpoints(svc, port, snapshot.slicesFor(id), cfg, nullptr)) {
        if (ep.local && ep.ready) local.emplace(ep.ip, ep.port);
      }
    }
    out[id] = {svc.healthCheckNodePort, static_cast<int>(local.size())};
  }
  return out;
}

HttpResponse serviceHealthResponse(const ObjectName& service, int localEndpoints, bool proxyHealthy) {
  // The layout (tabs, key order) is kube-proxy's, for probes that match on text.
  HttpResponse r = healthJson(localEndpoints > 0 && proxyHealthy ? 200 : 503,
                              fmt::format("{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n"
                                          "\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
                                          nlohmann::json(service.ns).dump(), nlohmann::json(service.name).dump(),
                                          localEndpoints, proxyHealthy));
  // Lets weighted load balancers (GCE WEIGHTED_MAGLEV) weigh nodes by local endpoints.
  r.headers.emplace_back("X-Load-Balancing-Endpoint-Weight", std::to_string(localEndpoints));
  return r;
}

struct ServiceHealthServers::Instance {
  ObjectName service;
  uint16_t port = 0;
  std::atomic<int> localEndpoints{0};
  // Declared last: destroyed (stopped) first, while the fields their handlers read still exist.
  std::vector<std::unique_ptr<HttpServer>> servers;
};

ServiceHealthServers::ServiceHealthServers(ServiceHealthOptions options, const ProxierHealth* proxier,
                                           ProxyMetrics* metrics)
    : options_(std::move(options)), proxier_(proxier), metrics_(metrics) {}

ServiceHealthServers::~ServiceHealthServers() { stop(); }

std::vector<Problem> ServiceHealthServers::update(const std::map<ObjectName, ServiceHealth>& services) {
  std::vector<Problem> problems;
  std::lock_guard lock(mu_);
  for (auto it = instances_.begin(); it != instances_.end();) {
    auto want = services.find(it->first);
    if (want == services.end() || want->second.nodePort != it->second->port) {
      spdlog::info("healthcheck: closing node port {} of Service {}", it->second->port, it->first.toString());
      it = instances_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [id, want] : services) {
    if (auto it = instances_.find(id); it != instances_.end()) {
      it->second->localEndpoints.store(want.localEndpoints);
      continue;
    }
    auto inst = std::make_unique<Instance>();
    inst->service = id;
    inst->port = want.nodePort;
    inst->localEndpoints.store(want.localEndpoints);
    Status failed;
    for (const std::string& address : options_.addresses) {
      HttpServerOptions so = options_.server;
      so.address = address;
      so.port = want.nodePort;
      so.netns = options_.netns;
      auto server = std::make_unique<HttpServer>(so);
      // kube-proxy answers every path and method of a health-check port.
      Instance* self = inst.get();
      const ProxierHealth* proxier = proxier_;
      HttpHandler handler = [self, proxier](const HttpRequest&) {
        return serviceHealthResponse(self->service, self->localEndpoints.load(), !proxier || proxier->isHealthy());
      };
      for (const char* method : {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) server->route(method, "*", handler);
      if (Status st = server->start(); !st) {
        failed = st;
        break;
      }
      inst->servers.push_back(std::move(server));
    }
    if (failed.isOk()) {
      spdlog::info("healthcheck: serving Service {} on node port {}", id.toString(), want.nodePort);
      instances_.emplace(id, std::move(inst));
    } else {
      // Close what was opened so the port can be retried whole, as kube-proxy does.
      problems.push_back({"Service " + id.toString(), "spec.healthCheckNodePort",
                          fmt::format("cannot serve health checks on port {}: {}", want.nodePort, failed.toString())});
      spdlog::warn("healthcheck: {}", problems.back().toString());
    }
  }
  if (metrics_) metrics_->healthCheckServers.get().set(static_cast<double>(instances_.size()));
  return problems;
}

void ServiceHealthServers::stop() {
  std::lock_guard lock(mu_);
  instances_.clear();
  if (metrics_) metrics_->healthCheckServers.get().set(0);
}

std::map<ObjectName, ServiceHealth> ServiceHealthServers::served() const {
  std::lock_guard lock(mu_);
  std::map<ObjectName, ServiceHealth> out;
  for (const auto& [id, inst] : instances_) out[id] = {inst->port, inst->localEndpoints.load()};
  return out;
}

}  // namespace sluice
