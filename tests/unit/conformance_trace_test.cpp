// Fast conformance: the scenario table of service-semantics §8 (tests/conformance/scenarios.h,
// the very table the real-kernel test tests/integration/conformance_test.cpp sends packets
// through) programmed through DataPlane into a FakeBackend, and every check followed by the
// packet tracer (sluice/nft/tracer.h), for IPv4 and IPv6, in milliseconds.
//
// The kernel layer's notions, mapped onto TracePacket as the testbed Topology realises them:
//   - pod client P and endpoint b1 (hairpin): arrive on the pod bridge (prerouting, iif br0);
//   - external client E: arrives on the node's external link (prerouting, iif vext), from
//     203.0.113.2 or, outside the LB source ranges, 198.51.100.2;
//   - the node N: a local process (output hook) whose source is the node IP, since the node's
//     default route leads out of the device that carries it;
//   - the node's addresses (every address of the node namespace) are TracePacket::localAddresses,
//     so a NodePort destination is local and a DNAT to a backend is forwarded;
//   - local vs remote endpoint is only the endpoint's nodeName, as in the kernel layer (both sit
//     behind the same bridge there).
// Expectations, as the kernel layer asserts them:
//   - answered by exactly `backends`: every outcome accepted, forwarded (not delivered to the
//     node), and the set of DNAT targets is exactly those backends at the port's target port;
//   - the source a backend sees: masquerade rewrites it to the address of the interface toward
//     the backends (the pod gateway, the kernel's kNode); without it the client's own address;
//   - rejected / dropped: the disposition of every outcome; not served: no DNAT at all.
//   - sticky (ClientIP affinity): the tracer keeps no state between traces, so "a connection
//     within the timeout" is the ruleset with the client recorded in one endpoint's affinity
//     sets (as the first connection's `update` leaves it), and "after the timeout" the ruleset
//     without it. Time itself is the kernel layer's business.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../conformance/scenarios.h"
#include "sluice/dataplane.h"
#include "sluice/nft/tracer.h"
#include "sluice/nft/transaction.h"
#include "sluice/planner.h"

using namespace sluice;
using namespace sluice::conformance;

namespace {

// Interface names of lib/testbed's Topology (Topology::kBridge, kExtDevice); the unit tests do
// not link the testbed.
constexpr const char* kPodBridge = "br0";
constexpr const char* kExtDevice = "vext";

bool contains(const std::vector<IPAddress>& v, const IPAddress& a) { return std::find(v.begin(), v.end(), a) != v.end(); }

nft::TracePacket packetFor(const Scenario& s, const Check& c, IPFamily f) {
  nft::TracePacket p;
  p.protocol = c.protocol;
  p.saddr = clientAddress(c.from, f);
  p.daddr = destAddress(c.to, f);
  p.dport = destPort(s, c);
  p.localAddresses = nodeAddresses(f);
  p.daddrLocal = contains(p.localAddresses, p.daddr);
  switch (c.from) {
    case Client::kNode: p.entry = nft::Entry::kOutput; break;
    case Client::kPod:
    case Client::kEndpoint1: p.iifname = kPodBridge; break;
    case Client::kExternal:
    case Client::kExternalOutsideRanges: p.iifname = kExtDevice; break;
  }
  return p;
}

std::set<nft::NatTarget> expectedTargets(const Scenario& s, const Check& c, IPFamily f,
                                         const std::set<int>& backends) {
  std::set<nft::NatTarget> out;
  for (int b : backends) out.insert({backendIP(b, f), targetPort(s, c)});
  return out;
}

// Which backend a DNAT target is (0: none of the table's).
int backendOf(const nft::NatTarget& t, IPFamily f) {
  for (int i = 1; i <= 3; ++i)
    if (t.address == backendIP(i, f)) return i;
  return 0;
}

// The answered-check assertions on one trace: exactly `backends`, forwarded, with the expected
// source seen.
void checkAnswered(const nft::Trace& t, const Scenario& s, const Check& c, IPFamily f, const std::set<int>& backends) {
  CHECK_MESSAGE(t.disposition() == nft::Disposition::kAccepted, t.toString());
  CHECK_MESSAGE(t.dnatTargets() == expectedTargets(s, c, f, backends), t.toString());
  for (const auto& o : t.outcomes) {
    CHECK_MESSAGE(o.dnat.has_value(), "an outcome without DNAT: " << o.summary());
    CHECK_MESSAGE(!o.delivered, "delivered to the node, not forwarded to a backend: " << o.summary());
    CHECK_MESSAGE(!o.snat.has_value(), "unexpected SNAT: " << o.summary());
    if (c.source == SeenSource::kClient) CHECK_MESSAGE(!o.masqueraded(), "expected the client's address: " << o.summary());
    if (c.source == SeenSource::kNode)
      CHECK_MESSAGE(o.masqueraded(), "expected the node's (masquerade) address: " << o.summary());
  }
}

nft::Trace mustTrace(const nft::FakeBackend& fake, const nft::TracePacket& p) {
  auto t = nft::trace(fake, p);
  REQUIRE_MESSAGE(t.isOk(), t.status().toString());
  return *t;
}

// The ruleset after a first connection from `client` was sent to `backend`: the client's address
// in every affinity set of that endpoint (the cluster-wide and the local DNAT chain each have one).
nft::FakeBackend afterFirstConnection(const nft::FakeBackend& fake, const DataPlane& dp, const ProxyConfig& cfg,
                                      const IPAddress& client, const nft::NatTarget& backend) {
  nft::FakeBackend copy = fake;
  nft::Transaction tx;
  size_t sets = 0;
  for (const auto& [id, fragment] : dp.planner().fragments())
    for (const auto& chain : fragment.chains) {
      if (chain.affinitySeconds == 0) continue;
      for (const auto& [ip, port] : chain.slots) {
        if (nft::NatTarget{ip, port} != backend) continue;
        nft::Element e;
        e.key = nft::Bytes(client.bytes(), client.bytes() + client.size());
        tx.add(nft::Elements{cfg.table(), names::affinitySet(chain.name, ip, port, chain.affinitySeconds), {e}});
        ++sets;
        break;  // slots may repeat an endpoint
      }
    }
  REQUIRE_MESSAGE(sets > 0, "no affinity set for " << backend.toString());
  const Status st = copy.apply(tx);
  REQUIRE_MESSAGE(st.isOk(), st.toString());
  return copy;
}

void checkSticky(const nft::FakeBackend& fake, const DataPlane& dp, const ProxyConfig& cfg, const Scenario& s,
                 const Check& c, IPFamily f, const nft::TracePacket& p) {
  // The first connection (and any after the timeout): any of the backends, recording the client.
  const nft::Trace first = mustTrace(fake, p);
  checkAnswered(first, s, c, f, c.backends);
  for (const auto& target : first.dnatTargets()) {
    CAPTURE(target.toString());
    const nft::Trace again = mustTrace(afterFirstConnection(fake, dp, cfg, p.saddr, target), p);
    checkAnswered(again, s, c, f, {backendOf(target, f)});
    CHECK(again.outcomes.size() == 1);
  }
}

void runCheck(const nft::FakeBackend& fake, const DataPlane& dp, const ProxyConfig& cfg, const Scenario& s,
              const Check& c, IPFamily f) {
  const nft::TracePacket p = packetFor(s, c, f);
  INFO(fmt::format("{} → {} {}:{}/{} ({})", clientName(c.from), destName(c.to), p.daddr.toString(), p.dport,
                   protocolName(c.protocol), familyName(f)));
  if (c.outcome == Outcome::kAnswered && c.sticky) return checkSticky(fake, dp, cfg, s, c, f, p);
  const nft::Trace t = mustTrace(fake, p);
  switch (c.outcome) {
    case Outcome::kAnswered: checkAnswered(t, s, c, f, c.backends); break;
    case Outcome::kRejected: CHECK_MESSAGE(t.disposition() == nft::Disposition::kRejected, t.toString()); break;
    case Outcome::kDropped: CHECK_MESSAGE(t.disposition() == nft::Disposition::kDropped, t.toString()); break;
    case Outcome::kNotServed:
      // No backend answers: nothing is DNATed (the node's own stack may answer or not).
      CHECK_MESSAGE(t.dnatTargets().empty(), t.toString());
      break;
  }
}

void runTable(IPFamily f) {
  size_t checks = 0;
  for (const Scenario& s : scenarios()) {
    INFO(s.name);
    nft::FakeBackend fake;
    const ProxyConfig cfg = makeConfig(s, f);
    DataPlane dp(cfg, fake);
    Snapshot snap = makeSnapshot(s, f);
    auto r = dp.sync(snap);
    REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
    CHECK_MESSAGE(dp.problems().empty(), "unexpected problems for " << s.name);
    for (const Check& c : s.checks) {
      runCheck(fake, dp, cfg, s, c, f);
      ++checks;
    }
  }
  CHECK(checks > 100);  // the whole table ran
}

}  // namespace

TEST_CASE("conformance trace: every service-semantics §8 scenario through the tracer, IPv4") { runTable(IPFamily::kV4); }

TEST_CASE("conformance trace: every service-semantics §8 scenario through the tracer, IPv6") { runTable(IPFamily::kV6); }

// The mapping onto TracePacket decides what the table can catch: an external client and the node
// must reach the same LB IP differently (one local endpoint with the client kept, versus both
// masqueraded), or the client mapping is wrong and the table's checks would not tell them apart.
TEST_CASE("conformance trace: external and node clients of one eTP Local LB IP are told apart") {
  const std::vector<Scenario> table = scenarios();
  const auto it = std::find_if(table.begin(), table.end(),
                               [](const Scenario& s) { return s.name.starts_with("§8.5 eTP Local: pods"); });
  REQUIRE(it != table.end());
  const IPFamily f = IPFamily::kV4;
  nft::FakeBackend fake;
  DataPlane dp(makeConfig(*it, f), fake);
  Snapshot snap = makeSnapshot(*it, f);
  REQUIRE(dp.sync(snap).status.isOk());
  // External → LB IP under eTP Local: the local endpoint only, the client's address kept.
  const Check ext{Client::kExternal, Dest::kLoadBalancerIP, Protocol::kTCP, 80, Outcome::kAnswered, {1},
                  SeenSource::kClient};
  const nft::Trace t = mustTrace(fake, packetFor(*it, ext, f));
  CHECK(t.dnatTargets() == expectedTargets(*it, ext, f, {1}));
  CHECK(t.dnatTargets() != expectedTargets(*it, ext, f, {1, 2}));
  CHECK_FALSE(t.anyMasqueraded());
  // The node reaching the same LB IP is masqueraded and reaches both.
  const Check node{Client::kNode, Dest::kLoadBalancerIP, Protocol::kTCP, 80, Outcome::kAnswered, {1, 2},
                   SeenSource::kNode};
  const nft::Trace n = mustTrace(fake, packetFor(*it, node, f));
  CHECK(n.dnatTargets() == expectedTargets(*it, node, f, {1, 2}));
  CHECK(n.allMasqueraded());
  CHECK(n.outcomes.size() == 2);
}
