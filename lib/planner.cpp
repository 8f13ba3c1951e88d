#include "sluice/planner.h"

#include <openssl/sha.h>

#include <algorithm>

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

std::string Problem::toString() const {
  std::string s = object;
  if (!field.empty()) s += " " + field;
  return s + ": " + reason;
}

namespace names {

std::string serviceChain(const ObjectName& svc, Protocol proto, const std::string& portName) {
  const std::string key = fmt::format("{}/{}/{}/{}", svc.ns, svc.name, protocolNftName(proto), portName);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), digest);
  // First 8 characters of base32(sha256(key)): 40 bits, enough to keep names unique even when
  // a very long key is truncated below.
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  uint64_t bits = 0;
  for (int i = 0; i < 5; ++i) bits = (bits << 8) | digest[i];
  std::string hash(8, '?');
  for (int i = 7; i >= 0; --i, bits >>= 5) hash[size_t(i)] = kAlphabet[bits & 31];
  std::string name = "svc-" + hash + "-" + key;
  if (name.size() > 255) name.resize(255);  // NFT_NAME_MAXLEN includes the NUL
  return name;
}

std::string endpointsMap(uint32_t shard) { return "endpoints-" + std::to_string(shard); }

}  // namespace names

std::string skipReason(const Service& svc, const ProxyConfig& cfg) {
  if (svc.type == ServiceType::kExternalName) return "type ExternalName";
  if (svc.labels.count("service.kubernetes.io/service-proxy-name")) return "owned by another proxy";
  if (svc.clusterIPs.empty()) return "headless (no cluster IP)";
  for (const auto& ip : svc.clusterIPs)
    if (ip.family() == cfg.family) return "";
  return fmt::format("no {} cluster IP", familyName(cfg.family));
}

std::vector<ResolvedEndpoint> resolveEndpoints(const Service& svc, const ServicePort& port,
                                               const std::map<ObjectName, EndpointSlice>& slices,
                                               const ProxyConfig& cfg, std::vector<Problem>* problems) {
  std::vector<ResolvedEndpoint> out;
  std::set<std::pair<IPAddress, uint16_t>> seen;
  (void)svc;
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
      if (!seen.insert({ip, sp->port}).second) continue;
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
  return out;
}

EndpointSets categorizeEndpoints(const std::vector<ResolvedEndpoint>& endpoints) {
  EndpointSets s;
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
  const std::string object = "Service " + svc.id.toString();
  IPAddress clusterIP;
  for (const auto& ip : svc.clusterIPs)
    if (ip.family() == cfg.family) {
      clusterIP = ip;
      break;
    }
  const nft::TableRef table = cfg.table();
  f.elements.push_back({names::kClusterIPs, Element{addrKey(clusterIP), {}, {}, {}}, -1});

  std::set<std::pair<Protocol, uint16_t>> seenPorts;
  std::set<IPAddress> hairpin;
  for (size_t i = 0; i < svc.ports.size(); ++i) {
    const ServicePort& sp = svc.ports[i];
    const int pi = int(i);
    if (sp.port == 0) {
      f.problems.push_back({object, fmt::format("spec.ports[{}].port", i), "must be between 1 and 65535"});
      continue;
    }
    if (!seenPorts.insert({sp.protocol, sp.port}).second) {
      f.problems.push_back({object, fmt::format("spec.ports[{}]", i),
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
      f.elements.push_back({names::kNoEndpointServices,
                            Element{key, {}, v, fmt::format("{}:{}", svc.id.toString(), sp.name)}, pi});
      continue;
    }
    const std::string chain = names::serviceChain(svc.id, sp.protocol, sp.name);
    FragmentChain fc{nft::Chain{table, chain, std::nullopt}, {}, pi, sp.protocol, {}, 0, 0};
    uint64_t total = 0;
    for (const auto& e : chosen) total += e.weight;
    for (const auto& e : chosen) {
      // Weights repeat an endpoint's slot; scaled down if the sum would be unreasonable.
      uint64_t n = total > kMaxSlots ? std::max<uint64_t>(1, e.weight * kMaxSlots / total) : e.weight;
      for (uint64_t k = 0; k < n; ++k) fc.slots.emplace_back(e.ip, e.port);
      // Only a pod on this node can be load-balanced to itself through this node, so only
      // local endpoints (and those whose node is unknown) need hairpin detection.
      if (e.local || e.nodeUnknown) hairpin.insert(e.ip);
    }
    f.chains.push_back(std::move(fc));
    f.elements.push_back({names::kServiceIPs, Element{key, {}, Verdict{VerdictCode::kGoto, chain}, {}}, pi});
  }
  for (const auto& ip : hairpin) f.elements.push_back({names::kHairpin, Element{pairKey(ip, ip), {}, {}, {}}, -1});
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

namespace {

bool isMapSet(const std::string& set) { return set == names::kServiceIPs || set == names::kNoEndpointServices; }

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

Planner::ElementKey elementKey(const std::string& set, const Bytes& key) {
  std::string k = set;
  k.push_back('\0');
  k.append(reinterpret_cast<const char*>(key.data()), key.size());
  return k;
}

std::string setOf(const Planner::ElementKey& k) { return k.substr(0, k.find('\0')); }

void dropPort(ServiceFragment& f, int port) {
  std::erase_if(f.chains, [&](const FragmentChain& c) { return c.port == port; });
  std::erase_if(f.elements, [&](const FragmentElement& e) { return e.port == port; });
}

}  // namespace

namespace {

// Stable across processes (golden files), unlike std::hash.
uint32_t fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

Element slotElement(const FragmentChain& fc, uint32_t i) {
  const auto& [ip, port] = fc.slots[i];
  KeyBuilder data;
  if (ip.isV4()) data.ipv4(ip.bytes()); else data.ipv6(ip.bytes());
  return Element{KeyBuilder().u32host(fc.slotBase + i).take(), data.port(port).take(), {}, {}};
}

nft::Set endpointsMapObject(const ProxyConfig& cfg, uint32_t shard) {
  nft::Set m{cfg.table(), names::endpointsMap(shard), {DataType::kInteger}, {addrType(cfg), DataType::kInetService},
             0, "Endpoint slots of Service ports", {}};
  m.typeofKey = nft::Typeof::kNumgen;
  m.typeofData = nft::Typeof::kDaddrThDport;
  return m;
}

}  // namespace

void Planner::place(const ObjectName& id, ServiceFragment& f, Plan& plan) const {
  const ServiceFragment* old = nullptr;
  if (!plan.full) {
    auto it = fragments_.find(id);
    if (it != fragments_.end()) old = &it->second;
  }
  const nft::TableRef table = cfg_.table();
  for (auto& fc : f.chains) {
    const FragmentChain* prev = nullptr;
    if (old)
      for (const auto& c : old->chains)
        if (c.chain.name == fc.chain.name) prev = &c;
    const uint32_t n = uint32_t(fc.slots.size());
    if (prev && n <= prev->slotCapacity) {
      fc.slotBase = prev->slotBase;
      fc.slotCapacity = prev->slotCapacity;
    } else {
      std::tie(fc.slotBase, fc.slotCapacity) = plan.slots.allocate(n);
    }
    fc.shard = fnv1a(fc.chain.name) % plan.endpointShards;
    fc.rules.push_back(RuleBuilder(table, fc.chain.name)
                           .l4proto(fc.protocol)
                           .dnatNumgenMap(n, fc.slotBase, names::endpointsMap(fc.shard))
                           .build());
  }
}

void Planner::planServices(const Snapshot& snapshot, const std::set<ObjectName>& ids, Plan& plan) {
  // Who holds each map key outside this plan: mirror owners that are not being re-planned.
  auto heldElsewhere = [&](const ElementKey& k) -> const ObjectName* {
    auto it = elements_.find(k);
    if (it == elements_.end()) return nullptr;
    for (const auto& o : it->second.owners)
      if (!ids.count(o)) return &o;
    return nullptr;
  };
  std::map<ObjectName, ServiceFragment> fresh;
  for (const auto& id : ids) {
    const Service* svc = snapshot.service(id);
    if (!svc) {
      plan.removed.insert(id);
      continue;
    }
    fresh[id] = planService(*svc, snapshot.slicesFor(id), cfg_);
  }
  // Claims in this plan: first the Services that already held a key and still want it, then the
  // rest in name order. A Service never loses a key it holds to a newcomer.
  std::unordered_map<ElementKey, ObjectName> claims;
  for (const auto& [id, f] : fresh)
    for (const auto& e : f.elements) {
      if (!isMapSet(e.set)) continue;
      ElementKey k = elementKey(e.set, e.element.key);
      auto it = elements_.find(k);
      if (it != elements_.end() && it->second.owners.count(id)) claims.emplace(k, id);
    }
  for (auto& [id, f] : fresh) {
    std::set<int> conflicted;
    for (const auto& e : f.elements) {
      if (!isMapSet(e.set)) continue;
      ElementKey k = elementKey(e.set, e.element.key);
      const ObjectName* holder = heldElsewhere(k);
      // The same ip:port/proto may appear in service-ips and no-endpoint-services; both count.
      ElementKey other = elementKey(e.set == names::kServiceIPs ? names::kNoEndpointServices : names::kServiceIPs, e.element.key);
      if (!holder) holder = heldElsewhere(other);
      auto claim = claims.find(k);
      if (!holder && claim != claims.end() && !(claim->second == id)) holder = &claim->second;
      auto claimOther = claims.find(other);
      if (!holder && claimOther != claims.end() && !(claimOther->second == id)) holder = &claimOther->second;
      if (holder) {
        if (conflicted.insert(e.port).second)
          f.problems.push_back({"Service " + id.toString(), fmt::format("spec.ports[{}]", e.port),
                                fmt::format("{} is already served by Service {}; skipped until that conflict goes away",
                                            describeKey(e.element.key), holder->toString())});
        continue;
      }
      claims.emplace(k, id);
    }
    for (int p : conflicted) dropPort(f, p);
    if (!conflicted.empty()) plan.blocked.insert(id);
  }
  for (auto& [id, f] : fresh) place(id, f, plan);
  // Ranges that chains left (removed, or moved to a bigger range) are free for later plans.
  if (!plan.full) {
    for (const auto& id : ids) {
      auto old = fragments_.find(id);
      if (old == fragments_.end()) continue;
      auto nf = fresh.find(id);
      for (const auto& oc : old->second.chains) {
        bool kept = false;
        if (nf != fresh.end())
          for (const auto& nc : nf->second.chains) kept = kept || (nc.chain.name == oc.chain.name && nc.slotBase == oc.slotBase);
        if (!kept) plan.slots.release(oc.slotBase, oc.slotCapacity);
      }
    }
  }
  plan.servicesPlanned += fresh.size();
  for (auto& [id, f] : fresh) plan.fragments[id] = std::move(f);
}

Planner::Plan Planner::planFull(const Snapshot& snapshot) {
  Plan plan;
  plan.full = true;
  std::set<ObjectName> ids;
  size_t ports = 0;
  for (const auto& [id, svc] : snapshot.services()) {
    ids.insert(id);
    ports += svc.ports.size();
  }
  // Every rule that looks up a map is a binding the kernel revisits for each element added to
  // that map, so endpoints are spread over enough maps to keep bindings per map near
  // chainsPerEndpointMap (a power of two, at most 256).
  const size_t per = std::max<uint32_t>(1, cfg_.chainsPerEndpointMap);
  while (plan.endpointShards < 256 && plan.endpointShards * per < ports) plan.endpointShards *= 2;
  planServices(snapshot, ids, plan);
  for (const auto& [id, _] : fragments_)
    if (!snapshot.service(id)) plan.removed.insert(id);

  BaseRuleset base = planBase(cfg_);
  for (uint32_t k = 0; k < plan.endpointShards; ++k) base.sets.push_back(endpointsMapObject(cfg_, k));
  nft::Transaction& tx = plan.tx;
  // add + delete + add: the table exists whatever was there, then is dropped with everything in
  // it, then rebuilt — all in one atomic batch.
  tx.add(nft::Table{base.table.ref, {}});
  tx.del(nft::Table{base.table.ref, {}});
  tx.add(base.table);
  for (auto& s : base.sets) tx.add(std::move(s));
  for (auto& c : base.chains) tx.add(std::move(c));
  for (const auto& [id, f] : plan.fragments)
    for (const auto& fc : f.chains) tx.add(fc.chain);
  for (auto& r : base.rules) tx.add(std::move(r));
  for (const auto& [id, f] : plan.fragments)
    for (const auto& fc : f.chains)
      for (const auto& r : fc.rules) tx.add(r);

  std::map<std::string, std::vector<Element>> bySet;
  for (const auto& [id, f] : plan.fragments)
    for (const auto& e : f.elements) {
      auto& slot = plan.elements[elementKey(e.set, e.element.key)];
      if (!slot) {
        slot = ElementState{e.element, {}};
        bySet[e.set].push_back(e.element);
      }
      slot->owners.insert(id);
    }
  for (const auto& [id, f] : plan.fragments)
    for (const auto& fc : f.chains)
      for (uint32_t i = 0; i < fc.slots.size(); ++i) bySet[names::endpointsMap(fc.shard)].push_back(slotElement(fc, i));
  for (auto& [set, elems] : bySet) tx.add(nft::Elements{base.table.ref, set, std::move(elems)});
  return plan;
}

Planner::Plan Planner::planPartial(const Snapshot& snapshot, const std::set<ObjectName>& changed) {
  Plan plan;
  plan.slots = slots_;
  plan.endpointShards = endpointShards_;
  std::set<ObjectName> ids = changed;
  ids.insert(blocked_.begin(), blocked_.end());
  planServices(snapshot, ids, plan);

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
  std::map<std::string, std::vector<Element>> slotDels, slotAdds;
  std::unordered_map<ElementKey, std::optional<ElementState>>& touched = plan.elements;
  for (const auto& id : ids) {
    const ServiceFragment& before = oldOf(id);
    const ServiceFragment& after = newOf(id);
    std::map<std::string, const FragmentChain*> oldChains, newChains;
    for (const auto& c : before.chains) oldChains[c.chain.name] = &c;
    for (const auto& c : after.chains) newChains[c.chain.name] = &c;
    for (const auto& [name, c] : newChains) {
      auto it = oldChains.find(name);
      if (it == oldChains.end()) {
        addChains.add(c->chain);
      } else if (it->second->rules == c->rules) {
        continue;
      } else {
        rules.flush(c->chain);  // takes the old rules' anonymous maps with it
      }
      for (const auto& r : c->rules) rules.add(r);
    }
    for (const auto& [name, c] : oldChains)
      if (!newChains.count(name)) delChains.del(c->chain);

    // Endpoint slots: per index while a chain keeps its range, else the whole old range goes
    // and the whole new one comes (all deletions precede all additions in the batch, so a
    // range freed and reused within one plan is fine).
    for (const auto& [name, c] : oldChains) {
      auto it = newChains.find(name);
      const FragmentChain* n = it == newChains.end() ? nullptr : it->second;
      const bool sameRange = n && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < c->slots.size(); ++i)
        if (!sameRange || i >= n->slots.size() || n->slots[i] != c->slots[i])
          slotDels[names::endpointsMap(c->shard)].push_back(slotElement(*c, i));
    }
    for (const auto& [name, n] : newChains) {
      auto it = oldChains.find(name);
      const FragmentChain* c = it == oldChains.end() ? nullptr : it->second;
      const bool sameRange = c && n->slotBase == c->slotBase && n->shard == c->shard;
      for (uint32_t i = 0; i < n->slots.size(); ++i)
        if (!sameRange || i >= c->slots.size() || n->slots[i] != c->slots[i])
          slotAdds[names::endpointsMap(n->shard)].push_back(slotElement(*n, i));
    }
  }
  // Element ownership in two passes — every re-planned Service first leaves the keys it held,
  // then joins the keys it wants — so a key moving between two Services of the same plan ends
  // with the new owner's value whatever order they are visited in.
  auto state = [&](const ElementKey& k) -> std::optional<ElementState>& {
    auto it = touched.find(k);
    if (it != touched.end()) return it->second;
    auto cur = elements_.find(k);
    auto& slot = touched[k];
    if (cur != elements_.end()) slot = cur->second;
    return slot;
  };
  for (const auto& id : ids)
    for (const auto& e : oldOf(id).elements) {
      auto& s = state(elementKey(e.set, e.element.key));
      if (s) s->owners.erase(id);
    }
  for (const auto& id : ids)
    for (const auto& e : newOf(id).elements) {
      auto& s = state(elementKey(e.set, e.element.key));
      if (!s) s = ElementState{e.element, {}};
      if (s->owners.empty()) s->element = e.element;
      s->owners.insert(id);
    }
  std::map<std::string, std::vector<Element>> dels, adds;
  for (auto& [k, s] : touched) {
    auto cur = elements_.find(k);
    const Element* was = cur == elements_.end() ? nullptr : &cur->second.element;
    if (s && s->owners.empty()) s.reset();
    const Element* now = s ? &s->element : nullptr;
    if (was && (!now || !(*was == *now))) dels[setOf(k)].push_back(*was);
    if (now && (!was || !(*was == *now))) adds[setOf(k)].push_back(*now);
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
    fragments_.clear();
    elements_.clear();
    blocked_.clear();
  }
  for (const auto& id : plan.removed) {
    fragments_.erase(id);
    blocked_.erase(id);
  }
  for (auto& [id, f] : plan.fragments) {
    blocked_.erase(id);
    fragments_[id] = std::move(f);
  }
  blocked_.insert(plan.blocked.begin(), plan.blocked.end());
  slots_ = std::move(plan.slots);
  endpointShards_ = plan.endpointShards;
  for (auto& [k, s] : plan.elements) {
    if (s)
      elements_[k] = std::move(*s);
    else
      elements_.erase(k);
  }
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
