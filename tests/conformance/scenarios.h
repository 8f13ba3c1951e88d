// scenarios.h — the behaviour scenarios of service-semantics §8 as data, so every layer that
// can move a packet runs the same table: the real-kernel conformance test
// (tests/integration/conformance_test.cpp) and a packet tracer over the FakeBackend.
//
// A Scenario describes a proxy configuration, one Service with its endpoints, and checks: a
// client (pod, node, external client, an endpoint itself) sends new connections to a
// destination (ClusterIP, external IP, LB IP, NodePort…) and expects an outcome — answered by
// exactly these backends, rejected at once, dropped (timeout), or not served by the proxy at
// all — and, when answered, which source address the backend saw (the client's own, or the
// node's after masquerade).
//
// Everything is family-neutral: makeService()/makeSlice()/makeConfig() build the same inputs for
// IPv4 and IPv6 (§8.11: every scenario also holds for IPv6). Addresses are the ones of lib/testbed's
// Topology (the kernel test asserts they agree), so a tracer needs no testbed:
//
//   pod client P 198.18.1.100 / fd00:1::100      backend i  198.18.1.(10+i) / fd00:1::(10+i)
//   node N: primary IP 198.18.0.1 / fd00::1, pod gateway (masquerade source) 198.18.1.1 /
//           fd00:1::1, external side 203.0.113.1 / fd00:2::1
//   external client E 203.0.113.2 / fd00:2::2, second address (outside the LB source ranges)
//           198.51.100.2 / fd00:3::2
// (The node's own connections are not used for drop checks: a packet the node's output hook drops
// fails the send with EPERM at once, which the kernel cannot report as a timeout.)
//
//   ClusterIP 198.19.0.1, unallocated 198.19.0.9 in service CIDR 198.19.0.0/24; external IP
//           198.19.1.1, LB IP 198.19.1.2 (fd00:100::1, ::9, ::101, ::102; CIDR fd00:100::/120)
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "sluice/model.h"
#include "sluice/planner.h"

namespace sluice::conformance {

enum class Client : uint8_t {
  kPod,                    // P: a pod on this node, inside the cluster CIDR
  kNode,                   // N: the node itself
  kExternal,               // E: outside the cluster, inside the LB source ranges
  kExternalOutsideRanges,  // E from its second address, outside the LB source ranges
  kEndpoint1,              // backend 1 (a local endpoint) itself: hairpin
};

enum class Dest : uint8_t {
  kClusterIP,
  kUnallocatedServiceIP,  // an address of the service CIDR that no Service holds
  kExternalIP,
  kLoadBalancerIP,
  kNodePort,           // primary node IP : nodePort
  kNodePortSecondary,  // the node's external-side IP : nodePort
};

enum class Outcome : uint8_t {
  kAnswered,   // by exactly Check::backends, each at least once
  kRejected,   // at once (ICMP unreachable / RST), not a timeout
  kDropped,    // silence until the timeout
  kNotServed,  // the proxy does not handle it: no backend answers (the node's own stack may RST)
};

enum class SeenSource : uint8_t {
  kAny,
  kClient,  // the backend saw the client's own address
  kNode,    // masqueraded: the backend saw the node's pod-network address
};

struct EndpointSpec {
  int backend = 1;    // testbed backend index (1-based)
  bool local = true;  // nodeName is this node, else another node
  bool ready = true;
  bool serving = true;
  bool terminating = false;
};

struct PortSpec {
  std::string name;
  Protocol protocol = Protocol::kTCP;
  uint16_t port = 80;
  uint16_t target = 80;
  uint16_t nodePort = 0;
};

inline constexpr uint16_t kNodePortNumber = 30080;

struct ServiceSpec {
  ServiceType type = ServiceType::kClusterIP;
  std::vector<PortSpec> ports = {{"http", Protocol::kTCP, 80, 80, 0}};
  bool externalIP = false;
  bool loadBalancerIP = false;
  bool sourceRanges = false;  // loadBalancerSourceRanges = E's subnet only
  TrafficPolicy externalPolicy = TrafficPolicy::kCluster;
  TrafficPolicy internalPolicy = TrafficPolicy::kCluster;
  uint32_t affinitySeconds = 0;  // > 0: ClientIP session affinity with this timeout
  bool slices = true;            // false: the Service has no EndpointSlice at all
  std::vector<EndpointSpec> endpoints;
};

struct ConfigSpec {
  bool clusterCIDR = true;       // --cluster-cidr = the pod network
  bool masqueradeAll = false;    // --masquerade-all
  bool nodePortSecondary = false;  // --nodeport-addresses = the external-side subnet only
};

struct Check {
  Client from = Client::kPod;
  Dest to = Dest::kClusterIP;
  Protocol protocol = Protocol::kTCP;
  uint16_t port = 80;  // the Service port (a NodePort destination uses that port's nodePort)
  Outcome outcome = Outcome::kAnswered;
  std::set<int> backends;  // for kAnswered
  SeenSource source = SeenSource::kAny;
  // Session affinity: every connection within the timeout lands on one backend of `backends`;
  // once the timeout passed without traffic, the choice is made anew.
  bool sticky = false;
};

struct Scenario {
  std::string name;  // "§8.5 eTP Local: …"
  ConfigSpec config;
  ServiceSpec service;
  std::vector<Check> checks;
};

// --- addresses (the same as lib/testbed's Topology) ----------------------------------------

inline IPAddress addr(IPFamily f, const char* v4, const char* v6) {
  return IPAddress::parse(f == IPFamily::kV4 ? v4 : v6).value();
}
inline IPAddress clusterIP(IPFamily f) { return addr(f, "198.19.0.1", "fd00:100::1"); }
inline IPAddress unallocatedIP(IPFamily f) { return addr(f, "198.19.0.9", "fd00:100::9"); }
inline IPPrefix serviceCIDR(IPFamily f) {
  return f == IPFamily::kV4 ? IPPrefix(clusterIP(f), 24) : IPPrefix(clusterIP(f), 120);
}
inline IPAddress externalIP(IPFamily f) { return addr(f, "198.19.1.1", "fd00:100::101"); }
inline IPAddress loadBalancerIP(IPFamily f) { return addr(f, "198.19.1.2", "fd00:100::102"); }
inline IPAddress nodeIP(IPFamily f) { return addr(f, "198.18.0.1", "fd00::1"); }
inline IPAddress nodePodGatewayIP(IPFamily f) { return addr(f, "198.18.1.1", "fd00:1::1"); }
inline IPAddress nodeExternalIP(IPFamily f) { return addr(f, "203.0.113.1", "fd00:2::1"); }
inline IPPrefix podCIDR(IPFamily f) {
  return f == IPFamily::kV4 ? IPPrefix(nodePodGatewayIP(f), 24) : IPPrefix(nodePodGatewayIP(f), 64);
}
inline IPAddress podClientIP(IPFamily f) { return addr(f, "198.18.1.100", "fd00:1::100"); }
inline IPAddress backendIP(int i, IPFamily f) {
  return IPAddress::parse(f == IPFamily::kV4 ? fmt::format("198.18.1.{}", 10 + i) : fmt::format("fd00:1::{:x}", 10 + i))
      .value();
}
inline IPAddress externalClientIP(IPFamily f) { return addr(f, "203.0.113.2", "fd00:2::2"); }
inline IPAddress externalClientAltIP(IPFamily f) { return addr(f, "198.51.100.2", "fd00:3::2"); }
inline IPPrefix externalClientRange(IPFamily f) {
  return f == IPFamily::kV4 ? IPPrefix(externalClientIP(f), 24) : IPPrefix(externalClientIP(f), 64);
}

// The address a client sends from (what SeenSource::kClient means).
inline IPAddress clientAddress(Client c, IPFamily f) {
  switch (c) {
    case Client::kPod: return podClientIP(f);
    case Client::kNode: return nodeIP(f);
    case Client::kExternal: return externalClientIP(f);
    case Client::kExternalOutsideRanges: return externalClientAltIP(f);
    case Client::kEndpoint1: return backendIP(1, f);
  }
  return {};
}

inline IPAddress destAddress(Dest d, IPFamily f) {
  switch (d) {
    case Dest::kClusterIP: return clusterIP(f);
    case Dest::kUnallocatedServiceIP: return unallocatedIP(f);
    case Dest::kExternalIP: return externalIP(f);
    case Dest::kLoadBalancerIP: return loadBalancerIP(f);
    case Dest::kNodePort: return nodeIP(f);
    case Dest::kNodePortSecondary: return nodeExternalIP(f);
  }
  return {};
}

// The port a check's packets are sent to.
inline uint16_t destPort(const Scenario& s, const Check& c) {
  if (c.to != Dest::kNodePort && c.to != Dest::kNodePortSecondary) return c.port;
  for (const auto& p : s.service.ports)
    if (p.port == c.port && p.protocol == c.protocol) return p.nodePort;
  return 0;
}

inline const char* clientName(Client c) {
  switch (c) {
    case Client::kPod: return "P";
    case Client::kNode: return "N";
    case Client::kExternal: return "E";
    case Client::kExternalOutsideRanges: return "E(outside ranges)";
    case Client::kEndpoint1: return "endpoint b1";
  }
  return "?";
}

inline const char* destName(Dest d) {
  switch (d) {
    case Dest::kClusterIP: return "ClusterIP";
    case Dest::kUnallocatedServiceIP: return "unallocated service IP";
    case Dest::kExternalIP: return "ExternalIP";
    case Dest::kLoadBalancerIP: return "LB IP";
    case Dest::kNodePort: return "NodePort";
    case Dest::kNodePortSecondary: return "NodePort on the secondary node IP";
  }
  return "?";
}

// --- inputs -------------------------------------------------------------------------------

inline constexpr const char* kNodeName = "node";
inline constexpr const char* kOtherNode = "other-node";
inline const ObjectName kServiceId{"conformance", "svc"};

inline Service makeService(const Scenario& s, IPFamily f) {
  const ServiceSpec& spec = s.service;
  Service svc;
  svc.id = kServiceId;
  svc.type = spec.type;
  svc.clusterIPs = {clusterIP(f)};
  for (const auto& p : spec.ports) svc.ports.push_back({p.name, p.protocol, p.port, p.nodePort});
  if (spec.externalIP) svc.externalIPs = {externalIP(f)};
  if (spec.loadBalancerIP) svc.loadBalancerIngress = {{loadBalancerIP(f), false}};
  if (spec.sourceRanges) svc.loadBalancerSourceRanges = {externalClientRange(f)};
  svc.externalTrafficPolicy = spec.externalPolicy;
  svc.internalTrafficPolicy = spec.internalPolicy;
  if (spec.affinitySeconds) {
    svc.sessionAffinity = SessionAffinity::kClientIP;
    svc.affinityTimeoutSeconds = spec.affinitySeconds;
  }
  return svc;
}

// The Service's one EndpointSlice, or nothing when spec.slices is false.
inline std::vector<EndpointSlice> makeSlices(const Scenario& s, IPFamily f) {
  if (!s.service.slices) return {};
  EndpointSlice sl;
  sl.id = {kServiceId.ns, kServiceId.name + "-1"};
  sl.serviceName = kServiceId.name;
  sl.addressType = f;
  for (const auto& p : s.service.ports) sl.ports.push_back({p.name, p.protocol, p.target});
  for (const auto& e : s.service.endpoints) {
    Endpoint ep;
    ep.addresses = {backendIP(e.backend, f)};
    ep.nodeName = e.local ? kNodeName : kOtherNode;
    ep.ready = e.ready;
    ep.serving = e.serving;
    ep.terminating = e.terminating;
    sl.endpoints.push_back(ep);
  }
  return {sl};
}

inline ProxyConfig makeConfig(const Scenario& s, IPFamily f) {
  ProxyConfig cfg;
  cfg.nodeName = kNodeName;
  cfg.family = f;
  if (s.config.clusterCIDR) cfg.clusterCIDRs = {podCIDR(f)};
  cfg.masqueradeAll = s.config.masqueradeAll;
  cfg.nodeIPs = {nodeIP(f), nodeExternalIP(f)};
  if (s.config.nodePortSecondary)
    cfg.nodePortAddresses = {f == IPFamily::kV4 ? IPPrefix(nodeExternalIP(f), 24) : IPPrefix(nodeExternalIP(f), 64)};
  cfg.serviceCIDRs = {serviceCIDR(f)};
  return cfg;
}

// The Snapshot a scenario programs: its one Service and that Service's slices.
inline Snapshot makeSnapshot(const Scenario& s, IPFamily f) {
  Snapshot snap;
  snap.upsertService(makeService(s, f));
  for (auto& sl : makeSlices(s, f)) snap.upsertSlice(std::move(sl));
  return snap;
}

// The target port behind a check's Service port (what an answering backend listens on).
inline uint16_t targetPort(const Scenario& s, const Check& c) {
  for (const auto& p : s.service.ports)
    if (p.port == c.port && p.protocol == c.protocol) return p.target;
  return 0;
}

// Every address of the node N (the kernel layer's node namespace): a destination among them is
// delivered locally.
inline std::vector<IPAddress> nodeAddresses(IPFamily f) {
  return {nodeIP(f), nodePodGatewayIP(f), nodeExternalIP(f), addr(f, "198.51.100.1", "fd00:3::1")};
}

// --- the table ----------------------------------------------------------------------------

inline std::vector<Scenario> scenarios() {
  using enum Client;
  using enum Dest;
  using enum Outcome;
  const TrafficPolicy kCluster = TrafficPolicy::kCluster, kLocal = TrafficPolicy::kLocal;
  const PortSpec http{"http", Protocol::kTCP, 80, 80, kNodePortNumber};
  const EndpointSpec local1{1, true}, remote2{2, false};
  // A LoadBalancer Service with an external IP, an LB IP and a NodePort.
  auto lbService = [&](TrafficPolicy etp, std::vector<EndpointSpec> eps) {
    ServiceSpec s;
    s.type = ServiceType::kLoadBalancer;
    s.ports = {http};
    s.externalIP = true;
    s.loadBalancerIP = true;
    s.externalPolicy = etp;
    s.endpoints = std::move(eps);
    return s;
  };
  auto answered = [](Client from, Dest to, std::set<int> b, SeenSource src = SeenSource::kAny) {
    return Check{from, to, Protocol::kTCP, 80, kAnswered, std::move(b), src};
  };
  auto outcome = [](Client from, Dest to, Outcome o, Protocol p = Protocol::kTCP, uint16_t port = 80) {
    return Check{from, to, p, port, o, {}, SeenSource::kAny};
  };
  const auto kClientSrc = SeenSource::kClient, kNodeSrc = SeenSource::kNode;
  std::vector<Scenario> out;

  // §8.1
  {
    ServiceSpec s = lbService(kCluster, {});
    s.slices = false;
    out.push_back({"§8.1 no endpoints: every destination rejects", {}, s,
                   {outcome(kPod, kClusterIP, kRejected), outcome(kExternal, kExternalIP, kRejected),
                    outcome(kPod, kNodePort, kRejected), outcome(kExternal, kNodePort, kRejected),
                    outcome(kPod, kLoadBalancerIP, kRejected), outcome(kExternal, kLoadBalancerIP, kRejected),
                    outcome(kNode, kClusterIP, kRejected), outcome(kPod, kClusterIP, kRejected, Protocol::kUDP)}});
  }
  // §8.2
  {
    ServiceSpec s;
    s.ports = {{"http", Protocol::kTCP, 80, 80, 0},
               {"https", Protocol::kTCP, 443, 8443, 0},
               {"dns-udp", Protocol::kUDP, 53, 53, 0},
               {"dns-tcp", Protocol::kTCP, 53, 5353, 0},
               {"dns-sctp", Protocol::kSCTP, 53, 53, 0}};
    s.endpoints = {local1, remote2};
    auto to = [&](Protocol p, uint16_t port) {
      return Check{kPod, kClusterIP, p, port, kAnswered, {1, 2}, kClientSrc};
    };
    out.push_back({"§8.2 ClusterIP basics: every port reaches both endpoints at its target port", {}, s,
                   {to(Protocol::kTCP, 80), to(Protocol::kTCP, 443), to(Protocol::kUDP, 53), to(Protocol::kTCP, 53),
                    to(Protocol::kSCTP, 53), outcome(kPod, kClusterIP, kRejected, Protocol::kUDP, 443),
                    outcome(kPod, kClusterIP, kRejected, Protocol::kTCP, 8080),
                    outcome(kPod, kUnallocatedServiceIP, kDropped)}});
    ServiceSpec h;
    h.endpoints = {local1};
    out.push_back({"§8.2 hairpin: an endpoint reaching itself through its Service is masqueraded", {}, h,
                   {answered(kEndpoint1, kClusterIP, {1}, kNodeSrc), answered(kPod, kClusterIP, {1}, kClientSrc)}});
  }
  // §8.3
  {
    ServiceSpec s = lbService(kCluster, {local1, remote2});
    s.externalIP = false;
    s.sourceRanges = true;
    out.push_back({"§8.3 LB source ranges: outside clients dropped at the LB IP, NodePort unfiltered", {}, s,
                   {answered(kExternal, kLoadBalancerIP, {1, 2}, kNodeSrc),
                    outcome(kExternalOutsideRanges, kLoadBalancerIP, kDropped),
                    answered(kExternalOutsideRanges, kNodePort, {1, 2}, kNodeSrc),
                    answered(kNode, kLoadBalancerIP, {1, 2}, kNodeSrc)}});
  }
  // §8.4
  {
    ServiceSpec s;
    s.type = ServiceType::kNodePort;
    s.ports = {http};
    s.endpoints = {local1, remote2};
    out.push_back({"§8.4 NodePort on the primary node IP (default --nodeport-addresses)", {}, s,
                   {answered(kExternal, kNodePort, {1, 2}, kNodeSrc), answered(kPod, kNodePort, {1, 2}, kNodeSrc),
                    outcome(kExternal, kNodePortSecondary, kNotServed)}});
    ConfigSpec secondary;
    secondary.nodePortSecondary = true;
    out.push_back({"§8.4 NodePort only on the addresses of --nodeport-addresses", secondary, s,
                   {answered(kExternal, kNodePortSecondary, {1, 2}, kNodeSrc),
                    outcome(kExternal, kNodePort, kNotServed)}});
  }
  // §8.5
  {
    ServiceSpec s = lbService(kLocal, {local1, remote2});
    std::vector<Check> checks;
    for (Dest d : {kClusterIP, kExternalIP, kLoadBalancerIP, kNodePort}) checks.push_back(answered(kPod, d, {1, 2}, kClientSrc));
    for (Dest d : {kExternalIP, kLoadBalancerIP, kNodePort}) checks.push_back(answered(kExternal, d, {1}, kClientSrc));
    checks.push_back(answered(kNode, kLoadBalancerIP, {1, 2}, kNodeSrc));
    checks.push_back(answered(kNode, kNodePort, {1, 2}, kNodeSrc));
    out.push_back({"§8.5 eTP Local: pods and the node reach both, external clients only the local one", {}, s, checks});
    ServiceSpec none = lbService(kLocal, {remote2});
    out.push_back({"§8.5 eTP Local without a local endpoint: external clients dropped, pods short-circuit", {}, none,
                   {outcome(kExternal, kLoadBalancerIP, kDropped), outcome(kExternal, kNodePort, kDropped),
                    answered(kPod, kLoadBalancerIP, {2}, kClientSrc), answered(kNode, kNodePort, {2}, kNodeSrc)}});
  }
  // §8.6
  {
    ServiceSpec s = lbService(kCluster, {local1, remote2});
    std::vector<Check> checks = {answered(kPod, kClusterIP, {1, 2}, kClientSrc)};
    for (Dest d : {kExternalIP, kLoadBalancerIP, kNodePort}) {
      checks.push_back(answered(kPod, d, {1, 2}, kNodeSrc));
      checks.push_back(answered(kExternal, d, {1, 2}, kNodeSrc));
    }
    out.push_back({"§8.6 eTP Cluster: both endpoints; external destinations masqueraded", {}, s, checks});
  }
  // §8.7
  {
    ServiceSpec s;
    s.internalPolicy = kLocal;
    s.endpoints = {local1, remote2};
    out.push_back({"§8.7 iTP Local: only local endpoints", {}, s, {answered(kPod, kClusterIP, {1}, kClientSrc)}});
    s.endpoints = {remote2};
    out.push_back({"§8.7 iTP Local without a local endpoint: dropped", {}, s, {outcome(kPod, kClusterIP, kDropped)}});
    s.endpoints = {};
    s.slices = false;
    out.push_back({"§8.7 iTP Local, Service without slices: rejected", {}, s, {outcome(kPod, kClusterIP, kRejected)}});
  }
  // §8.8 — the fallback table of §2.
  {
    const EndpointSpec readyLocal{1, true}, servingTermLocal{1, true, false, true, true};
    const EndpointSpec servingTermRemote{2, false, false, true, true}, notServingLocal{3, true, false, false, true};
    const EndpointSpec readyRemote{2, false};
    for (TrafficPolicy etp : {kCluster, kLocal}) {
      const std::string p = etp == kLocal ? "eTP Local" : "eTP Cluster";
      out.push_back({"§8.8 " + p + ": ready endpoints win over serving+terminating ones", {},
                     lbService(etp, {readyLocal, servingTermRemote, notServingLocal}),
                     {answered(kPod, kClusterIP, {1}), answered(kExternal, kNodePort, {1})}});
      out.push_back({"§8.8 " + p + ": no ready endpoint: serving+terminating ones, never not-serving", {},
                     lbService(etp, {servingTermRemote, notServingLocal}),
                     {answered(kPod, kClusterIP, {2}),
                      etp == kLocal ? outcome(kExternal, kNodePort, kDropped) : answered(kExternal, kNodePort, {2})}});
      out.push_back({"§8.8 " + p + ": only not-serving endpoints: rejected", {}, lbService(etp, {notServingLocal}),
                     {outcome(kPod, kClusterIP, kRejected), outcome(kExternal, kNodePort, kRejected)}});
    }
    out.push_back({"§8.8 eTP Local: the local set falls back to local serving+terminating endpoints on its own", {},
                   lbService(kLocal, {servingTermLocal, readyRemote}),
                   {answered(kPod, kClusterIP, {2}), answered(kExternal, kNodePort, {1}),
                    answered(kExternal, kLoadBalancerIP, {1})}});
  }
  // §8.9 — the masquerade matrix of §4.
  for (int policy = 0; policy < 3; ++policy) {
    for (bool cidr : {true, false}) {
      for (bool all : {false, true}) {
        ServiceSpec s = lbService(policy == 1 ? kLocal : kCluster, {local1, remote2});
        s.externalIP = false;
        if (policy == 2) s.internalPolicy = kLocal;
        const char* pname = policy == 0 ? "eTP Cluster" : policy == 1 ? "eTP Local" : "iTP Local";
        ConfigSpec cfg;
        cfg.clusterCIDR = cidr;
        cfg.masqueradeAll = all;
        std::vector<Check> checks;
        for (Client c : {kPod, kNode, kExternal}) {
          // ClusterIP: masqueraded with --masquerade-all, or from outside the cluster CIDR.
          const bool masqCluster = all || (cidr && c != kPod);
          checks.push_back(answered(c, kClusterIP, policy == 2 ? std::set<int>{1} : std::set<int>{1, 2},
                                    masqCluster ? kNodeSrc : kClientSrc));
          for (Dest d : {kNodePort, kLoadBalancerIP}) {
            if (policy != 1) {  // eTP Cluster (iTP does not apply to external destinations)
              checks.push_back(answered(c, d, {1, 2}, kNodeSrc));
            } else if (c == kExternal) {  // eTP Local from outside: local only, client kept
              checks.push_back(answered(c, d, {1}, kClientSrc));
            } else if (c == kNode) {  // the node short-circuits, masqueraded
              checks.push_back(answered(c, d, {1, 2}, kNodeSrc));
            } else {  // pods short-circuit only when the cluster CIDR tells them apart
              checks.push_back(answered(c, d, cidr ? std::set<int>{1, 2} : std::set<int>{1}, kClientSrc));
            }
          }
        }
        out.push_back({fmt::format("§8.9 masquerade: {}, {}cluster CIDR, {}masquerade-all", pname, cidr ? "" : "no ",
                                   all ? "" : "no "),
                       cfg, s, checks});
      }
    }
  }
  // §8.10
  {
    ServiceSpec s;
    s.endpoints = {local1, remote2, {3, false}};
    s.affinitySeconds = 1;
    Check c = answered(kPod, kClusterIP, {1, 2, 3}, kClientSrc);
    c.sticky = true;
    Check n = answered(kNode, kClusterIP, {1, 2, 3}, kNodeSrc);
    n.sticky = true;
    out.push_back({"§8.10 ClientIP session affinity sticks until its timeout", {}, s, {c, n}});
  }
  return out;
}

}  // namespace sluice::conformance
