// The packet tracer against the real kernel: the same snapshots are synced into the kernel (in a
// testbed node namespace) and into a FakeBackend; what the tracer predicts for a packet must be
// what real traffic does — which endpoints answer, whether the source was masqueraded, whether
// the connection is refused.
//
// Needs root; everything happens inside the Topology's throw-away namespaces.
#include <doctest/doctest.h>

#include <chrono>
#include <set>
#include <string>

#include "../unit/builders.h"
#include "sluice/dataplane.h"
#include "sluice/nft/tracer.h"
#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;

namespace {

constexpr IPFamily kV4 = IPFamily::kV4;
constexpr uint16_t kPort = 80, kTarget = 8080;

ProxyConfig proxyConfig() {
  ProxyConfig cfg;
  cfg.nodeName = "node";
  cfg.clusterCIDRs = {Topology::podCIDR(kV4)};
  return cfg;
}

Service service(const std::string& name, int ipIndex) {
  Service s;
  s.id = {"demo", name};
  s.clusterIPs = {Topology::serviceIP(ipIndex, kV4)};
  s.ports = {{"http", Protocol::kTCP, kPort, 0}};
  return s;
}

EndpointSlice sliceOf(const std::string& name, const std::vector<int>& backends) {
  std::vector<Endpoint> eps;
  for (int b : backends) {
    Endpoint e;
    e.addresses = {Topology::backendIP(b, kV4)};
    e.nodeName = "node";  // local: hairpin applies
    eps.push_back(e);
  }
  EndpointSlice s = testing::slice("demo", name + "-1", name, {{"http", Protocol::kTCP, kTarget}}, std::move(eps));
  s.addressType = kV4;
  return s;
}

// Pods sit behind the node's bridge: routed traffic from them enters on br0, not on their veth.
nft::TracePacket packetFrom(const IPAddress& src, const char* iif, const IPAddress& dst, uint16_t port) {
  nft::TracePacket p;
  p.saddr = src;
  p.daddr = dst;
  p.dport = port;
  p.iifname = iif;
  p.localAddresses = {Topology::nodeIP(kV4), Topology::podGatewayIP(kV4), Topology::nodeExtIP(kV4)};
  return p;
}

nft::Trace mustTrace(const nft::FakeBackend& fake, const nft::TracePacket& p) {
  auto t = nft::trace(fake, p);
  REQUIRE_MESSAGE(t.isOk(), t.status().toString());
  return *t;
}

// Sends `count` new connections and checks each answer against the tracer's outcomes: the
// answering backend is one of the predicted DNAT targets, and the source the backend saw was
// rewritten exactly when that outcome is masqueraded. Returns the backends that answered.
std::set<IPAddress> checkAgainst(const nft::Trace& t, const Netns& from, int count) {
  std::set<IPAddress> answered;
  for (int i = 0; i < count; ++i) {
    ProbeResult r = probe(from, Protocol::kTCP, t.packet.daddr, t.packet.dport, 2000ms);
    INFO(r.toString());
    INFO(t.toString());
    REQUIRE(r.answered());
    const IPAddress backend = Topology::backendIP(std::stoi(r.backendId.substr(1)), kV4);
    answered.insert(backend);
    const nft::TraceOutcome* predicted = nullptr;
    for (const auto& o : t.outcomes)
      if (o.dnat && o.dnat->address == backend && o.dnat->port == kTarget) predicted = &o;
    REQUIRE_MESSAGE(predicted, "answered by an endpoint the tracer did not predict");
    CHECK(predicted->disposition == nft::Disposition::kAccepted);
    CHECK(predicted->masqueraded() == (r.seenSource != t.packet.saddr));
  }
  return answered;
}

}  // namespace

TEST_CASE("kernel: the tracer predicts what real traffic does") {
  auto topo = Topology::create({.backends = 2, .ipv6 = false, .externalClient = true});
  REQUIRE_MESSAGE(topo.isOk(), topo.status().toString());
  std::vector<std::unique_ptr<Server>> servers;
  for (int b = 1; b <= 2; ++b) {
    auto s = Server::start((*topo)->backend(b), Protocol::kTCP, kV4, kTarget, "b" + std::to_string(b));
    REQUIRE_MESSAGE(s.isOk(), s.status().toString());
    servers.push_back(std::move(s).value());
  }
  auto kernel = nft::NetlinkBackend::open({(*topo)->node().path()});
  REQUIRE_MESSAGE(kernel.isOk(), kernel.status().toString());
  nft::FakeBackend fake;
  DataPlane dpKernel(proxyConfig(), **kernel), dpFake(proxyConfig(), fake);
  Snapshot snapshot;
  snapshot.upsertService(service("web", 1));
  snapshot.upsertSlice(sliceOf("web", {1, 2}));
  snapshot.upsertService(service("empty", 2));
  Snapshot copy = snapshot;  // same dirty set: both planners see the same history
  REQUIRE(dpKernel.sync(snapshot).status.isOk());
  REQUIRE(dpFake.sync(copy).status.isOk());
  const IPAddress web = Topology::serviceIP(1, kV4), empty = Topology::serviceIP(2, kV4);

  // A pod: both endpoints, no masquerade. 24 connections miss one of two endpoints with
  // probability 2·2^-24.
  nft::Trace pod = mustTrace(fake, packetFrom(Topology::clientIP(kV4), Topology::kBridge, web, kPort));
  CHECK(pod.dnatTargets().size() == 2);
  CHECK_FALSE(pod.anyMasqueraded());
  CHECK(checkAgainst(pod, (*topo)->client(), 24).size() == 2);

  // Outside the cluster CIDR: masqueraded on every path.
  nft::Trace ext = mustTrace(fake, packetFrom(Topology::extIP(kV4), Topology::kExtDevice, web, kPort));
  CHECK(ext.allMasqueraded());
  checkAgainst(ext, (*topo)->ext(), 8);

  // Hairpin: backend 1 through the Service reaches itself masqueraded, backend 2 unchanged.
  nft::Trace hairpin =
      mustTrace(fake, packetFrom(Topology::backendIP(1, kV4), Topology::kBridge, web, kPort));
  CHECK(hairpin.anyMasqueraded());
  CHECK_FALSE(hairpin.allMasqueraded());
  CHECK(checkAgainst(hairpin, (*topo)->backend(1), 24).size() == 2);

  // No endpoints, and a port the Service lacks: predicted rejected, refused for real.
  for (auto [dst, port] : {std::pair{empty, kPort}, std::pair{web, uint16_t(81)}}) {
    nft::Trace t = mustTrace(fake, packetFrom(Topology::clientIP(kV4), Topology::kBridge, dst, port));
    CHECK(t.disposition() == nft::Disposition::kRejected);
    ProbeResult r = probe((*topo)->client(), Protocol::kTCP, dst, port, 2000ms);
    CHECK_MESSAGE(r.kind == ProbeResult::kRefused, r.toString());
  }
}
