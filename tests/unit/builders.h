// Small constructors for Services and EndpointSlices in tests.
#pragma once

#include <string>
#include <vector>

#include "sluice/model.h"
#include "sluice/planner.h"

namespace sluice::testing {

inline IPAddress ip(const char* s) { return IPAddress::parse(s).value(); }

// The planner configuration most tests share: node "node-a", the family's pod CIDR
// (198.18.0.0/16 or fd00:1::/64) as cluster CIDR.
inline ProxyConfig config(IPFamily family = IPFamily::kV4) {
  ProxyConfig cfg;
  cfg.nodeName = "node-a";
  cfg.family = family;
  cfg.clusterCIDRs = {IPPrefix::parse(family == IPFamily::kV4 ? "198.18.0.0/16" : "fd00:1::/64").value()};
  return cfg;
}

inline Service clusterIPService(const std::string& ns, const std::string& name, const char* clusterIP,
                                std::vector<ServicePort> ports) {
  Service s;
  s.id = {ns, name};
  s.clusterIPs = {ip(clusterIP)};
  s.ports = std::move(ports);
  return s;
}

inline Endpoint endpoint(const char* addr, bool ready = true, bool serving = true, bool terminating = false,
                         const std::string& node = "") {
  Endpoint e;
  e.addresses = {ip(addr)};
  e.ready = ready;
  e.serving = serving;
  e.terminating = terminating;
  e.nodeName = node;
  return e;
}

inline EndpointSlice slice(const std::string& ns, const std::string& name, const std::string& service,
                           std::vector<EndpointPort> ports, std::vector<Endpoint> endpoints) {
  EndpointSlice s;
  s.id = {ns, name};
  s.serviceName = service;
  s.addressType = endpoints.empty() || endpoints[0].addresses[0].isV4() ? IPFamily::kV4 : IPFamily::kV6;
  s.ports = std::move(ports);
  s.endpoints = std::move(endpoints);
  return s;
}

}  // namespace sluice::testing
