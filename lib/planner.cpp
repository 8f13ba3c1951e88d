#include "sluice/planner.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>
#include <unordered_set>

#include <fmt/format.h>

#include "sluice/nft/rule_builder.h"

namespace sluice {

using nft::Bytes;
using nft::DataType;
using nft::Element;
using nft::KeyBuilder;
using nft::RuleBuilder;
using nft::Verdict;
using nft::VerdictCode;

nft::TableRef ProxyConfig::table() const {
  return {family == IPFamily::kV4 ? nft::Family::kIPv4 : nft::Family::kIPv6, tableName};
}

std::vector<IPAddress> ProxyConfig::nodePortIPs() const {
  std::vector<IPAddress> out;
  const bool anyCIDR = !nodePortAddresses.empty();
  std::vector<IPPrefix> cidrs;
  for (const auto& c : nodePortAddresses)
    if (c.family() == family) cidrs.push_back(c);
  for (const auto& ip : nodeIPs) {
    if (ip.family() != family || ip.isLoopback() || ip.isUnspecified()) continue;
    if (!anyCIDR) {  // default: the primary IP of the family only
      out.push_back(ip);
      break;
    }
    // As kube-proxy's NodePortAddresses: no CIDR of this family means every address of it.
    if (cidrs.empty() || std::any_of(cidrs.begin(), cidrs.end(), [&](const IPPrefix& c) { return c.contains(ip); }))
      out.push_back(ip);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

namespace {

// The one-shot SHA256() looks the algorithm up in OpenSSL's provider store on every call,
// which costs more than the hash itself; fetch it once.
const EVP_MD* sha256() {
  static const EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

}  // namespace

namespace names {

namespace {

// First 8 characters of base32(sha256(text)): 40 bits, enough to keep names unique even when a
// very long key is truncated.
std::string hash8(std::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  EVP_Digest(text.data(), text.size(), digest, nullptr, sha256(), nullptr);
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  uint64_t bits = 0;
  for (int i = 0; i < 5; ++i) bits = (bits << 8) | digest[i];
  std::string hash(8, '?');
  for (int i = 7; i >= 0; --i, bits >>= 5) hash[size_t(i)] = kAlphabet[bits & 31];
  return hash;
}

std::string hashedName(std::string_view prefix, std::string_view hashed, std::string_view shown) {
  std::string name;
  name.reserve(prefix.size() + shown.size() + 9);
  name.append(prefix).append(hash8(hashed)).append("-").append(shown);
  if (name.size() > 255) name.resize(255);  // NFT_NAME_MAXLEN includes the NUL
  return name;
}

}  // namespace

std::string serviceChain(const ObjectName& svc, Protocol proto, const std::string& portName, std::string_view prefix) {
  std::string key;
  key.reserve(svc.ns.size() + svc.name.size() + portName.size() + 8);
  key.append(svc.ns).append("/").append(svc.name).append("/");
  key.append(protocolNftName(proto)).append("/").append(portName);
  return hashedName(prefix, key, key);
}

std::string firewallChain(const ObjectName& svc) {
  const std::string key = svc.toString();
  return hashedName("fw-", key, key);
}

std::string affinitySet(const std::string& chain, const IPAddress& ip, uint16_t port, uint32_t timeoutSeconds) {
  const std::string ep = fmt::format("{}/{}", ip.toString(), port);
  return hashedName("affinity-", fmt::format("{}__{}__{}", chain, ep, timeoutSeconds), ep);
}

std::string endpointsMap(uint32_t shard) { return "endpoints-" + std::to_string(shard); }

const char* sharedSet(SharedSet s) {
  switch (s) {
    case SharedSet::kClusterIPs: return kClusterIPs;
    case SharedSet::kServiceIPs: return kServiceIPs;
    case SharedSet::kNoEndpointServices: return kNoEndpointServices;
    case SharedSet::kHairpin: return kHairpin;
    case SharedSet::kNodePorts: return kServiceNodePorts;
    case SharedSet::kNoEndpointNodePorts: return kNoEndpointNodePorts;
    case SharedSet::kFirewallIPs: return kFirewallIPs;
  }
  return "?";
}

}  // namespace names

std::string skipReason(const Service& svc, const ProxyConfig& cfg) {
  if (svc.type == ServiceType::kExternalName) return "type ExternalName";
  if (svc.labels.count("service.kubernetes.io/service-proxy-name")) return "owned by another proxy";
  if (svc.clusterIPs.empty()) return "headless (no cluster IP)";
  for (const auto& ip : svc.clusterIPs)
    if (ip.family() == cfg.family) return "";
  return fmt::format("no {} cluster IP", familyName(cfg.family));
}

namespace {

// An address:port listed more than once (in two slices, or twice in one) keeps its first place.
void removeDuplicates(std::vector<ResolvedEndpoint>& endpoints) {
  if (endpoints.size() < 2) return;
  std::vector<uint32_t> order(endpoints.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const auto& x = endpoints[a];
    const auto& y = endpoints[b];
    return std::tie(x.ip, x.port, a) < std::tie(y.ip, y.port, b);
  });
  std::vector<bool> duplicate(endpoints.size());
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& a = endpoints[order[i - 1]];
    const auto& b = endpoints[order[i]];
    duplicate[order[i]] = a.ip == b.ip && a.port == b.port;
  }
  size_t kept = 0;
  for (size_t i = 0; i < endpoints.size(); ++i)
    if (!duplicate[i]) endpoints[kept++] = endpoints[i];
  endpoints.resize(kept);
}

}  // namespace

std::vector<ResolvedEndpoint> resolveEndpoints(const Service& svc, const ServicePort& port,
                                               const std::map<ObjectName, EndpointSlice>& slices,
                                               const ProxyConfig& cfg, std::vector<Problem>* problems) {
  std::vector<ResolvedEndpoint> out;
  // §6: PreferClose / PreferSameZone use zone hints, PreferSameNode node hints.
  const std::string& td = svc.trafficDistribution;
  const bool zoneHints = td == "PreferClose" || td == "PreferSameZone";
  const bool nodeHints = td == "PreferSameNode";
  auto names = [](const std::vector<std::string>& v, const std::string& x) {
    return !x.empty() && std::find(v.begin(), v.end(), x) != v.end();
  };
  size_t listed = 0;
  for (const auto& [sid, slice] : slices) listed += slice.endpoints.size();
  out.reserve(listed);
  for (const auto& [sid, slice] : slices) {
    if (slice.addressType != cfg.family) continue;
    const EndpointPort* sp = nullptr;
    for (const auto& p : slice.ports)
      if (p.name == port.name && p.protocol == port.protocol) sp = &p;
    if (!sp) continue;
    if (sp->port == 0) {
      if (problems)
        problems->push_back({"EndpointSlice " + sid.toString(), fmt::format("ports[name={}].port", sp->name),
                             "must be between 1 and 65535"});
      continue;
    }
    for (size_t i = 0; i < slice.endpoints.size(); ++i) {
      const Endpoint& e = slice.endpoints[i];
      if (e.addresses.empty()) continue;  // as kube-proxy: nothing to send to
      const IPAddress& ip = e.addresses.front();
      if (ip.family() != cfg.family) {
        if (problems)
          problems->push_back({"EndpointSlice " + sid.toString(), fmt::format("endpoints[{}].addresses[0]", i),
                               fmt::format("{} address {} in an {} slice", familyName(ip.family()), ip.toString(),
                                           familyName(cfg.family))});
        continue;
      }
      ResolvedEndpoint r;
      r.ip = ip;
      r.port = sp->port;
      r.ready = e.ready;
      r.serving = e.serving;
      r.terminating = e.terminating;
      r.local = !cfg.nodeName.empty() && e.nodeName == cfg.nodeName;
      r.nodeUnknown = e.nodeName.empty();
      if (zoneHints) {
        r.hinted = !e.hints.zones().empty();
        r.hintedHere = names(e.hints.zones(), cfg.zone);
      } else if (nodeHints) {
        r.hinted = !e.hints.nodes().empty();
        r.hintedHere = names(e.hints.nodes(), cfg.nodeName);
      }
      r.weight = e.weight;
      out.push_back(r);
    }
  }
  removeDuplicates(out);
  return out;
}

EndpointSets categorizeEndpoints(const std::vector<ResolvedEndpoint>& endpoints) {
  EndpointSets s;
  s.cluster.reserve(endpoints.size());
  bool allHinted = true, anyHere = false;
  for (const auto& e : endpoints) {
    if (e.weight == 0) continue;
    if (e.ready) s.cluster.push_back(e);
    if (e.ready && e.local) s.local.push_back(e);
    if (e.ready || (e.serving && e.terminating)) s.hasEndpoints = true;
    if (e.ready) {
      allHinted = allHinted && e.hinted;
      anyHere = anyHere || e.hintedHere;
    }
  }
  // Topology: only when every ready endpoint carries hints and some are for this node; a
  // filter that would leave nothing is not applied.
  if (allHinted && anyHere) std::erase_if(s.cluster, [](const ResolvedEndpoint& e) { return !e.hintedHere; });
  // Independent fallbacks to serving-and-terminating endpoints (KEP-1669).
  if (s.cluster.empty())
    for (const auto& e : endpoints)
      if (e.weight && e.serving && e.terminating) s.cluster.push_back(e);
  if (s.local.empty())
    for (const auto& e : endpoints)
      if (e.weight && e.local && e.serving && e.terminating) s.local.push_back(e);
  return s;
}

namespace {

Bytes addrKey(const IPAddress& ip) {
  return ip.isV4() ? KeyBuilder().ipv4(ip.bytes()).take() : KeyBuilder().ipv6(ip.bytes()).take();
}

Bytes servicePortKey(const IPAddress& ip, Protocol proto, uint16_t port) {
  KeyBuilder kb;
  if (ip.isV4()) kb.ipv4(ip.bytes()); else kb.ipv6(ip.bytes());
  return kb.proto(uint8_t(proto)).port(port).take();
}

Bytes nodePortKey(Protocol proto, uint16_t port) { return KeyBuilder().proto(uint8_t(proto)).port(port).take(); }

Bytes pairKey(const IPAddress& a, const IPAddress& b) {
  KeyBuilder kb;
  if (a.isV4()) kb.ipv4(a.bytes()).ipv4(b.bytes()); else kb.ipv6(a.bytes()).ipv6(b.bytes());
  return kb.take();
}

DataType addrType(const ProxyConfig& cfg) {
  return cfg.family == IPFamily::kV4 ? DataType::kIPv4Addr : DataType::kIPv6Addr;
}

// Upper bound on numgen slots of one Service port when weights repeat endpoints.
constexpr uint64_t kMaxSlots = 65536;

// As nft gives a dynamic set without a declared size: the kernel treats the size as a hard
// limit, so at most this many clients per endpoint are remembered; newer ones are still
// balanced, just not sticky.
constexpr uint32_t kAffinitySetSize = 65535;

const Verdict kRejectVerdict{VerdictCode::kGoto, names::kRejectChain};
const Verdict kDropVerdict{VerdictCode::kDrop, {}};

// A DNAT chain sending to `chosen` (weights repeat slots). Local endpoints (and those whose node
// is unknown) go into `hairpin`: only a pod on this node can be load-balanced to itself here.
FragmentChain dnatChain(std::string name, int port, Protocol proto, const std::vector<ResolvedEndpoint>& chosen,
                        uint32_t affinitySeconds, std::set<IPAddress>& hairpin) {
  FragmentChain fc;
  fc.name = std::move(name);
  fc.port = port;
  fc.protocol = proto;
  fc.affinitySeconds = affinitySeconds;
  uint64_t total = 0;
  for (const auto& e : chosen) total += e.weight;
  fc.slots.reserve(std::min(total, kMaxSlots));
  for (const auto& e : chosen) {
    // Weights repeat an endpoint's slot; scaled down if the sum would be unreasonable.
    uint64_t n = total > kMaxSlots ? std::max<uint64_t>(1, e.weight * kMaxSlots / total) : e.weight;
    for (uint64_t k = 0; k < n; ++k) fc.slots.emplace_back(e.ip, e.port);
    if (e.local || e.nodeUnknown) hairpin.insert(e.ip);
  }
  return fc;
}

}  // namespace

ServiceFragment planService(const Service& svc, const std::map<ObjectName, EndpointSlice>& slices,
                            const ProxyConfig& cfg) {
  ServiceFragment f;
  if (!skipReason(svc, cfg).empty()) return f;
  const nft::TableRef table = cfg.table();
  auto object = [&] { return "Service " + svc.id.toString(); };
  IPAddress clusterIP;
  for (const auto& ip : svc.clusterIPs)
    if (ip.family() == cfg.family) {
      clusterIP = ip;
      break;
    }
  f.elements.reserve(1 + svc.ports.size());  // the ClusterIP, a map entry per port; rarely more
  f.elements.push_back({SharedSet::kClusterIPs, Element{addrKey(clusterIP), {}, {}, {}}, -1});

  // External destinations of this family (service-semantics §3): external IPs, and load-balancer
  // ingress IPs unless their ipMode is Proxy (the load balancer proxies; the node must not
  // intercept the IP).
  std::vector<IPAddress> externalIPs, lbIPs;
  for (const auto& ip : svc.externalIPs)
    if (ip.family() == cfg.family) externalIPs.push_back(ip);
  for (const auto& ing : svc.loadBalancerIngress)
    if (ing.ip.family() == cfg.family && !ing.proxyMode) lbIPs.push_back(ing.ip);
  // loadBalancerSourceRanges of this family; a prefix of impossible length is reported.
  std::vector<IPPrefix> sourceRanges;
  const int maxBits = cfg.family == IPFamily::kV4 ? 32 : 128;
  for (size_t i = 0; i < svc.loadBalancerSourceRanges.size(); ++i) {
    const IPPrefix& r = svc.loadBalancerSourceRanges[i];
    if (r.family() != cfg.family) continue;
    if (r.bits() < 0 || r.bits() > maxBits) {
      f.problems.push_back({object(), fmt::format("spec.loadBalancerSourceRanges[{}]", i),
                            fmt::format("prefix length {} out of range", r.bits())});
      continue;
    }
    sourceRanges.push_back(r);
  }
  std::string firewall;
  if (!lbIPs.empty() && !sourceRanges.empty()) {
    // One chain per Service: allowed sources return, everything else is dropped before DNAT.
    FragmentChain fw;
    fw.name = names::firewallChain(svc.id);
    for (const auto& r : sourceRanges)
      fw.fixedRules.push_back(RuleBuilder(table, fw.name).saddrInPrefix(r, false).verdict(VerdictCode::kReturn).build());
    fw.fixedRules.push_back(RuleBuilder(table, fw.name).verdict(VerdictCode::kDrop).build());
    firewall = fw.name;
    f.chains.push_back(std::move(fw));
  }
  const uint32_t affinity = svc.sessionAffinity == SessionAffinity::kClientIP
                                ? (svc.affinityTimeoutSeconds ? svc.affinityTimeoutSeconds : 10800)
                                : 0;
  const bool eTPLocal = svc.externalTrafficPolicy == TrafficPolicy::kLocal;
  const bool iTPLocal = svc.internalTrafficPolicy == TrafficPolicy::kLocal;
  const uint32_t mark = cfg.masqueradeMark();

  std::set<IPAddress> hairpin;
  for (size_t i = 0; i < svc.ports.size(); ++i) {
    const ServicePort& sp = svc.ports[i];
    const int pi = int(i);
    if (sp.port == 0) {
      f.problems.push_back({object(), fmt::format("spec.ports[{}].port", i), "must be between 1 and 65535"});
      continue;
    }
    auto samePort = [&](const ServicePort& p) { return p.protocol == sp.protocol && p.port == sp.port; };
    if (std::any_of(svc.ports.begin(), svc.ports.begin() + pi, samePort)) {
      f.problems.push_back({object(), fmt::format("spec.ports[{}]", i),
                            fmt::format("duplicate port {}/{}", sp.port, protocolName(sp.protocol))});
      continue;
    }
    auto endpoints = resolveEndpoints(svc, sp, slices, cfg, &f.problems);
    auto sets = categorizeEndpoints(endpoints);
    const bool external = !externalIPs.empty() || !lbIPs.empty() || sp.nodePort != 0;
    auto element = [&](SharedSet set, Bytes key, const Verdict& v) {
      f.elements.push_back({set, Element{std::move(key), {}, v, {}}, pi});
    };
    // Without endpoint-less entries, a comment names the Service port (shown by nft list).
    auto noEndpoints = [&](SharedSet set, Bytes key, const Verdict& v) {
      f.elements.push_back({set, Element{std::move(key), {}, v, fmt::format("{}:{}", svc.id.toString(), sp.name)}, pi});
    };

    // DNAT chains: cluster endpoints when something uses them, local endpoints likewise.
    std::string clusterChain, localChain;
    if (!sets.cluster.empty() && (!iTPLocal || external)) {
      clusterChain = names::serviceChain(svc.id, sp.protocol, sp.name);
      f.chains.push_back(dnatChain(clusterChain, pi, sp.protocol, sets.cluster, affinity, hairpin));
    }
    if (!sets.local.empty() && (iTPLocal || (external && eTPLocal))) {
      localChain = names::serviceChain(svc.id, sp.protocol, sp.name, "local-");
      f.chains.push_back(dnatChain(localChain, pi, sp.protocol, sets.local, affinity, hairpin));
    }

    // ClusterIP:port. No endpoint anywhere: reject so clients fail fast; endpoints elsewhere
    // but none local under internalTrafficPolicy Local: drop (service-semantics §3).
    Bytes key = servicePortKey(clusterIP, sp.protocol, sp.port);
    const std::string& internalChain = iTPLocal ? localChain : clusterChain;
    if (!internalChain.empty())
      element(SharedSet::kServiceIPs, key, Verdict{VerdictCode::kGoto, internalChain});
    else
      noEndpoints(SharedSet::kNoEndpointServices, key, sets.hasEndpoints && iTPLocal ? kDropVerdict : kRejectVerdict);
    if (!external) continue;

    // External IPs, LB IPs and the NodePort share one dispatch chain (kube-proxy's external
    // chain). It runs in nat prerouting/output, before DNAT.
    std::vector<Bytes> keys;
    for (const auto& ip : externalIPs) keys.push_back(servicePortKey(ip, sp.protocol, sp.port));
    for (const auto& ip : lbIPs) keys.push_back(servicePortKey(ip, sp.protocol, sp.port));
    if (clusterChain.empty()) {  // nothing anywhere: every external destination rejects
      for (auto& k : keys) noEndpoints(SharedSet::kNoEndpointServices, std::move(k), kRejectVerdict);
      if (sp.nodePort) noEndpoints(SharedSet::kNoEndpointNodePorts, nodePortKey(sp.protocol, sp.nodePort), kRejectVerdict);
      continue;
    }
    FragmentChain ext;
    ext.name = names::serviceChain(svc.id, sp.protocol, sp.name, "ext-");
    ext.port = pi;
    ext.protocol = sp.protocol;
    auto rule = [&] { return RuleBuilder(table, ext.name); };
    if (!eTPLocal) {
      // eTP Cluster: the endpoint may be on another node, so the reply must come back here.
      ext.fixedRules.push_back(rule().markSetOr(mark).goTo(clusterChain).build());
    } else {
      // eTP Local keeps the client's address, except for traffic that starts inside the cluster:
      // pods short-circuit to the cluster set (as they would for the ClusterIP), the node
      // itself too but masqueraded (its source address may not be routable from the endpoint).
      for (const auto& cidr : cfg.clusterCIDRs)
        if (cidr.family() == cfg.family)
          ext.fixedRules.push_back(rule().saddrInPrefix(cidr, false).goTo(clusterChain).build());
      ext.fixedRules.push_back(rule().fibSaddrLocal().markSetOr(mark).goTo(clusterChain).build());
      if (!localChain.empty()) ext.fixedRules.push_back(rule().goTo(localChain).build());
    }
    const Verdict toExt{VerdictCode::kGoto, ext.name};
    // eTP Local without a local endpoint: what is not short-circuited falls through the chain
    // undNATed and is dropped by the filter check.
    const bool dropRest = eTPLocal && localChain.empty();
    for (const auto& k : keys) {
      element(SharedSet::kServiceIPs, k, toExt);
      if (dropRest) noEndpoints(SharedSet::kNoEndpointServices, k, kDropVerdict);
    }
    if (sp.nodePort) {
      element(SharedSet::kNodePorts, nodePortKey(sp.protocol, sp.nodePort), toExt);
      if (dropRest) noEndpoints(SharedSet::kNoEndpointNodePorts, nodePortKey(sp.protocol, sp.nodePort), kDropVerdict);
    }
    if (!firewall.empty())
      for (const auto& ip : lbIPs)
        element(SharedSet::kFirewallIPs, servicePortKey(ip, sp.protocol, sp.port), Verdict{VerdictCode::kGoto, firewall});
    f.chains.push_back(std::move(ext));
  }
  for (const auto& ip : hairpin) f.elements.push_back({SharedSet::kHairpin, Element{pairKey(ip, ip), {}, {}, {}}, -1});
  return f;
}

BaseRuleset planBase(const ProxyConfig& cfg) {
  BaseRuleset b;
  const nft::TableRef t = cfg.table();
  b.table = {t, "sluice service proxy"};
  const DataType addr = addrType(cfg);
  const std::vector<DataType> svcKey = {addr, DataType::kInetProto, DataType::kInetService};
  const std::vector<DataType> portKey = {DataType::kInetProto, DataType::kInetService};
  const std::vector<DataType> verdict = {DataType::kVerdict};
  b.sets.push_back({t, names::kClusterIPs, {addr}, {}, 0, "Active ClusterIPs", {}});
  b.sets.push_back({t, names::kServiceIPs, svcKey, verdict, 0, "ClusterIP, external and LB IP dispatch", {}});
  b.sets.push_back({t, names::kNoEndpointServices, svcKey, verdict, 0, "Service ports without endpoints", {}});
  b.sets.push_back({t, names::kHairpin, {addr, addr}, {}, 0, "Local endpoints that may reach themselves", {}});
  b.sets.push_back({t, names::kNodePortIPs, {addr}, {}, 0, "Node addresses serving NodePorts", {}});
  b.sets.push_back({t, names::kServiceNodePorts, portKey, verdict, 0, "NodePort dispatch", {}});
  b.sets.push_back({t, names::kNoEndpointNodePorts, portKey, verdict, 0, "NodePorts without endpoints", {}});
  b.sets.push_back({t, names::kFirewallIPs, svcKey, verdict, 0, "LB IPs with source ranges", {}});
  if (cfg.countWindow > 0) {
    nft::Set gates{t, names::kSlotCounts, {DataType::kInteger, DataType::kInteger}, {}, 0,
                   "Slot base . endpoint count of each Service port: its live dnat rule", {}};
    gates.typeofKey = nft::Typeof::kNumgenPair;
    b.sets.push_back(std::move(gates));
  }
  nft::Elements nodePortIPs{t, names::kNodePortIPs, {}};
  for (const auto& ip : cfg.nodePortIPs()) nodePortIPs.elements.push_back(Element{addrKey(ip), {}, {}, {}});
  if (!nodePortIPs.elements.empty()) b.elements.push_back(std::move(nodePortIPs));

  auto base = [&](const char* name, const char* type, nft::Hook hook, int prio) {
    b.chains.push_back({t, name, nft::BaseHook{type, hook, prio}});
  };
  base(names::kFirewallBaseChain, "filter", nft::Hook::kPrerouting, -110);
  base("nat-prerouting", "nat", nft::Hook::kPrerouting, -100);
  base("nat-output", "nat", nft::Hook::kOutput, -100);
  base("filter-input", "filter", nft::Hook::kInput, 0);
  base("filter-forward", "filter", nft::Hook::kForward, 0);
  base("filter-output", "filter", nft::Hook::kOutput, 0);
  base("nat-postrouting", "nat", nft::Hook::kPostrouting, 100);
  for (const char* name : {names::kServicesChain, names::kEndpointsCheckChain, names::kClusterIPsCheckChain,
                           names::kRejectChain, names::kMasqueradingChain})
    b.chains.push_back({t, name, std::nullopt});

  auto rule = [&](const char* chain) { return RuleBuilder(t, chain); };
  // Source ranges are checked for packets arriving from elsewhere only (prerouting): the node's
  // own connections to its LB IPs are not filtered (service-semantics §8.3, N→LB works).
  b.rules.push_back(rule(names::kFirewallBaseChain).ctStateNew().daddrProtoPortVmap(names::kFirewallIPs).build());
  b.rules.push_back(rule("nat-prerouting").jump(names::kServicesChain).build());
  b.rules.push_back(rule("nat-output").jump(names::kServicesChain).build());
  b.rules.push_back(rule("filter-input").ctStateNew().jump(names::kEndpointsCheckChain).build());
  for (const char* c : {"filter-forward", "filter-output"}) {
    b.rules.push_back(rule(c).ctStateNew().jump(names::kEndpointsCheckChain).build());
    b.rules.push_back(rule(c).ctStateNew().jump(names::kClusterIPsCheckChain).build());
  }
  b.rules.push_back(rule("nat-postrouting").jump(names::kMasqueradingChain).build());
  // ClusterIP traffic from outside the pod network (or all of it with --masquerade-all) is
  // marked for masquerade, so replies return through this node. kube-proxy does this in every
  // Service chain; one rule here has the same effect (marks on rejected flows are harmless).
  const uint32_t mark = cfg.masqueradeMark();
  if (cfg.masqueradeAll) {
    b.rules.push_back(rule(names::kServicesChain).daddrInSet(names::kClusterIPs).markSetOr(mark).build());
  } else {
    for (const auto& cidr : cfg.clusterCIDRs) {
      if (cidr.family() != cfg.family) continue;
      b.rules.push_back(
          rule(names::kServicesChain).saddrInPrefix(cidr, true).daddrInSet(names::kClusterIPs).markSetOr(mark).build());
      break;  // one pod CIDR per family, as kube-proxy's local traffic detector
    }
  }
  b.rules.push_back(rule(names::kServicesChain).daddrProtoPortVmap(names::kServiceIPs).build());
  b.rules.push_back(
      rule(names::kServicesChain).daddrInSet(names::kNodePortIPs).protoPortVmap(names::kServiceNodePorts).build());
  b.rules.push_back(rule(names::kEndpointsCheckChain).daddrProtoPortVmap(names::kNoEndpointServices).build());
  b.rules.push_back(
      rule(names::kEndpointsCheckChain).daddrInSet(names::kNodePortIPs).protoPortVmap(names::kNoEndpointNodePorts).build());
  // Only packets that were not DNATed still have a ClusterIP as destination at filter priority:
  // a port or protocol the Service does not have. Other addresses of the service CIDR belong
  // to no Service: dropped, as kube-proxy does, rather than sent along the default route.
  b.rules.push_back(rule(names::kClusterIPsCheckChain).daddrInSet(names::kClusterIPs).goTo(names::kRejectChain).build());
  for (const auto& cidr : cfg.serviceCIDRs)
    if (cidr.family() == cfg.family)
      b.rules.push_back(rule(names::kClusterIPsCheckChain).daddrInPrefix(cidr, false).verdict(VerdictCode::kDrop).build());
  // TCP gets a reset rather than an ICMP error: a client on this node whose SYN is rejected
  // while its own connect() still holds the socket lock (veth delivers the answer in the same
  // softirq run) loses an ICMP error — tcp_v{4,6}_err only records it as a soft error
  // (TcpExtLockDroppedIcmps) and the client waits for its SYN retransmit, 1 s — whereas a RST
  // is queued to the socket backlog and refuses the connection at once. Seen with IPv6 pods.
  b.rules.push_back(rule(names::kRejectChain).rejectTcpReset().build());
  b.rules.push_back(rule(names::kRejectChain).reject().build());
  // Hairpin first — it must not be skipped by the unmarked-return below: a DNATed flow whose
  // source is its own new destination (a pod load-balanced to itself) must be masqueraded or
  // the pod would answer itself directly.
  b.rules.push_back(rule(names::kMasqueradingChain).ctStatusDnat().saddrDaddrInSet(names::kHairpin).masquerade(true).build());
  b.rules.push_back(rule(names::kMasqueradingChain).markAndEq(mark, 0).verdict(VerdictCode::kReturn).build());
  b.rules.push_back(rule(names::kMasqueradingChain).markSetXor(mark).build());
  b.rules.push_back(rule(names::kMasqueradingChain).masquerade(true).build());
  return b;
}

// --- Slots -------------------------------------------------------------------------------

std::pair<uint32_t, uint32_t> SlotAllocator::allocate(uint32_t n) {
  uint32_t cap = 4;
  while (cap < n) cap <<= 1;
  auto it = free_.find(cap);
  if (it != free_.end() && !it->second.empty()) {
    uint32_t base = it->second.back();
    it->second.pop_back();
    return {base, cap};
  }
  uint32_t base = next_;
  next_ += cap;
  return {base, cap};
}

void SlotAllocator::release(uint32_t base, uint32_t capacity) {
  if (capacity) free_[capacity].push_back(base);
}

// --- Planner -----------------------------------------------------------------------------

Planner::Planner(ProxyConfig cfg) : cfg_(std::move(cfg)) {}

size_t Planner::ElementKeyHash::operator()(const ElementKey& k) const {
  const std::string_view bytes(reinterpret_cast<const char*>(k.key.data()), k.key.size());
  return std::hash<std::string_view>()(bytes) ^ size_t(k.set);
}

namespace {

constexpr size_t kSharedSets = size_t(SharedSet::kFirewallIPs) + 1;

// Maps whose keys are a destination a Service claims (conflicts are decided on them). The
// firewall map follows service-ips: its keys are claimed there.
bool isMap(SharedSet set) {
  return set == SharedSet::kServiceIPs || set == SharedSet::kNoEndpointServices || set == SharedSet::kNodePorts ||
         set == SharedSet::kNoEndpointNodePorts;
}

// The same destination may appear in the dispatch map and its no-endpoint map; both count.
SharedSet otherMap(SharedSet set) {
  switch (set) {
    case SharedSet::kServiceIPs: return SharedSet::kNoEndpointServices;
    case SharedSet::kNoEndpointServices: return SharedSet::kServiceIPs;
    case SharedSet::kNodePorts: return SharedSet::kNoEndpointNodePorts;
    default: return SharedSet::kNodePorts;
  }
}

std::string describeKey(const Bytes& key) {
  // proto . port (nodePortKey)
  if (key.size() == 8) return fmt::format("NodePort {}/{}", (key[4] << 8) | key[5], protocolName(Protocol(key[0])));
  // address . proto . port, as laid out by servicePortKey
  if (key.size() == 12)
    return fmt::format("{}:{}/{}", IPAddress::fromV4Bytes(key.data()).toString(), (key[8] << 8) | key[9],
                       protocolName(Protocol(key[4])));
  if (key.size() == 24)
    return fmt::format("[{}]:{}/{}", IPAddress::fromV6Bytes(key.data()).toString(), (key[20] << 8) | key[21],
                       protocolName(Protocol(key[16])));
  return "?";
}

void dropPort(ServiceFragment& f, int port) {
  std::erase_if(f.chains, [&](const FragmentChain& c) { return c.port == port; });
  std::erase_if(f.elements, [&](const FragmentElement& e) { return e.port == port; });
}

// Owner lists are sorted, so the first holder named in a conflict does not depend on history.
void addOwner(std::vector<ObjectName>& owners, const ObjectName& id) {
  auto it = std::lower_bound(owners.begin(), owners.end(), id);
  if (it == owners.end() || !(*it == id)) owners.insert(it, id);
}

void removeOwner(std::vector<ObjectName>& owners, const ObjectName& id) {
  auto it = std::lower_bound(owners.begin(), owners.end(), id);
  if (it != owners.end() && *it == id) owners.erase(it);
}

// Stable across processes (golden files), unlike std::hash.
uint32_t fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

// The element of a chain's i-th endpoint slot, `slotBase + i : address . port`, added to `out`.
void addSlotElement(const FragmentChain& fc, uint32_t i, std::vector<Element>& out) {
  const auto& [ip, port] = fc.slots[i];
  KeyBuilder data;
  if (ip.isV4()) data.ipv4(ip.bytes()); else data.ipv6(ip.bytes());
  Element& e = out.emplace_back();
  e.key = KeyBuilder().u32host(fc.slotBase + i).take();
  e.data = data.port(port).take();
}

// The count gate of a slotted chain, `slotBase . endpoint count`, added to `out`.
void addGateElement(const FragmentChain& fc, std::vector<Element>& out) {
  out.emplace_back().key = KeyBuilder().u32host(fc.slotBase).u32host(uint32_t(fc.slots.size())).take();
}

// Whether the chain's rules are count-gated (and so own a `slot-counts` element). A narrow chain
// has the one ungated rule of a chain without gates.
bool gated(const FragmentChain* c) { return c && c->usesSlotMap() && c->countWindow > 0 && !c->gateNarrow; }

// A slotted chain that planWiden() has yet to gate.
bool narrow(const FragmentChain& c) { return c.gateNarrow && c.usesSlotMap(); }

nft::Set endpointsMapObject(const ProxyConfig& cfg, uint32_t shard) {
  nft::Set m{cfg.table(), names::endpointsMap(shard), {DataType::kInteger}, {addrType(cfg), DataType::kInetService},
             0, "Endpoint slots of Service ports", {}};
  m.typeofKey = nft::Typeof::kNumgen;
  m.typeofData = nft::Typeof::kDaddrThDport;
  return m;
}

// The element of `f` with key `k`, nullptr if it has none (a fragment holds a few elements).
const Element* findElement(const ServiceFragment& f, const Planner::ElementKey& k) {
  for (const auto& e : f.elements)
    if (e.set == k.set && e.element.key == k.key) return &e.element;
  return nullptr;
}

// Element batches by set, in set-name order (the order of the batch's element messages).
using ElementsBySet = std::map<std::string, std::vector<Element>>;

}  // namespace

namespace {

// Distinct endpoints of an affinity chain, in slot order (weights do not apply to sticky
// choices: each endpoint gets one uniform share).
std::vector<std::pair<IPAddress, uint16_t>> distinctEndpoints(const FragmentChain& fc) {
  std::vector<std::pair<IPAddress, uint16_t>> out;
  for (const auto& s : fc.slots)
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  return out;
}

}  // namespace

std::vector<nft::Rule> FragmentChain::rules(const nft::TableRef& table) const {
  if (!fixedRules.empty()) return fixedRules;
  std::vector<nft::Rule> out;
  if (affinitySeconds == 0 && (countWindow == 0 || gateNarrow)) {
    out.push_back(RuleBuilder(table, name)
                      .l4proto(protocol)
                      .dnatNumgenMap(uint32_t(slots.size()), slotBase, names::endpointsMap(shard))
                      .build());
    return out;
  }
  if (affinitySeconds == 0) {
    const uint32_t w = countWindow;
    const uint32_t low = gateCenter > w ? gateCenter - w : 1;
    const uint32_t high = std::min(gateCenter + w, slotCapacity);
    auto gatedRule = [&](uint32_t count) {
      out.push_back(RuleBuilder(table, name)
                        .l4proto(protocol)
                        .constantPairInSet(slotBase, count, names::kSlotCounts)
                        .dnatNumgenMap(count, slotBase, names::endpointsMap(shard))
                        .build());
    };
    // The centre first: the live rule is found first while the count has not moved.
    gatedRule(gateCenter);
    for (uint32_t count = low; count <= high; ++count)
      if (count != gateCenter) gatedRule(count);
    return out;
  }
  // kube-proxy's nftables mode keeps one dynamic set of client addresses per endpoint; a client
  // found in one goes back to that endpoint (and refreshes its timeout). A new client is sent
  // by the "probability 1/(n-i)" ladder, which is uniform, and recorded.
  const auto eps = distinctEndpoints(*this);
  const uint32_t n = uint32_t(eps.size());
  out.reserve(2 * n);
  for (const auto& [ip, port] : eps) {
    const std::string set = names::affinitySet(name, ip, port, affinitySeconds);
    out.push_back(
        RuleBuilder(table, name).l4proto(protocol).saddrInSet(set).updateSaddr(set).dnatTo(ip, port).build());
  }
  for (uint32_t i = 0; i < n; ++i) {
    const auto& [ip, port] = eps[i];
    const std::string set = names::affinitySet(name, ip, port, affinitySeconds);
    RuleBuilder rb(table, name);
    rb.l4proto(protocol);
    if (i + 1 < n) rb.numgenEq(n - i, 0);
    out.push_back(rb.updateSaddr(set).dnatTo(ip, port).build());
  }
  // `update` on a full set (kAffinitySetSize clients) ends its rule without a verdict; the
  // connection then falls to the next rule, and past the last one to this: balanced, never lost.
  out.push_back(RuleBuilder(table, name).l4proto(protocol).dnatTo(eps.back().first, eps.back().second).build());
  return out;
}

std::vector<nft::Set> FragmentChain::sets(const nft::TableRef& table) const {
  std::vector<nft::Set> out;
  if (affinitySeconds == 0 || !fixedRules.empty()) return out;
  const DataType addr = table.family == nft::Family::kIPv6 ? DataType::kIPv6Addr : DataType::kIPv4Addr;
  for (const auto& [ip, port] : distinctEndpoints(*this)) {
    nft::Set s{table, names::affinitySet(name, ip, port, affinitySeconds), {addr}, {}, nft::kSetTimeout | nft::kSetEval,
               "ClientIP affinity", {}};
    s.size = kAffinitySetSize;
    s.timeoutMs = uint64_t(affinitySeconds) * 1000;
    out.push_back(std::move(s));
  }
  return out;
}

void Planner::place(const ObjectName& id, ServiceFragment& f, Plan& plan) const {
  auto it = fragments_.find(id);
  const ServiceFragment* committed = it == fragments_.end() ? nullptr : &it->second;
  // A full plan places everything afresh; it only reads which chains had their window.
  const ServiceFragment* old = plan.full ? nullptr : committed;
  for (auto& fc : f.chains) {
    if (!fc.usesSlotMap()) continue;
    const FragmentChain* was = nullptr;
    if (committed)
      for (const auto& c : committed->chains)
        if (c.name == fc.name && c.usesSlotMap()) was = &c;
    const FragmentChain* prev = old ? was : nullptr;
    const uint32_t n = uint32_t(fc.slots.size());
    const uint32_t w = cfg_.countWindow;
    fc.countWindow = w;
    fc.gateCenter = w ? n : 0;
    // A full plan writes one rule per chain (the first sync loads as fast as without gates)
    // except where the chain had its window: a periodic full sync keeps windows, which costs
    // less in one batch (rules before elements) than widening again afterwards.
    fc.gateNarrow = w && plan.full && !(was && was->countWindow == w && !was->gateNarrow);
    if (prev && n <= prev->slotCapacity) {
      fc.slotBase = prev->slotBase;
      fc.slotCapacity = prev->slotCapacity;
      // Within the window of the rules already there, only the count gate moves. A narrow chain
      // that has to change its rules gets its whole window now.
      const uint32_t pw = prev->gateNarrow ? 0 : prev->countWindow;
      if (w && prev->countWindow == w && n + pw >= prev->gateCenter && n <= prev->gateCenter + pw) {
        fc.gateCenter = prev->gateCenter;
        fc.gateNarrow = prev->gateNarrow;
      }
    } else {
      // Room for the window's growth too, so that a rolling update's surge (N + 1) at N = 2^k
      // does not move the range.
      std::tie(fc.slotBase, fc.slotCapacity) = plan.slots.allocate(n + w);
    }
    fc.shard = fnv1a(fc.name) % plan.endpointShards;
  }
}

void Planner::settle(Plan& plan) {
  std::map<ObjectName, ServiceFragment>& fresh = plan.fragments;
  // Who holds each map key outside this plan: mirror owners that are not being re-planned.
  auto heldElsewhere = [&](const ElementKey& k) -> const ObjectName* {
    auto it = elements_.find(k);
    if (it == elements_.end()) return nullptr;
    for (const auto& o : it->second.owners)
      if (!fresh.count(o) && !plan.removed.count(o)) return &o;
    return nullptr;
  };
  // Claims in this plan: first the Services that already held a key and still want it, then the
  // rest in name order. A Service never loses a key it holds to a newcomer.
  std::unordered_map<ElementKey, const ObjectName*, ElementKeyHash> claims;
  claims.reserve(2 * fresh.size());
  for (const auto& [id, f] : fresh)
    for (const auto& e : f.elements) {
      if (!isMap(e.set)) continue;
      ElementKey k{e.set, e.element.key};
      auto it = elements_.find(k);
      if (it != elements_.end() && std::binary_search(it->second.owners.begin(), it->second.owners.end(), id))
        claims.emplace(k, &id);
    }
  for (auto& [id, f] : fresh) {
    std::set<int> conflicted;
    for (const auto& e : f.elements) {
      if (!isMap(e.set)) continue;
      const ElementKey k{e.set, e.element.key};
      const ElementKey other{otherMap(e.set), e.element.key};
      const ObjectName* holder = heldElsewhere(k);
      if (!holder) holder = heldElsewhere(other);
      auto claim = claims.find(k);
      if (!holder && claim != claims.end() && !(*claim->second == id)) holder = claim->second;
      auto claimOther = claims.find(other);
      if (!holder && claimOther != claims.end() && !(*claimOther->second == id)) holder = claimOther->second;
      if (holder) {
        if (conflicted.insert(e.port).second)
          f.problems.push_back({"Service " + id.toString(), fmt::format("spec.ports[{}]", e.port),
                                fmt::format("{} is already served by Service {}; skipped until that conflict goes away",
                                            describeKey(e.element.key), holder->toString())});
        continue;
      }
      claims.emplace(k, &id);
    }
    for (int p : conflicted) dropPort(f, p);
    if (!conflicted.empty()) plan.blocked.insert(id);
    place(id, f, plan);
  }
  plan.servicesPlanned += fresh.size();
}

Planner::Plan Planner::planFull(const Snapshot& snapshot) {
  Plan plan;
  plan.full = true;
  size_t ports = 0;
  for (const auto& [id, svc] : snapshot.services()) {
    ports += svc.ports.size();
    plan.fragments.emplace_hint(plan.fragments.end(), id, planService(svc, snapshot.slicesFor(id), cfg_));
  }
  // Every rule that looks up a map is a binding the kernel revisits for each element added to
  // that map, so endpoints are spread over enough maps to keep bindings per map near
  // chainsPerEndpointMap (a power of two, at most 256).
  const size_t per = std::max<uint32_t>(1, cfg_.chainsPerEndpointMap);
  while (plan.endpointShards < 256 && plan.endpointShards * per < ports) plan.endpointShards *= 2;
  settle(plan);
  // Services of the mirror that are gone. (settle() still counted them as holders of their map
  // keys: a newcomer to such a key stays blocked until the next sync re-plans it.)
  for (const auto& [id, _] : fragments_)
    if (!snapshot.service(id)) plan.removed.insert(id);

  BaseRuleset base = planBase(cfg_);
  for (uint32_t k = 0; k < plan.endpointShards; ++k) base.sets.push_back(endpointsMapObject(cfg_, k));
  const nft::TableRef& table = base.table.ref;
  nft::Transaction& tx = plan.tx;
  // add + delete + add: the table exists whatever was there, then is dropped with everything in
  // it, then rebuilt — all in one atomic batch.
  tx.add(nft::Table{table, {}});
  tx.del(nft::Table{table, {}});
  tx.add(base.table);
  for (auto& s : base.sets) tx.add(std::move(s));
  for (auto& c : base.chains) tx.add(std::move(c));
  for (auto& e : base.elements) tx.add(std::move(e));

  // After a count (to size the element lists), one pass over the fragments adds the Service
  // chains and collects their rules, the shared elements (one per key, whoever contributes it)
  // and the endpoint slots; the batch then lists the rules (base rules first) and the element
  // batches by set name.
  std::vector<size_t> slotCounts(plan.endpointShards);
  size_t elementCount = 0;
  for (const auto& [id, f] : plan.fragments) {
    elementCount += f.elements.size();
    for (const auto& fc : f.chains)
      if (fc.usesSlotMap()) slotCounts[fc.shard] += fc.slots.size();
  }
  // Ownership first, in a pass of its own: the owner table outlives the plan (commit() keeps
  // it), and its nodes, allocated between the transaction's objects that are freed after the
  // commit, kept most of those pages resident (≈ 10 MiB of RSS at 10 000 Services).
  plan.elements.reserve(elementCount);
  for (const auto& [id, f] : plan.fragments)
    for (const auto& e : f.elements) addOwner(plan.elements[ElementKey{e.set, e.element.key}].owners, id);
  std::vector<std::vector<Element>> slots(plan.endpointShards);
  for (uint32_t k = 0; k < plan.endpointShards; ++k) slots[k].reserve(slotCounts[k]);
  std::array<std::vector<Element>, kSharedSets> shared;
  std::vector<Element> gates;
  std::unordered_set<ElementKey, ElementKeyHash> listed;  // each key once, whoever contributes it
  listed.reserve(plan.elements.size());
  nft::Transaction rules;
  for (const auto& [id, f] : plan.fragments) {
    for (const auto& fc : f.chains) {
      for (auto& set : fc.sets(table)) tx.add(std::move(set));
      tx.add(fc.chain(table));
      for (auto& r : fc.rules(table)) rules.add(std::move(r));
      if (fc.usesSlotMap())
        for (uint32_t i = 0; i < fc.slots.size(); ++i) addSlotElement(fc, i, slots[fc.shard]);
      if (gated(&fc)) addGateElement(fc, gates);
    }
    for (const auto& e : f.elements)
      if (listed.insert(ElementKey{e.set, e.element.key}).second) shared[size_t(e.set)].push_back(e.element);
  }
  for (auto& r : base.rules) tx.add(std::move(r));
  tx.append(std::move(rules));
  ElementsBySet bySet;
  for (size_t s = 0; s < shared.size(); ++s)
    if (!shared[s].empty()) bySet.emplace(names::sharedSet(SharedSet(s)), std::move(shared[s]));
  for (uint32_t k = 0; k < plan.endpointShards; ++k)
    if (!slots[k].empty()) bySet.emplace(names::endpointsMap(k), std::move(slots[k]));
  if (!gates.empty()) bySet.emplace(names::kSlotCounts, std::move(gates));
  for (auto& [set, elems] : bySet) tx.add(nft::Elements{table, set, std::move(elems)});
  return plan;
}

Planner::Plan Planner::planPartial(const Snapshot& snapshot, const std::set<ObjectName>& changed) {
  Plan plan;
  plan.slots = slots_;
  plan.endpointShards = endpointShards_;
  std::set<ObjectName> ids = changed;
  ids.insert(blocked_.begin(), blocked_.end());
  for (const auto& id : ids) {
    if (const Service* svc = snapshot.service(id))
      plan.fragments.emplace_hint(plan.fragments.end(), id, planService(*svc, snapshot.slicesFor(id), cfg_));
    else
      plan.removed.insert(plan.removed.end(), id);
  }
  settle(plan);
  // Ranges that chains left (removed, or moved to a bigger range) are free for later plans.
  for (const auto& id : ids) {
    auto old = fragments_.find(id);
    if (old == fragments_.end()) continue;
    auto nf = plan.fragments.find(id);
    for (const auto& oc : old->second.chains) {
      bool kept = false;
      if (nf != plan.fragments.end())
        for (const auto& nc : nf->second.chains)
          kept = kept || (nc.name == oc.name && nc.usesSlotMap() && nc.slotBase == oc.slotBase);
      if (!kept) plan.slots.release(oc.slotBase, oc.slotCapacity);
    }
  }

  const nft::TableRef table = cfg_.table();
  static const ServiceFragment kEmpty;
  auto oldOf = [&](const ObjectName& id) -> const ServiceFragment& {
    auto it = fragments_.find(id);
    return it == fragments_.end() ? kEmpty : it->second;
  };
  auto newOf = [&](const ObjectName& id) -> const ServiceFragment& {
    auto it = plan.fragments.find(id);
    return it == plan.fragments.end() ? kEmpty : it->second;
  };

  nft::Transaction addSets, addChains, rules, delElems, addElems, delChains, delSets;
  ElementsBySet slotDels, slotAdds;
  auto slotted = [](const FragmentChain* c) { return c && c->usesSlotMap() ? c : nullptr; };
  for (const auto& id : ids) {
    const ServiceFragment& before = oldOf(id);
    const ServiceFragment& after = newOf(id);
    std::map<std::string, const FragmentChain*> oldChains, newChains;
    for (const auto& c : before.chains) oldChains[c.name] = &c;
    for (const auto& c : after.chains) newChains[c.name] = &c;
    for (const auto& [name, c] : newChains) {
      std::vector<nft::Rule> now = c->rules(table);
      auto it = oldChains.find(name);
      if (it == oldChains.end()) {
        addChains.add(c->chain(table));
      } else if (it->second->rules(table) == now) {
        continue;
      } else {
        rules.flush(c->chain(table));
      }
      for (auto& r : now) rules.add(std::move(r));
    }
    // Chains are visited in name order, so an ext- chain is deleted before the local-/svc-
    // chains it jumps to.
    for (const auto& [name, c] : oldChains)
      if (!newChains.count(name)) delChains.del(c->chain(table));
    // Affinity sets: created before the rules that use them, deleted after those rules left.
    std::map<std::string, nft::Set> oldSets, newSets;
    for (const auto& c : before.chains)
      for (auto& set : c.sets(table)) oldSets.emplace(set.name, std::move(set));
    for (const auto& c : after.chains)
      for (auto& set : c.sets(table)) newSets.emplace(set.name, std::move(set));
    // (A set's name includes its timeout, so a changed timeout is a new set.)
    for (auto& [name, set] : newSets)
      if (!oldSets.count(name)) addSets.add(std::move(set));
    for (auto& [name, set] : oldSets)
      if (!newSets.count(name)) delSets.del(std::move(set));

    // Endpoint slots: per index while a chain keeps its range, else the whole old range goes
    // and the whole new one comes (all deletions precede all additions in the batch, so a
    // range freed and reused within one plan is fine).
    for (const auto& [name, oc] : oldChains) {
      const FragmentChain* c = slotted(oc);
      if (!c) continue;
      auto it = newChains.find(name);
      const FragmentChain* n = it == newChains.end() ? nullptr : slotted(it->second);
      const bool sameRange = n && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < c->slots.size(); ++i)
        if (!sameRange || i >= n->slots.size() || n->slots[i] != c->slots[i])
          addSlotElement(*c, i, slotDels[names::endpointsMap(c->shard)]);
      if (gated(c) && !(sameRange && gated(n) && n->slots.size() == c->slots.size()))
        addGateElement(*c, slotDels[names::kSlotCounts]);
    }
    for (const auto& [name, nc] : newChains) {
      const FragmentChain* n = slotted(nc);
      if (!n) continue;
      auto it = oldChains.find(name);
      const FragmentChain* c = it == oldChains.end() ? nullptr : slotted(it->second);
      const bool sameRange = c && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < n->slots.size(); ++i)
        if (!sameRange || i >= c->slots.size() || n->slots[i] != c->slots[i])
          addSlotElement(*n, i, slotAdds[names::endpointsMap(n->shard)]);
      if (gated(n) && !(sameRange && gated(c) && n->slots.size() == c->slots.size()))
        addGateElement(*n, slotAdds[names::kSlotCounts]);
    }
  }
  // Element ownership in two passes — every re-planned Service first leaves the keys it held,
  // then joins the keys it wants — so a key moving between two Services of the same plan ends
  // with the new owner's value whatever order they are visited in.
  ElementTable& touched = plan.elements;
  std::vector<const ElementTable::value_type*> order;  // as first touched: the batch's order
  auto state = [&](const ElementKey& k) -> ElementState& {
    auto [it, added] = touched.try_emplace(k);
    if (added) {
      order.push_back(&*it);
      auto cur = elements_.find(k);
      if (cur != elements_.end()) it->second = cur->second;
    }
    return it->second;
  };
  for (const auto& id : ids)
    for (const auto& e : oldOf(id).elements) removeOwner(state({e.set, e.element.key}).owners, id);
  for (const auto& id : ids)
    for (const auto& e : newOf(id).elements) addOwner(state({e.set, e.element.key}).owners, id);
  // An element's value is its first owner's (see committedElement()), re-planned or not.
  auto valueAfter = [&](const ElementKey& k, const ElementState& s) -> const Element* {
    if (s.owners.empty()) return nullptr;
    auto f = plan.fragments.find(s.owners.front());
    if (f != plan.fragments.end()) return findElement(f->second, k);
    auto c = fragments_.find(s.owners.front());  // an owner that was not re-planned
    return c == fragments_.end() ? nullptr : findElement(c->second, k);
  };
  ElementsBySet dels, adds;
  for (const auto* entry : order) {
    const auto& [k, s] = *entry;
    const Element* was = committedElement(k);
    const Element* now = valueAfter(k, s);
    if (was && (!now || !(*was == *now))) dels[names::sharedSet(k.set)].push_back(*was);
    if (now && (!was || !(*was == *now))) adds[names::sharedSet(k.set)].push_back(*now);
  }
  for (auto& [set, el] : slotDels) dels[set] = std::move(el);
  for (auto& [set, el] : slotAdds) adds[set] = std::move(el);
  for (auto& [set, el] : dels) delElems.del(nft::Elements{table, set, std::move(el)});
  for (auto& [set, el] : adds) addElems.add(nft::Elements{table, set, std::move(el)});

  // Sets and chains first (so rules and elements can point at them), elements next, dead chains
  // after the map elements that referenced them are gone, and dead sets after the rules that
  // used them.
  plan.tx.append(std::move(addSets));
  plan.tx.append(std::move(addChains));
  plan.tx.append(std::move(rules));
  plan.tx.append(std::move(delElems));
  plan.tx.append(std::move(addElems));
  plan.tx.append(std::move(delChains));
  plan.tx.append(std::move(delSets));
  return plan;
}

namespace {

size_t narrowChainsOf(const ServiceFragment& f) {
  return size_t(std::count_if(f.chains.begin(), f.chains.end(), narrow));
}

}  // namespace

Planner::Plan Planner::planWiden(size_t maxChains) {
  Plan plan;
  plan.slots = slots_;
  plan.endpointShards = endpointShards_;
  const nft::TableRef table = cfg_.table();
  std::vector<Element> gates;
  for (const auto& [id, f] : fragments_) {
    if (plan.widened.size() >= maxChains) break;
    for (size_t i = 0; i < f.chains.size(); ++i) {
      if (!narrow(f.chains[i])) continue;
      FragmentChain wide = f.chains[i];
      wide.gateNarrow = false;
      // The ungated rule goes, the gated window and its gate come, in one atomic batch.
      plan.tx.flush(wide.chain(table));
      for (auto& r : wide.rules(table)) plan.tx.add(std::move(r));
      addGateElement(wide, gates);
      plan.widened.emplace_back(id, i);
    }
    if (!plan.widened.empty() && plan.widened.back().first == id) ++plan.servicesPlanned;
  }
  if (!gates.empty()) plan.tx.add(nft::Elements{table, names::kSlotCounts, std::move(gates)});
  return plan;
}

void Planner::commit(Plan&& plan) {
  if (plan.full) {
    narrow_ = 0;
    for (const auto& [id, f] : plan.fragments) narrow_ += narrowChainsOf(f);
    // A full plan holds the whole new state.
    fragments_ = std::move(plan.fragments);
    elements_ = std::move(plan.elements);
    blocked_ = std::move(plan.blocked);
  } else {
    for (const auto& id : plan.removed) {
      if (auto it = fragments_.find(id); it != fragments_.end()) narrow_ -= narrowChainsOf(it->second);
      fragments_.erase(id);
      blocked_.erase(id);
    }
    for (auto& [id, f] : plan.fragments) {
      blocked_.erase(id);
      if (auto it = fragments_.find(id); it != fragments_.end()) narrow_ -= narrowChainsOf(it->second);
      narrow_ += narrowChainsOf(f);
      fragments_.insert_or_assign(id, std::move(f));
    }
    blocked_.insert(plan.blocked.begin(), plan.blocked.end());
    for (const auto& [id, chain] : plan.widened) {
      FragmentChain& c = fragments_.at(id).chains.at(chain);
      if (c.gateNarrow) --narrow_;
      c.gateNarrow = false;
    }
    for (auto& [k, s] : plan.elements) {
      if (s.owners.empty())
        elements_.erase(k);
      else
        elements_.insert_or_assign(k, std::move(s));
    }
  }
  slots_ = std::move(plan.slots);
  endpointShards_ = plan.endpointShards;
  committed_ = true;
}

void Planner::reset() {
  narrow_ = 0;
  slots_ = {};
  fragments_.clear();
  elements_.clear();
  blocked_.clear();
  committed_ = false;
}

const Element* Planner::committedElement(const ElementKey& k) const {
  auto owners = elements_.find(k);
  if (owners == elements_.end() || owners->second.owners.empty()) return nullptr;
  auto f = fragments_.find(owners->second.owners.front());
  return f == fragments_.end() ? nullptr : findElement(f->second, k);
}

std::map<ObjectName, std::vector<Problem>> Planner::problems() const {
  std::map<ObjectName, std::vector<Problem>> out;
  for (const auto& [id, f] : fragments_)
    if (!f.problems.empty()) out[id] = f.problems;
  return out;
}

}  // namespace sluice
