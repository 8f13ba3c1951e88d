// sluice-demo: the whole foundation in one run, inside throw-away network namespaces.
//
// Builds a node with three backend pods, a client pod and an external client; programs two
// Services into the node's kernel over netlink (no nft binary); sends real TCP and UDP through
// the Service IPs and prints which backends answered, what source they saw (masquerade with
// fully random ports), that a Service without endpoints is refused at once, and that removing
// an endpoint takes it out of rotation with a partial sync. Everything is removed at exit.
#include <chrono>
#include <cstdio>
#include <map>

#include <fmt/format.h>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "testbed.h"

namespace {

using namespace sluice;
using testbed::Topology;

constexpr int kBackends = 3;
constexpr int kConnections = 60;

double ms(std::chrono::nanoseconds d) { return std::chrono::duration<double, std::milli>(d).count(); }

void printSpread(const std::string& title, const std::map<std::string, int>& counts) {
  fmt::print("  {}\n", title);
  for (const auto& [who, n] : counts) fmt::print("    {:<12} {:>3}  {}\n", who, n, std::string(size_t(n), '#'));
}

EndpointSlice webSlice(int backends) {
  EndpointSlice s;
  s.id = {"demo", "web-abc12"};
  s.serviceName = "web";
  s.ports = {{"http", Protocol::kTCP, 8080}, {"dns", Protocol::kUDP, 5353}};
  for (int i = 1; i <= backends; ++i) {
    Endpoint e;
    e.addresses = {Topology::backendIP(i, IPFamily::kV4)};
    e.nodeName = "demo-node";
    s.endpoints.push_back(e);
  }
  return s;
}

int run() {
  auto topo = Topology::create({kBackends, false, true});
  if (!topo) {
    fmt::print(stderr, "sluice-demo: cannot build the namespace topology: {}\n", topo.status().toString());
    return 1;
  }
  Topology& t = **topo;
  std::vector<std::unique_ptr<testbed::Server>> servers;
  for (int i = 1; i <= kBackends; ++i) {
    for (auto [proto, port] : {std::pair{Protocol::kTCP, 8080}, std::pair{Protocol::kUDP, 5353}}) {
      auto s = testbed::Server::start(t.backend(i), proto, IPFamily::kV4, uint16_t(port), fmt::format("backend-{}", i));
      if (!s) {
        fmt::print(stderr, "sluice-demo: {}\n", s.status().toString());
        return 1;
      }
      servers.push_back(std::move(s).value());
    }
  }

  auto backend = nft::NetlinkBackend::open({t.node().path()});
  if (!backend) {
    fmt::print(stderr, "sluice-demo: {}\n", backend.status().toString());
    return 1;
  }
  ProxyConfig cfg;
  cfg.nodeName = "demo-node";
  cfg.clusterCIDRs = {Topology::podCIDR(IPFamily::kV4)};
  DataPlane dp(cfg, **backend);

  const IPAddress webIP = Topology::serviceIP(10, IPFamily::kV4);
  const IPAddress emptyIP = Topology::serviceIP(11, IPFamily::kV4);
  Snapshot snap;
  Service web;
  web.id = {"demo", "web"};
  web.clusterIPs = {webIP};
  web.ports = {{"http", Protocol::kTCP, 80, 0}, {"dns", Protocol::kUDP, 53, 0}};
  snap.upsertService(web);
  snap.upsertSlice(webSlice(kBackends));
  Service empty;
  empty.id = {"demo", "empty"};
  empty.clusterIPs = {emptyIP};
  empty.ports = {{"http", Protocol::kTCP, 80, 0}};
  snap.upsertService(empty);

  fmt::print("sluice demo: node namespace {} (pods 198.18.1.0/24, external client {})\n\n", t.node().name(),
             Topology::extIP(IPFamily::kV4).toString());
  auto r = dp.sync(snap);
  if (!r.status) {
    fmt::print(stderr, "sluice-demo: sync failed: {}\n", r.status.toString());
    return 1;
  }
  fmt::print("full sync: {} operations in one netlink batch, planned in {:.2f} ms, committed in {:.2f} ms\n",
             r.operations, ms(r.planTime), ms(r.applyTime));
  fmt::print("  demo/web   {}  http 80/TCP -> 8080, dns 53/UDP -> 5353, {} endpoints\n", webIP.toString(), kBackends);
  fmt::print("  demo/empty {}  http 80/TCP, no endpoints\n\n", emptyIP.toString());

  const auto& client = t.client();
  printSpread(fmt::format("client pod {} -> {}:80/TCP, {} new connections:", Topology::clientIP(IPFamily::kV4).toString(),
                          webIP.toString(), kConnections),
              testbed::spread(client, Protocol::kTCP, webIP, 80, kConnections));
  printSpread(fmt::format("client pod -> {}:53/UDP, {} datagrams from new sockets:", webIP.toString(), kConnections),
              testbed::spread(client, Protocol::kUDP, webIP, 53, kConnections));

  fmt::print("\n  source address seen by the backend:\n");
  auto fromPod = testbed::probe(client, Protocol::kTCP, webIP, 80);
  fmt::print("    from the client pod: {}:{} (pod traffic keeps its address)\n", fromPod.seenSource.toString(),
             fromPod.seenSourcePort);
  for (int i = 0; i < 3; ++i) {
    testbed::ProbeOptions o;
    o.localPort = 40000;
    auto fromExt = testbed::probe(t.ext(), Protocol::kTCP, webIP, 80, o);
    fmt::print("    from external {}:40000: {} saw {}:{} (masqueraded, fully random port)\n",
               Topology::extIP(IPFamily::kV4).toString(), fromExt.backendId, fromExt.seenSource.toString(),
               fromExt.seenSourcePort);
  }

  auto t0 = std::chrono::steady_clock::now();
  auto refused = testbed::probe(client, Protocol::kTCP, emptyIP, 80);
  fmt::print("\n  client pod -> demo/empty {}:80: {} after {:.1f} ms\n", emptyIP.toString(), refused.toString(),
             ms(std::chrono::steady_clock::now() - t0));
  auto badPort = testbed::probe(client, Protocol::kTCP, webIP, 81);
  fmt::print("  client pod -> demo/web {}:81 (no such port): {}\n\n", webIP.toString(), badPort.toString());

  snap.upsertSlice(webSlice(kBackends - 1));
  r = dp.sync(snap);
  if (!r.status) {
    fmt::print(stderr, "sluice-demo: sync failed: {}\n", r.status.toString());
    return 1;
  }
  fmt::print("backend-{} removed from demo/web: partial sync of {} operations, committed in {:.2f} ms\n", kBackends,
             r.operations, ms(r.applyTime));
  printSpread(fmt::format("client pod -> {}:80/TCP, {} new connections:", webIP.toString(), kConnections),
              testbed::spread(client, Protocol::kTCP, webIP, 80, kConnections));

  auto problems = dp.problems();
  fmt::print("\nproblems reported: {}\n", problems.empty() ? "none" : "");
  for (const auto& [id, ps] : problems)
    for (const auto& p : ps) fmt::print("  {}\n", p.toString());
  servers.clear();  // sockets hold their namespaces; close them before the topology goes
  fmt::print("namespaces removed; nothing was changed outside them.\n");
  return 0;
}

}  // namespace

int main() { return run(); }
