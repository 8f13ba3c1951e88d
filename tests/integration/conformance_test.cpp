// Real-kernel conformance: every scenario of service-semantics §8 (tests/conformance/scenarios.h)
// with real packets, for IPv4 and IPv6, through DataPlane → NetlinkBackend → nf_tables in a
// testbed Topology (pod client, node, external client, backends on "this" and "another" node —
// a remote endpoint is one whose nodeName is another node; the pod network routes to it the
// same way a CNI would).
//
// For each check the test asserts which backends answer (exactly the expected ones, each at
// least once), which source address they saw (the client's, or the node's after masquerade),
// and whether a refused connection fails at once (reject) or times out (drop, 300 ms).
//
// Probabilistic assertions: a check expecting several backends (two in the table) sends 36
// connections; the chance that a uniform choice misses one is 2·(1/2)^36 < 1e-10. Affinity waits
// for a new choice for at most 14 timeouts: (1/3)^14 < 1e-6 with three backends.
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "../conformance/scenarios.h"
#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "sluice/planner.h"
#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace sluice::conformance;
using namespace std::chrono_literals;

namespace {

constexpr int kBackends = 3;
constexpr auto kDropTimeout = 300ms;
constexpr auto kAnswerTimeout = 1000ms;

std::string backendId(int i) { return "b" + std::to_string(i); }

struct Bed {
  std::unique_ptr<Topology> topo;
  std::unique_ptr<nft::NetlinkBackend> backend;
  std::vector<std::unique_ptr<Server>> servers;  // declared after topo: destroyed first
  bool sctp = false;
};

// Echo servers in every backend for every target port of the table, both families.
void startServers(Bed& bed) {
  bed.sctp = sctpSupported(bed.topo->backend(1));
  std::vector<std::pair<Protocol, uint16_t>> targets = {
      {Protocol::kTCP, 80}, {Protocol::kTCP, 8443}, {Protocol::kTCP, 5353}, {Protocol::kUDP, 53}};
  if (bed.sctp) targets.push_back({Protocol::kSCTP, 53});
  for (int i = 1; i <= kBackends; ++i)
    for (IPFamily f : {IPFamily::kV4, IPFamily::kV6})
      for (auto [proto, port] : targets) {
        auto s = Server::start(bed.topo->backend(i), proto, f, port, backendId(i));
        REQUIRE_MESSAGE(s.isOk(), s.status().toString());
        bed.servers.push_back(std::move(s).value());
      }
}

Bed makeBed() {
  Bed bed;
  auto topo = Topology::create({.backends = kBackends, .ipv6 = true, .externalClient = true});
  REQUIRE_MESSAGE(topo.isOk(), topo.status().toString());
  bed.topo = std::move(topo).value();
  auto backend = nft::NetlinkBackend::open({bed.topo->node().path()});
  REQUIRE_MESSAGE(backend.isOk(), backend.status().toString());
  bed.backend = std::move(backend).value();
  // nft's reject sends its ICMP errors through icmp_send(), which rate-limits them per
  // destination host (a burst of 6, then one per icmp_ratelimit ms): the table sends the pod
  // client far more rejects than that, so the node's limit is lifted (both sysctls are per netns).
  REQUIRE(setSysctl(bed.topo->node(), "net.ipv4.icmp_ratelimit", "0").isOk());
  REQUIRE(setSysctl(bed.topo->node(), "net.ipv6.icmp.ratelimit", "0").isOk());
  startServers(bed);
  return bed;
}

// The table's addresses are the testbed's (scenarios.h cannot include the testbed).
void checkAddressesAgree(IPFamily f) {
  CHECK(nodeIP(f) == Topology::nodeIP(f));
  CHECK(nodePodGatewayIP(f) == Topology::podGatewayIP(f));
  CHECK(nodeExternalIP(f) == Topology::nodeExtIP(f));
  CHECK(podCIDR(f) == Topology::podCIDR(f));
  CHECK(podClientIP(f) == Topology::clientIP(f));
  CHECK(externalClientIP(f) == Topology::extIP(f));
  CHECK(externalClientAltIP(f) == Topology::extAltIP(f));
  for (int i = 1; i <= kBackends; ++i) CHECK(backendIP(i, f) == Topology::backendIP(i, f));
  CHECK(Topology::serviceCIDR(f).contains(clusterIP(f)));
}

const Netns& clientNs(const Bed& bed, Client c) {
  switch (c) {
    case Client::kPod: return bed.topo->client();
    case Client::kNode: return bed.topo->node();
    case Client::kExternal:
    case Client::kExternalOutsideRanges: return bed.topo->ext();
    case Client::kEndpoint1: return bed.topo->backend(1);
  }
  return bed.topo->node();
}

ProbeResult probeOnce(const Bed& bed, const Check& c, IPFamily f, const IPAddress& dst, uint16_t port,
                      std::chrono::milliseconds timeout) {
  ProbeOptions opts;
  opts.timeout = timeout;
  if (c.from == Client::kExternalOutsideRanges) opts.localAddress = externalClientAltIP(f);
  return probe(clientNs(bed, c.from), c.protocol, dst, port, opts);
}

// One answered probe: by one of the expected backends, with the expected source seen.
std::string checkAnswer(const ProbeResult& r, const Check& c, IPFamily f) {
  REQUIRE_MESSAGE(r.answered(), r.toString());
  int b = 0;
  for (int i : c.backends)
    if (r.backendId == backendId(i)) b = i;
  CHECK_MESSAGE(b != 0, "unexpected backend: " << r.toString());
  if (c.source == SeenSource::kClient)
    CHECK_MESSAGE(r.seenSource == clientAddress(c.from, f), "expected the client's address: " << r.toString());
  if (c.source == SeenSource::kNode)
    CHECK_MESSAGE(r.seenSource == nodePodGatewayIP(f), "expected the node's (masquerade) address: " << r.toString());
  return r.backendId;
}

void checkSticky(const Bed& bed, const Scenario& s, const Check& c, IPFamily f, const IPAddress& dst,
                 uint16_t port) {
  const auto timeout = std::chrono::seconds(s.service.affinitySeconds);
  std::string first = checkAnswer(probeOnce(bed, c, f, dst, port, kAnswerTimeout), c, f);
  for (int i = 0; i < 12; ++i) CHECK(checkAnswer(probeOnce(bed, c, f, dst, port, kAnswerTimeout), c, f) == first);
  bool moved = false;
  for (int round = 0; round < 14 && !moved; ++round) {
    std::this_thread::sleep_for(timeout + 300ms);  // no traffic for longer than the timeout
    std::string now = checkAnswer(probeOnce(bed, c, f, dst, port, kAnswerTimeout), c, f);
    // Sticky again at once, to whatever was chosen now.
    for (int i = 0; i < 3; ++i) CHECK(checkAnswer(probeOnce(bed, c, f, dst, port, kAnswerTimeout), c, f) == now);
    moved = now != first;
  }
  CHECK_MESSAGE(moved, "the client never got a new endpoint after the affinity timeout");
}

void runCheck(const Bed& bed, const Scenario& s, const Check& c, IPFamily f) {
  const IPAddress dst = destAddress(c.to, f);
  const uint16_t port = destPort(s, c);
  INFO(fmt::format("{} → {} {}:{}/{} ({})", clientName(c.from), destName(c.to), dst.toString(), port,
                   protocolName(c.protocol), familyName(f)));
  if (c.protocol == Protocol::kSCTP && !bed.sctp) {
    MESSAGE("skipped: this kernel has no SCTP sockets (nftables and conntrack do handle SCTP)");
    return;
  }
  switch (c.outcome) {
    case Outcome::kAnswered: {
      if (c.sticky) return checkSticky(bed, s, c, f, dst, port);
      const int count = c.backends.size() > 1 ? 36 : 6;
      std::set<std::string> seen;
      for (int i = 0; i < count; ++i) seen.insert(checkAnswer(probeOnce(bed, c, f, dst, port, kAnswerTimeout), c, f));
      for (int b : c.backends) CHECK_MESSAGE(seen.count(backendId(b)) == 1, "backend b" << b << " never answered");
      break;
    }
    case Outcome::kRejected:
      for (int i = 0; i < 2; ++i) {
        const auto r = probeOnce(bed, c, f, dst, port, kAnswerTimeout);
        CHECK_MESSAGE(r.kind == ProbeResult::kRefused, "expected an immediate refusal: " << r.toString());
      }
      break;
    case Outcome::kDropped: {
      const auto r = probeOnce(bed, c, f, dst, port, kDropTimeout);
      CHECK_MESSAGE(r.kind == ProbeResult::kTimeout, "expected a silent drop: " << r.toString());
      break;
    }
    case Outcome::kNotServed: {
      const auto r = probeOnce(bed, c, f, dst, port, kDropTimeout);
      CHECK_MESSAGE(!r.answered(), "expected no backend to answer: " << r.toString());
      break;
    }
  }
}

void runTable(IPFamily f) {
  Bed bed = makeBed();
  checkAddressesAgree(f);
  for (const Scenario& s : scenarios()) {
    INFO(s.name);
    Snapshot snap = makeSnapshot(s, f);
    DataPlane dp(makeConfig(s, f), *bed.backend);
    auto r = dp.sync(snap);
    REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
    CHECK_MESSAGE(dp.problems().empty(), "unexpected problems for " << s.name);
    for (const Check& c : s.checks) runCheck(bed, s, c, f);
  }
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

TEST_CASE("kernel: conformance — every service-semantics §8 scenario with real IPv4 packets") { runTable(IPFamily::kV4); }

TEST_CASE("kernel: conformance — every service-semantics §8 scenario with real IPv6 packets") { runTable(IPFamily::kV6); }

// What the planner writes for the richer Services (external dispatch, source ranges, affinity
// sets, NodePorts, count-gated slot chains with their whole window) is printed back by `nft`
// rule for rule: nothing nft cannot decompile (§7).
TEST_CASE("kernel: conformance — nft prints every rule of the external, firewall, affinity and count-gated chains") {
  Bed bed = makeBed();
  const std::pair<IPFamily, uint32_t> cases[] = {
      {IPFamily::kV4, 30}, {IPFamily::kV6, 30}, {IPFamily::kV4, 0}, {IPFamily::kV6, 0}};  // family, affinity
  for (const auto& [f, affinity] : cases) {
    CAPTURE(familyName(f));
    CAPTURE(affinity);
    Snapshot snap;
    Scenario s;
    s.service.type = ServiceType::kLoadBalancer;
    s.service.ports = {{"http", Protocol::kTCP, 80, 80, kNodePortNumber}};
    s.service.externalIP = s.service.loadBalancerIP = s.service.sourceRanges = true;
    s.service.externalPolicy = TrafficPolicy::kLocal;
    s.service.affinitySeconds = affinity;
    s.service.endpoints = {{1, true}, {2, false}};
    snap = makeSnapshot(s, f);
    const ProxyConfig cfg = makeConfig(s, f);
    DataPlane dp(cfg, *bed.backend);
    auto r = dp.sync(snap);
    REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
    while (dp.narrowChains() > 0) REQUIRE(dp.widen(10).status.isOk());
    auto listing = execIn(bed.topo->node(), {"nft", "list", "table", f == IPFamily::kV4 ? "ip" : "ip6", "sluice"});
    REQUIRE_MESSAGE(listing.isOk(), listing.status().toString());
    std::set<std::string> lines;
    std::istringstream in(*listing);
    for (std::string line; std::getline(in, line);) lines.insert(trim(line));
    size_t rules = 0;
    for (const auto& [id, fragment] : dp.planner().fragments())
      for (const auto& chain : fragment.chains)
        for (const auto& rule : chain.rules(cfg.table())) {
          ++rules;
          CHECK_MESSAGE(lines.count(rule.text) == 1, "nft does not print: " << rule.text << "\n" << *listing);
        }
    for (const auto& rule : planBase(cfg).rules)
      CHECK_MESSAGE(lines.count(rule.text) == 1, "nft does not print: " << rule.text << "\n" << *listing);
    if (affinity) {
      CHECK(rules >= 8);  // ext, fw, and two affinity DNAT chains
      CHECK(listing->find("flags dynamic,timeout") != std::string::npos);
      CHECK(listing->find("timeout 30s") != std::string::npos);
    } else {
      // ext, fw, svc- with counts 2, 1, 3 and local- with counts 1, 2.
      CHECK(rules >= 8);
      CHECK(listing->find("typeof numgen random mod 1 . numgen random mod 1") != std::string::npos);
      CHECK(listing->find("@slot-counts dnat") != std::string::npos);
    }
    nft::Transaction drop;
    drop.destroy(nft::Table{cfg.table(), {}});
    REQUIRE(bed.backend->apply(drop).isOk());
  }
}

