// The benchmark workload: N ClusterIP Services × E endpoints, TCP port 80 → 8080, addresses
// only from 198.18.0.0/15 (up to 16 384 Services and 114 688 endpoint slots). Run as node-0.
// compare.py builds the same workload for iptables-restore and nft -f.
#pragma once

#include <string>

#include "sluice/model.h"

namespace sluice::bench {

// 198.18.0.0/15 holds 131 072 addresses: Services take the first 16 384, endpoints the rest,
// each Service owning E+1 endpoint slots (the spare one is used to add an endpoint).
inline IPAddress offsetIP(uint32_t n) {
  const uint32_t a = (198u << 24 | 18u << 16) + n;
  return IPAddress::v4(uint8_t(a >> 24), uint8_t(a >> 16), uint8_t(a >> 8), uint8_t(a));
}
inline IPAddress serviceIP(uint32_t i) { return offsetIP(i); }
inline IPAddress endpointIP(uint32_t i, uint32_t e, uint32_t perService) {
  return offsetIP(16384 + i * (perService + 1) + e);
}

inline Service benchService(uint32_t i) {
  Service s;
  s.id = {"bench", "svc-" + std::to_string(i)};
  s.clusterIPs = {serviceIP(i)};
  s.ports = {{"http", Protocol::kTCP, 80, 0}};
  return s;
}

// `extra` = also the spare endpoint: the one-endpoint change of target P2.
inline EndpointSlice benchSlice(uint32_t i, uint32_t endpoints, bool extra = false) {
  EndpointSlice sl;
  sl.id = {"bench", "svc-" + std::to_string(i) + "-slice"};
  sl.serviceName = "svc-" + std::to_string(i);
  sl.ports = {{"http", Protocol::kTCP, 8080}};
  for (uint32_t e = 0; e < endpoints + (extra ? 1 : 0); ++e) {
    Endpoint ep;
    ep.addresses = {endpointIP(i, e, endpoints)};
    // Spread over a 100-node cluster; the benchmarked node is node-0, so 1 % are local.
    ep.nodeName = "node-" + std::to_string((i * (endpoints + 1) + e) % 100);
    sl.endpoints.push_back(ep);
  }
  return sl;
}

inline void fillSnapshot(Snapshot& s, uint32_t services, uint32_t endpoints) {
  for (uint32_t i = 0; i < services; ++i) {
    s.upsertService(benchService(i));
    s.upsertSlice(benchSlice(i, endpoints));
  }
}

// The data-plane benchmark's plan (dataplane_latency.cpp; compare.py's DataplaneWorkload writes
// the same Services for iptables-restore): ClusterIPs in the testbed's service range
// 198.19.0.0/16, the first and the last Service backed by the testbed's backend pods
// 198.18.1.11.., every other Service by addresses in 198.18.2.0-198.18.255.255 that no packet
// is ever sent to (repeating after 65 024; only the rules' shape matters there).
inline IPAddress dataplaneServiceIP(uint32_t i) {
  const uint32_t a = (198u << 24 | 19u << 16) + i + 1;
  return IPAddress::v4(uint8_t(a >> 24), uint8_t(a >> 16), uint8_t(a >> 8), uint8_t(a));
}
inline IPAddress dataplaneEndpointIP(uint32_t i, uint32_t j, uint32_t services, uint32_t endpoints) {
  if (i == 0 || i + 1 == services) return IPAddress::v4(198, 18, 1, uint8_t(11 + j));
  return offsetIP(2 * 256 + (i * endpoints + j) % (254u * 256u));
}

inline void fillDataplaneSnapshot(Snapshot& s, uint32_t services, uint32_t endpoints) {
  for (uint32_t i = 0; i < services; ++i) {
    Service svc = benchService(i);
    svc.clusterIPs = {dataplaneServiceIP(i)};
    s.upsertService(svc);
    EndpointSlice sl = benchSlice(i, 0);
    for (uint32_t j = 0; j < endpoints; ++j) {
      Endpoint ep;
      ep.addresses = {dataplaneEndpointIP(i, j, services, endpoints)};
      ep.nodeName = "node-1";  // not the measured node: no hairpin elements, as kube-proxy's rules
      sl.endpoints.push_back(ep);
    }
    s.upsertSlice(sl);
  }
}

}  // namespace sluice::bench
