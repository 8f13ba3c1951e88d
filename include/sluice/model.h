// sluice/model.h — the desired state sluice programs: Services, EndpointSlices, and the
// Snapshot that tracks which Services changed since the last sync.
//
// These are plain values, independent of where they came from (file, Kubernetes watch,
// lease reconciler, or a node agent's own discovery). Field meanings follow the Kubernetes
// API; ../docs/design.md says how each one reaches the data plane.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "sluice/ip.h"

namespace sluice {

enum class Protocol : uint8_t { kTCP = 6, kUDP = 17, kSCTP = 132 };
const char* protocolName(Protocol p);            // "TCP"
const char* protocolNftName(Protocol p);         // "tcp"
Result<Protocol> parseProtocol(std::string_view s);  // "TCP" / "UDP" / "SCTP"

// namespace/name of a Kubernetes object.
struct ObjectName {
  std::string ns;
  std::string name;
  std::string toString() const { return ns + "/" + name; }
  auto operator<=>(const ObjectName&) const = default;
  bool operator==(const ObjectName&) const = default;
};

// A piece of input sluice could not use, and why. Reported, never fatal for other objects.
struct Problem {
  std::string object;  // "Service default/web", "EndpointSlice default/web-abc"
  std::string field;   // "spec.ports[1].port"
  std::string reason;
  std::string toString() const;
  bool operator==(const Problem&) const = default;
};

enum class ServiceType : uint8_t { kClusterIP, kNodePort, kLoadBalancer, kExternalName };
enum class TrafficPolicy : uint8_t { kCluster, kLocal };
enum class SessionAffinity : uint8_t { kNone, kClientIP };

struct ServicePort {
  std::string name;  // may be empty for a single-port Service
  Protocol protocol = Protocol::kTCP;
  uint16_t port = 0;
  uint16_t nodePort = 0;  // 0 = none
  bool operator==(const ServicePort&) const = default;
};

struct LoadBalancerIngress {
  IPAddress ip;
  bool proxyMode = false;  // ipMode: Proxy → the node must not intercept this IP
  bool operator==(const LoadBalancerIngress&) const = default;
};

struct Service {
  ObjectName id;
  ServiceType type = ServiceType::kClusterIP;
  std::vector<IPAddress> clusterIPs;  // empty or "None" = headless: not proxied
  std::vector<ServicePort> ports;
  std::vector<IPAddress> externalIPs;
  std::vector<LoadBalancerIngress> loadBalancerIngress;
  std::vector<IPPrefix> loadBalancerSourceRanges;
  TrafficPolicy externalTrafficPolicy = TrafficPolicy::kCluster;
  TrafficPolicy internalTrafficPolicy = TrafficPolicy::kCluster;
  SessionAffinity sessionAffinity = SessionAffinity::kNone;
  uint32_t affinityTimeoutSeconds = 10800;
  uint16_t healthCheckNodePort = 0;
  std::string trafficDistribution;  // "", "PreferClose", "PreferSameZone", "PreferSameNode"
  std::map<std::string, std::string> labels;
  bool operator==(const Service&) const = default;
};

struct EndpointPort {
  std::string name;
  Protocol protocol = Protocol::kTCP;
  uint16_t port = 0;
  bool operator==(const EndpointPort&) const = default;
};

// Topology hints of an endpoint (`hints.forZones[].name`, `hints.forNodes[].name`). Most
// endpoints carry none, so the lists live out of line and an endpoint without hints pays one
// pointer (two empty vectors took 48 bytes: 4.8 MB at 100 000 endpoints). A plain value:
// copies are deep, equality compares the lists.
class EndpointHints {
 public:
  EndpointHints() = default;
  EndpointHints(std::vector<std::string> zones, std::vector<std::string> nodes);
  EndpointHints(const EndpointHints& other);
  EndpointHints& operator=(const EndpointHints& other);
  EndpointHints(EndpointHints&&) noexcept = default;
  EndpointHints& operator=(EndpointHints&&) noexcept = default;

  const std::vector<std::string>& zones() const;
  const std::vector<std::string>& nodes() const;
  bool empty() const { return !lists_; }
  bool operator==(const EndpointHints& other) const;

 private:
  struct Lists {
    std::vector<std::string> zones;
    std::vector<std::string> nodes;
  };
  std::unique_ptr<Lists> lists_;  // nullptr: no hint of either kind
};

// 104 bytes: the small fields share one 8-byte word, hints are out of line (a store holds
// 100 000 endpoints at 10 000 Services).
struct Endpoint {
  std::vector<IPAddress> addresses;  // only the first is used, as Kubernetes does
  bool ready = true;                 // conditions.ready, nil ⇒ true
  bool serving = true;               // conditions.serving, nil ⇒ true
  bool terminating = false;          // conditions.terminating, nil ⇒ false
  uint32_t weight = 1;  // sluice extension for library users; Kubernetes endpoints weigh 1
  std::string nodeName;
  std::string zone;
  EndpointHints hints;
  bool operator==(const Endpoint&) const = default;
};

struct EndpointSlice {
  ObjectName id;             // the slice's own namespace/name
  std::string serviceName;   // label kubernetes.io/service-name (same namespace)
  IPFamily addressType = IPFamily::kV4;  // FQDN slices are dropped by the decoders
  std::vector<EndpointPort> ports;
  std::vector<Endpoint> endpoints;
  bool operator==(const EndpointSlice&) const = default;
};

// The desired state and the set of Services whose inputs changed since the last takeDirty().
// Sources call upsert/remove; the data plane calls takeDirty() once per sync, which is what
// makes a partial sync O(changed Services).
class Snapshot {
 public:
  void upsertService(Service svc);
  void removeService(const ObjectName& id);
  void upsertSlice(EndpointSlice slice);
  void removeSlice(const ObjectName& sliceId);
  void clear();  // everything dirty, nothing left

  const std::map<ObjectName, Service>& services() const { return services_; }
  const Service* service(const ObjectName& id) const;
  // Slices of a Service, keyed by slice name; empty map if none.
  const std::map<ObjectName, EndpointSlice>& slicesFor(const ObjectName& service) const;
  // The Service a slice is filed under; nullptr if there is no such slice.
  const ObjectName* sliceService(const ObjectName& sliceId) const;
  // Every slice, by the Service it is filed under, then by slice name.
  const std::map<ObjectName, std::map<ObjectName, EndpointSlice>>& slices() const { return slices_; }

  std::set<ObjectName> takeDirty();
  const std::set<ObjectName>& dirty() const { return dirty_; }
  size_t sliceCount() const;

 private:
  std::map<ObjectName, Service> services_;
  std::map<ObjectName, std::map<ObjectName, EndpointSlice>> slices_;  // by service
  // slice → the key of its Service's entry in slices_ (a pointer, not a copy: one per slice)
  std::map<ObjectName, const ObjectName*> sliceOwner_;
  std::set<ObjectName> dirty_;

  void unfile(const ObjectName& sliceId, const ObjectName& service);
};

}  // namespace sluice
