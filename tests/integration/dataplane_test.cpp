// Real-kernel tests of the foundation: DataPlane → planner → NetlinkBackend → nf_tables, checked
// with `nft` (which must read back exactly what the planner intended) and with real TCP/UDP
// traffic through Service IPs of a testbed Topology.
//
// Needs root. Everything happens inside the Topology's throw-away namespaces: the netlink and
// conntrack sockets are opened in the node namespace, `nft` runs there through execIn, and the
// root namespace's nftables are never read or written.
//
// Probabilistic assertions (endpoint spreads, random SNAT ports) use counts chosen so that a
// correct implementation fails with probability below 1e-6; each place says how.
#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "../unit/builders.h"
#include "sluice/conntrack.h"
#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "sluice/nft/rule_builder.h"
#include "sluice/planner.h"
#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

constexpr IPFamily kV4 = IPFamily::kV4;
const ObjectName kWeb{"demo", "web"};
constexpr uint16_t kHttpPort = 80, kHttpTarget = 8080;
constexpr uint16_t kDnsPort = 53, kDnsTarget = 5353;

// --- setup helpers ---------------------------------------------------------------------------

std::unique_ptr<Topology> makeTopology(int backends) {
  auto topo = Topology::create({.backends = backends, .ipv6 = false, .externalClient = true});
  REQUIRE_MESSAGE(topo.isOk(), topo.status().toString());
  return std::move(topo).value();
}

std::unique_ptr<nft::NetlinkBackend> openBackend(const Topology& topo) {
  auto backend = nft::NetlinkBackend::open({topo.node().path()});
  REQUIRE_MESSAGE(backend.isOk(), backend.status().toString());
  return std::move(backend).value();
}

ProxyConfig proxyConfig() {
  ProxyConfig cfg;
  cfg.nodeName = "node";
  cfg.clusterCIDRs = {Topology::podCIDR(kV4)};
  return cfg;
}

std::string backendId(int i) { return "b" + std::to_string(i); }

// Echo servers in every backend at the target ports: TCP 8080 and UDP 5353, id "b<i>". Declared
// after the Topology in every test so that they are destroyed first.
std::vector<std::unique_ptr<Server>> startServers(const Topology& topo) {
  std::vector<std::unique_ptr<Server>> servers;
  for (int i = 1; i <= topo.backendCount(); ++i) {
    for (auto [proto, port] : {std::pair{Protocol::kTCP, kHttpTarget}, std::pair{Protocol::kUDP, kDnsTarget}}) {
      auto s = Server::start(topo.backend(i), proto, kV4, port, backendId(i));
      REQUIRE_MESSAGE(s.isOk(), s.status().toString());
      servers.push_back(std::move(s).value());
    }
  }
  return servers;
}

// The multi-port Service of most tests: tcp 80 (named "http") and udp 53 ("dns").
Service webService(int ipIndex = 1, ObjectName id = kWeb) {
  Service s;
  s.id = std::move(id);
  s.clusterIPs = {Topology::serviceIP(ipIndex, kV4)};
  s.ports = {{"http", Protocol::kTCP, kHttpPort, 0}, {"dns", Protocol::kUDP, kDnsPort, 0}};
  return s;
}

Endpoint endpointOf(int backend, const std::string& nodeName = "") {
  Endpoint e;
  e.addresses = {Topology::backendIP(backend, kV4)};
  e.nodeName = nodeName;
  return e;
}

// The slice of webService(): target ports 8080/tcp and 5353/udp on the given backends.
EndpointSlice webSlice(const std::vector<int>& backends, const std::string& nodeName = "",
                       const ObjectName& service = kWeb) {
  std::vector<Endpoint> eps;
  for (int b : backends) eps.push_back(endpointOf(b, nodeName));
  EndpointSlice s = testing::slice(service.ns, service.name + "-1", service.name,
                                   {{"http", Protocol::kTCP, kHttpTarget}, {"dns", Protocol::kUDP, kDnsTarget}},
                                   std::move(eps));
  s.addressType = kV4;
  return s;
}

void requireSync(DataPlane& dp, Snapshot& snapshot) {
  DataPlane::SyncResult r = dp.sync(snapshot);
  REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
}

// Runs `nft ARGS…` in the node namespace and returns its stdout.
std::string nftIn(const Topology& topo, std::vector<std::string> args) {
  args.insert(args.begin(), "nft");
  RunOptions opts;
  opts.timeout = 120s;  // listing 100 000 elements takes a while
  auto out = execIn(topo.node(), args, opts);
  REQUIRE_MESSAGE(out.isOk(), fmt::format("{}: {}", fmt::join(args, " "), out.status().toString()));
  return *out;
}

// --- traffic helpers ---------------------------------------------------------------------------

std::string describe(const std::map<std::string, int>& counts) {
  std::string s;
  for (const auto& [k, v] : counts) s += fmt::format("{}={} ", k, v);
  return s;
}

// `count` probes reach exactly the backends in `expected`, each at least once, and fail never.
// With n expected backends chosen uniformly, P(one is never hit) ≤ n·(1-1/n)^count: for n ≤ 3
// and count ≥ 60 that is < 1e-10.
void checkSpread(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port, int count,
                 const std::set<std::string>& expected) {
  auto counts = spread(from, proto, dst, port, count, 2000ms);
  INFO("from " << from.role() << ", " << std::string(protocolName(proto)) << " " << dst.toString() << ":" << port
               << ": " << describe(counts));
  int total = 0;
  for (const auto& [id, n] : counts) {
    CHECK_MESSAGE(expected.count(id) == 1, "unexpected answer kind/backend " << id);
    total += n;
  }
  for (const auto& id : expected) CHECK_MESSAGE(counts.count(id) == 1, "backend " << id << " never answered");
  CHECK(total == count);
}

std::set<std::string> ids(std::initializer_list<int> backends) {
  std::set<std::string> out;
  for (int b : backends) out.insert(backendId(b));
  return out;
}

// --- reading `nft` output ------------------------------------------------------------------------

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// The rule lines of `nft list chain` output: everything but the table/chain headers, the base
// chain's "type … hook … priority …" line (nft prints priorities by name) and braces.
std::vector<std::string> ruleLines(const std::string& listing) {
  std::vector<std::string> out;
  std::istringstream in(listing);
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line == "}" || line.rfind("table ", 0) == 0 || line.rfind("chain ", 0) == 0 ||
        line.rfind("type ", 0) == 0)
      continue;
    out.push_back(line);
  }
  return out;
}

// One element (or key, or value) of `nft -j` output as text: "198.19.0.1 . tcp . 80 : goto X".
std::string jsonValueText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_array() && v.size() == 2)  // [key, value] of a map element
    return jsonValueText(v[0]) + " : " + jsonValueText(v[1]);
  if (v.is_object()) {
    if (v.contains("concat")) {
      std::string s;
      for (const auto& part : v["concat"]) s += (s.empty() ? "" : " . ") + jsonValueText(part);
      return s;
    }
    if (v.contains("elem")) return jsonValueText(v["elem"]["val"]);  // an element with a comment
    if (v.contains("goto")) return "goto " + v["goto"]["target"].get<std::string>();
    if (v.contains("jump")) return "jump " + v["jump"]["target"].get<std::string>();
    if (v.contains("accept")) return "accept";
    if (v.contains("drop")) return "drop";
  }
  FAIL("cannot read nft JSON value " << v.dump());
  return {};
}

// The same text for an element of the fake, decoded by the set's declared types.
std::string fieldsText(const std::vector<nft::DataType>& types, const nft::Bytes& bytes) {
  std::string s;
  size_t off = 0;
  for (nft::DataType t : types) {
    REQUIRE(off + nft::dataTypeSize(t) <= bytes.size());
    const uint8_t* p = bytes.data() + off;
    std::string field;
    switch (t) {
      case nft::DataType::kIPv4Addr: field = IPAddress::fromV4Bytes(p).toString(); break;
      case nft::DataType::kInetProto: field = protocolNftName(Protocol(p[0])); break;
      case nft::DataType::kInetService: field = std::to_string((p[0] << 8) | p[1]); break;
      case nft::DataType::kInteger: {
        uint32_t v;
        std::memcpy(&v, p, 4);  // numgen slots are host byte order
        field = std::to_string(v);
        break;
      }
      default: FAIL("unexpected data type " << nft::dataTypeName(t));
    }
    s += (s.empty() ? "" : " . ") + field;
    off += nft::dataTypeRegSize(t);
  }
  return s;
}

std::string fakeElementText(const nft::Set& set, const nft::Element& e) {
  std::string s = fieldsText(set.key, e.key);
  if (set.isVerdictMap()) {
    REQUIRE(e.verdict);
    s += " : " + nft::verdictText(*e.verdict);
  } else if (set.isMap()) {
    s += " : " + fieldsText(set.data, e.data);
  }
  return s;
}

// Everything `nft -j list table ip sluice` says, by kind.
struct ListedTable {
  std::set<std::string> chains;
  std::map<std::string, int> rulesPerChain;
  std::map<std::string, std::set<std::string>> elements;  // by set/map name
  std::map<std::string, size_t> elementCounts;
};

ListedTable parseListing(const std::string& text) {
  json doc = json::parse(text);  // throws (and fails the test) on malformed output
  ListedTable t;
  REQUIRE(doc.contains("nftables"));
  for (const auto& obj : doc["nftables"]) {
    if (obj.contains("chain")) t.chains.insert(obj["chain"]["name"].get<std::string>());
    if (obj.contains("rule")) ++t.rulesPerChain[obj["rule"]["chain"].get<std::string>()];
    for (const char* kind : {"set", "map"}) {
      if (!obj.contains(kind)) continue;
      const json& s = obj[kind];
      const std::string name = s["name"].get<std::string>();
      auto& elems = t.elements[name];  // present even when empty
      t.elementCounts[name] = 0;
      if (!s.contains("elem")) continue;
      for (const auto& e : s["elem"]) elems.insert(jsonValueText(e));
      t.elementCounts[name] = s["elem"].size();
    }
  }
  return t;
}

// The kernel table printed by nft equals what the planner intended, as applied to `fake` by a
// DataPlane that saw the same sequence of snapshots (so slot bases and offsets agree).
void checkKernelMatchesFake(const Topology& topo, const nft::FakeBackend& fake) {
  const auto* intended = fake.table(nft::Family::kIPv4, "sluice");
  REQUIRE(intended);

  const std::string text = nftIn(topo, {"list", "table", "ip", "sluice"});
  CHECK(text.find("table ip sluice") != std::string::npos);
  const ListedTable listed = parseListing(nftIn(topo, {"-j", "list", "table", "ip", "sluice"}));

  std::set<std::string> fakeChains, fakeSets;
  for (const auto& [name, _] : intended->chains) fakeChains.insert(name);
  for (const auto& [name, _] : intended->sets) fakeSets.insert(name);
  CHECK(listed.chains == fakeChains);
  std::set<std::string> listedSets;
  for (const auto& [name, _] : listed.elements) listedSets.insert(name);
  CHECK(listedSets == fakeSets);

  for (const auto& [name, cs] : intended->chains) {
    INFO("chain " << name);
    std::vector<std::string> want;
    for (const auto& r : cs.rules) want.push_back(trim(r.text));
    CHECK(ruleLines(nftIn(topo, {"list", "chain", "ip", "sluice", name})) == want);
    auto n = listed.rulesPerChain.find(name);
    CHECK((n == listed.rulesPerChain.end() ? 0 : n->second) == int(cs.rules.size()));
  }

  for (const auto& [name, ss] : intended->sets) {
    INFO("set " << name);
    std::set<std::string> want;
    for (const auto& [_, e] : ss.elements) want.insert(fakeElementText(ss.set, e));
    auto it = listed.elements.find(name);
    REQUIRE(it != listed.elements.end());
    CHECK(listed.elementCounts.at(name) == ss.elements.size());
    CHECK(it->second == want);
  }
}

const conntrack::Flow* findFlow(const std::vector<conntrack::Flow>& flows, Protocol proto,
                                const IPAddress& src, uint16_t srcPort, const IPAddress& dst) {
  for (const auto& f : flows)
    if (f.proto() == proto && f.original.src == src && f.original.srcPort == srcPort && f.original.dst == dst)
      return &f;
  return nullptr;
}

}  // namespace

// -------------------------------------------------------------------------------------------------

TEST_CASE("kernel: nft reads back exactly what the planner intended, after full and partial syncs") {
  auto topo = makeTopology(3);
  auto kernel = openBackend(*topo);
  nft::FakeBackend fake;
  DataPlane dpKernel(proxyConfig(), *kernel);
  DataPlane dpFake(proxyConfig(), fake);

  // Both DataPlanes see the same snapshots (a copy carries the same dirty set), so their
  // planners place endpoint slots identically.
  Snapshot snapshot;
  auto syncBoth = [&](bool expectFull) {
    Snapshot copy = snapshot;
    DataPlane::SyncResult rk = dpKernel.sync(snapshot);
    DataPlane::SyncResult rf = dpFake.sync(copy);
    REQUIRE_MESSAGE(rk.status.isOk(), rk.status.toString());
    REQUIRE_MESSAGE(rf.status.isOk(), rf.status.toString());
    CHECK(rk.full == expectFull);
    CHECK(rf.full == expectFull);
    CHECK(rk.operations == rf.operations);
  };

  // A multi-port Service with three endpoints of unknown node (hairpin elements), one with a
  // local endpoint, one without endpoints (no-endpoint-services), one headless (ignored).
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2, 3}));
  snapshot.upsertService(webService(2, {"demo", "local"}));
  snapshot.upsertSlice(webSlice({2}, "node", {"demo", "local"}));
  snapshot.upsertService(webService(3, {"demo", "empty"}));
  Service headless = webService(4, {"demo", "headless"});
  headless.clusterIPs.clear();
  snapshot.upsertService(headless);
  syncBoth(true);
  {
    INFO("after the full sync");
    checkKernelMatchesFake(*topo, fake);
  }

  // Partial syncs: an endpoint leaves, a Service gains its first endpoints, a new Service
  // appears; then one goes away, one gains a port without endpoints, one loses its endpoints.
  snapshot.upsertSlice(webSlice({1, 3}));
  snapshot.upsertSlice(webSlice({1}, "", {"demo", "empty"}));
  snapshot.upsertService(webService(5, {"other", "fresh"}));
  snapshot.upsertSlice(webSlice({3, 2, 1}, "", {"other", "fresh"}));
  syncBoth(false);
  {
    INFO("after the first partial sync");
    checkKernelMatchesFake(*topo, fake);
  }

  snapshot.removeService({"demo", "local"});
  Service changed = webService(1);
  changed.ports.push_back({"https", Protocol::kTCP, 443, 0});  // no slice port: no endpoints
  snapshot.upsertService(changed);
  snapshot.upsertSlice(webSlice({1, 2, 3}, "", {"other", "fresh"}));  // same endpoints, other slot order
  snapshot.removeSlice({"demo", "empty-1"});  // loses its only endpoint: chains go, reject comes
  syncBoth(false);
  {
    INFO("after the second partial sync");
    checkKernelMatchesFake(*topo, fake);
  }

  // The whole ruleset lists too (nft must decompile every object of sluice's table).
  CHECK_NOTHROW(json::parse(nftIn(*topo, {"-j", "list", "ruleset"})));
  CHECK(dpKernel.problems() == dpFake.problems());
}

TEST_CASE("kernel: TCP and UDP to a multi-port ClusterIP reach every endpoint at its target port") {
  auto topo = makeTopology(3);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2, 3}));
  requireSync(dp, snapshot);
  const IPAddress vip = Topology::serviceIP(1, kV4);

  // The servers listen only at the target ports, so an answer proves the port was translated.
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 60, ids({1, 2, 3}));
  checkSpread(topo->client(), Protocol::kUDP, vip, kDnsPort, 60, ids({1, 2, 3}));
  // The node itself goes through nat-output.
  checkSpread(topo->node(), Protocol::kTCP, vip, kHttpPort, 60, ids({1, 2, 3}));

  // A pod's source is preserved (no masquerade for traffic from the cluster CIDR).
  for (Protocol proto : {Protocol::kTCP, Protocol::kUDP}) {
    ProbeResult r = probe(topo->client(), proto, vip, proto == Protocol::kTCP ? kHttpPort : kDnsPort, 2000ms);
    INFO(r.toString());
    REQUIRE(r.answered());
    CHECK(r.seenSource == Topology::clientIP(kV4));
    CHECK(r.seenSourcePort == r.localPort);
  }

  // Conntrack agrees: flows from the client to the VIP were DNATed to a backend's target port.
  auto ct = conntrack::Client::open(topo->node().path());
  REQUIRE_MESSAGE(ct.isOk(), ct.status().toString());
  auto flows = (*ct)->dump(conntrack::Filter{.family = kV4, .origSrc = Topology::clientIP(kV4), .origDst = vip});
  REQUIRE_MESSAGE(flows.isOk(), flows.status().toString());
  REQUIRE_FALSE(flows->empty());
  for (const auto& f : *flows) {
    INFO(f.toString());
    CHECK(f.dstNat());
    CHECK_FALSE(f.srcNat());
    CHECK(f.reply.srcPort == (f.proto() == Protocol::kTCP ? kHttpTarget : kDnsTarget));
    CHECK(Topology::podCIDR(kV4).contains(f.reply.src));
  }
}

TEST_CASE("kernel: a Service without endpoints and a port the Service lacks are rejected at once") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2}));
  snapshot.upsertService(webService(2, {"demo", "empty"}));  // no slice at all
  requireSync(dp, snapshot);
  const IPAddress vip = Topology::serviceIP(1, kV4);
  const IPAddress emptyVip = Topology::serviceIP(2, kV4);

  // Generous timeouts: kRefused proves that an ICMP error / RST came back, not the clock.
  struct Case {
    const char* what;
    Protocol proto;
    IPAddress dst;
    uint16_t port;
  };
  const Case cases[] = {
      {"Service without endpoints, tcp", Protocol::kTCP, emptyVip, kHttpPort},
      {"Service without endpoints, udp", Protocol::kUDP, emptyVip, kDnsPort},
      {"port the Service lacks, tcp", Protocol::kTCP, vip, 81},
      {"port the Service lacks, udp", Protocol::kUDP, vip, 54},
      {"udp to the tcp-only port", Protocol::kUDP, vip, kHttpPort},
      {"tcp to the udp-only port", Protocol::kTCP, vip, kDnsPort},
  };
  for (const auto& c : cases) {
    const std::string what = c.what;
    ProbeResult r = probe(topo->client(), c.proto, c.dst, c.port, 5000ms);
    INFO(what << " from the client pod: " << r.toString());
    CHECK(r.kind == ProbeResult::kRefused);
    // From the node itself the reject happens in its own output path: the kernel sends the
    // ICMP error to itself (TCP connect sees ECONNREFUSED) and drops the packet, which a UDP
    // sendmsg() reports as EPERM at once (the testbed counts both as kRefused). Both are
    // immediate refusals, never a timeout.
    ProbeResult n = probe(topo->node(), c.proto, c.dst, c.port, 5000ms);
    INFO(what << " from the node: " << n.toString());
    CHECK(n.kind == ProbeResult::kRefused);
  }
  // The served ports still work, also from the node.
  CHECK(probe(topo->client(), Protocol::kTCP, vip, kHttpPort, 2000ms).answered());
  CHECK(probe(topo->client(), Protocol::kUDP, vip, kDnsPort, 2000ms).answered());

  // Gaining endpoints ends the rejection.
  snapshot.upsertSlice(webSlice({2}, "", {"demo", "empty"}));
  requireSync(dp, snapshot);
  ProbeResult r = probe(topo->client(), Protocol::kTCP, emptyVip, kHttpPort, 2000ms);
  INFO(r.toString());
  CHECK(r.answered());
  CHECK(r.backendId == "b2");
}

TEST_CASE("kernel: an endpoint removed from the slice leaves the rotation, and comes back") {
  auto topo = makeTopology(3);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2, 3}));
  requireSync(dp, snapshot);
  // With the count windows written (as sluiced does when idle), every change below moves count
  // gates and map elements only: the kernel keeps the very same rules (same handles).
  while (dp.narrowChains() > 0) REQUIRE(dp.widen(100).status.isOk());
  auto gatedRules = [&] {
    std::string out;
    std::istringstream in(nftIn(*topo, {"-a", "list", "table", "ip", "sluice"}));
    for (std::string line; std::getline(in, line);)
      if (line.find("@slot-counts dnat") != std::string::npos) out += line + "\n";
    return out;
  };
  const std::string rules = gatedRules();
  CHECK(std::count(rules.begin(), rules.end(), '\n') == 6);  // two ports × counts 3, 2, 4
  const IPAddress vip = Topology::serviceIP(1, kV4);
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 60, ids({1, 2, 3}));
  checkSpread(topo->client(), Protocol::kUDP, vip, kDnsPort, 60, ids({1, 2, 3}));

  // b2's server keeps running: if any new flow still reached it, it would answer.
  snapshot.upsertSlice(webSlice({1, 3}));
  auto r = dp.sync(snapshot);
  REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
  CHECK_FALSE(r.full);
  CHECK(gatedRules() == rules);
  // 2 endpoints, 40 probes: P(one never hit) = 2·2^-40. (A new TCP connection on the tuple of
  // an old, closed one gets a fresh conntrack entry and so a fresh DNAT decision.)
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 40, ids({1, 3}));

  // UDP has no end of flow: entries that b2 answered live on, and a new datagram that happens
  // to reuse such a source port would still reach b2. The node agent deletes those entries
  // (service-semantics §5); do the same here, then every new datagram avoids b2 too.
  auto ct = conntrack::Client::open(topo->node().path());
  REQUIRE_MESSAGE(ct.isOk(), ct.status().toString());
  auto stale = (*ct)->removeMatching(conntrack::Filter{
      .family = kV4, .proto = Protocol::kUDP, .origDst = vip, .origDstPort = kDnsPort,
      .replySrcNotIn = std::unordered_set<IPAddress>{Topology::backendIP(1, kV4), Topology::backendIP(3, kV4)}});
  REQUIRE_MESSAGE(stale.isOk(), stale.status().toString());
  CHECK(*stale >= 1);  // P(b2 was never chosen in the 60 datagrams above) = (2/3)^60
  checkSpread(topo->client(), Protocol::kUDP, vip, kDnsPort, 40, ids({1, 3}));

  snapshot.upsertSlice(webSlice({1, 2, 3}));
  requireSync(dp, snapshot);
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 60, ids({1, 2, 3}));
  checkSpread(topo->client(), Protocol::kUDP, vip, kDnsPort, 60, ids({1, 2, 3}));
  CHECK(gatedRules() == rules);
}

TEST_CASE("kernel: hairpin traffic is masqueraded, other pod traffic keeps its source") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1}, "node"));  // the only endpoint, on this node
  requireSync(dp, snapshot);
  const IPAddress vip = Topology::serviceIP(1, kV4);

  for (auto [proto, port] : {std::pair{Protocol::kTCP, kHttpPort}, std::pair{Protocol::kUDP, kDnsPort}}) {
    INFO("protocol " << std::string(protocolName(proto)));
    // b1 calls its own Service and lands on itself: without masquerade b1 would answer itself
    // directly from its own address and the client socket (connected to the VIP) would never
    // see the reply.
    ProbeResult self = probe(topo->backend(1), proto, vip, port, 2000ms);
    INFO("hairpin: " << self.toString());
    REQUIRE(self.answered());
    CHECK(self.backendId == "b1");
    CHECK(self.seenSource == Topology::podGatewayIP(kV4));

    ProbeResult other = probe(topo->client(), proto, vip, port, 2000ms);
    INFO("client: " << other.toString());
    REQUIRE(other.answered());
    CHECK(other.backendId == "b1");
    CHECK(other.seenSource == Topology::clientIP(kV4));
    CHECK(other.seenSourcePort == other.localPort);
  }
}

TEST_CASE("kernel: traffic from outside the cluster CIDR is masqueraded with fully random ports") {
  auto topo = makeTopology(2);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2}));
  requireSync(dp, snapshot);
  const IPAddress vip = Topology::serviceIP(1, kV4);
  const IPAddress gateway = Topology::podGatewayIP(kV4);
  const IPAddress ext = Topology::extIP(kV4);

  // Why a fixed client port makes this meaningful: without NF_NAT_RANGE_PROTO_RANDOM_FULLY the
  // kernel keeps the original source port whenever that tuple is free after SNAT, so every
  // probe below would arrive from port 40000 (resp. 40001). With fully-random masquerade the
  // port is drawn uniformly from 1024-65535, so it equals the original with probability
  // ≈ 1/64512 per flow: we require at least 9 of the 10 flows to differ, which a correct
  // implementation misses with probability < 45·(1/32768)^2 < 1e-7.
  constexpr uint16_t kTcpPort = 40000, kUdpPort = 40001;
  int samples = 0, moved = 0;
  std::set<uint16_t> seenPorts;

  // Each probe is a new TCP connection on the same tuple: conntrack replaces the closed entry
  // and NAT chooses again.
  for (int i = 0; i < 8; ++i) {
    ProbeOptions opts;
    opts.timeout = 3000ms;
    opts.localPort = kTcpPort;
    ProbeResult r = probe(topo->ext(), Protocol::kTCP, vip, kHttpPort, opts);
    INFO(r.toString());
    REQUIRE(r.answered());
    CHECK(r.localPort == kTcpPort);
    CHECK(r.seenSource == gateway);
    ++samples;
    moved += r.seenSourcePort != kTcpPort;
    seenPorts.insert(r.seenSourcePort);
  }
  // Fully random: eight draws that are all the same would be a miracle (P < 1e-30).
  CHECK(seenPorts.size() >= 2);

  // A held connection and a UDP flow, so that their conntrack entries are live when dumped.
  ProbeOptions held;
  held.timeout = 3000ms;
  held.localPort = kTcpPort;
  auto conn = Connection::open(topo->ext(), Protocol::kTCP, vip, kHttpPort, held);
  REQUIRE_MESSAGE(conn.isOk(), conn.status().toString());
  CHECK(conn->first().seenSource == gateway);
  ++samples;
  moved += conn->first().seenSourcePort != kTcpPort;

  ProbeResult udp = probe(topo->ext(), Protocol::kUDP, vip, kDnsPort, 3000ms, kUdpPort);
  INFO(udp.toString());
  REQUIRE(udp.answered());
  CHECK(udp.seenSource == gateway);
  ++samples;
  moved += udp.seenSourcePort != kUdpPort;

  auto ct = conntrack::Client::open(topo->node().path());
  REQUIRE_MESSAGE(ct.isOk(), ct.status().toString());
  auto flows = (*ct)->dump(kV4);
  REQUIRE_MESSAGE(flows.isOk(), flows.status().toString());
  struct Expect {
    Protocol proto;
    uint16_t clientPort;
    const ProbeResult* seen;
    uint16_t target;
  };
  for (const Expect& e : {Expect{Protocol::kTCP, kTcpPort, &conn->first(), kHttpTarget},
                          Expect{Protocol::kUDP, kUdpPort, &udp, kDnsTarget}}) {
    INFO("protocol " << std::string(protocolName(e.proto)));
    const conntrack::Flow* f = findFlow(*flows, e.proto, ext, e.clientPort, vip);
    REQUIRE_MESSAGE(f, "no conntrack entry for the flow from " << ext.toString() << ":" << e.clientPort);
    INFO(f->toString());
    CHECK(f->dstNat());
    CHECK(f->srcNat());
    CHECK(f->reply.src == Topology::backendIP(e.seen->backendId == "b1" ? 1 : 2, kV4));
    CHECK(f->reply.srcPort == e.target);
    CHECK(f->reply.dst == gateway);
    // The translated port conntrack holds is the one the backend saw (and it was counted
    // above: reply.dstPort != original.srcPort is the fully-random assertion).
    CHECK(f->reply.dstPort == e.seen->seenSourcePort);
  }
  INFO(moved << " of " << samples << " flows got a new source port");
  CHECK(samples == 10);
  CHECK(moved >= samples - 1);

  // Not masqueraded from inside the cluster CIDR (the mark rule's other side).
  ProbeResult pod = probe(topo->client(), Protocol::kTCP, vip, kHttpPort, 2000ms, kTcpPort);
  INFO(pod.toString());
  REQUIRE(pod.answered());
  CHECK(pod.seenSource == Topology::clientIP(kV4));
  CHECK(pod.seenSourcePort == kTcpPort);
}

TEST_CASE("kernel: a rejected transaction names its failing operation and changes nothing") {
  auto topo = makeTopology(2);
  auto kernel = openBackend(*topo);
  nft::FakeBackend fake;
  DataPlane dp(proxyConfig(), *kernel);
  DataPlane dpFake(proxyConfig(), fake);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2}));
  Snapshot copy = snapshot;
  requireSync(dp, snapshot);
  requireSync(dpFake, copy);
  const std::string before = nftIn(*topo, {"list", "table", "ip", "sluice"});

  const nft::TableRef table = proxyConfig().table();
  const IPAddress extra = Topology::serviceIP(9, kV4);
  nft::Transaction tx;
  tx.add(nft::Chain{table, "tmp-ok", std::nullopt});                                           // 0: valid
  tx.add(nft::Elements{table, names::kClusterIPs, {nft::Element{nft::KeyBuilder().ipv4(extra.bytes()).take(), {}, {}, {}}}});  // 1: valid
  tx.add(nft::RuleBuilder(table, "no-such-chain").reject().build());                            // 2: ENOENT
  tx.add(nft::Chain{table, "tmp-after", std::nullopt});                                        // 3: never reached

  Status st = kernel->apply(tx);
  INFO(st.toString());
  REQUIRE_FALSE(st.isOk());
  CHECK(st.code() == Code::kNotFound);
  CHECK(st.err() == ENOENT);
  REQUIRE(st.opIndex().has_value());
  CHECK(*st.opIndex() == 2);

  // Atomic: nothing of ops 0 and 1 is in the kernel.
  CHECK(nftIn(*topo, {"list", "table", "ip", "sluice"}) == before);
  auto chains = execIn(topo->node(), {"nft", "list", "chain", "ip", "sluice", "tmp-ok"});
  CHECK_FALSE(chains.isOk());

  // The shipped fake answers the same transaction the same way.
  Status fakeSt = fake.apply(tx);
  INFO("fake: " << fakeSt.toString());
  CHECK(fakeSt.err() == ENOENT);
  CHECK(fakeSt.opIndex() == st.opIndex());

  // The backend stays usable: the next sync applies and shows.
  snapshot.upsertSlice(webSlice({2}));
  DataPlane::SyncResult r = dp.sync(snapshot);
  REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
  CHECK_FALSE(r.full);
  CHECK(nftIn(*topo, {"list", "table", "ip", "sluice"}) != before);
}

TEST_CASE("kernel: 100 000 map elements in one transaction") {
  auto topo = makeTopology(1);
  auto kernel = openBackend(*topo);
  constexpr size_t kElements = 100000;
  // A throw-away table of its own, in the node namespace only; a map shaped like service-ips,
  // without a size hint (as sluice's own maps), so the kernel grows its hash table on the way.
  const nft::TableRef big{nft::Family::kIPv4, "bigtest"};
  nft::Set map{big, "ports", {nft::DataType::kIPv4Addr, nft::DataType::kInetProto, nft::DataType::kInetService},
               {nft::DataType::kVerdict}, 0, "", {}};
  nft::Elements elements{big, "ports", {}};
  elements.elements.reserve(kElements);
  std::set<std::string> want;
  // 50 000 Service-range addresses × {tcp, udp}: "198.19.x.y . tcp . 80 : accept".
  for (size_t i = 0; i < kElements; ++i) {
    const IPAddress ip = Topology::serviceIP(int(1 + i / 2), kV4);
    const Protocol proto = i % 2 ? Protocol::kUDP : Protocol::kTCP;
    elements.elements.push_back(nft::Element{nft::KeyBuilder().ipv4(ip.bytes()).proto(uint8_t(proto)).port(80).take(),
                                             {}, nft::Verdict{nft::VerdictCode::kAccept, {}}, {}});
    want.insert(fmt::format("{} . {} . 80 : accept", ip.toString(), protocolNftName(proto)));
  }
  REQUIRE(want.size() == kElements);
  nft::Transaction tx;
  tx.add(nft::Table{big, {}});
  tx.add(map);
  tx.add(std::move(elements));
  CHECK(tx.elementCount() == kElements);

  Status st = kernel->apply(tx);
  REQUIRE_MESSAGE(st.isOk(), st.toString());
  // The elements travel in many NEWSETELEM messages (no nested attribute may exceed 64 KiB),
  // all inside the one batch.
  MESSAGE("batch: " << kernel->lastStats().messages << " messages, " << kernel->lastStats().bytes << " bytes");
  CHECK(kernel->lastStats().messages > 3);
  CHECK(kernel->lastStats().bytes > 64 * 1024);

  // A listing taken right after the commit can be inconsistent although the set is complete:
  // the kernel grows the hash table in a background worker after the inserts, and a set dump
  // that spans many netlink messages resumes by skipping the number of elements it already
  // sent, so a rehash between two of its messages repeats some elements and skips as many
  // (seen here: 1 596 of 100 000 listed twice; the dump is not flagged as interrupted). The
  // listing is repeated, bounded, until it lists 100 000 distinct elements.
  std::set<std::string> listed;
  size_t listedCount = 0;
  for (int attempt = 0; attempt < 20; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(250ms);
    json doc = json::parse(nftIn(*topo, {"-j", "list", "map", "ip", "bigtest", "ports"}));
    const json* m = nullptr;
    for (const auto& obj : doc["nftables"])
      if (obj.contains("map")) m = &obj["map"];
    REQUIRE(m);
    REQUIRE(m->contains("elem"));
    listedCount = (*m)["elem"].size();
    listed.clear();
    for (const auto& e : (*m)["elem"]) listed.insert(jsonValueText(e));
    if (listed.size() == listedCount) break;
    MESSAGE("inconsistent set dump (rehash in progress): " << listedCount << " elements, "
                                                           << listed.size() << " distinct; listing again");
  }
  CHECK(listedCount == kElements);
  CHECK(listed.size() == kElements);
  CHECK(listed == want);

  nft::Transaction cleanup;
  cleanup.del(nft::Table{big, {}});
  Status gone = kernel->apply(cleanup);
  CHECK_MESSAGE(gone.isOk(), gone.toString());
  CHECK(nftIn(*topo, {"list", "tables"}).find("bigtest") == std::string::npos);
}

TEST_CASE("kernel: a table deleted behind sluice's back is restored by the next full sync") {
  auto topo = makeTopology(3);
  auto servers = startServers(*topo);
  auto kernel = openBackend(*topo);
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1, 2, 3}));
  requireSync(dp, snapshot);
  CHECK_FALSE(dp.fullSyncPending());
  const IPAddress vip = Topology::serviceIP(1, kV4);
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 60, ids({1, 2, 3}));

  nftIn(*topo, {"delete", "table", "ip", "sluice"});
  REQUIRE(nftIn(*topo, {"list", "tables"}).find("ip sluice") == std::string::npos);

  // The mirror says the table is there; the partial transaction touches objects that are not.
  snapshot.upsertSlice(webSlice({1, 3}));
  DataPlane::SyncResult failed = dp.sync(snapshot);
  INFO("partial sync on a vanished table: " << failed.status.toString());
  CHECK_FALSE(failed.full);
  REQUIRE_FALSE(failed.status.isOk());
  CHECK(failed.status.err() == ENOENT);
  CHECK(dp.fullSyncPending());
  CHECK(nftIn(*topo, {"list", "tables"}).find("ip sluice") == std::string::npos);  // nothing half-built

  // Nothing new in the snapshot: the retry is full and carries the change the failed one had.
  DataPlane::SyncResult restored = dp.sync(snapshot);
  REQUIRE_MESSAGE(restored.status.isOk(), restored.status.toString());
  CHECK(restored.full);
  CHECK_FALSE(dp.fullSyncPending());
  CHECK(nftIn(*topo, {"list", "tables"}).find("ip sluice") != std::string::npos);
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 40, ids({1, 3}));
  checkSpread(topo->client(), Protocol::kUDP, vip, kDnsPort, 40, ids({1, 3}));

  // And partial syncs work again on top of it.
  snapshot.upsertSlice(webSlice({2}));
  DataPlane::SyncResult partial = dp.sync(snapshot);
  REQUIRE_MESSAGE(partial.status.isOk(), partial.status.toString());
  CHECK_FALSE(partial.full);
  checkSpread(topo->client(), Protocol::kTCP, vip, kHttpPort, 10, ids({2}));
}

TEST_CASE("kernel: every commit reports the ruleset generation it produced") {
  auto topo = makeTopology(1);
  auto kernel = openBackend(*topo);
  auto start = kernel->generation();
  REQUIRE_MESSAGE(start.isOk(), start.status().toString());
  DataPlane dp(proxyConfig(), *kernel);
  Snapshot snapshot;
  snapshot.upsertService(webService(1));
  snapshot.upsertSlice(webSlice({1}));
  DataPlane::SyncResult full = dp.sync(snapshot);
  REQUIRE_MESSAGE(full.status.isOk(), full.status.toString());
  // One commit, one generation (nf_tables_commit bumps base_seq once), echoed to the sender.
  REQUIRE(full.generation.has_value());
  CHECK(*full.generation == *start + 1);
  CHECK(kernel->generation().value() == *full.generation);

  // Someone else's commit moves the generation too; GETGEN sees it, lastGeneration() does not.
  nftIn(*topo, {"add", "table", "ip", "other"});
  CHECK(kernel->generation().value() == *full.generation + 1);
  CHECK(kernel->lastGeneration() == full.generation);

  snapshot.upsertSlice(webSlice({1, 2}));
  DataPlane::SyncResult partial = dp.sync(snapshot);
  REQUIRE_MESSAGE(partial.status.isOk(), partial.status.toString());
  CHECK_FALSE(partial.full);
  CHECK(partial.generation == std::optional<uint32_t>(*full.generation + 2));

  // A batch that changes nothing (the table exists) is no transaction: no new generation.
  nft::Transaction noop;
  noop.add(nft::Table{proxyConfig().table(), {}});
  REQUIRE(kernel->apply(noop).isOk());
  CHECK_FALSE(kernel->lastGeneration().has_value());
  CHECK(kernel->generation().value() == *full.generation + 2);

  // A rejected batch commits nothing and reports no generation.
  nft::Transaction bad;
  bad.add(nft::Chain{{nft::Family::kIPv4, "no-such-table"}, "c", std::nullopt});
  CHECK_FALSE(kernel->apply(bad).isOk());
  CHECK_FALSE(kernel->lastGeneration().has_value());
  CHECK(kernel->generation().value() == *full.generation + 2);

  // A batch that starts with a full chunk of elements gets that chunk's notifications echoed
  // as well; the receive buffer has room for them next to the ACKs.
  nft::Elements many{proxyConfig().table(), "cluster-ips", {}};
  for (int i = 0; i < 4000; ++i) many.elements.push_back({nft::Bytes{198, 19, uint8_t(100 + i / 250), uint8_t(i % 250)}, {}, {}, ""});
  nft::Transaction bulk;
  bulk.add(many);
  Status added = kernel->apply(bulk);
  REQUIRE_MESSAGE(added.isOk(), added.toString());
  CHECK(kernel->lastGeneration() == std::optional<uint32_t>(*full.generation + 3));
}
