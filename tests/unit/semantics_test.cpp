// Planner tests for the Service semantics beyond ClusterIP (service-semantics §2-§6): NodePort
// addresses, external dispatch chains, source ranges, topology hints, affinity, IPv6, conflicts
// between Services on external destinations. The packets themselves are tested for real in
// tests/integration/conformance_test.cpp.
#include <doctest/doctest.h>

#include <algorithm>

#include "builders.h"
#include "sluice/dataplane.h"
#include "sluice/planner.h"

using namespace sluice;
using namespace sluice::testing;

namespace {

IPPrefix prefix(const char* s) { return IPPrefix::parse(s).value(); }

const FragmentChain* chainWithPrefix(const ServiceFragment& f, const std::string& prefix) {
  for (const auto& c : f.chains)
    if (c.name.rfind(prefix, 0) == 0) return &c;
  return nullptr;
}

std::vector<std::string> ruleTexts(const FragmentChain& c, const ProxyConfig& cfg) {
  std::vector<std::string> out;
  for (const auto& r : c.rules(cfg.table())) out.push_back(r.text);
  return out;
}

bool hasElement(const ServiceFragment& f, SharedSet set, std::optional<nft::VerdictCode> code = std::nullopt) {
  return std::any_of(f.elements.begin(), f.elements.end(), [&](const FragmentElement& e) {
    return e.set == set && (!code || (e.element.verdict && e.element.verdict->code == *code));
  });
}

// A snapshot of one Service and its slices.
Snapshot snapshotOf(const Service& svc, const std::map<ObjectName, EndpointSlice>& slices) {
  Snapshot s;
  s.upsertService(svc);
  for (const auto& [_, sl] : slices) s.upsertSlice(sl);
  return s;
}

Service lbService(const char* name, const char* cip, const char* lbIP) {
  Service s = clusterIPService("ns", name, cip, {{"http", Protocol::kTCP, 80, 30080}});
  s.type = ServiceType::kLoadBalancer;
  s.loadBalancerIngress = {{ip(lbIP), false}};
  return s;
}

}  // namespace

TEST_CASE("semantics: NodePort addresses follow --nodeport-addresses, never loopback") {
  struct Row {
    const char* name;
    std::vector<IPPrefix> cidrs;
    IPFamily family;
    std::vector<IPAddress> want;
  };
  const std::vector<IPAddress> nodeIPs = {ip("127.0.0.1"), ip("198.18.0.1"), ip("203.0.113.1"), ip("::1"),
                                          ip("fd00::1"), ip("fd00:2::1")};
  const std::vector<Row> rows = {
      {"default: the primary IP of the family", {}, IPFamily::kV4, {ip("198.18.0.1")}},
      {"default, IPv6", {}, IPFamily::kV6, {ip("fd00::1")}},
      {"a CIDR selects", {prefix("203.0.113.0/24")}, IPFamily::kV4, {ip("203.0.113.1")}},
      {"no CIDR of this family: all of it", {prefix("203.0.113.0/24")}, IPFamily::kV6, {ip("fd00::1"), ip("fd00:2::1")}},
      {"0.0.0.0/0 still excludes loopback", {prefix("0.0.0.0/0")}, IPFamily::kV4, {ip("198.18.0.1"), ip("203.0.113.1")}},
      {"a CIDR matching nothing", {prefix("192.0.2.0/24")}, IPFamily::kV4, {}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    ProxyConfig cfg;
    cfg.family = row.family;
    cfg.nodeIPs = nodeIPs;
    cfg.nodePortAddresses = row.cidrs;
    CHECK(cfg.nodePortIPs() == row.want);
  }
}

TEST_CASE("semantics: topology hints narrow the cluster set only when every ready endpoint has them") {
  auto ep = [](const char* a, bool ready, bool hinted, bool here) {
    ResolvedEndpoint e;
    e.ip = ip(a);
    e.port = 80;
    e.ready = ready;
    e.hinted = hinted;
    e.hintedHere = here;
    return e;
  };
  auto clusterOf = [](const std::vector<ResolvedEndpoint>& eps) {
    std::vector<std::string> out;
    for (const auto& e : categorizeEndpoints(eps).cluster) out.push_back(e.ip.toString());
    return out;
  };
  using V = std::vector<std::string>;
  // All hinted, one here: only that one.
  CHECK(clusterOf({ep("198.18.1.1", true, true, true), ep("198.18.1.2", true, true, false)}) == V{"198.18.1.1"});
  // One ready endpoint without hints: no filtering.
  CHECK(clusterOf({ep("198.18.1.1", true, true, true), ep("198.18.1.2", true, false, false)}) ==
        V{"198.18.1.1", "198.18.1.2"});
  // Nothing hinted for this node: the filter would leave nothing, so it is not applied.
  CHECK(clusterOf({ep("198.18.1.1", true, true, false), ep("198.18.1.2", true, true, false)}) ==
        V{"198.18.1.1", "198.18.1.2"});
  // A not-ready endpoint without hints does not matter.
  CHECK(clusterOf({ep("198.18.1.1", true, true, true), ep("198.18.1.2", false, false, false)}) == V{"198.18.1.1"});

  // resolveEndpoints reads the hints the Service asks for.
  Service svc = clusterIPService("ns", "t", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}});
  Endpoint here = endpoint("198.18.1.1"), there = endpoint("198.18.1.2");
  here.hints = EndpointHints({"zone-a"}, {"node-b"});
  there.hints = EndpointHints({"zone-b"}, {"node-a"});
  std::map<ObjectName, EndpointSlice> slices = {
      {{"ns", "t-1"}, slice("ns", "t-1", "t", {{"", Protocol::kTCP, 80}}, {here, there})}};
  ProxyConfig cfg = config();
  cfg.zone = "zone-a";
  auto planned = [&] {
    std::vector<std::string> out;
    auto eps = resolveEndpoints(svc, svc.ports[0], slices, cfg, nullptr);
    for (const auto& e : categorizeEndpoints(eps).cluster) out.push_back(e.ip.toString());
    return out;
  };
  CHECK(planned() == V{"198.18.1.1", "198.18.1.2"});  // no trafficDistribution: hints ignored
  svc.trafficDistribution = "PreferClose";
  CHECK(planned() == V{"198.18.1.1"});
  svc.trafficDistribution = "PreferSameZone";
  CHECK(planned() == V{"198.18.1.1"});
  svc.trafficDistribution = "PreferSameNode";
  CHECK(planned() == V{"198.18.1.2"});
}

TEST_CASE("semantics: external dispatch chains for eTP Cluster and eTP Local") {
  Service svc = lbService("web", "198.18.100.1", "198.51.100.10");
  svc.externalIPs = {ip("203.0.113.10")};
  std::map<ObjectName, EndpointSlice> slices = {
      {{"ns", "web-1"},
       slice("ns", "web-1", "web", {{"http", Protocol::kTCP, 8080}},
             {endpoint("198.18.1.1", true, true, false, "node-a"), endpoint("198.18.1.2", true, true, false, "node-b")})}};
  const ProxyConfig cfg = config();

  ServiceFragment f = planService(svc, slices, cfg);
  const FragmentChain* ext = chainWithPrefix(f, "ext-");
  REQUIRE(ext);
  CHECK(ruleTexts(*ext, cfg) ==
        std::vector<std::string>{"meta mark set meta mark | 0x00004000 goto " + names::serviceChain(svc.id, Protocol::kTCP, "http")});
  CHECK_FALSE(chainWithPrefix(f, "local-"));  // nothing uses local endpoints
  CHECK(hasElement(f, SharedSet::kNodePorts, nft::VerdictCode::kGoto));

  svc.externalTrafficPolicy = TrafficPolicy::kLocal;
  f = planService(svc, slices, cfg);
  ext = chainWithPrefix(f, "ext-");
  REQUIRE(ext);
  const std::string cluster = names::serviceChain(svc.id, Protocol::kTCP, "http");
  const std::string local = names::serviceChain(svc.id, Protocol::kTCP, "http", "local-");
  CHECK(ruleTexts(*ext, cfg) == std::vector<std::string>{"ip saddr 198.18.0.0/16 goto " + cluster,
                                                         "fib saddr type local meta mark set meta mark | 0x00004000 goto " + cluster,
                                                         "goto " + local});
  REQUIRE(chainWithPrefix(f, "local-"));
  CHECK(chainWithPrefix(f, "local-")->slots.size() == 1);
  CHECK_FALSE(hasElement(f, SharedSet::kNoEndpointServices));

  // No local endpoint: no local chain; external destinations also get a drop entry for what the
  // short-circuits do not catch.
  slices.begin()->second.endpoints.erase(slices.begin()->second.endpoints.begin());
  f = planService(svc, slices, cfg);
  CHECK_FALSE(chainWithPrefix(f, "local-"));
  CHECK(hasElement(f, SharedSet::kNoEndpointServices, nft::VerdictCode::kDrop));
  CHECK(hasElement(f, SharedSet::kNoEndpointNodePorts, nft::VerdictCode::kDrop));

  // No endpoint at all: every destination rejects, no chains.
  slices.clear();
  f = planService(svc, slices, cfg);
  CHECK(f.chains.empty());
  CHECK(hasElement(f, SharedSet::kNoEndpointNodePorts, nft::VerdictCode::kGoto));
  CHECK_FALSE(hasElement(f, SharedSet::kServiceIPs));
}

TEST_CASE("semantics: LB source ranges, ipMode Proxy, and a bad prefix") {
  Service svc = lbService("web", "198.18.100.1", "198.51.100.10");
  svc.loadBalancerIngress.push_back({ip("198.51.100.11"), true});  // ipMode Proxy: not ours
  svc.loadBalancerSourceRanges = {prefix("203.0.113.0/24"), prefix("fd00:2::/64"), IPPrefix(ip("192.0.2.0"), 40)};
  std::map<ObjectName, EndpointSlice> slices = {
      {{"ns", "web-1"}, slice("ns", "web-1", "web", {{"http", Protocol::kTCP, 8080}}, {endpoint("198.18.1.1")})}};
  const ProxyConfig cfg = config();
  ServiceFragment f = planService(svc, slices, cfg);
  const FragmentChain* fw = chainWithPrefix(f, "fw-");
  REQUIRE(fw);
  CHECK(ruleTexts(*fw, cfg) == std::vector<std::string>{"ip saddr 203.0.113.0/24 return", "drop"});
  size_t firewall = 0, dispatch = 0;
  for (const auto& e : f.elements) {
    if (e.set == SharedSet::kFirewallIPs) ++firewall;
    if (e.set == SharedSet::kServiceIPs) ++dispatch;
  }
  CHECK(firewall == 1);  // only the VIP-mode LB IP
  CHECK(dispatch == 2);  // ClusterIP and that LB IP
  REQUIRE(f.problems.size() == 1);
  CHECK(f.problems[0].field == "spec.loadBalancerSourceRanges[2]");
}

TEST_CASE("semantics: ClientIP affinity uses one dynamic set per endpoint with the timeout") {
  Service svc = clusterIPService("ns", "sticky", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}});
  svc.sessionAffinity = SessionAffinity::kClientIP;
  svc.affinityTimeoutSeconds = 60;
  std::map<ObjectName, EndpointSlice> slices = {
      {{"ns", "sticky-1"},
       slice("ns", "sticky-1", "sticky", {{"", Protocol::kTCP, 8080}},
             {endpoint("198.18.1.1"), endpoint("198.18.1.2"), endpoint("198.18.1.3")})}};
  const ProxyConfig cfg = config();
  ServiceFragment f = planService(svc, slices, cfg);
  REQUIRE(f.chains.size() == 1);
  const FragmentChain& c = f.chains[0];
  CHECK_FALSE(c.usesSlotMap());
  auto sets = c.sets(cfg.table());
  REQUIRE(sets.size() == 3);
  for (const auto& s : sets) {
    CHECK(s.timeoutMs == 60000);
    CHECK(s.flags == (nft::kSetTimeout | nft::kSetEval));
  }
  const std::string a0 = sets[0].name, a1 = sets[1].name, a2 = sets[2].name;
  CHECK(ruleTexts(c, cfg) ==
        std::vector<std::string>{
            "meta l4proto tcp ip saddr @" + a0 + " update @" + a0 + " { ip saddr } dnat to 198.18.1.1:8080",
            "meta l4proto tcp ip saddr @" + a1 + " update @" + a1 + " { ip saddr } dnat to 198.18.1.2:8080",
            "meta l4proto tcp ip saddr @" + a2 + " update @" + a2 + " { ip saddr } dnat to 198.18.1.3:8080",
            "meta l4proto tcp numgen random mod 3 0 update @" + a0 + " { ip saddr } dnat to 198.18.1.1:8080",
            "meta l4proto tcp numgen random mod 2 0 update @" + a1 + " { ip saddr } dnat to 198.18.1.2:8080",
            "meta l4proto tcp update @" + a2 + " { ip saddr } dnat to 198.18.1.3:8080",
            "meta l4proto tcp dnat to 198.18.1.3:8080"});
  // A different timeout is a different set (a set's timeout cannot be changed in place).
  CHECK(names::affinitySet(c.name, ip("198.18.1.1"), 8080, 60) != names::affinitySet(c.name, ip("198.18.1.1"), 8080, 61));

  // Partial syncs create the sets before their rules and delete them after.
  nft::FakeBackend fake;
  DataPlane dp(cfg, fake);
  Snapshot s = snapshotOf(svc, slices);
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(fake.dump().find("flags dynamic,timeout\n\t\ttimeout 60s") != std::string::npos);
  svc.affinityTimeoutSeconds = 30;
  s.upsertService(svc);
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(fake.dump().find("timeout 30s") != std::string::npos);
  CHECK(fake.dump().find("timeout 60s") == std::string::npos);
  svc.sessionAffinity = SessionAffinity::kNone;
  s.upsertService(svc);
  auto r = dp.sync(s);
  REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
  CHECK_FALSE(r.full);
  CHECK(fake.dump().find("affinity-") == std::string::npos);
}

TEST_CASE("semantics: an IPv6 table mirrors the IPv4 layout") {
  Service svc = lbService("web", "fd00:100::1", "fd00:200::1");
  svc.clusterIPs.push_back(ip("198.18.100.1"));  // dual-stack: each table takes its family
  svc.externalTrafficPolicy = TrafficPolicy::kLocal;
  std::map<ObjectName, EndpointSlice> slices = {
      {{"ns", "web-1"},
       slice("ns", "web-1", "web", {{"http", Protocol::kTCP, 8080}}, {endpoint("fd00:1::a", true, true, false, "node-a")})}};
  ProxyConfig cfg = config(IPFamily::kV6);
  cfg.nodeIPs = {ip("198.18.0.1"), ip("fd00::1")};
  cfg.serviceCIDRs = {prefix("fd00:100::/112"), prefix("198.19.0.0/16")};
  CHECK(cfg.table().family == nft::Family::kIPv6);
  nft::FakeBackend fake;
  DataPlane dp(cfg, fake);
  Snapshot s = snapshotOf(svc, slices);
  REQUIRE(dp.sync(s).status.isOk());
  const std::string dump = fake.dump();
  CHECK(dump.find("table ip6 sluice") != std::string::npos);
  CHECK(dump.find("ip6 saddr fd00:1::/64 goto svc-") != std::string::npos);
  CHECK(dump.find("element fd00::1\n") != std::string::npos);  // nodeport-ips
  CHECK(dump.find("ip6 daddr fd00:100::/112 drop") != std::string::npos);
  CHECK(dump.find("198.19.0.0") == std::string::npos);
  CHECK(dump.find("element fd00:200::1 . tcp . 80 : goto ext-") != std::string::npos);
  CHECK(dump.find("dnat ip6 to numgen random") != std::string::npos);
}

TEST_CASE("semantics: external destinations conflict like ClusterIPs, both Services are named") {
  nft::FakeBackend fake;
  ProxyConfig cfg = config();
  DataPlane dp(cfg, fake);
  Snapshot s;
  Service first = clusterIPService("ns", "zz-first", "198.18.100.1", {{"http", Protocol::kTCP, 80, 30080}});
  first.type = ServiceType::kNodePort;
  first.externalIPs = {ip("203.0.113.10")};
  s.upsertService(first);
  s.upsertSlice(slice("ns", "zz-first-1", "zz-first", {{"http", Protocol::kTCP, 80}}, {endpoint("198.18.1.1")}));
  REQUIRE(dp.sync(s).status.isOk());
  // A newcomer whose ClusterIP is the other's external IP, and one reusing its NodePort.
  s.upsertService(clusterIPService("ns", "aa-ip", "203.0.113.10", {{"", Protocol::kTCP, 80, 0}}));
  Service port = clusterIPService("ns", "ab-port", "198.18.100.3", {{"", Protocol::kTCP, 80, 30080}});
  port.type = ServiceType::kNodePort;
  s.upsertService(port);
  REQUIRE(dp.sync(s).status.isOk());
  auto problems = dp.problems();
  REQUIRE(problems.count({"ns", "aa-ip"}));
  REQUIRE(problems.count({"ns", "ab-port"}));
  CHECK(problems[{"ns", "aa-ip"}][0].toString() ==
        "Service ns/aa-ip spec.ports[0]: 203.0.113.10:80/TCP is already served by Service ns/zz-first; skipped until "
        "that conflict goes away");
  CHECK(problems[{"ns", "ab-port"}][0].toString().find("NodePort 30080/TCP is already served by Service ns/zz-first") !=
        std::string::npos);
  CHECK(fake.dump().find("element tcp . 30080 : goto ext-") != std::string::npos);
}
