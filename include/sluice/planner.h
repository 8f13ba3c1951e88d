// sluice/planner.h — from desired state to nftables objects, and from the committed state to
// the smallest transaction that reaches the desired one.
//
// Everything here is pure computation: no kernel, no clock, no randomness. `planService` turns
// one Service and its EndpointSlices into the objects that Service owns (a ServiceFragment);
// `Planner` keeps the mirror of what was last committed and diffs fragments against it, so a
// partial sync costs O(changed Services). See docs/design.md §3 and §5.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "sluice/model.h"
#include "sluice/nft/objects.h"
#include "sluice/nft/transaction.h"

namespace sluice {

struct ProxyConfig {
  std::string nodeName;                 // endpoints with this nodeName are local
  std::string zone;                     // this node's zone, for topology hints (service-semantics §6)
  IPFamily family = IPFamily::kV4;      // one table per family: `ip sluice` or `ip6 sluice`
  std::string tableName = "sluice";
  std::vector<IPPrefix> clusterCIDRs;   // pod CIDR(s): traffic from outside is masqueraded
  bool masqueradeAll = false;           // masquerade every ClusterIP flow
  // The node's own addresses, both families; the first of each family is its primary IP.
  std::vector<IPAddress> nodeIPs;
  // --nodeport-addresses: NodePorts are served on the node IPs inside these CIDRs. Empty = the
  // primary node IP of each family; CIDRs given, but none of this family = every node IP of this
  // family (kube-proxy's NodePortAddresses). Loopback addresses never serve NodePorts.
  std::vector<IPPrefix> nodePortAddresses;
  // Service CIDR(s) (--service-cluster-ip-range): traffic to an address inside that no Service
  // holds is dropped, so it does not leak to the default route.
  std::vector<IPPrefix> serviceCIDRs;
  uint32_t masqueradeBit = 14;          // packet mark bit 0x4000 by default, as kube-proxy
  // Service-port chains per endpoints map (see docs/design.md, "Why sharded endpoint maps").
  uint32_t chainsPerEndpointMap = 80;
  // A DNAT chain keeps rules for endpoint counts within ±countWindow of the count its rules were
  // last written for, each gated by an element `slot base . count` of set `slot-counts`, so a
  // count moving within the window changes set elements only and the kernel does not re-validate
  // the table (docs/design.md §3, "Count gates"). 0: one ungated rule per chain.
  uint32_t countWindow = 1;

  uint32_t masqueradeMark() const { return 1u << masqueradeBit; }
  nft::TableRef table() const;
  // The addresses of this family that serve NodePorts (see nodePortAddresses).
  std::vector<IPAddress> nodePortIPs() const;
};

// One endpoint of a Service port, after joining slice ports to the Service port.
struct ResolvedEndpoint {
  IPAddress ip;
  uint16_t port = 0;
  bool ready = true;
  bool serving = true;
  bool terminating = false;
  bool local = false;
  bool nodeUnknown = false;  // no nodeName: locality unknown
  // Topology (service-semantics §6), only when the Service asks for it (trafficDistribution):
  // the endpoint carries hints of the asked kind, and they name this node (or its zone).
  bool hinted = false;
  bool hintedHere = false;
  uint32_t weight = 1;
  bool operator==(const ResolvedEndpoint&) const = default;
};

// Endpoints of `port` from all slices of the Service's family, deduplicated by address:port,
// in a stable order (slice name, then slice order). Bad entries are reported and skipped.
std::vector<ResolvedEndpoint> resolveEndpoints(const Service& svc, const ServicePort& port,
                                               const std::map<ObjectName, EndpointSlice>& slices,
                                               const ProxyConfig& cfg, std::vector<Problem>* problems);

// service-semantics §2: the cluster and local sets with their independent terminating
// fallbacks, and whether the Service has any usable endpoint anywhere (reject vs drop). The
// cluster set is narrowed to the endpoints hinted for this node when every ready endpoint
// carries hints and at least one names this node (§6).
struct EndpointSets {
  std::vector<ResolvedEndpoint> cluster;
  std::vector<ResolvedEndpoint> local;
  bool hasEndpoints = false;
};
EndpointSets categorizeEndpoints(const std::vector<ResolvedEndpoint>& endpoints);

// Why a Service is not proxied at all ("" = it is): headless, ExternalName, no cluster IP of
// this family, or owned by another proxy (label service.kubernetes.io/service-proxy-name).
std::string skipReason(const Service& svc, const ProxyConfig& cfg);

// The sets and maps of the table that Services add elements to (names::sharedSet() names them).
enum class SharedSet : uint8_t {
  kClusterIPs,
  kServiceIPs,          // address . proto . port : verdict (ClusterIPs, external IPs, LB IPs)
  kNoEndpointServices,  // same key : reject / drop
  kHairpin,
  kNodePorts,             // proto . port : verdict, for daddr in @nodeport-ips
  kNoEndpointNodePorts,   // same key : reject / drop
  kFirewallIPs,           // LB address . proto . port : goto the Service's source-range chain
};

// The set/map element a Service contributes, tagged with the port it belongs to (-1 = the
// whole Service), so a conflicting port can be dropped on its own.
struct FragmentElement {
  SharedSet set = SharedSet::kClusterIPs;
  nft::Element element;
  int port = -1;
  bool operator==(const FragmentElement&) const = default;
};

// A chain a Service owns. Three kinds:
// - DNAT chain (svc-…, local-…) without affinity: its endpoints are `slots` (an endpoint repeated
//   by its weight); the Planner places them in the shared endpoints map at
//   [slotBase, slotBase + slotCapacity), and the chain's one rule follows from these fields;
// - DNAT chain with ClientIP affinity (affinitySeconds > 0): one dynamic set per endpoint and
//   per-endpoint rules (see rules()); no slot map;
// - dispatch chain (ext-…, fw-…): `fixedRules` as they are.
struct FragmentChain {
  std::string name;  // of the chain in the proxy's table (names::serviceChain …)
  int port = -1;     // index in spec.ports; -1 = the whole Service
  Protocol protocol = Protocol::kTCP;
  std::vector<std::pair<IPAddress, uint16_t>> slots;
  uint32_t slotBase = 0;
  uint32_t slotCapacity = 0;
  uint32_t shard = 0;  // which endpoints map ("endpoints-<shard>")
  // Count gates (ProxyConfig::countWindow, set by the Planner with the slots): the chain has a
  // rule for every count in [gateCenter - countWindow, gateCenter + countWindow] ∩
  // [1, slotCapacity]; the element `slotBase . slots.size()` of `slot-counts` enables one.
  uint32_t countWindow = 0;
  uint32_t gateCenter = 0;
  // Not gated yet: the chain has the one ungated rule of countWindow 0 and no gate element. The
  // first full plan writes chains so, and the whole table loads as fast as without gates;
  // Planner::planWiden() gates them later, off the latency path.
  bool gateNarrow = false;
  uint32_t affinitySeconds = 0;
  std::vector<nft::Rule> fixedRules;
  bool operator==(const FragmentChain&) const = default;

  bool usesSlotMap() const { return affinitySeconds == 0 && fixedRules.empty() && !slots.empty(); }
  nft::Chain chain(const nft::TableRef& table) const { return {table, name, std::nullopt}; }
  // The chain's rules. Without affinity: `meta l4proto P dnat to numgen random mod N offset B
  // map @endpoints-K`, or with count gates, for each count C of the window (gateCenter first,
  // then ascending), `meta l4proto P numgen random mod 1 offset B . numgen random mod 1 offset C
  // @slot-counts dnat to numgen random mod C offset B map @endpoints-K` (a chain not gated yet,
  // gateNarrow: the first form). With affinity, per endpoint i (distinct endpoints, in slot
  // order):
  //   `meta l4proto P ip saddr @aff_i update @aff_i { ip saddr } dnat to EP_i`  (sticky clients)
  // then `meta l4proto P numgen random mod (n-i) 0 update @aff_i { ip saddr } dnat to EP_i` for
  // i < n-1 and an unconditional last one: a uniform choice, recorded for the client.
  std::vector<nft::Rule> rules(const nft::TableRef& table) const;
  // The dynamic affinity sets (`flags dynamic,timeout; timeout Ts`), one per endpoint.
  std::vector<nft::Set> sets(const nft::TableRef& table) const;
};

// Everything one Service owns in the table. From planService() the chains carry their endpoint
// slots but no placement yet; Planner places the slots (slotBase, slotCapacity, shard).
struct ServiceFragment {
  std::vector<FragmentChain> chains;
  std::vector<FragmentElement> elements;
  std::vector<Problem> problems;
  bool operator==(const ServiceFragment&) const = default;
};

ServiceFragment planService(const Service& svc, const std::map<ObjectName, EndpointSlice>& slices,
                            const ProxyConfig& cfg);

// The objects every sluice table has regardless of Services: table, base chains with the
// kube-proxy hook/priority contract, dispatch chains, shared sets and maps.
struct BaseRuleset {
  nft::Table table;
  std::vector<nft::Set> sets;
  std::vector<nft::Elements> elements;  // nodeport-ips, from the config
  std::vector<nft::Chain> chains;
  std::vector<nft::Rule> rules;
};
BaseRuleset planBase(const ProxyConfig& cfg);

// Well-known object names of sluice's table.
namespace names {
inline constexpr const char* kClusterIPs = "cluster-ips";
inline constexpr const char* kServiceIPs = "service-ips";
inline constexpr const char* kNoEndpointServices = "no-endpoint-services";
inline constexpr const char* kHairpin = "hairpin";
inline constexpr const char* kServiceNodePorts = "service-nodeports";
inline constexpr const char* kNoEndpointNodePorts = "no-endpoint-nodeports";
inline constexpr const char* kFirewallIPs = "firewall-ips";
inline constexpr const char* kNodePortIPs = "nodeport-ips";
inline constexpr const char* kSlotCounts = "slot-counts";
const char* sharedSet(SharedSet s);        // one of the seven above
std::string endpointsMap(uint32_t shard);  // "endpoints-<shard>"
inline constexpr const char* kServicesChain = "services";
inline constexpr const char* kEndpointsCheckChain = "service-endpoints-check";
inline constexpr const char* kClusterIPsCheckChain = "cluster-ips-check";
inline constexpr const char* kRejectChain = "reject-chain";
inline constexpr const char* kMasqueradingChain = "masquerading";
inline constexpr const char* kFirewallBaseChain = "filter-prerouting-pre-dnat";
// "<prefix><8 chars of base32(sha256(key))>-<key>", key = "ns/name/proto/portname", ≤ 255
// bytes. Prefixes: "svc-" (cluster endpoints), "local-" (local endpoints), "ext-" (external
// dispatch).
std::string serviceChain(const ObjectName& svc, Protocol proto, const std::string& portName,
                         std::string_view prefix = "svc-");
// "fw-<hash>-<ns>/<name>": the Service's loadBalancerSourceRanges.
std::string firewallChain(const ObjectName& svc);
// "affinity-<hash>-<ip>/<port>", hash over the DNAT chain's name, the endpoint and the timeout
// (a set's timeout cannot change, so another timeout is another set).
std::string affinitySet(const std::string& chain, const IPAddress& ip, uint16_t port, uint32_t timeoutSeconds);
}  // namespace names

// Ranges of slots in the endpoints map. A Service port gets a power-of-two range so that it can
// gain endpoints without moving; released ranges are reused by size.
class SlotAllocator {
 public:
  std::pair<uint32_t, uint32_t> allocate(uint32_t n);  // base, capacity
  void release(uint32_t base, uint32_t capacity);
  bool operator==(const SlotAllocator&) const = default;

 private:
  std::map<uint32_t, std::vector<uint32_t>> free_;  // capacity → bases
  uint32_t next_ = 0;
};

// The mirror of what was committed, and the diff against it.
class Planner {
 public:
  explicit Planner(ProxyConfig cfg);

  // Elements of the shared sets and maps, by set and key. (Endpoint slots are owned by one
  // chain each and are diffed per chain instead.)
  struct ElementKey {
    SharedSet set;
    nft::Bytes key;
    bool operator==(const ElementKey&) const = default;
  };
  struct ElementKeyHash {
    size_t operator()(const ElementKey& k) const;
  };
  // Who owns a shared element. The element itself lives in the owners' fragments only (a copy
  // here cost 3.5 MB at 10 000 Services, see committedElement()).
  struct ElementState {
    // Services contributing it, sorted (plain sets may be shared). In a Plan, none left means
    // the element goes away.
    std::vector<ObjectName> owners;
  };
  using ElementTable = std::unordered_map<ElementKey, ElementState, ElementKeyHash>;

  struct Plan {
    nft::Transaction tx;
    bool full = false;
    size_t servicesPlanned = 0;
    // Pending mirror changes; adopted by commit() only after the backend succeeded.
    std::map<ObjectName, ServiceFragment> fragments;  // new fragment per planned Service
    std::set<ObjectName> removed;                     // Services that no longer exist
    std::set<ObjectName> blocked;                     // planned Services with a conflicting port
    // Element table after the plan: complete for a full plan, only touched keys otherwise.
    ElementTable elements;
    SlotAllocator slots;       // allocator state after the plan
    uint32_t endpointShards = 1;  // number of endpoints maps (fixed between full plans)
    // planWiden(): the chains (Service, index in its fragment) given their whole count window.
    // Flipped in place by commit(), so widening copies no fragment.
    std::vector<std::pair<ObjectName, size_t>> widened;
  };

  // Replaces the whole table in one transaction (first sync, after a failure, drift repair).
  Plan planFull(const Snapshot& snapshot);
  // Re-plans only `changed` Services (plus those blocked by a conflict last time).
  Plan planPartial(const Snapshot& snapshot, const std::set<ObjectName>& changed);
  // Gives up to `maxChains` narrow DNAT chains (FragmentChain::gateNarrow) their gated count
  // window: per chain, its rules and its gate (the kernel validates the table once per batch).
  Plan planWiden(size_t maxChains);
  // Committed DNAT chains whose count window is not written yet.
  size_t narrowChains() const { return narrow_; }
  // Adopts a plan's state as committed. Call only after the backend applied plan.tx.
  void commit(Plan&& plan);
  // Forgets the mirror, e.g. after a failed transaction; the next plan must be full.
  void reset();

  bool hasCommitted() const { return committed_; }
  const ProxyConfig& config() const { return cfg_; }
  const std::map<ObjectName, ServiceFragment>& fragments() const { return fragments_; }
  // Problems of the current desired state, by Service (including conflicts).
  std::map<ObjectName, std::vector<Problem>> problems() const;

 private:
  // Settles the freshly planned plan.fragments: the Services in plan.fragments and plan.removed
  // are being re-planned; a port whose map key another Service holds (in the mirror, or earlier
  // in this plan) is dropped from the newcomer and reported — first holder wins — and the
  // Service's chains are placed.
  void settle(Plan& plan);
  // Gives each chain of `f` its slot range (keeping the old range when the endpoints still fit)
  // and its endpoints map.
  void place(const ObjectName& id, ServiceFragment& f, Plan& plan) const;
  // The committed value of a shared element, read from its first owner's fragment (nullptr: not
  // committed). Any owner's will do: only plain sets, whose elements are nothing but their key,
  // have several owners; a map key has one (settle() drops the newcomer's port).
  const nft::Element* committedElement(const ElementKey& k) const;

  ProxyConfig cfg_;
  bool committed_ = false;
  std::map<ObjectName, ServiceFragment> fragments_;
  ElementTable elements_;  // owners of every committed shared element
  std::set<ObjectName> blocked_;  // Services with a port skipped because of a conflict
  SlotAllocator slots_;
  uint32_t endpointShards_ = 1;
  size_t narrow_ = 0;  // narrow chains in fragments_
};

}  // namespace sluice
