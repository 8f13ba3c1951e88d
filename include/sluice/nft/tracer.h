// sluice/nft/tracer.h — follows one packet through a FakeBackend's ruleset the way netfilter
// would, and says what becomes of it: accepted, dropped or rejected, to which DNAT targets,
// masqueraded or not, and which rules decided that.
//
// The tracer runs the kernel expressions of the IR (payload, meta, cmp, bitwise, lookup,
// immediate, numgen, ct, nat, masq, reject, counter, dynset, fib address type) on registers laid out as nf_tables lays
// them out, so it follows any ruleset built from those expressions, not only sluice's own
// layout. Randomness is not sampled: every value a `numgen random` can produce is followed, and
// the trace lists each distinct outcome with its probability. What the tracer cannot know
// (an expression kind or packet field it does not model, an interval set) is an error, never a
// guess. `sluiced explain` prints Trace::toString().
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/nft/backend.h"
#include "sluice/nft/objects.h"
#include "sluice/status.h"

namespace sluice::nft {

// ct state bits as `ct state` loads them (NF_CT_STATE_BIT).
inline constexpr uint32_t kCtStateInvalid = 1u << 0;
inline constexpr uint32_t kCtStateEstablished = 1u << 1;
inline constexpr uint32_t kCtStateRelated = 1u << 2;
inline constexpr uint32_t kCtStateNew = 1u << 3;

// Where the packet shows up on the node.
enum class Entry : uint8_t {
  kPrerouting,  // arrives on an interface: prerouting, then input (local) or forward + postrouting
  kOutput,      // sent by a local process: output, postrouting; if local, then prerouting and input
};

struct TracePacket {
  Protocol protocol = Protocol::kTCP;
  IPAddress saddr;  // saddr and daddr must be of one family; it picks the ip / ip6 tables
  IPAddress daddr;
  uint16_t sport = 40000;
  uint16_t dport = 0;
  Entry entry = Entry::kPrerouting;
  std::string iifname;  // input interface for kPrerouting (meta iifname); "" = unknown
  // Whether the (original) destination is an address of this node (fib daddr type local).
  bool daddrLocal = false;
  // Addresses of this node: a destination (or DNAT target) among them is delivered locally
  // (input hook); anything else is forwarded (or, from output, leaves the node).
  std::vector<IPAddress> localAddresses;
  uint32_t ctState = kCtStateNew;
  uint32_t ctMark = 0;
  uint32_t mark = 0;  // meta mark when the packet enters

  IPFamily family() const { return saddr.family(); }
  std::string toString() const;  // "ip tcp 198.18.1.100:40000 -> 198.19.0.1:80 prerouting iif vcl ct state new"
};

struct NatTarget {
  IPAddress address;
  std::optional<uint16_t> port;  // none: the port is kept
  std::string toString() const;  // "198.18.1.11:8080", "[fd00:1::b]:8080"
  auto operator<=>(const NatTarget&) const = default;
  bool operator==(const NatTarget&) const = default;
};

// One rule that matched, or a note about the path (base chain policy, routing decision).
struct TraceStep {
  Hook hook = Hook::kPrerouting;
  TableRef table;
  std::string chain;
  std::optional<size_t> rule;  // index in the chain; none for a chain policy / routing note
  std::string text;            // the rule as `nft list` prints it, or the note
  std::string detail;          // what the rule did to this packet ("numgen → 1", "verdict map: goto x")
  std::string toString() const;
};

enum class Disposition : uint8_t { kAccepted, kDropped, kRejected };
const char* dispositionName(Disposition d);  // "accepted" / "dropped" / "rejected"

struct RejectKind {
  uint32_t type = 0;  // NFT_REJECT_ICMP_UNREACH 0, NFT_REJECT_TCP_RST 1, NFT_REJECT_ICMPX_UNREACH 2
  uint8_t code = 0;
  bool v6 = false;  // whether `code` is an ICMPv6 code (type 0)
  std::string toString() const;  // "icmp port-unreachable", "tcp reset" …
  bool operator==(const RejectKind&) const = default;
};

// One fate of the packet. Outcomes that differ only in the random numbers drawn on the way are
// merged: `probability` sums them, `steps` are those of the first draw that led here.
struct TraceOutcome {
  Disposition disposition = Disposition::kAccepted;
  std::optional<RejectKind> reject;
  std::optional<NatTarget> dnat;
  std::optional<NatTarget> snat;
  std::optional<uint32_t> masquerade;  // NAT range flags, e.g. kNatRangeProtoRandomFully
  bool delivered = false;              // accepted on the input hook (local delivery)
  uint32_t mark = 0;                   // meta mark when the packet leaves the last hook
  double probability = 1.0;
  std::vector<TraceStep> steps;

  bool masqueraded() const { return masquerade.has_value(); }
  bool fullyRandom() const { return masquerade && (*masquerade & kNatRangeProtoRandomFully); }
  std::string summary() const;  // "accepted, dnat to 198.18.1.11:8080, masquerade fully-random"
};

struct Trace {
  TracePacket packet;
  std::vector<TraceOutcome> outcomes;  // at least one; most likely first, ties in trace order

  // Every DNAT target any outcome reaches.
  std::set<NatTarget> dnatTargets() const;
  // The disposition shared by all outcomes, or none when they differ.
  std::optional<Disposition> disposition() const;
  bool anyMasqueraded() const;
  bool allMasqueraded() const;
  // Multi-line, for operators: the packet, then each outcome with its rules.
  std::string toString() const;
};

struct TraceOptions {
  // Upper bound on the combinations of random draws followed; beyond it trace() fails with
  // kResourceExhausted rather than return a partial answer.
  size_t maxPaths = 1u << 17;
};

// Traces `packet` through every table of `backend` whose family matches the packet (ip or ip6,
// and inet). Base chains of a hook run in priority order; NAT chains see only packets whose ct
// state is new (later packets follow the connection's existing mapping, which a ruleset alone
// does not tell), and a NAT chain is skipped once a NAT of its kind was set up on that hook, as
// nf_nat does. Errors: kInvalidArgument for a malformed packet, kUnimplemented ("cannot trace")
// for an expression, key or packet field the tracer does not model, kFailedPrecondition for a
// ruleset the kernel would not run (unknown chain or set, jump stack overflow),
// kResourceExhausted above options.maxPaths.
Result<Trace> trace(const FakeBackend& backend, const TracePacket& packet, const TraceOptions& options = {});

}  // namespace sluice::nft
