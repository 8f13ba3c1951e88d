// sluice/lease_kube.h — leases as coordination.k8s.io/v1 Lease objects, and publishing the
// resulting endpoints to the API server the way kube-apiserver's lease reconciler does.
//
// KubeLeaseStore: one Lease per identity in one namespace, named "<group>-<identity>" and
// labelled sluice.io/lease-group=<group>; the endpoint spec rides in annotations (see
// docs/design.md §10). acquire = create (409 AlreadyExists → get + take over with PUT);
// renew = PUT with the resourceVersion last seen (409 Conflict → get, and retry once if the
// lease is still ours); release = DELETE with uid + resourceVersion preconditions; list = LIST
// by label selector. Observers judge liveness by the object changing (its resourceVersion is the
// record's generation), on their own clock; the Lease's renewTime is written for humans only.
//
// KubeEndpointsPublisher: a StateSink that writes what the reconciler publishes as the
// Service's EndpointSlice(s) and, optionally, its legacy core/v1 Endpoints.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/kube_config.h"
#include "sluice/lease.h"
#include "sluice/source.h"

namespace sluice {

struct KubeLeaseStoreConfig {
  kube::ClientConfig client;
  std::string ns = "default";  // the namespace the Lease objects live in
  // Names the group of leases (one Service's): the label value and the object name prefix.
  // A DNS label: lowercase letters, digits and '-'.
  std::string group;
  std::chrono::milliseconds requestTimeout{5000};
  std::chrono::milliseconds connectTimeout{5000};
};

// Labels and annotations of the Lease objects.
inline constexpr const char* kLeaseGroupLabel = "sluice.io/lease-group";
inline constexpr const char* kLeaseAddressAnnotation = "sluice.io/address";
inline constexpr const char* kLeasePortsAnnotation = "sluice.io/ports";  // "http/TCP/8080,dns/UDP/53"
inline constexpr const char* kLeaseNodeAnnotation = "sluice.io/node-name";
inline constexpr const char* kLeaseZoneAnnotation = "sluice.io/zone";
inline constexpr const char* kLeaseTtlAnnotation = "sluice.io/ttl-ms";  // exact TTL; the spec has seconds

class KubeLeaseStore final : public LeaseStore {
 public:
  // Checks the config (kInvalidArgument); does not contact the API server.
  static Result<std::unique_ptr<KubeLeaseStore>> create(KubeLeaseStoreConfig config);
  ~KubeLeaseStore() override;

  std::string name() const override;  // "kubernetes:<ns>/<group>"
  // kInvalidArgument also when "<group>-<identity>" is not a valid object name (identities
  // must then be lowercase).
  Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime renewTime) override;
  // kNotFound when the Lease is gone or was taken over (its uid or leaseTransitions changed);
  // kAborted when the PUT conflicted twice in a row (someone else keeps writing it).
  Status renew(LeaseHandle& handle, Clock::WallTime renewTime) override;
  Status release(const LeaseHandle& handle) override;
  // One LIST per call. Kubernetes keeps expired Lease objects, so the listing holds every Lease
  // of the group; the reconciler drops those it has not seen change within their TTL, and
  // collects (deletes) them once they stayed dead for its collectAfter.
  Result<LeaseListing> list() override;
  // Called after this instance's own writes; other processes' writes are seen at the next list.
  void setOnChange(std::function<void()> onChange) override;
  // DELETE with uid + resourceVersion preconditions, after a GET shows the object still is what
  // `seen` describes (a renewal or takeover since leaves it alone).
  Status collect(const LeaseRecord& seen) override;

  struct Stats {
    uint64_t conflicts = 0;  // 409s answered to renew/acquire/release
    uint64_t takeovers = 0;  // acquires that replaced an existing Lease object
    uint64_t collected = 0;  // dead Lease objects deleted by collect()
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit KubeLeaseStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct KubeEndpointsPublisherConfig {
  kube::ClientConfig client;
  ObjectName service;  // whose endpoints are written
  // Also write core/v1 Endpoints "<service>" (label endpointslice.kubernetes.io/skip-mirror).
  bool legacyEndpoints = true;
  // endpointslice.kubernetes.io/managed-by of the slices (stray slices with it are deleted).
  std::string managedBy = "lease-reconciler.sluice.io";
  // Pause before writing again after a failed write.
  std::chrono::milliseconds retryInterval{1000};
  std::chrono::milliseconds requestTimeout{5000};
  std::chrono::milliseconds connectTimeout{5000};
  // Everything the publisher receives is also forwarded here (e.g. the proxy's own store), so
  // one reconciler feeds both; nullptr = none.
  StateSink* next = nullptr;
};

// A StateSink for a LeaseSource: each replaceSlices() becomes the desired state, written from a
// thread of its own (create/update with resourceVersion; 409 → get and retry), retried until
// it is written, so an unreachable API server delays the write but never loses it. Nothing is
// written before the first replaceSlices(): a publisher that has not heard from its reconciler
// never overwrites what is there. It writes exactly the set it is given — the reconciler's
// guard (no empty set while its own lease should exist) is what keeps an empty set out.
//
// Names: one slice → "<service>" (kube-apiserver's layout); several (families or port sets) →
// the reconciler's names. Slices of the Service with our managed-by label that are no longer
// wanted are deleted.
class KubeEndpointsPublisher final : public StateSink {
 public:
  static Result<std::unique_ptr<KubeEndpointsPublisher>> create(KubeEndpointsPublisherConfig config);
  ~KubeEndpointsPublisher() override;  // stops the writer (a pending write is abandoned)

  void upsertService(Service svc) override;
  void removeService(const ObjectName& id) override;
  void upsertSlice(EndpointSlice slice) override;
  void removeSlice(const ObjectName& sliceId) override;
  void replaceServices(std::vector<Service> all) override;
  void replaceSlices(std::vector<EndpointSlice> all) override;
  void synced(ResourceKind kind) override;
  void problem(Problem problem) override;
  void problemCleared(const std::string& object) override;

  // Writes the desired state now, on the caller's thread (the writer thread calls this too).
  // OK when the API server holds it (or nothing is desired yet).
  Status publishNow();

  struct Stats {
    uint64_t writes = 0;     // objects created, updated or deleted
    uint64_t conflicts = 0;  // 409s met (and retried)
    uint64_t failures = 0;   // publish attempts that failed
    uint64_t published = 0;  // desired states completely written
    bool pending = false;    // a desired state not written yet
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit KubeEndpointsPublisher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
