// plan-dry-run: what a custom node agent does before it touches a kernel — feed sluice its
// own Services and endpoints, plan them against the shipped FakeBackend, print the nftables
// table sluice would write and any problem it found in the input.
//
// Swap nft::FakeBackend for nft::NetlinkBackend::open({"<netns>"}) to program a real node.
#include <cstdio>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"

int main() {
  using namespace sluice;
  ProxyConfig cfg;
  cfg.nodeName = "edge-1";
  cfg.clusterCIDRs = {IPPrefix::parse("198.18.0.0/16").value()};

  Snapshot snapshot;
  Service api;
  api.id = {"payments", "api"};
  api.clusterIPs = {IPAddress::parse("198.18.200.10").value()};
  api.ports = {{"https", Protocol::kTCP, 443, 0}};
  snapshot.upsertService(api);

  EndpointSlice slice;
  slice.id = {"payments", "api-static"};
  slice.serviceName = "api";
  slice.ports = {{"https", Protocol::kTCP, 8443}};
  for (const char* ip : {"198.18.7.10", "198.18.7.11"}) {
    Endpoint e;
    e.addresses = {IPAddress::parse(ip).value()};
    e.nodeName = "edge-1";
    slice.endpoints.push_back(e);
  }
  Endpoint canary;  // a library-only extension: weights (Kubernetes endpoints all weigh 1)
  canary.addresses = {IPAddress::parse("198.18.7.12").value()};
  canary.weight = 1;
  slice.endpoints.push_back(canary);
  Endpoint broken;  // wrong family: reported by name, everything else still programmed
  broken.addresses = {IPAddress::parse("fd00::12").value()};
  slice.endpoints.push_back(broken);
  snapshot.upsertSlice(slice);

  nft::FakeBackend fake;
  DataPlane dataplane(cfg, fake);
  auto result = dataplane.sync(snapshot);
  if (!result.status) {
    std::fprintf(stderr, "sync failed: %s\n", result.status.toString().c_str());
    return 1;
  }
  std::printf("%s", fake.dump().c_str());
  for (const auto& [service, problems] : dataplane.problems())
    for (const auto& p : problems) std::printf("problem: %s\n", p.toString().c_str());
  return 0;
}
