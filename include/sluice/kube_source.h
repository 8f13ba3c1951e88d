// sluice/kube_source.h — the Kubernetes API as a Source: Services and EndpointSlices (or legacy
// core/v1 Endpoints) by list + watch, with the server-side filter kube-proxy uses.
//
// Two reflectors (one per kind), each with its own HTTP/1.1 connection, share the server list
// and credentials. A watch silent for longer than the liveness lease is presumed dead and
// replaced (relist, next server). Objects the decoder rejects are reported to the sink as
// problems and skipped; the watch goes on.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/kube_config.h"
#include "sluice/source.h"

namespace sluice {

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
};

// Counters for metrics, summed over both reflectors.
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
