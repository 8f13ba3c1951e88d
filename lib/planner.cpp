#include "sluice/planner.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>

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

namespace {

// The one-shot SHA256() looks the algorithm up in OpenSSL's provider store on every call,
// which costs more than the hash itself; fetch it once.
const EVP_MD* sha256() {
  static const EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

}  // namespace

namespace names {

std::string serviceChain(const ObjectName& svc, Protocol proto, const std::string& portName) {
  std::string key;
  key.reserve(svc.ns.size() + svc.name.size() + portName.size() + 8);
  key.append(svc.ns).append("/").append(svc.name).append("/");
  key.append(protocolNftName(proto)).append("/").append(portName);
  unsigned char digest[EVP_MAX_MD_SIZE];
  EVP_Digest(key.data(), key.size(), digest, nullptr, sha256(), nullptr);
  // First 8 characters of base32(sha256(key)): 40 bits, enough to keep names unique even when
  // a very long key is truncated below.
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  uint64_t bits = 0;
  for (int i = 0; i < 5; ++i) bits = (bits << 8) | digest[i];
  std::string hash(8, '?');
  for (int i = 7; i >= 0; --i, bits >>= 5) hash[size_t(i)] = kAlphabet[bits & 31];
  std::string name;
  name.reserve(hash.size() + key.size() + 5);
  name.append("svc-").append(hash).append("-").append(key);
  if (name.size() > 255) name.resize(255);  // NFT_NAME_MAXLEN includes the NUL
  return name;
}

std::string endpointsMap(uint32_t shard) { return "endpoints-" + std::to_string(shard); }

const char* sharedSet(SharedSet s) {
  switch (s) {
    case SharedSet::kClusterIPs: return kClusterIPs;
    case SharedSet::kServiceIPs: return kServiceIPs;
    case SharedSet::kNoEndpointServices: return kNoEndpointServices;
    case SharedSet::kHairpin: return kHairpin;
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
  (void)svc;
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
  for (const auto& e : endpoints) {
    if (e.weight == 0) continue;
    if (e.ready) s.cluster.push_back(e);
    if (e.ready && e.local) s.local.push_back(e);
    if (e.ready || (e.serving && e.terminating)) s.hasEndpoints = true;
  }
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

}  // namespace

ServiceFragment planService(const Service& svc, const std::map<ObjectName, EndpointSlice>& slices,
                            const ProxyConfig& cfg) {
  ServiceFragment f;
  if (!skipReason(svc, cfg).empty()) return f;
  auto object = [&] { return "Service " + svc.id.toString(); };
  IPAddress clusterIP;
  for (const auto& ip : svc.clusterIPs)
    if (ip.family() == cfg.family) {
      clusterIP = ip;
      break;
    }
  f.elements.reserve(1 + svc.ports.size());  // the ClusterIP, a map entry per port; rarely hairpins
  f.elements.push_back({SharedSet::kClusterIPs, Element{addrKey(clusterIP), {}, {}, {}}, -1});

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
    const auto& chosen = svc.internalTrafficPolicy == TrafficPolicy::kLocal ? sets.local : sets.cluster;
    Bytes key = servicePortKey(clusterIP, sp.protocol, sp.port);
    if (chosen.empty()) {
      // No endpoint anywhere: reject so clients fail fast; endpoints elsewhere but none local
      // under internalTrafficPolicy Local: drop (service-semantics §3).
      Verdict v = sets.hasEndpoints ? Verdict{VerdictCode::kDrop, {}} : Verdict{VerdictCode::kGoto, names::kRejectChain};
      f.elements.push_back({SharedSet::kNoEndpointServices,
                            Element{key, {}, v, fmt::format("{}:{}", svc.id.toString(), sp.name)}, pi});
      continue;
    }
    FragmentChain fc;
    fc.name = names::serviceChain(svc.id, sp.protocol, sp.name);
    fc.port = pi;
    fc.protocol = sp.protocol;
    uint64_t total = 0;
    for (const auto& e : chosen) total += e.weight;
    fc.slots.reserve(std::min(total, kMaxSlots));
    for (const auto& e : chosen) {
      // Weights repeat an endpoint's slot; scaled down if the sum would be unreasonable.
      uint64_t n = total > kMaxSlots ? std::max<uint64_t>(1, e.weight * kMaxSlots / total) : e.weight;
      for (uint64_t k = 0; k < n; ++k) fc.slots.emplace_back(e.ip, e.port);
      // Only a pod on this node can be load-balanced to itself through this node, so only
      // local endpoints (and those whose node is unknown) need hairpin detection.
      if (e.local || e.nodeUnknown) hairpin.insert(e.ip);
    }
    f.elements.push_back({SharedSet::kServiceIPs, Element{key, {}, Verdict{VerdictCode::kGoto, fc.name}, {}}, pi});
    f.chains.push_back(std::move(fc));
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
  b.sets.push_back({t, names::kClusterIPs, {addr}, {}, 0, "Active ClusterIPs", {}});
  b.sets.push_back({t, names::kServiceIPs, svcKey, {DataType::kVerdict}, 0, "ClusterIP dispatch", {}});
  b.sets.push_back({t, names::kNoEndpointServices, svcKey, {DataType::kVerdict}, 0, "Service ports without endpoints", {}});
  b.sets.push_back({t, names::kHairpin, {addr, addr}, {}, 0, "Local endpoints that may reach themselves", {}});


  auto base = [&](const char* name, const char* type, nft::Hook hook, int prio) {
    b.chains.push_back({t, name, nft::BaseHook{type, hook, prio}});
  };
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
  b.rules.push_back(rule(names::kEndpointsCheckChain).daddrProtoPortVmap(names::kNoEndpointServices).build());
  // Only packets that were not DNATed still have a ClusterIP as destination at filter priority:
  // a port or protocol the Service does not have.
  b.rules.push_back(rule(names::kClusterIPsCheckChain).daddrInSet(names::kClusterIPs).reject().build());
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

constexpr size_t kSharedSets = size_t(SharedSet::kHairpin) + 1;

bool isMap(SharedSet set) { return set == SharedSet::kServiceIPs || set == SharedSet::kNoEndpointServices; }

// The same ip:port/proto may appear in service-ips and no-endpoint-services; both count.
SharedSet otherMap(SharedSet set) {
  return set == SharedSet::kServiceIPs ? SharedSet::kNoEndpointServices : SharedSet::kServiceIPs;
}

std::string describeKey(const Bytes& key) {
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

nft::Set endpointsMapObject(const ProxyConfig& cfg, uint32_t shard) {
  nft::Set m{cfg.table(), names::endpointsMap(shard), {DataType::kInteger}, {addrType(cfg), DataType::kInetService},
             0, "Endpoint slots of Service ports", {}};
  m.typeofKey = nft::Typeof::kNumgen;
  m.typeofData = nft::Typeof::kDaddrThDport;
  return m;
}

// Element batches by set, in set-name order (the order of the batch's element messages).
using ElementsBySet = std::map<std::string, std::vector<Element>>;

}  // namespace

nft::Rule FragmentChain::rule(const nft::TableRef& table) const {
  return RuleBuilder(table, name)
      .l4proto(protocol)
      .dnatNumgenMap(uint32_t(slots.size()), slotBase, names::endpointsMap(shard))
      .build();
}

void Planner::place(const ObjectName& id, ServiceFragment& f, Plan& plan) const {
  const ServiceFragment* old = nullptr;
  if (!plan.full) {
    auto it = fragments_.find(id);
    if (it != fragments_.end()) old = &it->second;
  }
  for (auto& fc : f.chains) {
    const FragmentChain* prev = nullptr;
    if (old)
      for (const auto& c : old->chains)
        if (c.name == fc.name) prev = &c;
    const uint32_t n = uint32_t(fc.slots.size());
    if (prev && n <= prev->slotCapacity) {
      fc.slotBase = prev->slotBase;
      fc.slotCapacity = prev->slotCapacity;
    } else {
      std::tie(fc.slotBase, fc.slotCapacity) = plan.slots.allocate(n);
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

  // After a count (to size the element lists), one pass over the fragments adds the Service
  // chains and collects their rules, the shared elements (one per key, whoever contributes it)
  // and the endpoint slots; the batch then lists the rules (base rules first) and the element
  // batches by set name.
  std::vector<size_t> slotCounts(plan.endpointShards);
  size_t elementCount = 0;
  for (const auto& [id, f] : plan.fragments) {
    elementCount += f.elements.size();
    for (const auto& fc : f.chains) slotCounts[fc.shard] += fc.slots.size();
  }
  std::vector<std::vector<Element>> slots(plan.endpointShards);
  for (uint32_t k = 0; k < plan.endpointShards; ++k) slots[k].reserve(slotCounts[k]);
  std::array<std::vector<Element>, kSharedSets> shared;
  plan.elements.reserve(elementCount);
  nft::Transaction rules;
  for (const auto& [id, f] : plan.fragments) {
    for (const auto& fc : f.chains) {
      tx.add(fc.chain(table));
      rules.add(fc.rule(table));
      for (uint32_t i = 0; i < fc.slots.size(); ++i) addSlotElement(fc, i, slots[fc.shard]);
    }
    for (const auto& e : f.elements) {
      auto [it, added] = plan.elements.try_emplace(ElementKey{e.set, e.element.key});
      if (added) {
        it->second.element = e.element;
        shared[size_t(e.set)].push_back(e.element);
      }
      addOwner(it->second.owners, id);
    }
  }
  for (auto& r : base.rules) tx.add(std::move(r));
  tx.append(std::move(rules));
  ElementsBySet bySet;
  for (size_t s = 0; s < shared.size(); ++s)
    if (!shared[s].empty()) bySet.emplace(names::sharedSet(SharedSet(s)), std::move(shared[s]));
  for (uint32_t k = 0; k < plan.endpointShards; ++k)
    if (!slots[k].empty()) bySet.emplace(names::endpointsMap(k), std::move(slots[k]));
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
        for (const auto& nc : nf->second.chains) kept = kept || (nc.name == oc.name && nc.slotBase == oc.slotBase);
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

  nft::Transaction addChains, rules, delElems, addElems, delChains;
  ElementsBySet slotDels, slotAdds;
  for (const auto& id : ids) {
    const ServiceFragment& before = oldOf(id);
    const ServiceFragment& after = newOf(id);
    std::map<std::string, const FragmentChain*> oldChains, newChains;
    for (const auto& c : before.chains) oldChains[c.name] = &c;
    for (const auto& c : after.chains) newChains[c.name] = &c;
    for (const auto& [name, c] : newChains) {
      nft::Rule rule = c->rule(table);
      auto it = oldChains.find(name);
      if (it == oldChains.end()) {
        addChains.add(c->chain(table));
      } else if (it->second->rule(table) == rule) {
        continue;
      } else {
        rules.flush(c->chain(table));
      }
      rules.add(std::move(rule));
    }
    for (const auto& [name, c] : oldChains)
      if (!newChains.count(name)) delChains.del(c->chain(table));

    // Endpoint slots: per index while a chain keeps its range, else the whole old range goes
    // and the whole new one comes (all deletions precede all additions in the batch, so a
    // range freed and reused within one plan is fine).
    for (const auto& [name, c] : oldChains) {
      auto it = newChains.find(name);
      const FragmentChain* n = it == newChains.end() ? nullptr : it->second;
      const bool sameRange = n && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < c->slots.size(); ++i)
        if (!sameRange || i >= n->slots.size() || n->slots[i] != c->slots[i])
          addSlotElement(*c, i, slotDels[names::endpointsMap(c->shard)]);
    }
    for (const auto& [name, n] : newChains) {
      auto it = oldChains.find(name);
      const FragmentChain* c = it == oldChains.end() ? nullptr : it->second;
      const bool sameRange = c && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < n->slots.size(); ++i)
        if (!sameRange || i >= c->slots.size() || n->slots[i] != c->slots[i])
          addSlotElement(*n, i, slotAdds[names::endpointsMap(n->shard)]);
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
    for (const auto& e : newOf(id).elements) {
      ElementState& s = state({e.set, e.element.key});
      if (s.owners.empty()) s.element = e.element;
      addOwner(s.owners, id);
    }
  ElementsBySet dels, adds;
  for (const auto* entry : order) {
    const auto& [k, s] = *entry;
    auto cur = elements_.find(k);
    const Element* was = cur == elements_.end() ? nullptr : &cur->second.element;
    const Element* now = s.owners.empty() ? nullptr : &s.element;
    if (was && (!now || !(*was == *now))) dels[names::sharedSet(k.set)].push_back(*was);
    if (now && (!was || !(*was == *now))) adds[names::sharedSet(k.set)].push_back(*now);
  }
  for (auto& [set, el] : slotDels) dels[set] = std::move(el);
  for (auto& [set, el] : slotAdds) adds[set] = std::move(el);
  for (auto& [set, el] : dels) delElems.del(nft::Elements{table, set, std::move(el)});
  for (auto& [set, el] : adds) addElems.add(nft::Elements{table, set, std::move(el)});

  // Chains first (so elements can point at them), elements next, dead chains last (after the
  // map elements that referenced them are gone).
  plan.tx.append(std::move(addChains));
  plan.tx.append(std::move(rules));
  plan.tx.append(std::move(delElems));
  plan.tx.append(std::move(addElems));
  plan.tx.append(std::move(delChains));
  return plan;
}

void Planner::commit(Plan&& plan) {
  if (plan.full) {
    // A full plan holds the whole new state.
    fragments_ = std::move(plan.fragments);
    elements_ = std::move(plan.elements);
    blocked_ = std::move(plan.blocked);
  } else {
    for (const auto& id : plan.removed) {
      fragments_.erase(id);
      blocked_.erase(id);
    }
    for (auto& [id, f] : plan.fragments) {
      blocked_.erase(id);
      fragments_.insert_or_assign(id, std::move(f));
    }
    blocked_.insert(plan.blocked.begin(), plan.blocked.end());
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
  slots_ = {};
  fragments_.clear();
  elements_.clear();
  blocked_.clear();
  committed_ = false;
}

std::map<ObjectName, std::vector<Problem>> Planner::problems() const {
  std::map<ObjectName, std::vector<Problem>> out;
  for (const auto& [id, f] : fragments_)
    if (!f.problems.empty()) out[id] = f.problems;
  return out;
}

}  // namespace sluice
