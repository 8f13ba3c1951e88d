// Real-kernel tests of the reconciler: drift repair, draining, UDP conntrack cleanup, zero-loss
// rolling updates and node-agent restarts. Everything lives in a testbed Topology's throw-away
// namespaces; `nft` is run only inside the node namespace, as the "someone else" that edits
// sluice's table.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "../unit/builders.h"
#include "sluice/drain_tracker.h"
#include "sluice/drift_monitor.h"
#include "sluice/nft/backend.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"
#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;

namespace {

constexpr IPFamily kV4 = IPFamily::kV4;
const ObjectName kWeb{"demo", "web"};
constexpr uint16_t kTcpPort = 80, kTcpTarget = 8080;
constexpr uint16_t kUdpPort = 53, kUdpTarget = 5353;

std::unique_ptr<Topology> makeTopology(int backends) {
  auto topo = Topology::create({.backends = backends, .ipv6 = false, .externalClient = false});
  REQUIRE_MESSAGE(topo.isOk(), topo.status().toString());
  return std::move(topo).value();
}

ProxyConfig proxyConfig() {
  ProxyConfig cfg;
  cfg.nodeName = "node";
  cfg.clusterCIDRs = {Topology::podCIDR(kV4)};
  return cfg;
}

IPAddress vip() { return Topology::serviceIP(1, kV4); }

Service webService() {
  Service s;
  s.id = kWeb;
  s.clusterIPs = {vip()};
  s.ports = {{"http", Protocol::kTCP, kTcpPort, 0}, {"dns", Protocol::kUDP, kUdpPort, 0}};
  return s;
}

struct Ep {
  int backend;
  bool ready = true;
  bool serving = true;
  bool terminating = false;
};

EndpointSlice webSlice(const std::vector<Ep>& eps) {
  std::vector<Endpoint> out;
  for (const auto& e : eps) {
    Endpoint x;
    x.addresses = {Topology::backendIP(e.backend, kV4)};
    x.ready = e.ready;
    x.serving = e.serving;
    x.terminating = e.terminating;
    out.push_back(x);
  }
  EndpointSlice s = testing::slice(kWeb.ns, "web-1", kWeb.name,
                                   {{"http", Protocol::kTCP, kTcpTarget}, {"dns", Protocol::kUDP, kUdpTarget}},
                                   std::move(out));
  s.addressType = kV4;
  return s;
}

std::string backendId(int i) { return "b" + std::to_string(i); }

// A node agent as sluiced wires it: store ← source, runner → DataPlane → netlink backend in the
// node namespace, drain tracker and drift monitor around it.
struct Agent {
  StateStore store;
  std::unique_ptr<nft::NetlinkBackend> backend;
  std::unique_ptr<DataPlane> dataplane;
  std::unique_ptr<SyncRunner> runner;
  std::unique_ptr<DrainTracker> drain;
  std::unique_ptr<DriftMonitor> drift;
  StateSink* source = nullptr;

  struct Options {
    bool drainEnabled = true;
    bool drift = false;
    std::chrono::milliseconds drainTimeout{5000};
    bool startThreads = true;
    std::chrono::milliseconds syncPeriod{30000};
  };

  Agent(const Topology& topo, Options o) {
    auto b = nft::NetlinkBackend::open({topo.node().path()});
    REQUIRE_MESSAGE(b.isOk(), b.status().toString());
    backend = std::move(b).value();
    dataplane = std::make_unique<DataPlane>(proxyConfig(), *backend);
    runner = std::make_unique<SyncRunner>(store, *dataplane, SyncOptions{.syncPeriod = o.syncPeriod});
    DrainOptions d;
    d.netns = topo.node().path();
    d.enabled = o.drainEnabled;
    d.timeout = o.drainTimeout;
    d.pollInterval = 50ms;
    auto t = DrainTracker::create(d);
    REQUIRE_MESSAGE(t.isOk(), t.status().toString());
    drain = std::move(t).value();
    runner->addListener(drain.get());
    if (o.drift) {
      DriftOptions opt;
      opt.netns = topo.node().path();
      opt.tables = {proxyConfig().table()};
      nft::NetlinkBackend* own = backend.get();
      opt.isOwnPort = [own](uint32_t port) { return port == own->portId(); };
      SyncRunner* r = runner.get();
      auto m = DriftMonitor::open(opt, [r](const DriftEvent&) { r->requestFullSync(); });
      REQUIRE_MESSAGE(m.isOk(), m.status().toString());
      drift = std::move(m).value();
      runner->setSyncHooks(drift->syncHooks());  // full syncs pause it, as in sluiced
    }
    source = &store.sink("test");
    if (o.startThreads) {
      runner->start();
      drain->start();
      if (drift) drift->start();
    }
  }
  ~Agent() {
    if (drift) drift->stop();
    runner->stop();
    drain->stop();
  }

  void publish(const std::vector<Ep>& eps) {
    source->upsertService(webService());
    source->upsertSlice(webSlice(eps));
    source->synced(ResourceKind::kService);
    source->synced(ResourceKind::kEndpointSlice);
  }
  // Waits (bounded) until everything published has been committed.
  void settle() {
    for (int i = 0; i < 200; ++i) {
      bool clean = store.withSnapshot([](Snapshot& s) { return s.dirty().empty(); });
      if (clean && runner->stats().lastSuccess) {
        std::this_thread::sleep_for(20ms);  // let the commit listeners' work run too
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
    FAIL("the runner did not commit within 2 s");
  }
};

// Echo servers (TCP 8080, UDP 5353) in backends 1..n; declared after the Topology.
std::vector<std::unique_ptr<Server>> startServers(const Topology& topo, int n) {
  std::vector<std::unique_ptr<Server>> servers;
  for (int i = 1; i <= n; ++i)
    for (auto [proto, port] : {std::pair{Protocol::kTCP, kTcpTarget}, std::pair{Protocol::kUDP, kUdpTarget}}) {
      auto s = Server::start(topo.backend(i), proto, kV4, port, backendId(i));
      REQUIRE_MESSAGE(s.isOk(), s.status().toString());
      servers.push_back(std::move(s).value());
    }
  return servers;
}

bool nftHasTable(const Topology& topo) {
  return execIn(topo.node(), {"nft", "list", "table", "ip", "sluice"}).isOk();
}

bool clusterIPListed(const Topology& topo) {
  auto out = execIn(topo.node(), {"nft", "list", "set", "ip", "sluice", "cluster-ips"});
  return out.isOk() && out->find(vip().toString()) != std::string::npos;
}

Status deleteClusterIP(const Topology& topo) {
  return execIn(topo.node(), {"nft", "delete", "element", "ip", "sluice", "cluster-ips", "{ " + vip().toString() + " }"})
      .status();
}

// Polls `ok` for up to a second.
bool within1s(const std::function<bool()>& ok) {
  const auto deadline = std::chrono::steady_clock::now() + 1s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ok()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return ok();
}

}  // namespace

TEST_CASE("reconciler: a table flushed or edited by someone else is restored within a second") {
  auto topo = makeTopology(1);
  auto servers = startServers(*topo, 1);
  Agent agent(*topo, {.drift = true});
  agent.publish({{1}});
  agent.settle();
  REQUIRE(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).answered());
  // sluice's own commits (a full sync and partial ones) are not drift.
  agent.publish({{1}, {1}});
  agent.publish({{1}});
  agent.settle();
  std::this_thread::sleep_for(100ms);
  CHECK(agent.drift->driftsDetected() == 0);

  SUBCASE("nft flush ruleset") {
    REQUIRE(execIn(topo->node(), {"nft", "flush", "ruleset"}).isOk());
    CHECK(within1s([&] { return nftHasTable(*topo); }));
  }
  SUBCASE("a chain flushed") {
    REQUIRE(execIn(topo->node(), {"nft", "flush", "chain", "ip", "sluice", "services"}).isOk());
    CHECK(within1s([&] {
      auto out = execIn(topo->node(), {"nft", "list", "chain", "ip", "sluice", "services"});
      return out.isOk() && out->find("vmap @service-ips") != std::string::npos;
    }));
  }
  SUBCASE("an element deleted") {
    REQUIRE(deleteClusterIP(*topo).isOk());
    CHECK(within1s([&] { return clusterIPListed(*topo); }));
  }
  CHECK(agent.drift->driftsDetected() >= 1);
  CHECK(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).answered());
  // A table of someone else is not sluice's business.
  const auto before = agent.drift->driftsDetected();
  REQUIRE(execIn(topo->node(), {"nft", "add", "table", "ip", "other"}).isOk());
  REQUIRE(execIn(topo->node(), {"nft", "add", "chain", "ip", "other", "c"}).isOk());
  std::this_thread::sleep_for(200ms);
  CHECK(agent.drift->driftsDetected() == before);
}

TEST_CASE("reconciler: periodic verification rebuilds the table only after someone else committed") {
  auto topo = makeTopology(1);
  auto servers = startServers(*topo, 1);
  Agent agent(*topo, {.syncPeriod = 150ms});
  agent.publish({{1}});
  agent.settle();
  auto waitFor = [&](auto pred) {
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    while (!pred(agent.runner->stats()) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
    return pred(agent.runner->stats());
  };
  // Nobody else commits: every period verifies by generation and rebuilds nothing.
  REQUIRE(waitFor([](const SyncRunner::Stats& s) { return s.verifiedUnchanged >= 3; }));
  CHECK(agent.runner->stats().fullSyncs == 1);
  // Any commit in the namespace moves the generation: the next period replaces the table.
  REQUIRE(execIn(topo->node(), {"nft", "add", "table", "ip", "other"}).isOk());
  CHECK(waitFor([](const SyncRunner::Stats& s) { return s.fullSyncs == 2; }));
  const auto verified = agent.runner->stats().verifiedUnchanged;
  CHECK(waitFor([&](const SyncRunner::Stats& s) { return s.verifiedUnchanged >= verified + 2; }));
  CHECK(agent.runner->stats().fullSyncs == 2);
  CHECK(agent.runner->stats().failures == 0);
  CHECK(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).answered());
}

TEST_CASE("reconciler: an edit made while drift detection is paused for a full sync is repaired after it") {
  auto topo = makeTopology(1);
  auto servers = startServers(*topo, 1);
  Agent agent(*topo, {.drift = true});
  agent.publish({{1}});
  agent.settle();
  // The first sync was full and paused the monitor: its own commit is not drift.
  REQUIRE(agent.runner->stats().fullSyncs == 1);
  REQUIRE(agent.drift->driftsDetected() == 0);

  // Hold a pause open the way a long full sync does, and edit the table meanwhile: nobody
  // hears it, the generation check on resume does.
  REQUIRE(agent.drift->pause());
  REQUIRE(deleteClusterIP(*topo).isOk());
  std::this_thread::sleep_for(100ms);
  CHECK(agent.drift->driftsDetected() == 0);
  CHECK_FALSE(clusterIPListed(*topo));
  agent.drift->resume();
  CHECK(within1s([&] { return clusterIPListed(*topo); }));
  CHECK(agent.drift->driftsDetected() == 1);
  CHECK(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).answered());

  // sluice's own commits inside a pause (here a partial sync) are noted, not drift; and the
  // repair above was heard rather than paused, so this pause leaves the group again.
  REQUIRE(within1s([&] { return agent.runner->stats().fullSyncs == 2; }));
  REQUIRE(agent.drift->pause());
  agent.publish({{1, false}});  // the endpoint turns unready: a real commit
  agent.settle();
  REQUIRE(agent.backend->lastGeneration().has_value());  // the runner is idle after settle()
  agent.drift->resume();
  std::this_thread::sleep_for(100ms);
  CHECK(agent.drift->driftsDetected() == 1);
  CHECK(agent.runner->stats().fullSyncs == 2);

  // A commit to someone else's table while paused cannot be told apart: one repair, heard.
  REQUIRE(agent.drift->pause());
  REQUIRE(execIn(topo->node(), {"nft", "add", "table", "ip", "other"}).isOk());
  agent.drift->resume();
  CHECK(within1s([&] { return agent.runner->stats().fullSyncs == 3; }));
  CHECK(agent.drift->driftsDetected() == 2);
}

TEST_CASE("reconciler: a removed endpoint drains: its flows live on until they end") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo, 2);
  Agent agent(*topo, {.drainTimeout = 60s, .startThreads = false});
  agent.publish({{1}});
  REQUIRE(agent.runner->syncOnce());
  auto conn = Connection::open(topo->client(), Protocol::kTCP, vip(), kTcpPort);
  REQUIRE_MESSAGE(conn.isOk(), conn.status().toString());
  REQUIRE(conn->first().backendId == "b1");

  SUBCASE("flows end: the drain ends") {
    agent.publish({{2}});  // b1 removed from the slice
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    auto d = agent.drain->draining();
    REQUIRE(d.size() == 1);
    CHECK(d[0].ip == Topology::backendIP(1, kV4));
    CHECK(d[0].port == kTcpTarget);
    CHECK(d[0].liveFlows == 1);
    CHECK_FALSE(d[0].serving);
    CHECK(d[0].servicePort.service == kWeb);
    // The held connection still reaches b1; new ones go to b2.
    CHECK(conn->ask().backendId == "b1");
    CHECK(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).backendId == "b2");
    conn->close();
    std::this_thread::sleep_for(100ms);
    REQUIRE(agent.drain->poll());
    CHECK(agent.drain->draining().empty());
    CHECK(agent.drain->stats().drained == 1);
  }
  SUBCASE("the deadline passes: leftover flows are deleted") {
    agent.drain.reset();
    DrainOptions o;
    o.netns = topo->node().path();
    o.timeout = 1500ms;  // long enough for the first count even on a loaded machine
    auto t = DrainTracker::create(o);
    REQUIRE(t.isOk());
    // A fresh runner so that only the new tracker listens.
    agent.drain = std::move(t).value();
    agent.runner = std::make_unique<SyncRunner>(agent.store, *agent.dataplane);
    agent.runner->addListener(agent.drain.get());
    agent.runner->requestFullSync();  // a full sync shows the new tracker everything: b1
    REQUIRE(agent.runner->syncOnce());
    agent.publish({{2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    REQUIRE(agent.drain->draining().size() == 1);
    CHECK(conn->ask().backendId == "b1");
    std::this_thread::sleep_for(1600ms);
    REQUIRE(agent.drain->poll());
    CHECK(agent.drain->draining().empty());
    CHECK(agent.drain->stats().expired == 1);
    CHECK(agent.drain->stats().flowsDeleted >= 1);
    // The flow lost its DNAT state: its next packet is answered by b2 with a reset.
    CHECK_FALSE(conn->ask().answered());
  }
  SUBCASE("it comes back while draining: nothing happened to its flows") {
    agent.publish({{2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    REQUIRE(agent.drain->draining().size() == 1);
    agent.publish({{1}, {2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    CHECK(agent.drain->draining().empty());
    CHECK(agent.drain->stats().returned == 1);
    CHECK(agent.drain->stats().flowsDeleted == 0);
    CHECK(conn->ask().backendId == "b1");
  }
  SUBCASE("terminating but serving: never cut, even past the deadline") {
    agent.publish({{1, false, true, true}, {2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    auto d = agent.drain->draining();
    REQUIRE(d.size() == 1);
    CHECK(d[0].serving);
    CHECK(conn->ask().backendId == "b1");
    CHECK(probe(topo->client(), Protocol::kTCP, vip(), kTcpPort).backendId == "b2");
  }
}

TEST_CASE("reconciler: with draining disabled a leaving endpoint's flows are cut at once") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo, 2);
  Agent agent(*topo, {.drainEnabled = false, .startThreads = false});
  agent.publish({{1}});
  REQUIRE(agent.runner->syncOnce());
  auto conn = Connection::open(topo->client(), Protocol::kTCP, vip(), kTcpPort);
  REQUIRE(conn.isOk());
  agent.publish({{1, false, true, true}, {2}});  // terminating, still serving
  REQUIRE(agent.runner->syncOnce());
  REQUIRE(agent.drain->poll());
  CHECK(agent.drain->draining().empty());
  CHECK(agent.drain->stats().flowsDeleted >= 1);
  CHECK_FALSE(conn->ask().answered());
}

TEST_CASE("reconciler: UDP entries of a removed endpoint are deleted, so a client moves on") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo, 2);
  Agent agent(*topo, {.startThreads = false});
  ProbeOptions fixed;
  fixed.localPort = 40053;
  agent.publish({{1}});
  REQUIRE(agent.runner->syncOnce());
  REQUIRE(agent.drain->poll());
  REQUIRE(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).backendId == "b1");

  SUBCASE("cleanup on") {
    agent.publish({{2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    CHECK(agent.drain->stats().udpEntriesDeleted >= 1);
    // Same source port: without the deletion the old entry would still DNAT to b1, whose
    // server is alive and would answer.
    CHECK(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).backendId == "b2");
  }
  SUBCASE("cleanup off (what the mechanism prevents)") {
    agent.runner = std::make_unique<SyncRunner>(agent.store, *agent.dataplane);  // no listener
    agent.publish({{2}});
    REQUIRE(agent.runner->syncOnce());
    CHECK(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).backendId == "b1");
  }
  SUBCASE("terminating but serving: its UDP entries are kept") {
    agent.publish({{1, false, true, true}, {2}});
    REQUIRE(agent.runner->syncOnce());
    REQUIRE(agent.drain->poll());
    CHECK(agent.drain->stats().udpEntriesDeleted == 0);
    CHECK(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).backendId == "b1");
  }
}

TEST_CASE("reconciler: a UDP Service's first endpoint clears entries that were never DNATed") {
  auto topo = makeTopology(1);
  auto servers = startServers(*topo, 1);
  Agent agent(*topo, {.startThreads = false});
  ProbeOptions fixed;
  fixed.localPort = 40054;
  fixed.timeout = 300ms;
  // No Service yet: the datagram is routed into the node's dead end and leaves a confirmed,
  // un-NATed entry behind (a rejected one is dropped unconfirmed, but this one stays).
  Service other = webService();
  other.id = {"demo", "other"};
  other.clusterIPs = {Topology::serviceIP(2, kV4)};
  agent.source->upsertService(other);
  agent.source->synced(ResourceKind::kService);
  agent.source->synced(ResourceKind::kEndpointSlice);
  REQUIRE(agent.runner->syncOnce());
  CHECK_FALSE(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).answered());
  auto ct = conntrack::Client::open(topo->node().path());
  REQUIRE(ct.isOk());
  conntrack::Filter f;
  f.proto = Protocol::kUDP;
  f.origDst = vip();
  REQUIRE((*ct)->count(f).value() == 1);

  agent.publish({{1}});
  REQUIRE(agent.runner->syncOnce());
  REQUIRE(agent.drain->poll());
  CHECK(agent.drain->stats().udpEntriesDeleted >= 1);
  CHECK(probe(topo->client(), Protocol::kUDP, vip(), kUdpPort, fixed).backendId == "b1");
}

namespace {

// One rolling update of the backends of kWeb through `agent`, replacing `from` by `to`, as a
// Deployment controller and kubelet do it: the new pod becomes ready; the old one is marked
// terminating (still serving); its preStop sleep lets the endpoint change propagate, then it gets
// SIGTERM and shuts down gracefully; it is removed from the slice; its process exits when the
// grace period ends.
void rollingUpdate(Agent& agent, std::vector<std::unique_ptr<HttpBackend>>& pods, const Topology& topo,
                   int from, int to) {
  auto pod = HttpBackend::start(topo.backend(to), kV4, kTcpTarget, backendId(to));
  REQUIRE_MESSAGE(pod.isOk(), pod.status().toString());
  pods[to] = std::move(pod).value();
  agent.publish({{from}, {to}});
  agent.settle();
  std::this_thread::sleep_for(100ms);
  // preStop: the pod waits until the node has acted on the endpoint change (here: the drain
  // tracker started draining it, or — draining disabled — deleted its flows, which on a loaded
  // machine can take a while when thousands of closed entries go with them), then a bit longer.
  auto acted = [&] { return agent.drain->stats().started + agent.drain->stats().flowsDeleted; };
  const auto before = acted();
  agent.publish({{from, false, true, true}, {to}});
  for (int i = 0; i < 300 && acted() == before; ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(acted() > before);
  std::this_thread::sleep_for(150ms);
  pods[from]->terminate(600ms);
  std::this_thread::sleep_for(300ms);
  agent.publish({{to}});
  for (int i = 0; i < 100 && !pods[from]->exited(); ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(pods[from]->exited());
  std::this_thread::sleep_for(100ms);
}

struct RollingResult {
  HttpLoad::Stats load;
  DrainStats drain;
};

// Three rolling updates (b1 → b2 → b3 → b4) under load.
RollingResult rollingUpdates(bool drainEnabled) {
  auto topo = makeTopology(4);
  std::vector<std::unique_ptr<HttpBackend>> pods(5);
  Agent agent(*topo, {.drainEnabled = drainEnabled});
  auto first = HttpBackend::start(topo->backend(1), kV4, kTcpTarget, backendId(1));
  REQUIRE(first.isOk());
  pods[1] = std::move(first).value();
  agent.publish({{1}});
  agent.settle();
  auto load = HttpLoad::start(topo->client(), vip(), kTcpPort,
                              {.newConnectionWorkers = 2, .keepAliveWorkers = 4, .pause = 2ms});
  REQUIRE(load.isOk());
  std::this_thread::sleep_for(200ms);
  for (int i = 1; i < 4; ++i) rollingUpdate(agent, pods, *topo, i, i + 1);
  std::this_thread::sleep_for(200ms);
  (*load)->stop();
  // The last old pod has exited; its drain ends at the tracker's next count.
  for (int i = 0; i < 100 && !agent.drain->draining().empty(); ++i) std::this_thread::sleep_for(20ms);
  for (const auto& d : agent.drain->draining())
    MESSAGE("still draining " << d.ip.toString() << " with " << d.liveFlows << " live flows");
  auto stats = (*load)->stats();
  MESSAGE(std::string(drainEnabled ? "draining on" : "draining off") << ": ok=" << stats.ok
                                                                      << " failed=" << stats.failed
                                                                      << " connections=" << stats.connections);
  return {stats, agent.drain->stats()};
}

}  // namespace

TEST_CASE("reconciler: rolling updates under load lose no request when endpoints drain") {
  auto [stats, drain] = rollingUpdates(true);
  for (const auto& f : stats.failures) MESSAGE("failed: " << f);
  CHECK(stats.failed == 0);
  CHECK(stats.ok > 500);
  CHECK(stats.byBackend["b4"] > 0);  // the load really followed the updates
  CHECK(drain.started == 3);          // each old pod drained...
  CHECK(drain.drained == 3);          // ...until its last flow ended
  CHECK(drain.expired == 0);
}

// Why the naive mode fails: it deletes the conntrack entries of an endpoint the moment it leaves
// the new-connection set. The keep-alive connections to the old pod are still open (the pod only
// starts closing them after its preStop sleep), and their conntrack entry held the DNAT that maps
// the Service IP to the pod. The next packet of such a connection is treated as a new flow and
// DNATed to another endpoint, which knows no such connection and answers with a reset (or the
// old pod's answer arrives un-NATed and the client resets it): the request fails.
TEST_CASE("reconciler: the same rolling updates fail without draining") {
  auto [stats, drain] = rollingUpdates(false);
  CHECK(drain.flowsDeleted > 0);
  CHECK(stats.failed > 0);
  CHECK(stats.ok > 0);
}

TEST_CASE("reconciler: a restarted node agent adopts the table without interrupting flows") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo, 2);
  auto first = std::make_unique<Agent>(*topo, Agent::Options{});
  first->publish({{1}, {2}});
  first->settle();
  std::vector<Connection> held;
  for (int i = 0; i < 4; ++i) {
    auto c = Connection::open(topo->client(), Protocol::kTCP, vip(), kTcpPort);
    REQUIRE(c.isOk());
    held.push_back(std::move(c).value());
  }
  // A stream of new connections throughout the restart.
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0}, failed{0};
  std::string firstFailure;
  std::thread prober([&] {
    for (int i = 0; i < 5000 && !stop.load(); ++i) {
      auto r = probe(topo->client(), Protocol::kTCP, vip(), kTcpPort, 1000ms);
      if (r.answered()) {
        ++answered;
      } else if (failed++ == 0) {
        firstFailure = r.toString();
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  std::this_thread::sleep_for(200ms);
  first.reset();  // the old process ends; its table stays
  CHECK(nftHasTable(*topo));
  std::this_thread::sleep_for(100ms);
  Agent second(*topo, {});
  second.publish({{1}, {2}});
  second.settle();
  CHECK(second.runner->stats().fullSyncs >= 1);
  std::this_thread::sleep_for(300ms);
  stop = true;
  prober.join();
  INFO("first failure: " << firstFailure);
  CHECK(failed.load() == 0);
  CHECK(answered.load() > 50);
  for (auto& c : held) {
    auto r = c.ask();
    CHECK_MESSAGE(r.backendId == c.first().backendId, r.toString());
  }
}
