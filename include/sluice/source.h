// sluice/source.h — where desired state comes from.
//
// A Source (the Kubernetes watch, the manifest file, the lease reconciler, or a node agent's own
// discovery) delivers Service and EndpointSlice values into a StateSink. Sources run on their own
// thread(s); a sink must accept calls from any thread. The reconciler's sink applies them to a
// Snapshot and wakes the sync runner, which is what turns a change into a kernel commit.
//
// Contract for implementers:
//  - After a (re)list, call replaceServices()/replaceSlices() with the complete set of that
//    kind: whatever the sink held from this source and is absent from the new set is removed.
//  - Call synced(kind) once the first complete state of `kind` has been delivered; the
//    reconciler programs nothing from a source until both kinds are synced (as kube-proxy
//    waits for its informers), so a restart never briefly programs a partial world.
//  - An object the source cannot use is reported through problem() (naming the object and the
//    field) and skipped; it never stops the source or the other objects.
#pragma once

#include <string>
#include <vector>

#include "sluice/model.h"
#include "sluice/status.h"

namespace sluice {

enum class ResourceKind : uint8_t { kService, kEndpointSlice };
const char* resourceKindName(ResourceKind kind);  // "Service" / "EndpointSlice"

class StateSink {
 public:
  virtual ~StateSink() = default;
  virtual void upsertService(Service svc) = 0;
  virtual void removeService(const ObjectName& id) = 0;
  virtual void upsertSlice(EndpointSlice slice) = 0;
  virtual void removeSlice(const ObjectName& sliceId) = 0;
  virtual void replaceServices(std::vector<Service> all) = 0;
  virtual void replaceSlices(std::vector<EndpointSlice> all) = 0;
  virtual void synced(ResourceKind kind) = 0;
  // An object that was skipped. `problem.object` names it ("Service default/web").
  virtual void problem(Problem problem) = 0;
  // The object named `object` (same spelling as Problem::object) is good again.
  virtual void problemCleared(const std::string& object) { (void)object; }
};

class Source {
 public:
  virtual ~Source() = default;
  // "file:/etc/sluice/services.yaml", "kubernetes:https://10.0.0.1:6443", "leases:etcd"...
  virtual std::string name() const = 0;
  // Starts delivering into `sink` (which must outlive the source) and returns at once; errors
  // that make the source unusable from the start (unreadable config) are returned here, later
  // ones are retried by the source itself.
  virtual Status start(StateSink& sink) = 0;
  // Stops delivering; returns when no more sink calls will be made. Idempotent.
  virtual void stop() = 0;
};

}  // namespace sluice
