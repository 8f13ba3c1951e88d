// sluice/proxy_metrics.h — the metric set of a sluice node proxy.
//
// kube-proxy's names, types, labels and buckets where the meaning is the same (so existing
// dashboards and alerts keep working; pkg/proxy/metrics of Kubernetes 1.33+ carries the
// ip_family label, "IPv4"/"IPv6"), plus sluice_* metrics for what kube-proxy does not have:
// draining, drift repair, watch relists, lease expiries, per-CPU conntrack trouble counters.
// The parts that produce the events (sync runner, drain tracker, sources, lease reconciler)
// update the families directly; recordSync() covers what follows from one DataPlane::sync.
#pragma once

#include <chrono>

#include "sluice/dataplane.h"
#include "sluice/ip.h"
#include "sluice/metrics.h"

namespace sluice {

// Label ip_family takes familyName(): "IPv4" / "IPv6", kube-proxy's values.
struct ProxyMetrics {
  explicit ProxyMetrics(metrics::Registry& registry);

  // --- kube-proxy compatible (kubeproxy_*) ---
  metrics::Family<metrics::Histogram>& syncDuration;         // {ip_family}
  metrics::Family<metrics::Histogram>& syncFullDuration;     // {ip_family}
  metrics::Family<metrics::Histogram>& syncPartialDuration;  // {ip_family}
  metrics::Family<metrics::Histogram>& networkProgrammingDuration;  // {ip_family}
  metrics::Family<metrics::Gauge>& syncLastTimestamp;        // {ip_family}, seconds since epoch
  metrics::Family<metrics::Gauge>& syncLastQueuedTimestamp;  // {ip_family}
  metrics::Family<metrics::Gauge>& noLocalEndpoints;         // {ip_family, traffic_policy}
  metrics::Family<metrics::Gauge>& endpointChangesPending;
  metrics::Family<metrics::Counter>& endpointChangesTotal;
  metrics::Family<metrics::Gauge>& serviceChangesPending;
  metrics::Family<metrics::Counter>& serviceChangesTotal;
  metrics::Family<metrics::Counter>& nftablesSyncFailures;     // {ip_family}
  metrics::Family<metrics::Counter>& nftablesCleanupFailures;  // {ip_family}
  metrics::Family<metrics::Counter>& healthzTotal;  // {code}
  metrics::Family<metrics::Counter>& livezTotal;    // {code}

  // --- sluice's own (sluice_*) ---
  metrics::Family<metrics::Gauge>& drainingEndpoints;      // {ip_family}
  metrics::Family<metrics::Gauge>& drainingFlows;          // {ip_family}
  metrics::Family<metrics::Counter>& drainsCompleted;      // {reason: flows_gone|deadline|returned}
  metrics::Family<metrics::Counter>& driftRepairs;         // {ip_family}
  metrics::Family<metrics::Counter>& udpConntrackDeleted;  // {ip_family}
  metrics::Family<metrics::Counter>& watchRelists;         // {source, resource}
  metrics::Family<metrics::Counter>& leaseExpiries;        // {}
  metrics::Family<metrics::Gauge>& services;               // {ip_family}: Services programmed
  metrics::Family<metrics::Gauge>& problems;               // objects (or parts) skipped
  metrics::Family<metrics::Gauge>& syncOperations;         // {ip_family}: operations in last sync
  metrics::Family<metrics::Gauge>& healthCheckServers;     // health-check node ports served
  metrics::Family<metrics::Counter>& conntrackInsertFailed;   // {cpu}
  metrics::Family<metrics::Counter>& conntrackDrop;           // {cpu}
  metrics::Family<metrics::Counter>& conntrackEarlyDrop;      // {cpu}
  metrics::Family<metrics::Counter>& conntrackClashResolved;  // {cpu}
  metrics::Family<metrics::Gauge>& buildInfo;                 // {version} 1

  // sluice's version, as compiled into the library.
  static const char* version();

  // A sync was queued (a change arrived): sets the last-queued timestamp.
  void queued(IPFamily family, std::chrono::system_clock::time_point now);
  // One DataPlane::sync(): durations (total and full/partial), failures, last timestamp
  // (on success only, as kube-proxy), operations.
  void recordSync(IPFamily family, const DataPlane::SyncResult& result,
                  std::chrono::system_clock::time_point now);
  // Gauges that follow from the desired state: Services proxied for `cfg.family`, and (as
  // kube-proxy counts them) Service ports with a Local traffic policy, endpoints somewhere
  // but none on this node, by traffic_policy "internal" / "external".
  void recordSnapshot(const Snapshot& snapshot, const ProxyConfig& cfg);
};

}  // namespace sluice
