// sluice/nft/rule_builder.h — builds a Rule's kernel expressions and the text `nft list`
// prints for it, in one pass, so that what sluice means and what an operator reads cannot
// drift apart. Every statement is encoded exactly as nft 1.0.6 encodes it (verified with
// `nft --debug=netlink`), which is what keeps sluice's table printable by nft.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/nft/objects.h"

namespace sluice::nft {

class RuleBuilder {
 public:
  RuleBuilder(TableRef table, std::string chain);

  // --- matches ---
  RuleBuilder& ctStateNew();                                  // ct state new
  RuleBuilder& ctStatusDnat();                                // ct status dnat
  RuleBuilder& l4proto(Protocol p);                           // meta l4proto tcp
  RuleBuilder& daddrInSet(const std::string& set);            // ip daddr @set
  RuleBuilder& saddrInPrefix(const IPPrefix& p, bool negate); // ip saddr [!=] 198.18.0.0/16
  RuleBuilder& daddrInPrefix(const IPPrefix& p, bool negate); // ip daddr [!=] 198.19.0.0/16
  RuleBuilder& saddrInSet(const std::string& set);            // ip saddr @set
  RuleBuilder& fibSaddrLocal();                               // fib saddr type local
  RuleBuilder& numgenEq(uint32_t mod, uint32_t value);        // numgen random mod N V
  RuleBuilder& saddrDaddrInSet(const std::string& set);       // ip saddr . ip daddr @set
  RuleBuilder& markAndEq(uint32_t mask, uint32_t value);      // meta mark & M == V
  // numgen random mod 1 offset A . numgen random mod 1 offset B @set — the constant pair A . B
  // is in the set. `numgen random mod 1 offset X` is how sluice loads a constant: the kernel
  // would take an immediate too, but nft prints an immediate lookup key as "[invalid type]".
  RuleBuilder& constantPairInSet(uint32_t a, uint32_t b, const std::string& set);
  // --- statements ---
  RuleBuilder& markSetOr(uint32_t bits);                      // meta mark set meta mark | B
  RuleBuilder& markSetXor(uint32_t bits);                     // meta mark set meta mark ^ B
  RuleBuilder& daddrProtoPortVmap(const std::string& map);    // ip daddr . meta l4proto . th dport vmap @map
  RuleBuilder& protoPortVmap(const std::string& map);         // meta l4proto . th dport vmap @map
  RuleBuilder& updateSaddr(const std::string& set);           // update @set { ip saddr }
  // dnat to 198.18.1.11:8080 (ip6: dnat to [fd00:1::b]:8080); meta l4proto must be matched first.
  RuleBuilder& dnatTo(const IPAddress& ip, uint16_t port);
  // meta l4proto must be matched first; endpoints are (address, port), each one numgen slot.
  // The inline map is an anonymous set: fine for a few rules, but the kernel's cost per
  // anonymous set grows with the batch and the table (docs/design.md §3), which is why the
  // planner uses dnatNumgenMap over shared slot maps instead.
  RuleBuilder& dnatNumgen(const std::vector<std::pair<IPAddress, uint16_t>>& endpoints);
  // dnat ip to numgen random mod N offset B map @map — endpoints live in a shared named map
  // keyed by slot number; this Service port owns slots [B, B+N).
  RuleBuilder& dnatNumgenMap(uint32_t mod, uint32_t offset, const std::string& map);
  RuleBuilder& masquerade(bool fullyRandom);
  RuleBuilder& reject();
  RuleBuilder& rejectTcpReset();  // (meta l4proto tcp) reject with tcp reset
  RuleBuilder& verdict(VerdictCode code, const std::string& chain = {});
  RuleBuilder& jump(const std::string& chain) { return verdict(VerdictCode::kJump, chain); }
  RuleBuilder& goTo(const std::string& chain) { return verdict(VerdictCode::kGoto, chain); }

  Rule build();  // moves the rule out; the builder is spent

 private:
  void append(std::string_view text);
  RuleBuilder& addrInPrefix(bool source, const IPPrefix& p, bool negate);
  const char* ipKeyword() const;  // "ip" / "ip6"
  uint32_t addrLen() const;
  Rule rule_;
};

// "goto chain" / "jump chain" / "accept" … as nft prints a verdict.
std::string verdictText(const Verdict& v);

}  // namespace sluice::nft
