// sluice/kube_source.h — the Kubernetes API as a Source: Services and EndpointSlices (or legacy
// core/v1 Endpoints) by list + watch, with the server-side filter kube-proxy uses.
//
// Two reflectors (one per kind), each with its own HTTP/1.1 connection, share the server list
// and credentials; with `watchNode` a third one watches this node's Node object. A watch silent for longer than the liveness lease is presumed dead and
// replaced (relist, next server). Objects the decoder rejects are reported to the sink as
// problems and skipped; the watch goes on.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "sluice/kube_config.h"
#include "sluice/source.h"

namespace sluice {

// What a node proxy reads from its own Node object (kube-proxy's NodeManager and
// NodeEligibleHandler): whether it may take load-balancer traffic, and its topology zone.
struct NodeInfo {
  std::string name;
  // False when the Node does not exist (never created, or deleted); the other fields are empty.
  bool present = false;
  bool deletionPending = false;  // metadata.deletionTimestamp is set
  bool toBeDeleted = false;      // spec.taints holds the key ToBeDeletedByClusterAutoscaler
  std::string zone;              // label topology.kubernetes.io/zone ("" when unlabelled)
  std::map<std::string, std::string> labels;
  // kube-proxy's rule for /healthz: a Node that is going away is not eligible. A Node that is
  // not there is (sluice keeps serving while it cannot see its Node).
  bool eligible() const { return !deletionPending && !toBeDeleted; }
  bool operator==(const NodeInfo&) const = default;
};

struct KubernetesSourceOptions {
  kube::ClientConfig client;
  // `endpoints-api endpoints`: read core/v1 Endpoints instead of EndpointSlices (clusters or
  // test setups without discovery.k8s.io), converted to slices by the decoder.
  bool legacyEndpoints = false;
  // kube-proxy's filter on both kinds: skip headless slices and other proxies' Services.
  std::string labelSelector = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
  // Liveness lease: a watch with no event and no bookmark for this long is dropped.
  std::chrono::milliseconds watchLease{75000};
  std::chrono::milliseconds minWatchTimeout{300000};  // timeoutSeconds ∈ [min, 2·min)
  std::chrono::milliseconds requestTimeout{30000};
  std::chrono::milliseconds connectTimeout{10000};
  std::chrono::milliseconds backoffInitial{800};
  std::chrono::milliseconds backoffMax{30000};
  size_t pageSize = 500;
  // This node's name: a third reflector watches /api/v1/nodes with
  // fieldSelector=metadata.name=<watchNode> and calls onNode (on its own thread) after every
  // LIST (present=false when the Node is not there) and every event. Empty: no Node watch.
  // A Node the decoder rejects is a problem ("Node <name>") and does not reach onNode. The
  // Node watch never holds up Services and EndpointSlices: it does not count for synced().
  std::string watchNode;
  std::function<void(const NodeInfo&)> onNode;
};

// Counters for metrics, summed over the reflectors (the Node watch's included).
struct KubernetesSourceStats {
  uint64_t lists = 0;
  uint64_t relists = 0;
  uint64_t watches = 0;
  uint64_t events = 0;
  uint64_t bookmarks = 0;
  uint64_t expired = 0;
  uint64_t leaseExpiries = 0;
  uint64_t failovers = 0;
  uint64_t errors = 0;
  uint64_t invalidObjects = 0;
};

class KubernetesSource : public Source {
 public:
  explicit KubernetesSource(KubernetesSourceOptions options);
  ~KubernetesSource() override;
  std::string name() const override;  // "kubernetes:https://10.0.0.1:6443"
  // InvalidArgument for a config without servers or with an unparsable URL.
  Status start(StateSink& sink) override;
  void stop() override;
  KubernetesSourceStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
