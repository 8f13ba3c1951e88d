#include "sluice/proxy_metrics.h"

namespace sluice {

namespace {
using metrics::exponentialBuckets;
using metrics::linearBuckets;

// kube-proxy's sync buckets: 1 ms doubling 15 times (up to 16 s).
std::vector<double> syncBuckets() { return exponentialBuckets(0.001, 2, 15); }

// kube-proxy's network programming buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5, 2..5 min
// by 30 s.
std::vector<double> programmingBuckets() {
  std::vector<double> b = linearBuckets(0.25, 0.25, 2);
  for (auto part : {linearBuckets(1, 1, 59), linearBuckets(60, 5, 12), linearBuckets(120, 30, 7)})
    b.insert(b.end(), part.begin(), part.end());
  return b;
}

double seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}
}  // namespace

const char* ProxyMetrics::version() {
#ifdef SLUICE_VERSION
  return SLUICE_VERSION;
#else
  return "unknown";
#endif
}

ProxyMetrics::ProxyMetrics(metrics::Registry& r)
    : syncDuration(r.histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                               "SyncProxyRules latency in seconds", syncBuckets(), {"ip_family"})),
      syncFullDuration(r.histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                   "SyncProxyRules latency in seconds for full resyncs", syncBuckets(),
                                   {"ip_family"})),
      syncPartialDuration(r.histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                      "SyncProxyRules latency in seconds for partial resyncs", syncBuckets(),
                                      {"ip_family"})),
      networkProgrammingDuration(r.histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds",
                                             programmingBuckets(), {"ip_family"})),
      syncLastTimestamp(r.gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                "The last time proxy rules were successfully synced", {"ip_family"})),
      syncLastQueuedTimestamp(r.gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                      "The last time a sync of proxy rules was queued", {"ip_family"})),
      noLocalEndpoints(r.gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                               "Number of services with a Local traffic policy and no endpoints",
                               {"ip_family", "traffic_policy"})),
      endpointChangesPending(r.gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                     "Pending proxy rules Endpoint changes")),
      endpointChangesTotal(r.counter("kubeproxy_sync_proxy_rules_endpoint_changes_total",
                                     "Cumulative proxy rules Endpoint changes")),
      serviceChangesPending(r.gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                    "Pending proxy rules Service changes")),
      serviceChangesTotal(r.counter("kubeproxy_sync_proxy_rules_service_changes_total",
                                    "Cumulative proxy rules Service changes")),
      nftablesSyncFailures(r.counter("kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                                     "Cumulative proxy nftables sync failures", {"ip_family"})),
      nftablesCleanupFailures(r.counter("kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                                        "Cumulative proxy nftables cleanup failures", {"ip_family"})),
      healthzTotal(r.counter("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", {"code"})),
      livezTotal(r.counter("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", {"code"})),
      drainingEndpoints(r.gauge("sluice_draining_endpoints",
                                "Endpoints that take no new connections and wait for their flows to end",
                                {"ip_family"})),
      drainingFlows(r.gauge("sluice_draining_flows", "Conntrack flows still open to draining endpoints",
                            {"ip_family"})),
      drainsCompleted(r.counter("sluice_drains_completed_total",
                                "Endpoint drains that ended, by why they ended", {"reason"})),
      driftRepairs(r.counter("sluice_drift_repairs_total",
                             "Times the kernel table differed from what sluice committed and was rewritten",
                             {"ip_family"})),
      udpConntrackDeleted(r.counter("sluice_udp_conntrack_deleted_total",
                                    "Stale UDP conntrack entries deleted", {"ip_family"})),
      watchRelists(r.counter("sluice_watch_relists_total",
                             "Complete re-lists of a watched resource (start, expired watch, reconnect)",
                             {"source", "resource"})),
      leaseExpiries(r.counter("sluice_lease_expiries_total",
                              "Endpoint leases that expired and withdrew their endpoint")),
      services(r.gauge("sluice_services", "Services programmed into the data plane", {"ip_family"})),
      problems(r.gauge("sluice_problems", "Input objects (or parts of them) skipped because they are invalid")),
      syncOperations(r.gauge("sluice_sync_operations", "nftables operations in the last sync", {"ip_family"})),
      healthCheckServers(r.gauge("sluice_healthcheck_node_port_servers",
                                 "Health-check node port servers being served")),
      conntrackInsertFailed(r.counter("sluice_conntrack_insert_failed_total",
                                      "Conntrack entries that could not be inserted (per CPU, from the kernel)",
                                      {"cpu"})),
      conntrackDrop(r.counter("sluice_conntrack_drop_total",
                              "Packets dropped because conntrack could not track them (per CPU)", {"cpu"})),
      conntrackEarlyDrop(r.counter("sluice_conntrack_early_drop_total",
                                   "Conntrack entries evicted early because the table was full (per CPU)",
                                   {"cpu"})),
      conntrackClashResolved(r.counter("sluice_conntrack_clash_resolved_total",
                                       "Conntrack insertion clashes the kernel resolved (per CPU)", {"cpu"})),
      buildInfo(r.gauge("sluice_build_info", "sluice's version; the value is always 1", {"version"})) {
  buildInfo.with({version()}).set(1);
}

void ProxyMetrics::queued(IPFamily family, std::chrono::system_clock::time_point now) {
  syncLastQueuedTimestamp.with({familyName(family)}).set(seconds(now));
}

void ProxyMetrics::recordSync(IPFamily family, const DataPlane::SyncResult& result,
                              std::chrono::system_clock::time_point now) {
  const std::string fam = familyName(family);
  const double took = std::chrono::duration<double>(result.planTime + result.applyTime).count();
  syncDuration.with({fam}).observe(took);
  (result.full ? syncFullDuration : syncPartialDuration).with({fam}).observe(took);
  syncOperations.with({fam}).set(static_cast<double>(result.operations));
  if (!result.status) {
    nftablesSyncFailures.with({fam}).inc();
    return;
  }
  syncLastTimestamp.with({fam}).set(seconds(now));
}

void ProxyMetrics::recordSnapshot(const Snapshot& snapshot, const ProxyConfig& cfg) {
  const std::string fam = familyName(cfg.family);
  size_t proxied = 0, internal = 0, external = 0;
  for (const auto& [id, svc] : snapshot.services()) {
    if (!skipReason(svc, cfg).empty()) continue;
    ++proxied;
    const bool exposed = svc.type == ServiceType::kNodePort || svc.type == ServiceType::kLoadBalancer ||
                         !svc.externalIPs.empty() || !svc.loadBalancerIngress.empty();
    for (const ServicePort& port : svc.ports) {
      EndpointSets sets = categorizeEndpoints(resolveEndpoints(svc, port, snapshot.slicesFor(id), cfg, nullptr));
      if (!sets.hasEndpoints || !sets.local.empty()) continue;
      if (svc.internalTrafficPolicy == TrafficPolicy::kLocal) ++internal;
      if (exposed && svc.externalTrafficPolicy == TrafficPolicy::kLocal) ++external;
    }
  }
  services.with({fam}).set(static_cast<double>(proxied));
  noLocalEndpoints.with({fam, "internal"}).set(static_cast<double>(internal));
  noLocalEndpoints.with({fam, "external"}).set(static_cast<double>(external));
}

}  // namespace sluice
