// sluiced's run loop: data planes per IP family, the HTTP servers, signals, systemd.
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sluice/cleanup.h"
#include "sluice/conntrack_stats.h"
#include "sluice/dataplane.h"
#include "sluice/healthcheck.h"
#include "sluice/http_server.h"
#include "sluice/logging.h"
#include "sluice/metrics.h"
#include "sluice/nft/backend.h"
#include "sluice/node_status.h"
#include "sluice/proxy_metrics.h"
#include "sluiced.h"

namespace sluiced {

using namespace sluice;
using std::chrono::system_clock;

namespace {

// One IP family's data plane. The Snapshot is per family because DataPlane::sync consumes the
// Snapshot's dirty set.
struct Plane {
  ProxyConfig cfg;
  std::unique_ptr<nft::NetlinkBackend> backend;
  std::unique_ptr<DataPlane> dataPlane;
  Snapshot snapshot;
  FamilySyncStatus status;
};

Result<std::string> readToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::fromErrno(errno ? errno : ENOENT, fmt::format("--admin-token-file: cannot read {}", path));
  std::ostringstream text;
  text << in.rdbuf();
  std::string token = text.str();
  token.erase(token.find_last_not_of(" \t\r\n") + 1);
  token.erase(0, token.find_first_not_of(" \t\r\n"));
  if (token.empty()) return Status(Code::kInvalidArgument, fmt::format("--admin-token-file: {} is empty", path));
  return token;
}

void notify(const std::string& state) {
  // A no-op (returns 0) when not started by systemd with Type=notify ($NOTIFY_SOCKET unset).
  int r = sd_notify(0, state.c_str());
  if (r < 0) spdlog::warn("sd_notify({}): {}", state, std::strerror(-r));
}

class Daemon {
 public:
  Daemon(ProxyOptions options, std::vector<std::pair<std::string, std::string>> given)
      : options_(std::move(options)),
        given_(std::move(given)),
        metrics_(registry_),
        health_(2 * options_.syncPeriod),
        started_(system_clock::now()) {}

  int run();

 private:
  Status openPlanes();
  Status startServers();
  void syncAll();
  void reload();
  void stopServers();
  NodeStatus status() const;
  void collectConntrackStats();

  ProxyOptions options_;
  std::vector<std::pair<std::string, std::string>> given_;
  metrics::Registry registry_;
  ProxyMetrics metrics_;
  ProxierHealth health_;
  system_clock::time_point started_;
  std::string source_;
  std::string adminToken_;

  std::vector<std::unique_ptr<Plane>> planes_;
  std::unique_ptr<HttpServer> healthzServer_;
  std::unique_ptr<HttpServer> adminServer_;
  std::unique_ptr<ServiceHealthServers> healthChecks_;

  mutable std::mutex statusMu_;  // planes' status and problems_, read by the HTTP threads
  std::vector<Problem> problems_;
  bool conntrackStatsWarned_ = false;
};

Status Daemon::openPlanes() {
  for (IPFamily family : ipFamilies(options_)) {
    auto plane = std::make_unique<Plane>();
    plane->cfg = toProxyConfig(options_, family);
    auto backend = nft::NetlinkBackend::open({options_.netns});
    if (!backend) return backend.status().withContext(fmt::format("opening nftables netlink for {}", familyName(family)));
    plane->backend = std::move(backend).value();
    plane->dataPlane = std::make_unique<DataPlane>(plane->cfg, *plane->backend);
    plane->status.family = family;
    planes_.push_back(std::move(plane));
  }
  return Status::ok();
}

Status Daemon::startServers() {
  // First: the status page (served as soon as the admin server starts) reads it.
  ServiceHealthOptions ho;
  // One socket for both families when IPv6 is programmed ("::" accepts IPv4 too while
  // net.ipv6.bindv6only is 0, the default); IPv4 only otherwise, so a kernel without IPv6 works.
  bool v6 = false;
  for (const auto& p : planes_) v6 = v6 || p->cfg.family == IPFamily::kV6;
  ho.addresses = {v6 ? "::" : "0.0.0.0"};
  ho.netns = options_.netns;
  healthChecks_ = std::make_unique<ServiceHealthServers>(ho, &health_, &metrics_);
  HttpRouteOptions admin;
  admin.bearerToken = adminToken_;
  if (!options_.healthzBindAddress.empty()) {
    HttpServerOptions so;
    (void)parseHostPort(options_.healthzBindAddress, &so.address, &so.port);  // validated already
    so.netns = options_.netns;
    healthzServer_ = std::make_unique<HttpServer>(so);
    addHealthRoutes(*healthzServer_, health_, &metrics_);
    if (Status st = healthzServer_->start(); !st) return st.withContext("--healthz-bind-address");
    spdlog::info("healthz: serving /healthz and /livez on {}", healthzServer_->boundAddress());
  }
  if (!options_.metricsBindAddress.empty()) {
    HttpServerOptions so;
    (void)parseHostPort(options_.metricsBindAddress, &so.address, &so.port);
    so.netns = options_.netns;
    adminServer_ = std::make_unique<HttpServer>(so);
    addHealthRoutes(*adminServer_, health_);
    adminServer_->route("GET", "/metrics", [this](const HttpRequest&) {
      HttpResponse r;
      r.contentType = metrics::Registry::kContentType;
      r.body = registry_.expose();
      return r;
    }, admin);
    adminServer_->route("GET", "/status", [this](const HttpRequest&) {
      return HttpResponse::json(200, statusJson(status()));
    }, admin);
    auto html = [this](const HttpRequest&) {
      HttpResponse r = HttpResponse::text(200, statusHtml(status()));
      r.contentType = "text/html; charset=utf-8";
      return r;
    };
    adminServer_->route("GET", "/", html, admin);
    adminServer_->route("GET", "/status.html", html, admin);
    if (Status st = adminServer_->start(); !st) return st.withContext("--metrics-bind-address");
    spdlog::info("admin: serving /metrics, /status, / on {}{}", adminServer_->boundAddress(),
                 adminToken_.empty() ? "" : " (bearer token required)");
  }
  return Status::ok();
}

void Daemon::stopServers() {
  if (healthChecks_) healthChecks_->stop();
  if (adminServer_) adminServer_->stop();
  if (healthzServer_) healthzServer_->stop();
}

void Daemon::syncAll() {
  std::map<ObjectName, ServiceHealth> healthChecks;
  std::vector<Problem> problems;
  for (auto& plane : planes_) {
    const IPFamily family = plane->cfg.family;
    if (!plane->snapshot.dirty().empty() || plane->dataPlane->fullSyncPending()) {
      health_.queuedUpdate(family);
      metrics_.queued(family, system_clock::now());
    }
    metrics_.recordSnapshot(plane->snapshot, plane->cfg);
    for (auto& [id, h] : serviceHealthFromSnapshot(plane->snapshot, plane->cfg)) {
      auto [it, fresh] = healthChecks.emplace(id, h);
      if (!fresh) it->second.localEndpoints += h.localEndpoints;  // a dual-stack Service
    }
    DataPlane::SyncResult result = plane->dataPlane->sync(plane->snapshot);
    const auto now = system_clock::now();
    metrics_.recordSync(family, result, now);
    if (result.status) health_.updated(family);
    {
      std::lock_guard lock(statusMu_);
      FamilySyncStatus& s = plane->status;
      ++s.syncs;
      s.lastAttempt = now;
      s.lastOk = result.status.isOk();
      s.lastFull = result.full;
      s.lastDurationSeconds = std::chrono::duration<double>(result.planTime + result.applyTime).count();
      s.lastOperations = result.operations;
      s.services = plane->snapshot.services().size();
      if (result.status) {
        s.lastSuccess = now;
        s.lastError.clear();
      } else {
        ++s.failures;
        s.lastError = result.status.toString();
      }
    }
    if (result.status) {
      spdlog::debug("sync {}: {} in {:.3f} ms, {} operations, {} Services planned", familyName(family),
                    result.full ? "full" : "partial",
                    std::chrono::duration<double, std::milli>(result.planTime + result.applyTime).count(),
                    result.operations, result.servicesPlanned);
    } else {
      spdlog::error("sync {} failed (the next sync replaces the whole table): {}", familyName(family),
                    result.status.toString());
    }
    for (auto& [id, list] : plane->dataPlane->problems()) problems.insert(problems.end(), list.begin(), list.end());
  }
  // Health-check ports follow the desired state, as kube-proxy's SyncServices/SyncEndpoints.
  for (Problem& p : healthChecks_->update(healthChecks)) problems.push_back(std::move(p));
  metrics_.problems.get().set(static_cast<double>(problems.size()));
  std::lock_guard lock(statusMu_);
  problems_ = std::move(problems);
}

void Daemon::reload() {
  notify("RELOADING=1");
  std::vector<std::string> warnings;
  auto next = resolveOptions(given_, &warnings);
  if (!next) {
    spdlog::error("reload: configuration rejected, keeping the running one: {}", next.status().message());
    notify("READY=1");
    return;
  }
  for (const std::string& w : warnings) spdlog::warn("config: {}", w);
  ProxyOptions& n = *next;
  if (Status st = setupLogging(n.logFormat, n.logLevel); !st) spdlog::error("reload: {}", st.message());
  auto needsRestart = [&](const char* what, bool differs) {
    if (differs) spdlog::warn("reload: {} changed; it takes effect at the next restart", what);
  };
  needsRestart("--healthz-bind-address", n.healthzBindAddress != options_.healthzBindAddress);
  needsRestart("--metrics-bind-address", n.metricsBindAddress != options_.metricsBindAddress);
  needsRestart("--netns", n.netns != options_.netns);
  needsRestart("--source/--kubeconfig/--master", resolveSource(n) != resolveSource(options_) ||
                                                     n.kubeconfig != options_.kubeconfig || n.master != options_.master);
  needsRestart("the IP families (--service-cluster-ip-range, --cluster-cidr)", ipFamilies(n) != ipFamilies(options_));
  needsRestart("--admin-token-file", n.adminTokenFile != options_.adminTokenFile);
  needsRestart("--sync-period (the /healthz timeout)", n.syncPeriod != options_.syncPeriod);
  // What shapes the rules is applied now: a new DataPlane whose first sync replaces the table.
  for (auto& plane : planes_) {
    ProxyConfig cfg = toProxyConfig(n, plane->cfg.family);
    if (cfg.nodeName == plane->cfg.nodeName && cfg.clusterCIDRs == plane->cfg.clusterCIDRs &&
        cfg.masqueradeAll == plane->cfg.masqueradeAll && cfg.masqueradeBit == plane->cfg.masqueradeBit)
      continue;
    spdlog::info("reload: {} rules change; replacing the table", familyName(plane->cfg.family));
    plane->cfg = cfg;
    plane->dataPlane = std::make_unique<DataPlane>(cfg, *plane->backend);
  }
  const std::string keepNetns = options_.netns;
  const auto keepSync = options_.syncPeriod;
  options_ = std::move(n);
  options_.netns = keepNetns;      // the sockets already live there
  options_.syncPeriod = keepSync;  // health_ was built with it
  spdlog::info("reload: configuration applied");
  syncAll();
  notify("READY=1");
}

NodeStatus Daemon::status() const {
  NodeStatus s;
  s.nodeName = nodeName(options_);
  s.version = ProxyMetrics::version();
  s.source = source_;
  s.netns = options_.netns;
  s.started = started_;
  ProxierHealth::State h = health_.state();
  s.now = h.now;
  s.healthy = h.healthy;
  s.nodeEligible = h.nodeEligible;
  s.healthCheckNodePorts = healthChecks_->served();
  std::lock_guard lock(statusMu_);
  for (const auto& plane : planes_) s.families.push_back(plane->status);
  s.problems = problems_;
  return s;
}

void Daemon::collectConntrackStats() {
  // Read over ctnetlink, the same reader `sluice-ct stats` uses.
  auto stats = conntrack::readStats(options_.netns);
  if (!stats) {
    if (!conntrackStatsWarned_) spdlog::info("conntrack statistics unavailable: {}", stats.status().toString());
    conntrackStatsWarned_ = true;
    return;
  }
  using conntrack::Counter;
  for (const conntrack::CpuCounters& cpu : stats->cpus) {
    const std::string id = std::to_string(cpu.cpu);
    metrics_.conntrackInsertFailed.with({id}).set(static_cast<double>(cpu.get(Counter::kInsertFailed)));
    metrics_.conntrackDrop.with({id}).set(static_cast<double>(cpu.get(Counter::kDrop)));
    metrics_.conntrackEarlyDrop.with({id}).set(static_cast<double>(cpu.get(Counter::kEarlyDrop)));
    metrics_.conntrackClashResolved.with({id}).set(static_cast<double>(cpu.get(Counter::kClashResolve)));
  }
}

int Daemon::run() {
  // Signals are taken synchronously by this thread (sigtimedwait); blocking them before any
  // thread starts makes every server thread inherit the mask, so none of them is interrupted.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  source_ = resolveSource(options_);
  if (!options_.adminTokenFile.empty()) {
    auto token = readToken(options_.adminTokenFile);
    if (!token) {
      spdlog::error("{}", token.status().message());
      return kExitUsage;
    }
    adminToken_ = *token;
  }
  if (Status st = openPlanes(); !st) {
    spdlog::error("{}", st.toString());
    return kExitFailure;
  }
  spdlog::info("sluiced {} starting: node {}, source {}, {} IP families{}", ProxyMetrics::version(),
               nodeName(options_), source_, planes_.size(), options_.netns.empty() ? "" : ", netns " + options_.netns);
  if (Status st = startServers(); !st) {
    spdlog::error("{}", st.toString());
    stopServers();
    return kExitFailure;
  }
  registry_.onCollect([this] { collectConntrackStats(); });

  // ---- SEAM: sources, store and sync runner (issues 4 and 5) -----------------------------
  // The Source named by source_ ("kubernetes" or "file:PATH", issue 4) will deliver into the
  // reconciler's Store, whose SyncRunner (issue 5) owns the per-family Snapshots, batches
  // changes by --min-sync-period, calls DataPlane::sync, reports to health_/metrics_ and hands
  // the health-check ports to healthChecks_ — i.e. it replaces syncAll() and the periodic
  // wake-up below, leaving this thread to wait for signals. The Kubernetes source's Node
  // watch also drives health_.setNodeEligible(). Until then the planes program an empty
  // desired state: the base table, so the node is ready for traffic the moment state arrives.
  spdlog::warn("source {} is not wired yet: programming the base table only", source_);
  // -----------------------------------------------------------------------------------------

  syncAll();
  notify(fmt::format("READY=1\nSTATUS=serving, source {}", source_));

  for (;;) {
    const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.syncPeriod);
    timespec wait{static_cast<time_t>(period.count() / 1000000000), static_cast<long>(period.count() % 1000000000)};
    int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig < 0) {
      if (errno == EAGAIN) syncAll();  // periodic sync
      continue;                        // EINTR: a signal we do not handle
    }
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: reloading configuration");
      reload();
      continue;
    }
    spdlog::info("{}: stopping; the rules stay in place", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    break;
  }
  notify("STOPPING=1");
  stopServers();
  spdlog::info("stopped");
  return kExitOk;
}

}  // namespace

int runDaemon(ProxyOptions options, std::vector<std::pair<std::string, std::string>> given) {
  Daemon daemon(std::move(options), std::move(given));
  return daemon.run();
}

int runCleanup(const ProxyOptions& options) {
  int code = kExitOk;
  // Both families, whatever the flags say now: an earlier run may have programmed either.
  for (IPFamily family : {IPFamily::kV4, IPFamily::kV6}) {
    ProxyConfig cfg = toProxyConfig(options, family);
    auto backend = nft::NetlinkBackend::open({options.netns});
    if (!backend) {
      spdlog::error("cleanup: {}", backend.status().toString());
      return kExitFailure;
    }
    if (Status st = removeProxyTable(cfg, **backend); !st) {
      spdlog::error("cleanup: {}", st.toString());
      code = kExitFailure;
    } else {
      spdlog::info("cleanup: table {} {} removed (or was absent)", family == IPFamily::kV4 ? "ip" : "ip6", cfg.tableName);
    }
  }
  return code;
}

}  // namespace sluiced
