#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "builders.h"
#include "sluice/dataplane.h"
#include "sluice/planner.h"

using namespace sluice;
using namespace sluice::testing;

namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Golden files live in tests/testdata; SLUICE_UPDATE_GOLDEN=1 rewrites them (review the diff!).
void checkGolden(const std::string& name, const std::string& actual) {
  const std::string path = std::string(SLUICE_TESTDATA_DIR) + "/" + name;
  if (std::getenv("SLUICE_UPDATE_GOLDEN")) {
    std::ofstream(path) << actual;
  }
  const std::string expected = readFile(path);
  REQUIRE_MESSAGE(!expected.empty(), "missing golden file " << path);
  CHECK(actual == expected);
}

// The demo-like input: a multi-port Service, a Service without endpoints, a terminating-only one.
Snapshot sampleSnapshot() {
  Snapshot s;
  s.upsertService(clusterIPService("shop", "web", "198.18.100.10",
                                   {{"http", Protocol::kTCP, 80, 0}, {"https", Protocol::kTCP, 443, 0},
                                    {"dns", Protocol::kUDP, 53, 0}, {"sctp", Protocol::kSCTP, 53, 0}}));
  s.upsertSlice(slice("shop", "web-1", "web",
                      {{"http", Protocol::kTCP, 8080}, {"https", Protocol::kTCP, 8443}, {"dns", Protocol::kUDP, 5353},
                       {"sctp", Protocol::kSCTP, 53}},
                      {endpoint("198.18.1.11"), endpoint("198.18.1.12", true, true, false, "node-a"),
                       endpoint("198.18.1.13", false, true, true)}));
  s.upsertService(clusterIPService("shop", "empty", "198.18.100.11", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertService(clusterIPService("shop", "leaving", "198.18.100.12", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("shop", "leaving-1", "leaving", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.21", false, true, true), endpoint("198.18.1.22", false, false, true)}));
  Service headless = clusterIPService("shop", "headless", "198.18.100.13", {{"", Protocol::kTCP, 80, 0}});
  headless.clusterIPs.clear();
  s.upsertService(headless);
  return s;
}

// The fake's dump with endpoint slot placement resolved: each Service chain's dnat rule is shown
// with the endpoints its slots hold, and the endpoints maps themselves are left out. Two plans
// that place slots differently but send traffic to the same endpoints compare equal.
std::string canonicalDump(const nft::FakeBackend& fake) {
  const auto* t = fake.table(nft::Family::kIPv4, "sluice");
  REQUIRE(t);
  std::string out;
  for (const auto& [name, set] : t->sets) {
    if (name.rfind("endpoints-", 0) == 0 || name == names::kSlotCounts) continue;
    out += "set " + name + ":";
    for (const auto& [key, e] : set.elements) {
      out += " " + fmt::format("{}", fmt::join(key, ","));
      if (e.verdict) out += "->" + e.verdict->chain + std::to_string(int(e.verdict->code));
    }
    out += "\n";
  }
  for (const auto& [name, cs] : t->chains) {
    out += "chain " + name + "\n";
    for (const auto& r : cs.rules) {
      // A count-gated rule is live only while its gate `slot base . count` is in slot-counts
      // (the window of dead neighbours depends on history); the last numgen and lookup are the
      // dnat's.
      std::vector<const nft::Numgen*> numgens;
      const nft::Numgen* ng = nullptr;
      const nft::Lookup* lk = nullptr;
      bool live = true;
      for (const auto& e : r.exprs) {
        if (auto* x = std::get_if<nft::Numgen>(&e)) numgens.push_back(ng = x);
        if (auto* x = std::get_if<nft::Lookup>(&e)) {
          lk = x;
          if (x->set == names::kSlotCounts) {
            REQUIRE(numgens.size() == 2);
            const auto key = nft::KeyBuilder().u32host(numgens[0]->offset).u32host(numgens[1]->offset).take();
            live = t->sets.at(names::kSlotCounts).elements.count(key) > 0;
          }
        }
      }
      if (!live) continue;
      if (!ng || !lk || lk->set.rfind("endpoints-", 0) != 0) {
        out += "  " + r.text + "\n";
        continue;
      }
      out += "  dnat to";
      const auto& elems = t->sets.at(lk->set).elements;
      for (uint32_t i = 0; i < ng->mod; ++i) {
        auto it = elems.find(nft::KeyBuilder().u32host(ng->offset + i).take());
        REQUIRE(it != elems.end());
        const auto& d = it->second.data;
        out += fmt::format(" {}:{}", IPAddress::fromV4Bytes(d.data()).toString(), (d[4] << 8) | d[5]);
      }
      out += "\n";
    }
  }
  return out;
}

}  // namespace

TEST_CASE("planner: endpoint categories follow the terminating fallbacks of service-semantics §2") {
  auto e = [](bool ready, bool serving, bool terminating, bool local) {
    ResolvedEndpoint r;
    r.ip = IPAddress::v4(198, 18, 1, 1);
    r.ready = ready;
    r.serving = serving;
    r.terminating = terminating;
    r.local = local;
    return r;
  };
  struct Case {
    const char* name;
    std::vector<ResolvedEndpoint> in;
    size_t cluster, local;
    bool has;
  };
  const Case cases[] = {
      {"none", {}, 0, 0, false},
      {"ready wins over terminating", {e(1, 1, 0, 0), e(0, 1, 1, 0)}, 1, 0, true},
      {"serving+terminating when no ready", {e(0, 1, 1, 0), e(0, 1, 1, 1)}, 2, 1, true},
      {"not serving is never used", {e(0, 0, 1, 0)}, 0, 0, false},
      {"local falls back independently", {e(1, 1, 0, 0), e(0, 1, 1, 1)}, 1, 1, true},
      {"local ready", {e(1, 1, 0, 1), e(1, 1, 0, 0)}, 2, 1, true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto s = categorizeEndpoints(c.in);
    CHECK(s.cluster.size() == c.cluster);
    CHECK(s.local.size() == c.local);
    CHECK(s.hasEndpoints == c.has);
  }
}

TEST_CASE("planner: Services that are not proxied") {
  ProxyConfig cfg = config();
  Service s = clusterIPService("ns", "x", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}});
  CHECK(skipReason(s, cfg).empty());
  Service headless = s;
  headless.clusterIPs.clear();
  CHECK_FALSE(skipReason(headless, cfg).empty());
  Service external = s;
  external.type = ServiceType::kExternalName;
  CHECK_FALSE(skipReason(external, cfg).empty());
  Service other = s;
  other.labels["service.kubernetes.io/service-proxy-name"] = "other";
  CHECK_FALSE(skipReason(other, cfg).empty());
  Service v6only = clusterIPService("ns", "x", "fd00::10", {{"", Protocol::kTCP, 80, 0}});
  CHECK_FALSE(skipReason(v6only, cfg).empty());
  CHECK(planService(headless, {}, cfg).chains.empty());
  CHECK(planService(headless, {}, cfg).elements.empty());
}

TEST_CASE("planner: chain names are kube-proxy style hash + readable key, within the kernel limit") {
  const std::string n = names::serviceChain({"testing", "service"}, Protocol::kTCP, "http");
  CHECK(n.rfind("svc-", 0) == 0);
  CHECK(n.size() == 4 + 8 + 1 + std::string("testing/service/tcp/http").size());
  CHECK(n.substr(13) == "testing/service/tcp/http");
  CHECK(n != names::serviceChain({"testing", "service"}, Protocol::kUDP, "http"));
  const std::string longName = names::serviceChain({std::string(63, 'n'), std::string(253, 's')}, Protocol::kTCP, "p");
  CHECK(longName.size() == 255);
}

TEST_CASE("planner: golden dump of a full sync against the fake") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s = sampleSnapshot();
  auto r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK(r.full);
  checkGolden("planner_sample.golden", fake.dump());
}

TEST_CASE("planner: ClusterIP masquerade marking: outside the pod CIDR, everything, or nothing") {
  auto servicesRules = [](const ProxyConfig& cfg) {
    std::vector<std::string> out;
    for (const auto& r : planBase(cfg).rules)
      if (r.chain == names::kServicesChain && r.text.find("nodeport") == std::string::npos) out.push_back(r.text);
    return out;
  };
  ProxyConfig cidr = config();
  CHECK(servicesRules(cidr) ==
        std::vector<std::string>{"ip saddr != 198.18.0.0/16 ip daddr @cluster-ips meta mark set meta mark | 0x00004000",
                                 "ip daddr . meta l4proto . th dport vmap @service-ips"});
  ProxyConfig all = config();
  all.masqueradeAll = true;
  CHECK(servicesRules(all) == std::vector<std::string>{"ip daddr @cluster-ips meta mark set meta mark | 0x00004000",
                                                       "ip daddr . meta l4proto . th dport vmap @service-ips"});
  ProxyConfig none = config();
  none.clusterCIDRs.clear();
  CHECK(servicesRules(none) == std::vector<std::string>{"ip daddr . meta l4proto . th dport vmap @service-ips"});
}

TEST_CASE("planner: endpoint slots are placed in the endpoints map, and keep their range while they fit") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  s.upsertService(clusterIPService("ns", "a", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertService(clusterIPService("ns", "b", "198.18.100.2", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1"), endpoint("198.18.1.2")}));
  s.upsertSlice(slice("ns", "b-1", "b", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.3")}));
  REQUIRE(dp.sync(s).status.isOk());
  // The full sync wrote one rule per chain; widening adds the rest of each window.
  CHECK(dp.narrowChains() == 2);
  REQUIRE(dp.widen(100).status.isOk());
  CHECK(dp.narrowChains() == 0);
  auto chainOf = [&](const char* svc) {
    return dp.planner().fragments().at({"ns", svc}).chains.at(0);
  };
  auto table = [&] { return fake.table(nft::Family::kIPv4, "sluice"); };
  // The rules of a chain with slot base B: one per count of the window, each gated by B . count.
  auto gatedRules = [](uint32_t base, uint32_t center, uint32_t low, uint32_t high) {
    const std::string b = base ? fmt::format(" offset {}", base) : "";
    std::vector<std::string> out;
    std::vector<uint32_t> counts{center};
    for (uint32_t c = low; c <= high; ++c)
      if (c != center) counts.push_back(c);
    for (uint32_t c : counts)
      out.push_back(fmt::format("meta l4proto tcp numgen random mod 1{} . numgen random mod 1 offset {} @slot-counts "
                                "dnat ip to numgen random mod {}{} map @endpoints-0",
                                b, c, c, b));
    return out;
  };
  auto rulesOf = [&](const std::string& chain) {
    std::vector<std::string> out;
    for (const auto& r : table()->chains.at(chain).rules) out.push_back(r.text);
    return out;
  };
  auto gates = [&] {
    std::set<std::pair<uint32_t, uint32_t>> out;
    for (const auto& [key, _] : table()->sets.at(names::kSlotCounts).elements) {
      uint32_t base = 0, count = 0;
      std::memcpy(&base, key.data(), 4);
      std::memcpy(&count, key.data() + 4, 4);
      out.emplace(base, count);
    }
    return out;
  };
  // Ranges are powers of two (at least 4) with room for one more endpoint (the window).
  const auto a = chainOf("a"), b = chainOf("b");
  CHECK(a.slotCapacity == 4);
  CHECK(b.slotCapacity == 4);
  CHECK(a.slotBase != b.slotBase);
  // Rules for 2 (first), 1 and 3 endpoints; the gate enables the one for 2.
  CHECK(rulesOf(a.name) == gatedRules(a.slotBase, 2, 1, 3));
  CHECK(gates() == std::set<std::pair<uint32_t, uint32_t>>{{a.slotBase, 2}, {b.slotBase, 1}});
  // A third endpoint: same range, same rules; the gate and one slot change, nothing else.
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.1"), endpoint("198.18.1.2"), endpoint("198.18.1.4")}));
  auto r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK(r.operations == 4);  // slot-counts: delete + add; endpoints-0: add; hairpin: add
  CHECK(rulesOf(a.name) == gatedRules(a.slotBase, 2, 1, 3));
  CHECK(gates() == std::set<std::pair<uint32_t, uint32_t>>{{a.slotBase, 3}, {b.slotBase, 1}});
  // A fourth leaves the window around 2: the rules are rewritten around 4 (capped by the range).
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.1"), endpoint("198.18.1.2"), endpoint("198.18.1.4"), endpoint("198.18.1.5")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(chainOf("a").slotBase == a.slotBase);
  CHECK(rulesOf(a.name) == gatedRules(a.slotBase, 4, 3, 4));
  // A fifth does not fit: a new range of 8; the old one is freed and reused by the next that needs 4.
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.1"), endpoint("198.18.1.2"), endpoint("198.18.1.4"), endpoint("198.18.1.5"),
                       endpoint("198.18.1.6")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(chainOf("a").slotCapacity == 8);
  CHECK(rulesOf(a.name) == gatedRules(chainOf("a").slotBase, 5, 4, 6));
  s.upsertService(clusterIPService("ns", "c", "198.18.100.3", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("ns", "c-1", "c", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.7"), endpoint("198.18.1.8"), endpoint("198.18.1.9")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(chainOf("c").slotBase == a.slotBase);
  // The map holds exactly the live slots (5 + 1 + 3), and every chain has one gate.
  CHECK(table()->sets.at("endpoints-0").elements.size() == 9);
  CHECK(gates() == std::set<std::pair<uint32_t, uint32_t>>{
                       {chainOf("a").slotBase, 5}, {b.slotBase, 1}, {chainOf("c").slotBase, 3}});
}

TEST_CASE("planner: without count gates a chain has one dnat rule, rewritten when its count changes") {
  nft::FakeBackend fake;
  ProxyConfig cfg = config();
  cfg.countWindow = 0;
  DataPlane dp(cfg, fake);
  Snapshot s;
  s.upsertService(clusterIPService("ns", "a", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1"), endpoint("198.18.1.2")}));
  REQUIRE(dp.sync(s).status.isOk());
  const auto a = dp.planner().fragments().at({"ns", "a"}).chains.at(0);
  auto t = [&] { return fake.table(nft::Family::kIPv4, "sluice"); };
  CHECK(t()->sets.count(names::kSlotCounts) == 0);
  REQUIRE(t()->chains.at(a.name).rules.size() == 1);
  CHECK(t()->chains.at(a.name).rules.back().text ==
        fmt::format("meta l4proto tcp dnat ip to numgen random mod 2{} map @endpoints-0",
                    a.slotBase ? fmt::format(" offset {}", a.slotBase) : ""));
  s.upsertSlice(slice("ns", "a-1", "a", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1")}));
  auto r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK(r.operations == 4);  // flush the chain, its rule (mod 1), the freed slot, the hairpin element
  REQUIRE(t()->chains.at(a.name).rules.size() == 1);
  CHECK(t()->chains.at(a.name).rules.back().text.find("numgen random mod 1 ") != std::string::npos);
}

TEST_CASE("planner: a full sync writes each chain's live rule only, and widening adds its window off the latency path") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  for (int i = 0; i < 5; ++i) {
    const std::string name = "svc" + std::to_string(i), cip = "198.18.100." + std::to_string(i);
    s.upsertService(clusterIPService("ns", name, cip.c_str(), {{"", Protocol::kTCP, 80, 0}}));
    s.upsertSlice(slice("ns", name + "-1", name, {{"", Protocol::kTCP, 80}},
                        {endpoint(("198.18.1." + std::to_string(i)).c_str()),
                         endpoint(("198.18.2." + std::to_string(i)).c_str())}));
  }
  REQUIRE(dp.sync(s).status.isOk());
  auto chain = [&](int i) { return dp.planner().fragments().at({"ns", "svc" + std::to_string(i)}).chains.at(0); };
  auto rules = [&](int i) { return fake.table(nft::Family::kIPv4, "sluice")->chains.at(chain(i).name).rules.size(); };
  CHECK(dp.narrowChains() == 5);
  for (int i = 0; i < 5; ++i) {
    CHECK(chain(i).gateNarrow);
    CHECK(rules(i) == 1);
  }
  // An endpoint replaced (same count) leaves a narrow chain narrow.
  s.upsertSlice(slice("ns", "svc0-1", "svc0", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.0"), endpoint("198.18.3.0")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(chain(0).gateNarrow);
  CHECK(rules(0) == 1);
  // A count change on a narrow chain rewrites its rules, with the whole window at once.
  s.upsertSlice(slice("ns", "svc1-1", "svc1", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK_FALSE(chain(1).gateNarrow);
  CHECK(rules(1) == 2);  // counts 1 and 2
  CHECK(dp.narrowChains() == 4);
  // Widening in steps: rule changes only, a bounded number of chains per commit.
  auto r = dp.widen(3);
  REQUIRE(r.status.isOk());
  CHECK(r.operations == 3 * 4 + 1);  // per chain: flush, the rules for 2, 1 and 3; the gates
  CHECK(dp.narrowChains() == 1);
  r = dp.widen(3);
  REQUIRE(r.status.isOk());
  CHECK(dp.narrowChains() == 0);
  CHECK(dp.widen(3).operations == 0);
  for (int i : {0, 2, 3, 4}) CHECK(rules(i) == 3);
  // Now a count change within the window moves the gate only.
  s.upsertSlice(slice("ns", "svc2-1", "svc2", {{"", Protocol::kTCP, 80}},
                      {endpoint("198.18.1.2"), endpoint("198.18.2.2"), endpoint("198.18.3.2")}));
  r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK(r.operations == 4);  // slot-counts delete + add, one endpoint slot, its hairpin element (node unknown)
  CHECK(rules(2) == 3);
  // A later full sync (periodic, drift repair) keeps the windows, recentred on each count.
  dp.requestFullSync();
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(dp.narrowChains() == 0);
  CHECK(rules(2) == 3);
  CHECK(chain(2).gateCenter == 3);
  CHECK(dp.widen(3).operations == 0);
  // A new DataPlane (a restart) starts narrow again.
  nft::FakeBackend fresh;
  DataPlane restarted(config(), fresh);
  REQUIRE(restarted.sync(s).status.isOk());
  CHECK(restarted.narrowChains() == 5);
}

TEST_CASE("planner: a partial sync touches only the changed Service") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  for (int i = 0; i < 100; ++i) {
    std::string name = "svc" + std::to_string(i);
    std::string cip = "198.18.100." + std::to_string(i);
    std::string ep = "198.18.1." + std::to_string(i);
    s.upsertService(clusterIPService("ns", name, cip.c_str(), {{"", Protocol::kTCP, 80, 0}}));
    s.upsertSlice(slice("ns", name + "-1", name, {{"", Protocol::kTCP, 8080}}, {endpoint(ep.c_str())}));
  }
  REQUIRE(dp.sync(s).status.isOk());
  REQUIRE(dp.widen(1000).status.isOk());

  // One endpoint added to one Service: its count gate moves (delete + add), and one endpoint
  // slot and one hairpin element (its node is unknown) are added; its rules stay.
  s.upsertSlice(slice("ns", "svc7-1", "svc7", {{"", Protocol::kTCP, 8080}},
                      {endpoint("198.18.1.7"), endpoint("198.18.2.7")}));
  auto r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK_FALSE(r.full);
  CHECK(r.servicesPlanned == 1);
  CHECK(r.operations == 4);

  // Nothing changed: nothing to do.
  r = dp.sync(s);
  CHECK(r.status.isOk());
  CHECK(r.operations == 0);

  // Service removed: delete its elements and its chain.
  s.removeService({"ns", "svc3"});
  r = dp.sync(s);
  REQUIRE(r.status.isOk());
  CHECK(r.operations == 6);  // elements of cluster-ips, service-ips, hairpin, endpoints, slot-counts; the chain
  CHECK(fake.dump().find("ns/svc3/") == std::string::npos);
}

TEST_CASE("planner: any sequence of partial syncs ends where one full sync of the same input ends") {
  std::mt19937 rng(12345);
  nft::FakeBackend incremental;
  DataPlane dp(config(), incremental);
  Snapshot s;
  std::set<std::string> seen;
  auto rnd = [&](int n) { return int(rng() % unsigned(n)); };
  for (int step = 0; step < 300; ++step) {
    const int svc = rnd(12);
    const std::string name = "s" + std::to_string(svc);
    switch (rnd(5)) {
      case 0: s.removeService({"ns", name}); break;
      case 1: s.removeSlice({"ns", name + "-a"}); break;
      case 2: {
        std::vector<Endpoint> eps;
        for (int k = 0, n = rnd(4); k < n; ++k) {
          std::string a = "198.18." + std::to_string(1 + rnd(3)) + "." + std::to_string(1 + rnd(5));
          eps.push_back(endpoint(a.c_str(), rnd(3) != 0, rnd(4) != 0, rnd(3) == 0, rnd(2) ? "node-a" : "node-b"));
        }
        s.upsertSlice(slice("ns", name + "-" + (rnd(2) ? "a" : "b"), name,
                            {{"p", Protocol::kTCP, uint16_t(8080 + rnd(2))}, {"q", Protocol::kUDP, 53}}, eps));
        break;
      }
      default: {
        // Services share a small pool of IPs so conflicts (first holder wins) happen too.
        std::string cip = "198.18.100." + std::to_string(rnd(8));
        Service sv = clusterIPService("ns", name, cip.c_str(), {{"p", Protocol::kTCP, 80, 0}});
        if (rnd(2)) sv.ports.push_back({"q", Protocol::kUDP, 53, 0});
        if (rnd(4) == 0) sv.internalTrafficPolicy = TrafficPolicy::kLocal;
        // External destinations, policies and affinity, from small pools so that NodePorts and
        // external IPs conflict too, and chains and affinity sets come and go.
        if (rnd(3) == 0) sv.ports[0].nodePort = uint16_t(30000 + rnd(4));
        if (rnd(3) == 0) sv.externalIPs = {ip(("203.0.113." + std::to_string(rnd(4))).c_str())};
        if (rnd(3) == 0) {
          sv.type = ServiceType::kLoadBalancer;
          sv.loadBalancerIngress = {{ip(("198.51.100." + std::to_string(rnd(4))).c_str()), rnd(4) == 0}};
          if (rnd(2)) sv.loadBalancerSourceRanges = {IPPrefix::parse("203.0.113.0/24").value()};
        }
        if (rnd(3) == 0) sv.externalTrafficPolicy = TrafficPolicy::kLocal;
        if (rnd(4) == 0) {
          sv.sessionAffinity = SessionAffinity::kClientIP;
          sv.affinityTimeoutSeconds = uint32_t(10 + rnd(2));
        }
        s.upsertService(sv);
      }
    }
    if (rnd(3) == 0) continue;  // let changes pile up
    auto r = dp.sync(s);
    REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
    for (const auto& [name, _] : incremental.table(nft::Family::kIPv4, "sluice")->chains)
      for (const char* prefix : {"ext-", "local-", "fw-"})
        if (name.rfind(prefix, 0) == 0) seen.insert(prefix);
    for (const auto& [name, _] : incremental.table(nft::Family::kIPv4, "sluice")->sets)
      if (name.rfind("affinity-", 0) == 0) seen.insert("affinity-");
  }
  // The walk went through every kind of chain and set the planner makes.
  CHECK(seen == std::set<std::string>{"affinity-", "ext-", "fw-", "local-"});
  REQUIRE(dp.sync(s).status.isOk());
  // The conflict winners depend on history, so compare with a full re-plan by the same planner
  // (which keeps holders), not with a fresh one.
  nft::FakeBackend full;
  Planner p = dp.planner();
  auto plan = p.planFull(s);
  REQUIRE(full.apply(plan.tx).isOk());
  CHECK(canonicalDump(incremental) == canonicalDump(full));
  // And nothing is left in the endpoints maps that no rule points at.
  size_t slots = 0, elements = 0;
  for (const auto& [id, f] : dp.planner().fragments())
    for (const auto& c : f.chains)
      if (c.usesSlotMap()) slots += c.slots.size();
  for (const auto& [name, set] : incremental.table(nft::Family::kIPv4, "sluice")->sets)
    if (name.rfind("endpoints-", 0) == 0) elements += set.elements.size();
  CHECK(slots == elements);
}

TEST_CASE("planner: conflicting Services — the first holder keeps the IP, the newcomer is reported") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  s.upsertService(clusterIPService("ns", "zz-first", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("ns", "zz-first-1", "zz-first", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1")}));
  REQUIRE(dp.sync(s).status.isOk());
  // "aa-second" sorts first but came later: it must not hijack the live Service.
  s.upsertService(clusterIPService("ns", "aa-second", "198.18.100.1",
                                   {{"a", Protocol::kTCP, 80, 0}, {"b", Protocol::kTCP, 81, 0}}));
  s.upsertSlice(slice("ns", "aa-second-1", "aa-second", {{"a", Protocol::kTCP, 80}, {"b", Protocol::kTCP, 81}},
                      {endpoint("198.18.1.2")}));
  REQUIRE(dp.sync(s).status.isOk());
  std::string dump = fake.dump();
  CHECK(dump.find("198.18.100.1 . tcp . 80 : goto svc-") != std::string::npos);
  CHECK(dump.find("ns/zz-first/tcp/") != std::string::npos);
  CHECK(dump.find("ns/aa-second/tcp/a") == std::string::npos);  // conflicting port skipped
  CHECK(dump.find("ns/aa-second/tcp/b") != std::string::npos);  // the other port works
  auto problems = dp.problems();
  REQUIRE(problems.count({"ns", "aa-second"}));
  CHECK(problems[{"ns", "aa-second"}][0].toString().find("198.18.100.1:80/TCP is already served by Service ns/zz-first") !=
        std::string::npos);

  // The holder goes away: the newcomer takes over on the next sync, without being touched.
  s.removeService({"ns", "zz-first"});
  REQUIRE(dp.sync(s).status.isOk());
  dump = fake.dump();
  CHECK(dump.find("ns/aa-second/tcp/a") != std::string::npos);
  CHECK(dp.problems().empty());
}

TEST_CASE("planner: bad parts are reported and skipped, the rest is programmed") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  s.upsertService(clusterIPService("ns", "bad", "198.18.100.1",
                                   {{"zero", Protocol::kTCP, 0, 0}, {"ok", Protocol::kTCP, 80, 0}, {"dup", Protocol::kTCP, 80, 0}}));
  Endpoint v6 = endpoint("fd00::1");
  s.upsertSlice(slice("ns", "bad-1", "bad", {{"ok", Protocol::kTCP, 8080}, {"dup", Protocol::kTCP, 0}},
                      {endpoint("198.18.1.1"), v6}));
  s.upsertService(clusterIPService("ns", "good", "198.18.100.2", {{"", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("ns", "good-1", "good", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.2")}));
  REQUIRE(dp.sync(s).status.isOk());
  auto problems = dp.problems();
  REQUIRE(problems.count({"ns", "bad"}));
  std::string all;
  for (const auto& p : problems[{"ns", "bad"}]) all += p.toString() + "\n";
  CHECK(all.find("Service ns/bad spec.ports[0].port: must be between 1 and 65535") != std::string::npos);
  CHECK(all.find("Service ns/bad spec.ports[2]: duplicate port 80/TCP") != std::string::npos);
  CHECK(all.find("EndpointSlice ns/bad-1 endpoints[1].addresses[0]: IPv6 address fd00::1 in an IPv4 slice") !=
        std::string::npos);
  CHECK_FALSE(problems.count({"ns", "good"}));
  const std::string dump = fake.dump();
  CHECK(dump.find("ns/bad/tcp/ok") != std::string::npos);
  CHECK(dump.find("ns/good/tcp/") != std::string::npos);
}

TEST_CASE("planner: a Service without endpoints is rejected, iTP Local without local endpoints drops") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  s.upsertService(clusterIPService("ns", "none", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}}));
  Service local = clusterIPService("ns", "local", "198.18.100.2", {{"", Protocol::kTCP, 80, 0}});
  local.internalTrafficPolicy = TrafficPolicy::kLocal;
  s.upsertService(local);
  s.upsertSlice(slice("ns", "local-1", "local", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.9", true, true, false, "node-b")}));
  REQUIRE(dp.sync(s).status.isOk());
  const std::string dump = fake.dump();
  CHECK(dump.find("element 198.18.100.1 . tcp . 80 : goto reject-chain comment \"ns/none:\"") != std::string::npos);
  CHECK(dump.find("element 198.18.100.2 . tcp . 80 : drop") != std::string::npos);

  // First endpoint arrives: the reject entry goes, the dispatch entry comes, in one transaction.
  s.upsertSlice(slice("ns", "none-1", "none", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.1")}));
  REQUIRE(dp.sync(s).status.isOk());
  CHECK(fake.dump().find("goto reject-chain comment") == std::string::npos);
}

TEST_CASE("planner: weights repeat endpoint slots") {
  Snapshot s;
  s.upsertService(clusterIPService("ns", "w", "198.18.100.1", {{"", Protocol::kTCP, 80, 0}}));
  Endpoint heavy = endpoint("198.18.1.1");
  heavy.weight = 3;
  Endpoint off = endpoint("198.18.1.3");
  off.weight = 0;
  s.upsertSlice(slice("ns", "w-1", "w", {{"", Protocol::kTCP, 80}}, {heavy, endpoint("198.18.1.2"), off}));
  auto f = planService(*s.service({"ns", "w"}), s.slicesFor({"ns", "w"}), config());
  REQUIRE(f.chains.size() == 1);
  const auto a = IPAddress::v4(198, 18, 1, 1), b = IPAddress::v4(198, 18, 1, 2);
  CHECK(f.chains[0].slots == std::vector<std::pair<IPAddress, uint16_t>>{{a, 80}, {a, 80}, {a, 80}, {b, 80}});
}

TEST_CASE("dataplane: a failed transaction leaves the mirror, and the next sync replaces the table") {
  nft::FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s = sampleSnapshot();
  REQUIRE(dp.sync(s).status.isOk());
  const std::string good = fake.dump();

  s.upsertSlice(slice("shop", "empty-1", "empty", {{"", Protocol::kTCP, 80}}, {endpoint("198.18.1.31")}));
  fake.failNextAt(0, Status::fromErrno(ENOMEM, "injected"));
  auto r = dp.sync(s);
  CHECK_FALSE(r.status.isOk());
  CHECK_FALSE(r.full);
  CHECK(fake.dump() == good);
  CHECK(dp.fullSyncPending());

  r = dp.sync(s);  // the dirty Service is not lost: the full sync re-plans everything
  REQUIRE(r.status.isOk());
  CHECK(r.full);
  CHECK(fake.dump().find("shop/empty/tcp/") != std::string::npos);
}
