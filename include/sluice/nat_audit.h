// sluice/nat_audit.h — finds every source-NAT statement in the live nftables ruleset.
//
// Reads all rules of all tables of all families in one netlink dump (libnftnl) and reports
// each masquerade or snat statement with where it lives (family, table, chain, rule handle) and
// its NF_NAT_RANGE_* flags. Rules that iptables-nft wrote through the xtables compatibility
// layer carry the iptables target (MASQUERADE, SNAT) as an opaque `target` expression; its
// info blob is decoded by revision (the kernel's struct nf_nat_ipv4_multi_range_compat,
// nf_nat_range or nf_nat_range2), so `-j MASQUERADE --random-fully` is seen too.
//
// Rules of the legacy iptables backend (ip_tables, not nftables) are invisible to this dump:
// legacyIptablesTables() tells whether there are any.
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sluice/status.h"

namespace sluice::diag {

// NF_NAT_RANGE_* (linux/netfilter/nf_nat.h; kernel ABI).
inline constexpr uint32_t kNatRangeMapIps = 0x1;
inline constexpr uint32_t kNatRangeProtoSpecified = 0x2;
inline constexpr uint32_t kNatRangeProtoRandom = 0x4;
inline constexpr uint32_t kNatRangePersistent = 0x8;
inline constexpr uint32_t kNatRangeProtoRandomFully = 0x10;

// "random,fully-random" as nft prints the port-selection flags; "" when none is set.
std::string natFlagsText(uint32_t flags);

struct NatStatement {
  enum class Kind : uint8_t { kMasquerade, kSnat };
  enum class Origin : uint8_t { kNftables, kXtables };  // native expression or iptables-nft target

  std::string family;  // "ip", "ip6", "inet", "bridge", "netdev", "arp"
  std::string table;
  std::string chain;
  uint64_t handle = 0;
  Kind kind = Kind::kMasquerade;
  Origin origin = Origin::kNftables;
  // NF_NAT_RANGE_* flags; unset when an xtables target's blob could not be decoded (unknown
  // revision or short), which the doctor reports rather than guesses.
  std::optional<uint32_t> flags;
  std::string target;  // xtables target name and revision ("MASQUERADE rev 0"); empty for nft

  bool fullyRandom() const { return flags && (*flags & kNatRangeProtoRandomFully) != 0; }
  // "ip nat POSTROUTING handle 4"
  std::string location() const;
  // "masquerade", "snat", "MASQUERADE (xt)" …
  std::string kindName() const;
  bool operator==(const NatStatement&) const = default;
};

// The NF_NAT_RANGE_* flags inside an xtables MASQUERADE or SNAT target's info blob, by
// revision and family (NFPROTO_IPV4 = 2 / NFPROTO_IPV6 = 10). nullopt: not a NAT target this
// knows, or the blob is too short for its revision.
std::optional<uint32_t> xtNatFlags(const std::string& name, uint32_t revision, uint8_t family,
                                   const uint8_t* info, size_t len);

// The source-NAT statements of one NFT_MSG_NEWRULE message (a rule dump reply). A rule with no
// NAT statement gives an empty list. InvalidArgument if libnftnl cannot parse it.
Result<std::vector<NatStatement>> parseRuleMessage(const nlmsghdr* nlh);

// Every source-NAT statement of the namespace's ruleset, from one complete rule dump (dumped
// again when the kernel marks the dump interrupted by a concurrent commit). Read-only.
// Errors: PermissionDenied naming CAP_NET_ADMIN; NotFound for a missing namespace; Aborted if
// the ruleset kept changing.
Result<std::vector<NatStatement>> readNatStatements(const std::string& netns = "");

// Names of the tables of the legacy ip_tables backend loaded in the namespace
// (/proc/net/ip_tables_names, plus ip6_tables_names with an "ip6 " prefix); empty when none or
// when the kernel lacks the legacy backend.
std::vector<std::string> legacyIptablesTables(const std::string& netns = "");

}  // namespace sluice::diag
