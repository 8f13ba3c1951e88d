#include <cstring>

#include <fmt/format.h>

#include "sluice/nft/rule_builder.h"

namespace sluice::nft {

namespace {

Bytes u32Host(uint32_t v) {
  Bytes b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

// Constants of the kernel ABI used below (linux/netfilter/nf_conntrack_common.h).
constexpr uint32_t kCtStateNew = 1u << 3;      // NF_CT_STATE_BIT(IP_CT_NEW)
constexpr uint32_t kCtStatusDstNat = 1u << 5;  // IPS_DST_NAT
constexpr uint32_t kThDportOffset = 2;

}  // namespace

std::string verdictText(const Verdict& v) {
  switch (v.code) {
    case VerdictCode::kAccept: return "accept";
    case VerdictCode::kDrop: return "drop";
    case VerdictCode::kReturn: return "return";
    case VerdictCode::kContinue: return "continue";
    case VerdictCode::kJump: return "jump " + v.chain;
    case VerdictCode::kGoto: return "goto " + v.chain;
  }
  return "?";
}

RuleBuilder::RuleBuilder(TableRef table, std::string chain) {
  rule_.table = std::move(table);
  rule_.chain = std::move(chain);
  rule_.exprs.reserve(8);  // rules have a handful of expressions: one allocation, not four
}

const char* RuleBuilder::ipKeyword() const { return rule_.table.family == Family::kIPv6 ? "ip6" : "ip"; }
uint32_t RuleBuilder::addrLen() const { return rule_.table.family == Family::kIPv6 ? 16 : 4; }

void RuleBuilder::append(std::string_view text) {
  if (!rule_.text.empty()) rule_.text += ' ';
  rule_.text += text;
}

// ct state is a host-order bit mask: load, mask, compare with zero (nft's encoding of a flag test).
RuleBuilder& RuleBuilder::ctStateNew() {
  rule_.exprs.push_back(Ct{CtKey::kState, kReg1});
  rule_.exprs.push_back(Bitwise{kReg1, kReg1, 4, u32Host(kCtStateNew), u32Host(0)});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kNeq, u32Host(0)});
  append("ct state new");
  return *this;
}

RuleBuilder& RuleBuilder::ctStatusDnat() {
  rule_.exprs.push_back(Ct{CtKey::kStatus, kReg1});
  rule_.exprs.push_back(Bitwise{kReg1, kReg1, 4, u32Host(kCtStatusDstNat), u32Host(0)});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kNeq, u32Host(0)});
  append("ct status dnat");
  return *this;
}

RuleBuilder& RuleBuilder::l4proto(Protocol p) {
  rule_.exprs.push_back(Meta{MetaKey::kL4proto, kReg1});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kEq, Bytes{uint8_t(p)}});
  append(fmt::format("meta l4proto {}", protocolNftName(p)));
  return *this;
}

RuleBuilder& RuleBuilder::daddrInSet(const std::string& set) {
  const uint32_t daddr = rule_.table.family == Family::kIPv6 ? 24 : 16;
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, daddr, addrLen(), kReg1});
  rule_.exprs.push_back(Lookup{kReg1, set});
  append(fmt::format("{} daddr @{}", ipKeyword(), set));
  return *this;
}

RuleBuilder& RuleBuilder::saddrInPrefix(const IPPrefix& p, bool negate) { return addrInPrefix(true, p, negate); }
RuleBuilder& RuleBuilder::daddrInPrefix(const IPPrefix& p, bool negate) { return addrInPrefix(false, p, negate); }

RuleBuilder& RuleBuilder::addrInPrefix(bool source, const IPPrefix& p, bool negate) {
  const bool v6 = rule_.table.family == Family::kIPv6;
  const uint32_t offset = source ? (v6 ? 8 : 12) : (v6 ? 24 : 16);
  const uint32_t len = addrLen();
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, offset, len, kReg1});
  if (p.bits() < int(len * 8)) {
    Bytes mask(len, 0);
    for (uint32_t i = 0; i < len; ++i) {
      int keep = std::max(0, std::min(8, p.bits() - int(i) * 8));
      mask[i] = uint8_t(0xff00 >> keep);
    }
    rule_.exprs.push_back(Bitwise{kReg1, kReg1, len, mask, Bytes(len, 0)});
  }
  Bytes net(p.address().bytes(), p.address().bytes() + len);
  rule_.exprs.push_back(Cmp{kReg1, negate ? CmpOp::kNeq : CmpOp::kEq, net});
  std::string shown = p.bits() == int(len * 8) ? p.address().toString() : p.toString();
  append(fmt::format("{} {} {}{}", ipKeyword(), source ? "saddr" : "daddr", negate ? "!= " : "", shown));
  return *this;
}

RuleBuilder& RuleBuilder::saddrInSet(const std::string& set) {
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, rule_.table.family == Family::kIPv6 ? 8u : 12u, addrLen(), kReg1});
  rule_.exprs.push_back(Lookup{kReg1, set});
  append(fmt::format("{} saddr @{}", ipKeyword(), set));
  return *this;
}

// The address type is a host-order u32 (RTN_LOCAL = 2), compared as nft does.
RuleBuilder& RuleBuilder::fibSaddrLocal() {
  rule_.exprs.push_back(Fib{kReg1, kFibResultAddrType, kFibFlagSaddr});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kEq, u32Host(kRtnLocal)});
  append("fib saddr type local");
  return *this;
}

RuleBuilder& RuleBuilder::numgenEq(uint32_t mod, uint32_t value) {
  rule_.exprs.push_back(Numgen{kReg1, mod});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kEq, u32Host(value)});
  append(fmt::format("numgen random mod {} {}", mod, value));
  return *this;
}

RuleBuilder& RuleBuilder::constantPairInSet(uint32_t a, uint32_t b, const std::string& set) {
  rule_.exprs.push_back(Numgen{kReg1, 1, a});
  rule_.exprs.push_back(Numgen{kReg32_00 + 1, 1, b});
  rule_.exprs.push_back(Lookup{kReg1, set});
  auto constant = [](uint32_t v) {
    return v ? fmt::format("numgen random mod 1 offset {}", v) : std::string("numgen random mod 1");
  };
  append(fmt::format("{} . {} @{}", constant(a), constant(b), set));
  return *this;
}

RuleBuilder& RuleBuilder::protoPortVmap(const std::string& map) {
  rule_.exprs.push_back(Meta{MetaKey::kL4proto, kReg1});
  rule_.exprs.push_back(Payload{PayloadBase::kTransport, kThDportOffset, 2, kReg32_00 + 1});
  rule_.exprs.push_back(Lookup{kReg1, map, -1, kRegVerdict});
  append(fmt::format("meta l4proto . th dport vmap @{}", map));
  return *this;
}

RuleBuilder& RuleBuilder::updateSaddr(const std::string& set) {
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, rule_.table.family == Family::kIPv6 ? 8u : 12u, addrLen(), kReg1});
  rule_.exprs.push_back(Dynset{kReg1, set});
  append(fmt::format("update @{} {{ {} saddr }}", set, ipKeyword()));
  return *this;
}

// Registers as nft uses them for a constant address:port: address in NFT_REG_1, port in NFT_REG_2.
RuleBuilder& RuleBuilder::dnatTo(const IPAddress& ip, uint16_t port) {
  constexpr uint32_t kReg2 = 2;
  rule_.exprs.push_back(Immediate{kReg1, Bytes(ip.bytes(), ip.bytes() + ip.size()), {}});
  rule_.exprs.push_back(Immediate{kReg2, Bytes{uint8_t(port >> 8), uint8_t(port & 0xff)}, {}});
  rule_.exprs.push_back(Nat{NatType::kDnat, rule_.table.family, kReg1, kReg2, 0});
  append(ip.isV4() ? fmt::format("dnat to {}:{}", ip.toString(), port)
                   : fmt::format("dnat to [{}]:{}", ip.toString(), port));
  return *this;
}

// A concatenation loads each field into the next 4-byte register after the previous field,
// starting at NFT_REG_1 (which aliases NFT_REG32_00), exactly as nft allocates them.
RuleBuilder& RuleBuilder::saddrDaddrInSet(const std::string& set) {
  const bool v6 = rule_.table.family == Family::kIPv6;
  const uint32_t len = addrLen();
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, v6 ? 8u : 12u, len, kReg1});
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, v6 ? 24u : 16u, len, kReg32_00 + len / 4});
  rule_.exprs.push_back(Lookup{kReg1, set});
  append(fmt::format("{0} saddr . {0} daddr @{1}", ipKeyword(), set));
  return *this;
}

RuleBuilder& RuleBuilder::markAndEq(uint32_t mask, uint32_t value) {
  rule_.exprs.push_back(Meta{MetaKey::kMark, kReg1});
  rule_.exprs.push_back(Bitwise{kReg1, kReg1, 4, u32Host(mask), u32Host(0)});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kEq, u32Host(value)});
  append(fmt::format("meta mark & {:#010x} == {:#010x}", mask, value));
  return *this;
}

RuleBuilder& RuleBuilder::markSetOr(uint32_t bits) {
  rule_.exprs.push_back(Meta{MetaKey::kMark, kReg1});
  rule_.exprs.push_back(Bitwise{kReg1, kReg1, 4, u32Host(~bits), u32Host(bits)});
  rule_.exprs.push_back(MetaSet{MetaKey::kMark, kReg1});
  append(fmt::format("meta mark set meta mark | {:#010x}", bits));
  return *this;
}

RuleBuilder& RuleBuilder::markSetXor(uint32_t bits) {
  rule_.exprs.push_back(Meta{MetaKey::kMark, kReg1});
  rule_.exprs.push_back(Bitwise{kReg1, kReg1, 4, u32Host(0xffffffff), u32Host(bits)});
  rule_.exprs.push_back(MetaSet{MetaKey::kMark, kReg1});
  append(fmt::format("meta mark set meta mark ^ {:#010x}", bits));
  return *this;
}

RuleBuilder& RuleBuilder::daddrProtoPortVmap(const std::string& map) {
  const uint32_t len = addrLen();
  const uint32_t daddr = rule_.table.family == Family::kIPv6 ? 24 : 16;
  rule_.exprs.push_back(Payload{PayloadBase::kNetwork, daddr, len, kReg1});
  rule_.exprs.push_back(Meta{MetaKey::kL4proto, kReg32_00 + len / 4});
  rule_.exprs.push_back(Payload{PayloadBase::kTransport, kThDportOffset, 2, kReg32_00 + len / 4 + 1});
  rule_.exprs.push_back(Lookup{kReg1, map, -1, kRegVerdict});
  append(fmt::format("{} daddr . meta l4proto . th dport vmap @{}", ipKeyword(), map));
  return *this;
}

// dnat to numgen random mod N map { i : addr . port } — the anonymous map travels with the rule
// (kernel name "__map%d", flags anonymous|constant|map), so replacing the rule replaces it.
RuleBuilder& RuleBuilder::dnatNumgen(const std::vector<std::pair<IPAddress, uint16_t>>& endpoints) {
  const bool v6 = rule_.table.family == Family::kIPv6;
  const uint32_t len = addrLen();
  Set anon;
  anon.table = rule_.table;
  anon.key = {DataType::kInteger};
  anon.data = {v6 ? DataType::kIPv6Addr : DataType::kIPv4Addr, DataType::kInetService};
  anon.flags = kSetAnonymous | kSetConstant | kSetMap;
  std::string text = fmt::format("dnat {} to numgen random mod {} map {{ ", ipKeyword(), endpoints.size());
  for (uint32_t i = 0; i < endpoints.size(); ++i) {
    const auto& [ip, port] = endpoints[i];
    Element e;
    e.key = KeyBuilder().u32host(i).take();
    e.data = (v6 ? KeyBuilder().ipv6(ip.bytes()) : KeyBuilder().ipv4(ip.bytes())).port(port).take();
    anon.elements.push_back(std::move(e));
    text += fmt::format("{}{} : {} . {}", i ? ", " : "", i, ip.toString(), port);
  }
  text += " }";
  const int index = int(rule_.anonSets.size());
  rule_.anonSets.push_back(std::move(anon));
  rule_.exprs.push_back(Numgen{kReg1, uint32_t(endpoints.size())});
  rule_.exprs.push_back(Lookup{kReg1, {}, index, kReg1});
  rule_.exprs.push_back(Nat{NatType::kDnat, rule_.table.family, kReg1, kReg32_00 + len / 4, 0});
  append(text);
  return *this;
}

RuleBuilder& RuleBuilder::dnatNumgenMap(uint32_t mod, uint32_t offset, const std::string& map) {
  rule_.exprs.push_back(Numgen{kReg1, mod, offset});
  rule_.exprs.push_back(Lookup{kReg1, map, -1, kReg1});
  rule_.exprs.push_back(Nat{NatType::kDnat, rule_.table.family, kReg1, kReg32_00 + addrLen() / 4, 0});
  append(offset ? fmt::format("dnat {} to numgen random mod {} offset {} map @{}", ipKeyword(), mod, offset, map)
                : fmt::format("dnat {} to numgen random mod {} map @{}", ipKeyword(), mod, map));
  return *this;
}

RuleBuilder& RuleBuilder::masquerade(bool fullyRandom) {
  rule_.exprs.push_back(Masq{fullyRandom ? kNatRangeProtoRandomFully : 0u});
  append(fullyRandom ? "masquerade fully-random" : "masquerade");
  return *this;
}

// Plain `reject` is ICMP port unreachable (v4 code 3, v6 code 4), which a TCP or UDP client
// sees at once as ECONNREFUSED.
RuleBuilder& RuleBuilder::reject() {
  const bool v6 = rule_.table.family == Family::kIPv6;
  rule_.exprs.push_back(Reject{0 /*NFT_REJECT_ICMP_UNREACH*/, uint8_t(v6 ? 4 : 3)});
  append("reject");
  return *this;
}

// nft hides the `meta l4proto tcp` dependency of a TCP reset when it prints the rule.
RuleBuilder& RuleBuilder::rejectTcpReset() {
  rule_.exprs.push_back(Meta{MetaKey::kL4proto, kReg1});
  rule_.exprs.push_back(Cmp{kReg1, CmpOp::kEq, Bytes{uint8_t(Protocol::kTCP)}});
  rule_.exprs.push_back(Reject{1 /*NFT_REJECT_TCP_RST*/, 0});
  append("reject with tcp reset");
  return *this;
}

RuleBuilder& RuleBuilder::verdict(VerdictCode code, const std::string& chain) {
  Verdict v{code, chain};
  rule_.exprs.push_back(Immediate{kRegVerdict, {}, v});
  append(verdictText(v));
  return *this;
}

Rule RuleBuilder::build() { return std::move(rule_); }

}  // namespace sluice::nft
