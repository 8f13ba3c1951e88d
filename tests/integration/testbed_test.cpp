// Real-kernel tests of sluice_testbed itself: namespaces, the topology, servers and probes.
// Needs root; everything happens inside namespaces the tests create and remove.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;

namespace {

constexpr IPFamily kFamilies[] = {IPFamily::kV4, IPFamily::kV6};

std::vector<std::string> listedNamespaces() {
  auto out = run({"ip", "netns", "list"});
  REQUIRE_MESSAGE(out.isOk(), out.status().toString());
  std::vector<std::string> names;
  std::istringstream in(*out);
  std::string line;
  // Lines are "NAME" or "NAME (id: N)".
  while (std::getline(in, line)) names.push_back(line.substr(0, line.find(' ')));
  return names;
}

bool listed(const std::string& name) {
  auto names = listedNamespaces();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::unique_ptr<Topology> makeTopology(const TopologyOptions& options = {}) {
  auto topo = Topology::create(options);
  REQUIRE_MESSAGE(topo.isOk(), topo.status().toString());
  return std::move(topo).value();
}

std::unique_ptr<Server> startServer(const Netns& ns, Protocol proto, IPFamily family,
                                    uint16_t port, const std::string& id) {
  auto server = Server::start(ns, proto, family, port, id);
  REQUIRE_MESSAGE(server.isOk(), server.status().toString());
  return std::move(server).value();
}

// Polls `pred` for up to two seconds (server-side effects of a client close are
// asynchronous).
template <typename Pred>
bool eventually(Pred pred) {
  for (int i = 0; i < 200; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

}  // namespace

TEST_CASE("testbed: run captures stdout, stdin and failures") {
  auto echo = run({"echo", "hello"});
  REQUIRE(echo.isOk());
  CHECK(*echo == "hello\n");

  RunOptions withInput;
  withInput.input = "through stdin";
  auto cat = run({"cat"}, withInput);
  REQUIRE(cat.isOk());
  CHECK(*cat == "through stdin");

  auto failing = run({"sh", "-c", "echo oops >&2; exit 3"});
  REQUIRE_FALSE(failing.isOk());
  CHECK(failing.status().code() == Code::kInternal);
  CHECK(failing.status().message().find("exited with status 3: oops") != std::string::npos);

  auto missing = run({"/nonexistent/sluice-testbed-tool"});
  REQUIRE_FALSE(missing.isOk());
  CHECK(missing.status().code() == Code::kNotFound);

  RunOptions quick;
  quick.timeout = 100ms;
  auto slow = run({"sleep", "10"}, quick);
  REQUIRE_FALSE(slow.isOk());
  CHECK(slow.status().code() == Code::kUnavailable);
}

TEST_CASE("testbed: Netns has lo up and is deleted by its destructor") {
  std::string name;
  {
    auto ns = Netns::create("unit");
    REQUIRE_MESSAGE(ns.isOk(), ns.status().toString());
    name = ns->name();
    CHECK(name.rfind("sltb-", 0) == 0);
    CHECK(ns->path() == "/run/netns/" + name);
    CHECK(listed(name));
    auto lo = execIn(*ns, {"ip", "-o", "link", "show", "lo"});
    REQUIRE_MESSAGE(lo.isOk(), lo.status().toString());
    CHECK(lo->find("LOWER_UP") != std::string::npos);

    Netns moved = std::move(*ns);
    CHECK_FALSE(ns->valid());
    CHECK(moved.name() == name);
    CHECK(listed(name));
  }
  CHECK_FALSE(listed(name));

  auto ns = Netns::create("unit");
  REQUIRE(ns.isOk());
  std::string second = ns->name();
  CHECK(second != name);
  CHECK(ns->remove().isOk());
  CHECK(ns->remove().isOk());  // idempotent
  CHECK_FALSE(listed(second));
}

TEST_CASE("testbed: Netns rejects unusable roles") {
  for (const char* role : {"", "Upper", "with space", "much-too-long-role-name"}) {
    INFO("role '" << role << "'");
    auto ns = Netns::create(role);
    REQUIRE_FALSE(ns.isOk());
    CHECK(ns.status().code() == Code::kInvalidArgument);
  }
}

TEST_CASE("testbed: sysctls are set inside the namespace only") {
  auto a = Netns::create("sysa");
  auto b = Netns::create("sysb");
  REQUIRE(a.isOk());
  REQUIRE(b.isOk());
  REQUIRE(setSysctl(*a, "net.ipv4.ip_forward", "1").isOk());
  auto mine = getSysctl(*a, "net.ipv4.ip_forward");
  REQUIRE(mine.isOk());
  CHECK(*mine == "1");
  // The same value as seen by a process inside the namespace.
  auto viaExec = execIn(*a, {"sysctl", "-n", "net.ipv4.ip_forward"});
  REQUIRE_MESSAGE(viaExec.isOk(), viaExec.status().toString());
  CHECK(*viaExec == "1\n");
  auto other = getSysctl(*b, "net.ipv4.ip_forward");
  REQUIRE(other.isOk());
  CHECK(*other == "0");

  auto missing = setSysctl(*a, "net.ipv4.no_such_knob", "1");
  CHECK(missing.code() == Code::kNotFound);
}

TEST_CASE("testbed: reaper removes namespaces of dead runs only") {
  auto mine = Netns::create("alive");  // also makes this process's run lock exist
  REQUIRE(mine.isOk());

  // Fake run ids, unique per test process so parallel runs of this test do not collide. A
  // parallel run's reaper may remove our "dead" namespace first, so counts are not checked.
  const std::string pid = std::to_string(::getpid());
  // A run whose lock file is gone (its process died, /run was cleaned).
  const std::string dead = "sltb-dead" + pid + "-0-stale";
  // A run whose lock is held (by us, standing in for another live process).
  const std::string liveRun = "5eed" + pid;
  const std::string live = "sltb-" + liveRun + "-0-other";
  const std::string lockFile = "/run/sluice-testbed/" + liveRun + ".lock";
  UniqueFd lock(::open(lockFile.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  REQUIRE(lock);
  REQUIRE(::flock(lock.get(), LOCK_EX | LOCK_NB) == 0);
  REQUIRE(run({"ip", "netns", "add", dead}).isOk());
  REQUIRE(run({"ip", "netns", "add", live}).isOk());

  // flock locks belong to the open file description, so a second open() in this process
  // conflicts with `lock` just as another process would.
  auto reaped = reapStaleNamespaces();
  REQUIRE_MESSAGE(reaped.isOk(), reaped.status().toString());
  CHECK_FALSE(listed(dead));
  CHECK(listed(live));
  CHECK(listed(mine->name()));

  lock.reset();  // the "other process" dies
  reaped = reapStaleNamespaces();
  REQUIRE(reaped.isOk());
  CHECK_FALSE(listed(live));
  CHECK(::access(lockFile.c_str(), F_OK) != 0);
  CHECK(listed(mine->name()));
}

TEST_CASE("testbed: topology comes up") {
  auto topo = makeTopology();
  MESSAGE(topo->describe());
  REQUIRE(topo->namespaces().size() == 5);  // node, client, 2 backends, ext
  for (const Netns* ns : topo->namespaces()) CHECK(listed(ns->name()));

  auto fwd = getSysctl(topo->node(), "net.ipv4.ip_forward");
  REQUIRE(fwd.isOk());
  CHECK(*fwd == "1");
  auto fwd6 = getSysctl(topo->node(), "net.ipv6.conf.all.forwarding");
  REQUIRE(fwd6.isOk());
  CHECK(*fwd6 == "1");
  // br_netfilter is built into the test kernel.
  CHECK(topo->bridgeNetfilter());

  auto addrs = execIn(topo->node(), {"ip", "-o", "addr", "show"});
  REQUIRE(addrs.isOk());
  for (const char* want : {"br0    inet 198.18.1.1/24", "nodeip0    inet 198.18.0.1/24",
                           "vext    inet 203.0.113.1/24", "fd00:1::1/64", "fd00::1/64"}) {
    INFO("want " << want);
    CHECK(addrs->find(want) != std::string::npos);
  }
  auto podAddrs = execIn(topo->backend(2), {"ip", "-o", "addr", "show", "dev", "eth0"});
  REQUIRE(podAddrs.isOk());
  CHECK(podAddrs->find("198.18.1.12/24") != std::string::npos);
  CHECK(podAddrs->find("fd00:1::c/64") != std::string::npos);
  CHECK(Topology::backendIP(2, IPFamily::kV6).toString() == "fd00:1::c");
  CHECK(Topology::serviceIP(258, IPFamily::kV4).toString() == "198.19.1.2");
  CHECK(Topology::serviceCIDR(IPFamily::kV6).contains(Topology::serviceIP(7, IPFamily::kV6)));
}

TEST_CASE("testbed: client pod reaches a backend directly (TCP, UDP, v4, v6)") {
  auto topo = makeTopology();
  for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
    for (IPFamily family : kFamilies) {
      INFO("protocol " << protocolName(proto));
      INFO("family " << familyName(family));
      auto server = startServer(topo->backend(1), proto, family, 8080, "b1");
      ProbeResult r = probe(topo->client(), proto, Topology::backendIP(1, family), 8080);
      INFO(r.toString());
      REQUIRE(r.kind == ProbeResult::kAnswered);
      CHECK(r.backendId == "b1");
      CHECK(r.seenSource == Topology::clientIP(family));
      CHECK(r.seenSourcePort == r.localPort);
      CHECK(r.localPort != 0);
      CHECK(server->served() == 1);
    }
  }
}

TEST_CASE("testbed: external client reaches a backend through the node") {
  auto topo = makeTopology();
  auto route = execIn(topo->ext(), {"ip", "route", "get", "198.18.1.12"});
  REQUIRE(route.isOk());
  CHECK(route->find("via 203.0.113.1") != std::string::npos);

  for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
    for (IPFamily family : kFamilies) {
      INFO("protocol " << protocolName(proto));
      INFO("family " << familyName(family));
      auto server = startServer(topo->backend(2), proto, family, 8080, "b2");
      ProbeResult r = probe(topo->ext(), proto, Topology::backendIP(2, family), 8080);
      INFO(r.toString());
      REQUIRE(r.kind == ProbeResult::kAnswered);
      CHECK(r.backendId == "b2");
      CHECK(r.seenSource == Topology::extIP(family));

      // The second external source address, chosen explicitly.
      ProbeOptions alt;
      alt.localAddress = Topology::extAltIP(family);
      r = probe(topo->ext(), proto, Topology::backendIP(2, family), 8080, alt);
      INFO(r.toString());
      REQUIRE(r.kind == ProbeResult::kAnswered);
      CHECK(r.seenSource == Topology::extAltIP(family));
    }
  }
}

TEST_CASE("testbed: the node IP answers pods and the external client") {
  auto topo = makeTopology();
  for (IPFamily family : kFamilies) {
    INFO("family " << familyName(family));
    auto tcp = startServer(topo->node(), Protocol::kTCP, family, 30080, "node");
    auto udp = startServer(topo->node(), Protocol::kUDP, family, 30080, "node");
    for (Netns* from : {&topo->client(), &topo->ext()}) {
      for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
        INFO("from " << from->role());
        INFO("protocol " << protocolName(proto));
        ProbeResult r = probe(*from, proto, Topology::nodeIP(family), 30080);
        INFO(r.toString());
        REQUIRE(r.kind == ProbeResult::kAnswered);
        CHECK(r.backendId == "node");
      }
    }
  }
}

TEST_CASE("testbed: a closed port is refused, an unanswered address times out") {
  auto topo = makeTopology();
  for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
    for (IPFamily family : kFamilies) {
      INFO("protocol " << protocolName(proto));
      INFO("family " << familyName(family));
      // A generous timeout: kRefused proves the answer came back, not the clock.
      ProbeResult r = probe(topo->client(), proto, Topology::backendIP(1, family), 9, 5000ms);
      INFO(r.toString());
      CHECK(r.kind == ProbeResult::kRefused);
      CHECK(r.err == ECONNREFUSED);

      // Nothing is behind a Service IP without rules: the node routes it into nodeip0.
      r = probe(topo->client(), proto, Topology::serviceIP(1, family), 80, 300ms);
      INFO(r.toString());
      CHECK(r.kind == ProbeResult::kTimeout);
    }
  }
}

TEST_CASE("testbed: a fixed source port can be reused at once") {
  auto topo = makeTopology({.backends = 1});
  for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
    INFO("protocol " << protocolName(proto));
    auto server = startServer(topo->backend(1), proto, IPFamily::kV4, 8080, "b1");
    for (int i = 0; i < 3; ++i) {
      ProbeResult r = probe(topo->client(), proto, Topology::backendIP(1, IPFamily::kV4), 8080,
                            2000ms, 40000);
      INFO(r.toString());
      REQUIRE(r.kind == ProbeResult::kAnswered);
      CHECK(r.seenSourcePort == 40000);
    }
  }
}

TEST_CASE("testbed: a held connection keeps its flow until closed") {
  auto topo = makeTopology({.backends = 1});
  auto server = startServer(topo->backend(1), Protocol::kTCP, IPFamily::kV6, 8080, "b1");
  auto conn = Connection::open(topo->client(), Protocol::kTCP,
                               Topology::backendIP(1, IPFamily::kV6), 8080);
  REQUIRE_MESSAGE(conn.isOk(), conn.status().toString());
  CHECK(conn->first().backendId == "b1");
  for (int i = 0; i < 3; ++i) {
    ProbeResult r = conn->ask();
    INFO(r.toString());
    REQUIRE(r.answered());
    CHECK(r.seenSourcePort == conn->first().seenSourcePort);
  }
  CHECK(server->served() == 4);
  CHECK(server->openConnections() == 1);
  conn->close();
  CHECK(eventually([&] { return server->openConnections() == 0; }));

  // Stopping the server closes held connections.
  auto again = Connection::open(topo->client(), Protocol::kTCP,
                                Topology::backendIP(1, IPFamily::kV6), 8080);
  REQUIRE(again.isOk());
  server->stop();
  ProbeResult after = again->ask();
  CHECK_FALSE(after.answered());
}

TEST_CASE("testbed: a server holds many connections at once") {
  auto topo = makeTopology({.backends = 1, .ipv6 = false, .externalClient = false});
  auto server = startServer(topo->backend(1), Protocol::kTCP, IPFamily::kV4, 8080, "b1");
  std::vector<Connection> conns;
  for (int i = 0; i < 100; ++i) {
    auto c = Connection::open(topo->client(), Protocol::kTCP,
                              Topology::backendIP(1, IPFamily::kV4), 8080);
    REQUIRE_MESSAGE(c.isOk(), c.status().toString());
    conns.push_back(std::move(*c));
  }
  CHECK(eventually([&] { return server->openConnections() == 100; }));
  for (auto& c : conns) CHECK(c.ask().answered());
  conns.clear();
  CHECK(eventually([&] { return server->openConnections() == 0; }));
}

TEST_CASE("testbed: spread counts answers per backend and failures by kind") {
  auto topo = makeTopology({.backends = 1});
  auto server = startServer(topo->backend(1), Protocol::kUDP, IPFamily::kV4, 5353, "b1");
  auto counts = spread(topo->client(), Protocol::kUDP, Topology::backendIP(1, IPFamily::kV4),
                       5353, 10);
  CHECK(counts == std::map<std::string, int>{{"b1", 10}});
  counts = spread(topo->client(), Protocol::kTCP, Topology::backendIP(1, IPFamily::kV4), 5353, 3);
  CHECK(counts == std::map<std::string, int>{{"refused", 3}});
}

TEST_CASE("testbed: servers pick ports, refuse taken ones and one-word ids") {
  auto ns = Netns::create("ports");
  REQUIRE(ns.isOk());
  auto any = startServer(*ns, Protocol::kTCP, IPFamily::kV4, 0, "x");
  CHECK(any->port() != 0);
  auto clash = Server::start(*ns, Protocol::kTCP, IPFamily::kV4, any->port(), "y");
  REQUIRE_FALSE(clash.isOk());
  CHECK(clash.status().code() == Code::kAlreadyExists);
  auto udp = startServer(*ns, Protocol::kUDP, IPFamily::kV4, 0, "u");
  auto udpClash = Server::start(*ns, Protocol::kUDP, IPFamily::kV4, udp->port(), "v");
  REQUIRE_FALSE(udpClash.isOk());
  CHECK(udpClash.status().code() == Code::kAlreadyExists);
  // Same port, other family: separate sockets thanks to IPV6_V6ONLY.
  auto v6 = Server::start(*ns, Protocol::kTCP, IPFamily::kV6, any->port(), "z");
  CHECK_MESSAGE(v6.isOk(), v6.status().toString());
  auto badId = Server::start(*ns, Protocol::kTCP, IPFamily::kV4, 0, "two words");
  CHECK(badId.status().code() == Code::kInvalidArgument);
}

TEST_CASE("testbed: SCTP servers work or say why not") {
  auto topo = makeTopology({.backends = 1, .ipv6 = false, .externalClient = false});
  auto server = Server::start(topo->backend(1), Protocol::kSCTP, IPFamily::kV4, 3868, "b1");
  if (!sctpSupported(topo->backend(1))) {
    REQUIRE_FALSE(server.isOk());
    CHECK(server.status().code() == Code::kUnimplemented);
    CHECK(server.status().err() == EPROTONOSUPPORT);
    ProbeResult r = probe(topo->client(), Protocol::kSCTP, Topology::backendIP(1, IPFamily::kV4),
                          3868);
    CHECK(r.kind == ProbeResult::kError);
    CHECK(r.err == EPROTONOSUPPORT);
    MESSAGE("SCTP traffic not testable on this kernel: " << server.status().toString());
    return;
  }
  REQUIRE_MESSAGE(server.isOk(), server.status().toString());
  ProbeResult r = probe(topo->client(), Protocol::kSCTP, Topology::backendIP(1, IPFamily::kV4),
                        3868);
  INFO(r.toString());
  CHECK(r.answered());
}

TEST_CASE("testbed: bridged pod-to-pod traffic passes the node's inet forward hook") {
  auto topo = makeTopology({.backends = 1, .externalClient = false});
  RunOptions rules;
  rules.input =
      "table inet sltbtest {\n"
      "  chain forwarded {\n"
      "    type filter hook forward priority 0; policy accept;\n"
      "    ip saddr 198.18.1.100 ip daddr 198.18.1.11 counter\n"
      "  }\n"
      "}\n";
  auto loaded = execIn(topo->node(), {"nft", "-f", "-"}, rules);
  REQUIRE_MESSAGE(loaded.isOk(), loaded.status().toString());
  auto server = startServer(topo->backend(1), Protocol::kUDP, IPFamily::kV4, 8080, "b1");
  REQUIRE(probe(topo->client(), Protocol::kUDP, Topology::backendIP(1, IPFamily::kV4), 8080)
              .answered());
  auto listing = execIn(topo->node(), {"nft", "list", "chain", "inet", "sltbtest", "forwarded"});
  REQUIRE(listing.isOk());
  const std::string key = "counter packets ";
  size_t at = listing->find(key);
  REQUIRE(at != std::string::npos);
  CHECK(std::stoi(listing->substr(at + key.size())) >= 1);
}

TEST_CASE("testbed: an IPv4-only topology has no v6 addresses and no ext") {
  auto topo = makeTopology({.backends = 1, .ipv6 = false, .externalClient = false});
  CHECK(topo->namespaces().size() == 3);
  auto v6 = execIn(topo->client(), {"ip", "-6", "-o", "addr", "show", "scope", "global"});
  REQUIRE(v6.isOk());
  CHECK(v6->empty());
  auto server = startServer(topo->backend(1), Protocol::kTCP, IPFamily::kV4, 80, "b1");
  CHECK(probe(topo->client(), Protocol::kTCP, Topology::backendIP(1, IPFamily::kV4), 80)
            .answered());
}

TEST_CASE("testbed: bad topology options are rejected") {
  for (int backends : {0, 51}) {
    auto topo = Topology::create({.backends = backends});
    REQUIRE_FALSE(topo.isOk());
    CHECK(topo.status().code() == Code::kInvalidArgument);
  }
}

TEST_CASE("testbed: namespaces are gone after the topology is destroyed") {
  std::vector<std::string> names;
  {
    auto topo = makeTopology({.backends = 3});
    auto server = startServer(topo->backend(3), Protocol::kTCP, IPFamily::kV4, 8080, "b3");
    for (const Netns* ns : topo->namespaces()) names.push_back(ns->name());
    REQUIRE(names.size() == 6);
  }
  auto left = listedNamespaces();
  for (const auto& name : names) {
    CAPTURE(name);
    CHECK(std::find(left.begin(), left.end(), name) == left.end());
  }
}
