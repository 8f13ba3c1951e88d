// sluiced's run loop: data planes per IP family, the HTTP servers, signals, systemd.
#include <malloc.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sluice/cleanup.h"
#include "sluice/conntrack_stats.h"
#include "sluice/dataplane.h"
#include "sluice/drain_tracker.h"
#include "sluice/drift_monitor.h"
#include "sluice/explain.h"
#include "sluice/kube_source.h"
#include "sluice/lease.h"
#include "sluice/healthcheck.h"
#include "sluice/http_server.h"
#include "sluice/logging.h"
#include "sluice/metrics.h"
#include "sluice/nft/backend.h"
#include "sluice/node_status.h"
#include "sluice/proxy_metrics.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"
#include "sluiced.h"

namespace sluiced {

using namespace sluice;
using std::chrono::system_clock;

namespace {

// Hands freed heap pages back to the kernel. Not under AddressSanitizer: it replaces malloc, and
// glibc's malloc_trim then walks arenas nobody set up (a SIGSEGV in mtrim, seen in CI once the
// sluiced tests ran under ASan).
void trimHeap() {
#if defined(__SANITIZE_ADDRESS__)
  return;
#else
  malloc_trim(0);
#endif
}

class Daemon;

// One IP family's data plane: its own StateStore (DataPlane::sync consumes the Snapshot's dirty
// set, so two families cannot share one Snapshot; the source feeds both through FanOutSink),
// the SyncRunner that commits it and the drain tracker. One drift monitor watches every
// family's table (Daemon::drift_).
struct Plane : SyncObserver, CommitListener {
  Daemon* daemon = nullptr;
  ProxyConfig cfg;
  nft::TableRef table;  // cfg.table(), fixed for the daemon's life (the drift callback reads it)
  // Declaration order is teardown order reversed: the runner goes before the drain tracker
  // it calls and the store and DataPlane it uses.
  std::unique_ptr<nft::NetlinkBackend> backend;
  std::unique_ptr<DataPlane> dataPlane;
  StateStore store;
  std::unique_ptr<DrainTracker> drain;  // null when conntrack cannot be opened
  std::unique_ptr<SyncRunner> runner;  // replaced under Daemon::runnersMu_ (drift callback)
  std::atomic<uint64_t> driftRepairs{0};  // foreign edits of this family's table noticed

  // Written on the runner's thread, read by the HTTP threads (Daemon::statusMu_).
  FamilySyncStatus status;
  std::map<ObjectName, ServiceHealth> health;
  std::vector<Problem> planProblems;

  void afterCommit(const CommitInfo& info) override;
  void onSync(const SyncReport& report) override;
  void onProgrammingLatency(std::chrono::nanoseconds latency) override;
};

// Hands every delivery of the one source to each family's store, and marks a sync queued.
class FanOutSink : public StateSink {
 public:
  FanOutSink(std::vector<StateSink*> sinks, std::function<void()> onChange)
      : sinks_(std::move(sinks)), onChange_(std::move(onChange)) {}
  void upsertService(Service svc) override { each([&](StateSink& s) { s.upsertService(svc); }); }
  void removeService(const ObjectName& id) override { each([&](StateSink& s) { s.removeService(id); }); }
  void upsertSlice(EndpointSlice slice) override { each([&](StateSink& s) { s.upsertSlice(slice); }); }
  void removeSlice(const ObjectName& id) override { each([&](StateSink& s) { s.removeSlice(id); }); }
  void replaceServices(std::vector<Service> all) override { each([&](StateSink& s) { s.replaceServices(all); }); }
  void replaceSlices(std::vector<EndpointSlice> all) override { each([&](StateSink& s) { s.replaceSlices(all); }); }
  void synced(ResourceKind kind) override { each([&](StateSink& s) { s.synced(kind); }); }
  // Problems go to the first store only: status reads them from there, once.
  void problem(Problem p) override { sinks_.front()->problem(std::move(p)); }
  void problemCleared(const std::string& object) override { sinks_.front()->problemCleared(object); }

 private:
  template <class Fn>
  void each(Fn&& fn) {
    for (StateSink* s : sinks_) fn(*s);
    onChange_();
  }
  std::vector<StateSink*> sinks_;
  std::function<void()> onChange_;
};

// "a=1&b=%5Bfd00%3A%3A1%5D" → {a: 1, b: [fd00::1]} ('+' is a space, as forms send it).
std::map<std::string, std::string> parseQuery(const std::string& query) {
  auto decode = [](const std::string& in) {
    std::string out;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] == '+') {
        out += ' ';
      } else if (in[i] == '%' && i + 2 < in.size() + 0 && std::isxdigit(static_cast<unsigned char>(in[i + 1])) &&
                 std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
        out += static_cast<char>(std::stoi(in.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        out += in[i];
      }
    }
    return out;
  };
  std::map<std::string, std::string> params;
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    std::string pair = query.substr(start, end - start);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      params[decode(pair.substr(0, eq))] = eq == std::string::npos ? "" : decode(pair.substr(eq + 1));
    }
    start = end + 1;
  }
  return params;
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
  friend struct Plane;
  Status openPlanes();
  void openDriftMonitor();
  void onDrift(const DriftEvent& event);
  Status startPlane(Plane& plane);
  void stopPlane(Plane& plane);
  // Gives a running plane a new configuration: a new DataPlane whose first sync replaces the
  // table. Call with planesMu_ held.
  void restartPlane(Plane& plane, const ProxyConfig& cfg);
  Status startSource();
  // The Kubernetes source's Node watch: eligibility for /healthz, the zone for topology hints.
  void onNode(const NodeInfo& node);
  Status startLeases();
  void markQueued();
  std::unique_ptr<FanOutSink> fanOutTo(const std::string& source);
  void afterSync(Plane& plane, const SyncReport& report);
  void collect();
  HttpResponse explainHandler(const HttpRequest& request);
  Status startServers();
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
  // Watches every family's table: one listener, so pausing it around a full sync leaves
  // nobody of sluice's in the notification group (design §9). Null when it cannot subscribe.
  std::unique_ptr<DriftMonitor> drift_;
  // Guards Plane::runner for the drift callback, which must not take planesMu_: a plane
  // restart holds that while it waits for the runner, whose full-sync hook calls the monitor.
  std::mutex runnersMu_;
  std::unique_ptr<Source> sourceImpl_;
  KubernetesSource* kube_ = nullptr;  // sourceImpl_, when it is the Kubernetes source
  std::unique_ptr<FanOutSink> fanOut_;
  std::unique_ptr<Leases> leases_;  // --lease-backend; null when off
  std::unique_ptr<FanOutSink> leaseFanOut_;
  std::mutex healthChecksMu_;  // update() from either family's runner thread
  std::unique_ptr<HttpServer> healthzServer_;
  std::unique_ptr<HttpServer> adminServer_;
  std::unique_ptr<ServiceHealthServers> healthChecks_;

  mutable std::mutex statusMu_;  // planes' status and problems_, read by the HTTP threads
  // Plane configurations and (re)starts: reload and Node zone changes (the Node watch's thread)
  // swap a plane's DataPlane, runner and drift monitor. Taken before statusMu_, never after.
  mutable std::mutex planesMu_;
  bool planesStarted_ = false;
  std::string nodeZone_;  // the Node's zone label in force (planesMu_); survives reloads
  mutable std::mutex nodeMu_;
  std::optional<NodeStatus::NodeWatch> nodeWatch_;  // set when the source watches the Node
  bool conntrackStatsWarned_ = false;
};

Status Daemon::openPlanes() {
  for (IPFamily family : ipFamilies(options_)) {
    auto plane = std::make_unique<Plane>();
    plane->daemon = this;
    plane->cfg = toProxyConfig(options_, family);
    plane->table = plane->cfg.table();
    auto backend = nft::NetlinkBackend::open({options_.netns});
    if (!backend) return backend.status().withContext(fmt::format("opening nftables netlink for {}", familyName(family)));
    plane->backend = std::move(backend).value();
    plane->status.family = family;
    // Draining needs conntrack; without it (module missing, no privilege) the proxy still works,
    // only leaving endpoints' flows are not tracked.
    DrainOptions drain;
    drain.netns = options_.netns;
    drain.enabled = options_.drainTimeout.count() > 0;
    drain.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options_.drainTimeout);
    drain.pollInterval = std::min(drain.pollInterval, std::max(std::chrono::milliseconds(100), drain.timeout / 4));
    if (auto tracker = DrainTracker::create(drain); tracker) {
      plane->drain = std::move(tracker).value();
    } else {
      spdlog::warn("{}: connection draining off: {}", familyName(family), tracker.status().toString());
    }
    planes_.push_back(std::move(plane));
  }
  return Status::ok();
}

// One monitor for every family's table, started before the first sync. Every family's full
// sync pauses it (DriftMonitor::syncHooks), and every family's commits are its own.
void Daemon::openDriftMonitor() {
  DriftOptions opt;
  opt.netns = options_.netns;
  std::vector<uint32_t> ports;
  for (auto& plane : planes_) {
    opt.tables.push_back(plane->table);
    ports.push_back(plane->backend->portId());
  }
  opt.isOwnPort = [ports](uint32_t p) { return std::find(ports.begin(), ports.end(), p) != ports.end(); };
  auto drift = DriftMonitor::open(std::move(opt), [this](const DriftEvent& event) { onDrift(event); });
  if (!drift) {
    spdlog::warn("drift detection off: {}", drift.status().toString());
    return;
  }
  drift_ = std::move(drift).value();
  drift_->start();
}

// On the monitor's thread: repair the family whose table changed, or all when unknown.
void Daemon::onDrift(const DriftEvent& event) {
  std::lock_guard lock(runnersMu_);
  for (auto& plane : planes_) {
    if (event.table && *event.table != plane->table) continue;
    ++plane->driftRepairs;
    if (plane->runner) plane->runner->requestFullSync();
  }
}

// A fresh DataPlane (its first sync replaces the whole table: a restart adopts what is there)
// and its runner, whose full syncs pause the drift monitor.
Status Daemon::startPlane(Plane& plane) {
  plane.dataPlane = std::make_unique<DataPlane>(plane.cfg, *plane.backend);
  SyncOptions so;
  so.minSyncPeriod = std::chrono::duration_cast<std::chrono::milliseconds>(options_.minSyncPeriod);
  so.syncPeriod = std::chrono::duration_cast<std::chrono::milliseconds>(options_.syncPeriod);
  auto runner = std::make_unique<SyncRunner>(plane.store, *plane.dataPlane, so, &plane);
  runner->addListener(&plane);
  if (plane.drain) runner->addListener(plane.drain.get());
  SyncHooks hooks;
  if (drift_) hooks = drift_->syncHooks();
  // Widening after the first sync frees what it allocates, step by step; hand the pages back
  // once it is done, as after a full sync (Daemon::afterSync).
  hooks.afterSync = [after = std::move(hooks.afterSync)](const SyncReport& r) {
    if (after) after(r);
    if (r.widening && r.status && r.narrowChains == 0) trimHeap();
  };
  runner->setSyncHooks(std::move(hooks));
  {
    std::lock_guard lock(runnersMu_);
    plane.runner = std::move(runner);  // the old one is stopped already
  }
  plane.runner->start();
  if (plane.drain) plane.drain->start();
  return Status::ok();
}

void Daemon::stopPlane(Plane& plane) {
  // Order: no more commits, then no more conntrack work.
  if (plane.runner) plane.runner->stop();
  if (plane.drain) plane.drain->stop();
}

void Daemon::restartPlane(Plane& plane, const ProxyConfig& cfg) {
  stopPlane(plane);
  plane.cfg = cfg;
  if (planesStarted_) (void)startPlane(plane);
}

// Every delivery of a source: a sync is queued in each family (health and metrics).
void Daemon::markQueued() {
  const auto now = system_clock::now();
  for (auto& plane : planes_) {
    health_.queuedUpdate(plane->cfg.family);
    metrics_.queued(plane->cfg.family, now);
  }
}

// One source's deliveries go to its sink in every family's store.
std::unique_ptr<FanOutSink> Daemon::fanOutTo(const std::string& source) {
  std::vector<StateSink*> sinks;
  for (auto& plane : planes_) sinks.push_back(&plane->store.sink(source));
  return std::make_unique<FanOutSink>(std::move(sinks), [this] { markQueued(); });
}

Status Daemon::startSource() {
  auto src = makeSource(options_, &kube_, [this](const NodeInfo& node) { onNode(node); });
  if (!src) return src.status();
  sourceImpl_ = std::move(src).value();
  if (kube_) {
    std::lock_guard lock(nodeMu_);
    nodeWatch_.emplace();  // before start(): onNode runs only after it
  }
  source_ = sourceImpl_->name();
  fanOut_ = fanOutTo(source_);
  // A file source loads synchronously here: a broken manifest stops the start.
  if (Status st = sourceImpl_->start(*fanOut_); !st) return st;
  return startLeases();
}

// Called on the Node watch's thread, never on a path that programs Services: a Node that is
// missing or unreadable only means this is not called (eligible stays true, the zone stays).
void Daemon::onNode(const NodeInfo& node) {
  const bool eligible = node.eligible();
  if (eligible != health_.state().nodeEligible) {
    if (eligible) {
      spdlog::info("Node {} is eligible again: /healthz answers 200", node.name);
    } else {
      spdlog::warn("Node {} is {}: /healthz answers 503 (load balancers stop sending new traffic here)",
                   node.name, node.deletionPending ? "being deleted" : "tainted ToBeDeletedByClusterAutoscaler");
    }
  }
  health_.setNodeEligible(eligible);
  std::string zone;
  {
    std::lock_guard lock(planesMu_);
    // A Node that is gone keeps the zone it had: nothing to re-plan for.
    if (node.present && node.zone != nodeZone_) {
      spdlog::info("Node {}: zone \"{}\" (was \"{}\"); re-planning every family in full for topology hints",
                   node.name, node.zone, nodeZone_);
      nodeZone_ = node.zone;
      for (auto& plane : planes_) {
        ProxyConfig cfg = plane->cfg;
        cfg.zone = nodeZone_;
        restartPlane(*plane, cfg);
      }
    }
    zone = nodeZone_;
  }
  std::lock_guard lock(nodeMu_);
  nodeWatch_ = NodeStatus::NodeWatch{node.present, node.deletionPending, node.toBeDeleted, zone};
}

// Leased endpoints feed the same stores as a source of their own ("leases:<store>"), so they
// are programmed and drained like any endpoints; the Service itself comes from --source.
Status Daemon::startLeases() {
  auto leases = makeLeases(options_);
  if (!leases) return leases.status();
  leases_ = std::move(leases).value();
  if (!leases_) return Status::ok();
  const std::string name = leases_->source->name();
  leaseFanOut_ = fanOutTo(name);
  if (leases_->api) {
    if (Status st = leases_->api->start(); !st) return st.withContext("--lease-bind-address");
    spdlog::info("leases: serving the lease API (/v1/leases) on {}", leases_->api->boundAddress());
  }
  spdlog::info("leases: {} publishes the endpoints of {}", name, options_.leaseService.toString());
  return leases_->source->start(*leaseFanOut_);
}

void Plane::afterCommit(const CommitInfo& info) {
  // Under the store's lock on the runner's thread: copy, compute gauges, no I/O.
  auto h = serviceHealthFromSnapshot(info.snapshot, cfg);
  size_t endpoints = 0;
  for (const auto& [id, svc] : info.snapshot.services())
    for (const auto& [sid, slice] : info.snapshot.slicesFor(id))
      if (slice.addressType == cfg.family) endpoints += slice.endpoints.size();
  daemon->metrics_.recordSnapshot(info.snapshot, cfg);
  std::vector<Problem> problems;
  for (auto& [id, list] : dataPlane->problems()) problems.insert(problems.end(), list.begin(), list.end());
  std::lock_guard lock(daemon->statusMu_);
  health = std::move(h);
  planProblems = std::move(problems);
  status.services = info.snapshot.services().size();
  status.endpoints = endpoints;
}

void Plane::onSync(const SyncReport& report) { daemon->afterSync(*this, report); }

void Plane::onProgrammingLatency(std::chrono::nanoseconds latency) {
  daemon->metrics_.networkProgrammingDuration.with({familyName(cfg.family)})
      .observe(std::chrono::duration<double>(latency).count());
}

void Daemon::afterSync(Plane& plane, const SyncReport& report) {
  const IPFamily family = plane.cfg.family;
  const auto now = system_clock::now();
  DataPlane::SyncResult result;
  result.status = report.status;
  result.full = report.full;
  result.operations = report.operations;
  result.servicesPlanned = report.servicesPlanned;
  result.applyTime = report.duration;
  metrics_.recordSync(family, result, now);
  if (report.status) health_.updated(family);
  std::map<ObjectName, ServiceHealth> healthChecks;
  {
    std::lock_guard lock(statusMu_);
    FamilySyncStatus& s = plane.status;
    ++s.syncs;
    s.lastAttempt = now;
    s.lastOk = report.status.isOk();
    s.lastFull = report.full;
    s.lastDurationSeconds = std::chrono::duration<double>(report.duration).count();
    s.lastOperations = report.operations;
    if (report.status) {
      s.lastSuccess = now;
      s.lastError.clear();
    } else {
      ++s.failures;
      s.lastError = report.status.toString();
    }
    // Health-check ports follow the desired state of both families, as kube-proxy's.
    for (const auto& p : planes_)
      for (const auto& [id, h] : p->health) {
        auto [it, fresh] = healthChecks.emplace(id, h);
        if (!fresh) it->second.localEndpoints += h.localEndpoints;  // a dual-stack Service
      }
  }
  if (report.status) {
    spdlog::debug("sync {}: {} in {:.3f} ms, {} operations, {} Services planned", familyName(family),
                  report.full ? "full" : "partial", std::chrono::duration<double, std::milli>(report.duration).count(),
                  report.operations, report.servicesPlanned);
    // Loading the whole source and planning a full sync free far more than they keep (at
    // 10 000 Services the heap peaks near 150 MiB and settles near 85 MiB), but glibc keeps
    // freed pages mapped. Hand them back, so RSS follows what is live (bench/daemon_bench.py).
    if (report.full) trimHeap();
  } else {
    spdlog::error("sync {} failed (the next sync replaces the whole table): {}", familyName(family),
                  report.status.toString());
    return;
  }
  std::vector<Problem> portProblems;
  {
    std::lock_guard lock(healthChecksMu_);
    portProblems = healthChecks_->update(healthChecks);
  }
  std::lock_guard lock(statusMu_);
  for (Problem& p : portProblems) plane.planProblems.push_back(std::move(p));
}

// /explain?src=..&dst=..&port=..&proto=..[&from=node][&format=text]: the running state's answer.
HttpResponse Daemon::explainHandler(const HttpRequest& request) {
  auto q = parseQuery(request.query);
  std::string dst = q["dst"];
  if (dst.find(':') != std::string::npos && dst.front() != '[') dst = "[" + dst + "]";
  auto req = parseExplainRequest(q["src"], dst + ":" + q["port"] + "/" + (q["proto"].empty() ? "tcp" : q["proto"]));
  if (!req) return HttpResponse::text(400, req.status().message() + "\nusage: /explain?src=IP&dst=IP&port=N&proto=tcp|udp|sctp\n");
  req->fromNode = q["from"] == "node";
  for (auto& plane : planes_) {
    if (plane->cfg.family != req->dst.family()) continue;
    ProxyConfig cfg;
    {
      std::lock_guard lock(planesMu_);
      cfg = plane->cfg;
    }
    Snapshot snapshot = plane->store.withSnapshot([](Snapshot& s) { return s; });
    auto ex = explain(snapshot, cfg, *req);
    if (!ex) return HttpResponse::text(422, ex.status().toString() + "\n");
    return q["format"] == "text" ? HttpResponse::text(200, ex->toString()) : HttpResponse::json(200, ex->toJson() + "\n");
  }
  return HttpResponse::text(422, fmt::format("{} is not proxied on this node\n", familyName(req->dst.family())));
}

// At scrape time: what the drain trackers, drift monitors and the source count.
void Daemon::collect() {
  collectConntrackStats();
  uint64_t completedFlows = 0, completedDeadline = 0, completedReturned = 0;
  std::unique_lock planes(planesMu_);  // restartPlane stops and starts the drain trackers
  for (auto& plane : planes_) {
    const std::string fam = familyName(plane->cfg.family);
    if (plane->drain) {
      size_t flows = 0;
      auto draining = plane->drain->draining();
      for (const DrainingEndpoint& d : draining) flows += d.liveFlows;
      metrics_.drainingEndpoints.with({fam}).set(static_cast<double>(draining.size()));
      metrics_.drainingFlows.with({fam}).set(static_cast<double>(flows));
      DrainStats st = plane->drain->stats();
      metrics_.udpConntrackDeleted.with({fam}).set(static_cast<double>(st.udpEntriesDeleted));
      completedFlows += st.drained;
      completedDeadline += st.expired;
      completedReturned += st.returned;
    }
    if (drift_) metrics_.driftRepairs.with({fam}).set(static_cast<double>(plane->driftRepairs.load()));
  }
  planes.unlock();
  metrics_.drainsCompleted.with({"flows_gone"}).set(static_cast<double>(completedFlows));
  metrics_.drainsCompleted.with({"deadline"}).set(static_cast<double>(completedDeadline));
  metrics_.drainsCompleted.with({"returned"}).set(static_cast<double>(completedReturned));
  if (kube_) {
    KubernetesSourceStats ks = kube_->stats();
    // Summed over both reflectors: the resource label says so.
    metrics_.watchRelists.with({"kubernetes", "all"}).set(static_cast<double>(ks.relists));
  }
  std::lock_guard lock(statusMu_);
  size_t problems = 0;
  for (auto& plane : planes_) problems += plane->planProblems.size();
  if (!planes_.empty())
    for (const auto& [obj, list] : planes_.front()->store.problems()) problems += list.size();
  metrics_.problems.get().set(static_cast<double>(problems));
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
    adminServer_->route("GET", "/explain", [this](const HttpRequest& r) { return explainHandler(r); }, admin);
    adminServer_->route("GET", "/", html, admin);
    adminServer_->route("GET", "/status.html", html, admin);
    if (Status st = adminServer_->start(); !st) return st.withContext("--metrics-bind-address");
    spdlog::info("admin: serving /metrics, /status, /explain, / on {}{}", adminServer_->boundAddress(),
                 adminToken_.empty() ? "" : " (bearer token required)");
  }
  return Status::ok();
}

void Daemon::stopServers() {
  if (healthChecks_) healthChecks_->stop();
  if (adminServer_) adminServer_->stop();
  if (healthzServer_) healthzServer_->stop();
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
  needsRestart("--lease-* flags", n.leaseBackend != options_.leaseBackend || n.leaseService != options_.leaseService ||
                                      n.leaseBindAddress != options_.leaseBindAddress ||
                                      n.leaseTokenFile != options_.leaseTokenFile || n.leaseInterval != options_.leaseInterval ||
                                      n.leaseEtcdEndpoints != options_.leaseEtcdEndpoints || n.leasePrefix != options_.leasePrefix);
  needsRestart("--netns", n.netns != options_.netns);
  needsRestart("--source/--kubeconfig/--master", resolveSource(n) != resolveSource(options_) ||
                                                     n.kubeconfig != options_.kubeconfig || n.master != options_.master);
  needsRestart("the IP families (--service-cluster-ip-range, --cluster-cidr)", ipFamilies(n) != ipFamilies(options_));
  needsRestart("--admin-token-file", n.adminTokenFile != options_.adminTokenFile);
  needsRestart("--sync-period (the /healthz timeout)", n.syncPeriod != options_.syncPeriod);
  needsRestart("--min-sync-period, --drain-timeout", n.minSyncPeriod != options_.minSyncPeriod ||
                                                      n.drainTimeout != options_.drainTimeout);
  if (kube_) needsRestart("the Node watched (--hostname-override)", nodeName(n) != nodeName(options_));
  // What shapes the rules is applied now: a new DataPlane (and runner) whose first sync
  // replaces the table.
  std::unique_lock planes(planesMu_);
  for (auto& plane : planes_) {
    ProxyConfig cfg = toProxyConfig(n, plane->cfg.family);
    cfg.zone = nodeZone_;  // from the Node object, not from the configuration
    if (cfg.nodeName == plane->cfg.nodeName && cfg.clusterCIDRs == plane->cfg.clusterCIDRs &&
        cfg.masqueradeAll == plane->cfg.masqueradeAll && cfg.masqueradeBit == plane->cfg.masqueradeBit)
      continue;
    spdlog::info("reload: {} rules change; replacing the table", familyName(plane->cfg.family));
    restartPlane(*plane, cfg);
  }
  const std::string keepNetns = options_.netns;
  const auto keepSync = options_.syncPeriod;
  const auto keepMinSync = options_.minSyncPeriod;
  const auto keepDrain = options_.drainTimeout;
  const std::string keepSource = options_.source, keepKubeconfig = options_.kubeconfig, keepMaster = options_.master;
  options_ = std::move(n);
  options_.netns = keepNetns;      // the sockets already live there
  options_.syncPeriod = keepSync;  // health_ was built with it
  options_.minSyncPeriod = keepMinSync;
  options_.drainTimeout = keepDrain;
  options_.source = keepSource;  // the running source stays
  options_.kubeconfig = keepKubeconfig;
  options_.master = keepMaster;
  spdlog::info("reload: configuration applied");
  for (auto& plane : planes_) plane->runner->requestFullSync();
  planes.unlock();
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
  for (const auto& plane : planes_) {
    if (plane->drain)
      for (DrainingEndpoint& d : plane->drain->draining()) s.draining.push_back(std::move(d));
  }
  if (!planes_.empty()) {
    // Problems the source reported (kept in the first family's store, see FanOutSink).
    for (const auto& [obj, list] : planes_.front()->store.problems())
      s.problems.insert(s.problems.end(), list.begin(), list.end());
    NodeStatus::SourceStatus src{source_, planes_.front()->store.ready(), ""};
    if (kube_) {
      KubernetesSourceStats k = kube_->stats();
      src.detail = fmt::format("lists {}, relists {}, watches {}, events {}, lease expiries {}, failovers {}, errors {}",
                               k.lists, k.relists, k.watches, k.events, k.leaseExpiries, k.failovers, k.errors);
    }
    s.sources.push_back(std::move(src));
  }
  {
    std::lock_guard lock(nodeMu_);
    s.nodeWatch = nodeWatch_;
  }
  std::lock_guard planes(planesMu_);  // before statusMu_ (see planesMu_)
  std::lock_guard lock(statusMu_);
  for (const auto& plane : planes_) {
    FamilySyncStatus f = plane->status;
    f.driftRepairs = plane->driftRepairs.load();
    s.families.push_back(f);
    s.problems.insert(s.problems.end(), plane->planProblems.begin(), plane->planProblems.end());
  }
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
    auto token = readToken(options_.adminTokenFile, "--admin-token-file");
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
  registry_.onCollect([this] { collect(); });

  // One source feeds every family's store; each family's runner commits on its own thread.
  if (Status st = startSource(); !st) {
    spdlog::error("source: {}", st.toString());
    stopServers();
    return kExitFailure;
  }
  openDriftMonitor();
  {
    std::lock_guard lock(planesMu_);
    for (auto& plane : planes_) (void)startPlane(*plane);
    planesStarted_ = true;
  }
  notify(fmt::format("READY=1\nSTATUS=serving, source {}", source_));

  for (;;) {
    const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.syncPeriod);
    timespec wait{static_cast<time_t>(period.count() / 1000000000), static_cast<long>(period.count() % 1000000000)};
    // The runners sync on their own; this thread only takes signals.
    int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig < 0) continue;  // EAGAIN (timeout) or EINTR
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: reloading configuration");
      reload();
      continue;
    }
    spdlog::info("{}: stopping; the rules stay in place", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    break;
  }
  notify("STOPPING=1");
  // The rules stay: the next start adopts them with a full (atomic) replacement.
  leases_.reset();  // the lease source, then its API
  sourceImpl_->stop();
  if (drift_) drift_->stop();  // no more repair requests, then no more commits
  for (auto& plane : planes_) stopPlane(*plane);
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
