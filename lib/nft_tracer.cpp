// Packet tracer over the FakeBackend's IR: runs the kernel expressions of each rule on a
// register file laid out as nf_tables lays it out (net/netfilter/nf_tables_core.c), hook by
// hook in netfilter order. Random draws are not sampled: the trace is re-run from the start
// for every combination of numgen values (an odometer over the draws a run made), which keeps
// the interpreter a plain loop and makes every outcome and its probability exact.
#include "sluice/nft/tracer.h"

#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <memory>
#include <typeinfo>
#include <tuple>

#include <fmt/format.h>

#include "sluice/nft/rule_builder.h"

namespace sluice::nft {

namespace {

// Kernel ABI (linux/netfilter/nf_tables.h, nf_conntrack_common.h).
constexpr uint32_t kRegDataBytes = 80;  // NFT_REG32_NUM (20) 32-bit words, the verdict included
constexpr size_t kJumpStackSize = 16;   // NFT_JUMP_STACK_SIZE
constexpr uint32_t kIpsSrcNat = 1u << 4;
constexpr uint32_t kIpsDstNat = 1u << 5;
constexpr uint32_t kMetaIifname = 6, kMetaOifname = 7;  // NFT_META_IIFNAME / OIFNAME
constexpr uint32_t kIfNameSize = 16;                    // IFNAMSIZ

std::string typeName(const std::type_info& t) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(t.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(t.name());
}

Status cannotTrace(const std::string& why) { return Status(Code::kUnimplemented, "cannot trace: " + why); }
Status badRuleset(const std::string& why) { return Status(Code::kFailedPrecondition, why); }

// Byte offset of a data register in the register file. NFT_REG_1..4 are 16 bytes wide and
// alias NFT_REG32_00..15, so a concatenation loaded into REG32_00, 01, … reads back as one key
// from NFT_REG_1.
Result<uint32_t> regOffset(uint32_t reg, size_t len) {
  uint32_t word;
  if (reg >= 1 && reg <= 4) word = reg * 4;
  else if (reg >= kReg32_00 && reg < kReg32_00 + 16) word = reg - kReg32_00 + 4;
  else return badRuleset(fmt::format("register {} is not a data register", reg));
  if (word * 4 + len > kRegDataBytes) return badRuleset(fmt::format("{} bytes do not fit in register {}", len, reg));
  return word * 4;
}

// The part of the packet that a rule can see and that the tracer knows.
struct Packet {
  IPAddress saddr, daddr;
  uint16_t sport = 0, dport = 0;
  uint32_t mark = 0;
  uint32_t ctStatus = 0;
};

// One run through the ruleset with fixed random draws.
struct Run {
  Packet pkt;
  TraceOutcome out;
  bool dnatDone = false, snatDone = false;
  bool natSettled = false;  // looped back: no nat chain runs again for this connection
  std::map<std::string, std::set<Bytes>> updated;  // keys `update @set` added during this run
  // numgen values: the first `prefix.size()` are given, later ones start at 0.
  std::vector<uint32_t> prefix, drawn, mods;
};

struct BaseChain {
  const FakeBackend::TableState* table;
  const FakeBackend::ChainState* chain;
};

// A chain's exit: accept, drop, or reject (a drop that answered the sender).
struct ChainExit {
  Disposition disposition = Disposition::kAccepted;
  std::optional<RejectKind> reject;
};

enum class ExprResult { kNext, kBreak, kVerdict };

const Element kUpdatedElement{};  // what a lookup finds for a key `update` added in this run

class Tracer {
 public:
  Tracer(const FakeBackend& backend, const TracePacket& packet) : packet_(packet) {
    const bool v6 = packet.family() == IPFamily::kV6;
    for (const TableRef& ref : backend.tables()) {
      if (ref.family != Family::kInet && ref.family != (v6 ? Family::kIPv6 : Family::kIPv4)) continue;
      const auto* t = backend.table(ref.family, ref.name);
      for (const auto& [_, cs] : t->chains)
        if (cs.chain.base) hooks_[cs.chain.base->hook].push_back({t, &cs});
    }
    // Netfilter runs a hook's chains by priority; equal priorities run in registration order,
    // which a ruleset does not record, so ties go by family and table name, deterministically.
    for (auto& [_, chains] : hooks_)
      std::stable_sort(chains.begin(), chains.end(), [](const BaseChain& a, const BaseChain& b) {
        return std::tuple(a.chain->chain.base->priority, a.table->table.ref.family, a.table->table.ref.name) <
               std::tuple(b.chain->chain.base->priority, b.table->table.ref.family, b.table->table.ref.name);
      });
  }

  Status run(Run& r) {
    r.pkt = {packet_.saddr, packet_.daddr, packet_.sport, packet_.dport, packet_.mark, 0};
    ChainExit exit;
    bool accepted = true;
    // Runs one hook; `accepted` says whether the packet goes on to the next.
    auto pass = [&](Hook hook) -> Status {
      auto e = runHook(r, hook);
      if (!e) return e.status();
      exit = *e;
      accepted = exit.disposition == Disposition::kAccepted;
      return Status::ok();
    };
    auto finish = [&] {
      r.out.disposition = exit.disposition;
      r.out.reject = exit.reject;
      r.out.mark = r.pkt.mark;
      return Status::ok();
    };
    auto deliver = [&]() -> Status {
      if (Status st = pass(Hook::kInput); !st) return st;
      r.out.delivered = accepted;
      return finish();
    };
    if (packet_.entry == Entry::kPrerouting) {
      if (Status st = pass(Hook::kPrerouting); !st || !accepted) return st ? finish() : st;
      if (route(r, Hook::kInput, Hook::kForward)) return deliver();
      if (Status st = pass(Hook::kForward); !st || !accepted) return st ? finish() : st;
      if (Status st = pass(Hook::kPostrouting); !st) return st;
      return finish();
    }
    if (Status st = pass(Hook::kOutput); !st || !accepted) return st ? finish() : st;
    const bool local = route(r, Hook::kPostrouting, Hook::kPostrouting);
    if (Status st = pass(Hook::kPostrouting); !st || !accepted || !local) return st ? finish() : st;
    // A locally destined packet loops back through lo: prerouting and input again, with the
    // connection's NAT already settled (output and postrouting set up both bindings).
    r.natSettled = true;
    note(r, Hook::kPrerouting, "looped back (lo): prerouting and input, NAT already set up");
    if (Status st = pass(Hook::kPrerouting); !st || !accepted) return st ? finish() : st;
    return deliver();
  }

  // The routing decision after prerouting / output: local iff the destination (the DNAT target
  // if there was one) is an address of this node.
  bool route(Run& r, Hook ifLocal, Hook otherwise) {
    const auto& own = packet_.localAddresses;
    const bool listed = std::find(own.begin(), own.end(), r.pkt.daddr) != own.end();
    const bool local = listed || (!r.dnatDone && packet_.daddrLocal);
    note(r, local ? ifLocal : otherwise,
         fmt::format("routing: {} {} is {}", packet_.family() == IPFamily::kV6 ? "ip6" : "ip", r.pkt.daddr.toString(),
                     local ? "local" : "not local"));
    return local;
  }

 private:
  void note(Run& r, Hook hook, std::string text, const BaseChain* at = nullptr) {
    TraceStep s;
    s.hook = hook;
    if (at) {
      s.table = at->table->table.ref;
      s.chain = at->chain->chain.name;
    }
    s.text = std::move(text);
    r.out.steps.push_back(std::move(s));
  }

  Result<ChainExit> runHook(Run& r, Hook hook) {
    currentHook_ = hook;
    auto it = hooks_.find(hook);
    if (it == hooks_.end()) return ChainExit{};
    // Which NAT a nat chain on this hook sets up (nf_nat_inet_fn: once one chain has set it up
    // for the connection, the later ones of the hook are not consulted).
    const bool dstHook = hook == Hook::kPrerouting || hook == Hook::kOutput;
    for (const BaseChain& bc : it->second) {
      if (bc.chain->chain.base->type == "nat") {
        if (!(packet_.ctState & kCtStateNew)) {
          note(r, hook, "skipped: nat chains see only the first packet of a connection", &bc);
          continue;
        }
        if (r.natSettled || (dstHook ? r.dnatDone : r.snatDone)) continue;
      }
      auto exit = runChain(r, hook, bc);
      if (!exit) return exit.status();
      if (exit->disposition != Disposition::kAccepted) return exit;
    }
    return ChainExit{};
  }

  Result<ChainExit> runChain(Run& r, Hook hook, const BaseChain& base) {
    struct Frame {
      const FakeBackend::ChainState* chain;
      size_t next;
    };
    std::vector<Frame> stack;
    const FakeBackend::ChainState* cur = base.chain;
    size_t idx = 0;
    const auto& chains = base.table->chains;
    auto enter = [&](const std::string& name) -> Status {
      auto c = chains.find(name);
      if (c == chains.end()) return badRuleset("jump to unknown chain " + name);
      cur = &c->second;
      idx = 0;
      return Status::ok();
    };
    // Back to the rule after the jump; false at the base chain, whose policy then applies.
    auto leave = [&] {
      if (stack.empty()) return false;
      cur = stack.back().chain;
      idx = stack.back().next;
      stack.pop_back();
      return true;
    };
    for (;;) {
      if (idx >= cur->rules.size()) {
        if (leave()) continue;
        note(r, hook, "policy accept", &base);
        return ChainExit{};
      }
      const Rule& rule = cur->rules[idx];
      RuleEval ev;
      if (Status st = evalRule(r, *base.table, rule, ev); !st)
        return st.withContext(fmt::format("{} {} {}[{}] \"{}\"", familyName(base.table->table.ref.family),
                                          base.table->table.ref.name, cur->chain.name, idx, rule.text));
      if (!ev.matched) {
        ++idx;
        continue;
      }
      TraceStep step;
      step.hook = hook;
      step.table = base.table->table.ref;
      step.chain = cur->chain.name;
      step.rule = idx;
      step.text = rule.text;
      if (!rule.comment.empty()) step.text += fmt::format(" comment \"{}\"", rule.comment);
      step.detail = std::move(ev.detail);
      r.out.steps.push_back(std::move(step));
      if (ev.reject) return ChainExit{Disposition::kRejected, ev.reject};
      if (!ev.verdict) {
        ++idx;
        continue;
      }
      switch (ev.verdict->code) {
        case VerdictCode::kAccept: return ChainExit{};
        case VerdictCode::kDrop: return ChainExit{Disposition::kDropped, {}};
        case VerdictCode::kContinue: ++idx; break;
        case VerdictCode::kJump:
          if (stack.size() >= kJumpStackSize) return badRuleset("jump stack overflow (loop?) at " + ev.verdict->chain);
          stack.push_back({cur, idx + 1});
          if (Status st = enter(ev.verdict->chain); !st) return st;
          break;
        case VerdictCode::kGoto:
          if (Status st = enter(ev.verdict->chain); !st) return st;
          break;
        case VerdictCode::kReturn:
          if (leave()) break;
          note(r, hook, "return from the base chain: policy accept", &base);
          return ChainExit{};
      }
    }
  }

  struct RuleEval {
    bool matched = false;
    std::optional<Verdict> verdict;
    std::optional<RejectKind> reject;
    std::string detail;
    void add(const std::string& d) { detail += (detail.empty() ? "" : ", ") + d; }
  };

  using Regs = std::array<uint8_t, kRegDataBytes>;

  Status evalRule(Run& r, const FakeBackend::TableState& table, const Rule& rule, RuleEval& ev) {
    Regs regs{};
    for (const Expr& expr : rule.exprs) {
      ExprResult res = ExprResult::kNext;
      Status st = std::visit([&](const auto& e) { return eval(r, table, rule, e, regs, ev, res); }, expr);
      if (!st) return st;
      if (res == ExprResult::kBreak) return Status::ok();
      if (res == ExprResult::kVerdict) break;
    }
    ev.matched = true;
    return Status::ok();
  }

  // --- registers ---------------------------------------------------------------------------

  static Result<uint8_t*> reg(Regs& regs, uint32_t r, size_t len) {
    auto off = regOffset(r, len);
    if (!off) return off.status();
    return regs.data() + *off;
  }
  static Status store(Regs& regs, uint32_t r, const uint8_t* p, size_t len) {
    auto dst = reg(regs, r, len);
    if (!dst) return dst.status();
    // A load zero-pads to the 4-byte word, as the kernel does for the last word of a value.
    std::memset(*dst, 0, (len + 3) & ~size_t(3));
    std::memcpy(*dst, p, len);
    return Status::ok();
  }
  static Status storeU32(Regs& regs, uint32_t r, uint32_t v) { return store(regs, r, reinterpret_cast<uint8_t*>(&v), 4); }

  // --- expressions -------------------------------------------------------------------------

  // Anything the IR gains later and this tracer does not know yet: say so, never guess.
  template <typename E>
  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const E&, Regs&, RuleEval&, ExprResult&) {
    return cannotTrace(fmt::format("expression {} is not modelled by the tracer", typeName(typeid(E))));
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Payload& e, Regs& regs, RuleEval&,
              ExprResult&) {
    auto bytes = payloadBytes(r, e);
    if (!bytes) return bytes.status();
    return store(regs, e.dreg, bytes->data(), bytes->size());
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Meta& e, Regs& regs, RuleEval&,
              ExprResult&) {
    const bool v6 = packet_.family() == IPFamily::kV6;
    const uint32_t key = uint32_t(e.key);
    switch (e.key) {
      case MetaKey::kMark: return storeU32(regs, e.dreg, r.pkt.mark);
      case MetaKey::kL4proto: {
        const uint8_t p = uint8_t(packet_.protocol);
        return store(regs, e.dreg, &p, 1);
      }
      case MetaKey::kNfproto: {
        const uint8_t p = uint8_t(v6 ? Family::kIPv6 : Family::kIPv4);
        return store(regs, e.dreg, &p, 1);
      }
      case MetaKey::kProtocol: {  // the ethertype, network byte order
        const uint8_t p[2] = {uint8_t(v6 ? 0x86 : 0x08), uint8_t(v6 ? 0xdd : 0x00)};
        return store(regs, e.dreg, p, 2);
      }
      default: break;
    }
    if (key == kMetaIifname || key == kMetaOifname) {
      // The kernel stores "" when the packet has no such device (no input device on output, no
      // output device before routing); otherwise the tracer needs the name from the caller.
      const bool in = key == kMetaIifname;
      std::string name;
      if (in && packet_.entry == Entry::kPrerouting) {
        if (packet_.iifname.empty()) return cannotTrace("meta iifname: the packet has no iifname");
        name = packet_.iifname;
      } else if (!in && !(packet_.entry == Entry::kPrerouting && currentHook_ == Hook::kPrerouting)) {
        return cannotTrace("meta oifname: the output interface depends on routing");
      }
      std::array<uint8_t, kIfNameSize> buf{};
      std::memcpy(buf.data(), name.data(), std::min<size_t>(name.size(), kIfNameSize - 1));
      return store(regs, e.dreg, buf.data(), buf.size());
    }
    return cannotTrace(fmt::format("meta key {}", key));
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const MetaSet& e, Regs& regs, RuleEval& ev,
              ExprResult&) {
    if (e.key != MetaKey::kMark) return cannotTrace(fmt::format("meta set of key {}", uint32_t(e.key)));
    auto src = reg(regs, e.sreg, 4);
    if (!src) return src.status();
    std::memcpy(&r.pkt.mark, *src, 4);
    ev.add(fmt::format("mark {:#010x}", r.pkt.mark));
    return Status::ok();
  }

  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const Cmp& e, Regs& regs, RuleEval&,
              ExprResult& res) {
    auto src = reg(regs, e.sreg, e.data.size());
    if (!src) return src.status();
    // nft_cmp compares with memcmp: host-order values are converted (byteorder) before cmp.
    const int d = std::memcmp(*src, e.data.data(), e.data.size());
    bool ok = false;
    switch (e.op) {
      case CmpOp::kEq: ok = d == 0; break;
      case CmpOp::kNeq: ok = d != 0; break;
      case CmpOp::kLt: ok = d < 0; break;
      case CmpOp::kLte: ok = d <= 0; break;
      case CmpOp::kGt: ok = d > 0; break;
      case CmpOp::kGte: ok = d >= 0; break;
      default: return cannotTrace(fmt::format("cmp op {}", uint32_t(e.op)));
    }
    if (!ok) res = ExprResult::kBreak;
    return Status::ok();
  }

  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const Bitwise& e, Regs& regs, RuleEval&,
              ExprResult&) {
    if (e.mask.size() < e.len || e.xorv.size() < e.len) return badRuleset("bitwise mask/xor shorter than its length");
    auto src = reg(regs, e.sreg, e.len);
    if (!src) return src.status();
    std::array<uint8_t, kRegDataBytes> tmp{};
    for (uint32_t i = 0; i < e.len; ++i) tmp[i] = uint8_t(((*src)[i] & e.mask[i]) ^ e.xorv[i]);
    return store(regs, e.dreg, tmp.data(), e.len);
  }

  Status eval(Run& r, const FakeBackend::TableState& table, const Rule& rule, const Lookup& e, Regs& regs,
              RuleEval& ev, ExprResult& res) {
    const Set* set = nullptr;
    const Element* found = nullptr;
    std::string name;
    Bytes key;
    auto readKey = [&]() -> Status {
      auto src = reg(regs, e.sreg, set->keyLen());
      if (!src) return src.status();
      key = Bytes(*src, *src + set->keyLen());
      if (set->flags & kSetInterval)
        return cannotTrace("lookup in interval set " + name + " (the IR carries no interval ends)");
      return Status::ok();
    };
    if (e.anonSet >= 0) {
      if (size_t(e.anonSet) >= rule.anonSets.size()) return badRuleset("lookup of unknown anonymous set");
      set = &rule.anonSets[size_t(e.anonSet)];
      name = "{anonymous}";
      if (Status st = readKey(); !st) return st;
      for (const auto& el : set->elements)
        if (el.key == key) found = &el;
    } else {
      auto s = table.sets.find(e.set);
      if (s == table.sets.end()) return badRuleset("lookup of unknown set " + e.set);
      set = &s->second.set;
      name = "@" + e.set;
      if (Status st = readKey(); !st) return st;
      auto it = s->second.elements.find(key);
      if (it != s->second.elements.end()) found = &it->second;
      if (!found && !set->isMap()) {
        auto up = r.updated.find(e.set);
        if (up != r.updated.end() && up->second.count(key)) found = &kUpdatedElement;
      }
    }
    const std::string shownKey = formatValue(set->key, key);
    if (!e.dreg) {  // plain set membership
      if (bool(found) == e.invert) res = ExprResult::kBreak;
      return Status::ok();
    }
    if (!found) {  // a map lookup that misses ends the rule (NFT_BREAK)
      res = ExprResult::kBreak;
      return Status::ok();
    }
    if (*e.dreg == kRegVerdict) {
      if (!found->verdict) return badRuleset("verdict map " + name + " element without a verdict");
      ev.verdict = *found->verdict;
      ev.add(fmt::format("{}[{}] → {}{}", name, shownKey, verdictText(*found->verdict),
                         found->comment.empty() ? "" : fmt::format(" ({})", found->comment)));
      res = ExprResult::kVerdict;
      return Status::ok();
    }
    ev.add(fmt::format("{}[{}] = {}", name, shownKey, formatValue(set->data, found->data)));
    return store(regs, *e.dreg, found->data.data(), found->data.size());
  }

  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const Immediate& e, Regs& regs, RuleEval& ev,
              ExprResult& res) {
    if (e.dreg == kRegVerdict) {
      ev.verdict = e.verdict;
      res = ExprResult::kVerdict;
      return Status::ok();
    }
    return store(regs, e.dreg, e.data.data(), e.data.size());
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Numgen& e, Regs& regs, RuleEval& ev,
              ExprResult&) {
    if (e.mod == 0) return badRuleset("numgen mod 0");
    const size_t k = r.drawn.size();
    const uint32_t v = k < r.prefix.size() ? r.prefix[k] : 0;
    r.drawn.push_back(v);
    r.mods.push_back(e.mod);
    // `numgen random mod 1 offset X` is how the planner loads a constant (count gates).
    ev.add(e.mod == 1 ? fmt::format("constant {}", e.offset) : fmt::format("numgen → {} (one of {})", v + e.offset, e.mod));
    return storeU32(regs, e.dreg, v + e.offset);
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Ct& e, Regs& regs, RuleEval&,
              ExprResult&) {
    switch (e.key) {
      case CtKey::kState: return storeU32(regs, e.dreg, packet_.ctState);
      case CtKey::kMark: return storeU32(regs, e.dreg, packet_.ctMark);
      case CtKey::kStatus:
        // For a new connection the status is what this trace's NAT made of it; for an
        // existing one it depends on how that connection was set up.
        if (!(packet_.ctState & kCtStateNew)) return cannotTrace("ct status of an existing connection");
        return storeU32(regs, e.dreg, r.pkt.ctStatus);
      default: return cannotTrace(fmt::format("ct key {}", uint32_t(e.key)));
    }
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Nat& e, Regs& regs, RuleEval& ev,
              ExprResult& res) {
    const bool v6 = packet_.family() == IPFamily::kV6;
    auto addr = reg(regs, e.regAddr, v6 ? 16 : 4);
    if (!addr) return addr.status();
    NatTarget t{v6 ? IPAddress::fromV6Bytes(*addr) : IPAddress::fromV4Bytes(*addr), std::nullopt};
    if (e.regProto) {
      auto port = reg(regs, e.regProto, 2);
      if (!port) return port.status();
      t.port = uint16_t(((*port)[0] << 8) | (*port)[1]);
    }
    if (e.type == NatType::kDnat) {
      r.pkt.daddr = t.address;
      if (t.port) r.pkt.dport = *t.port;
      r.pkt.ctStatus |= kIpsDstNat;
      r.dnatDone = true;
      r.out.dnat = t;
      ev.add("dnat to " + t.toString());
    } else {
      r.pkt.saddr = t.address;
      if (t.port) r.pkt.sport = *t.port;
      r.pkt.ctStatus |= kIpsSrcNat;
      r.snatDone = true;
      r.out.snat = t;
      ev.add("snat to " + t.toString());
    }
    ev.verdict = Verdict{VerdictCode::kAccept, {}};  // nft_nat_eval's verdict is nf_nat_setup_info's NF_ACCEPT
    res = ExprResult::kVerdict;
    return Status::ok();
  }

  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Masq& e, Regs&, RuleEval& ev,
              ExprResult& res) {
    r.out.masquerade = e.flags;
    r.pkt.ctStatus |= kIpsSrcNat;
    r.snatDone = true;
    ev.add(e.flags & kNatRangeProtoRandomFully ? "masquerade fully-random" : "masquerade");
    ev.verdict = Verdict{VerdictCode::kAccept, {}};
    res = ExprResult::kVerdict;
    return Status::ok();
  }

  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const Reject& e, Regs&, RuleEval& ev,
              ExprResult& res) {
    ev.reject = RejectKind{e.type, e.code, packet_.family() == IPFamily::kV6};
    ev.add("reject with " + ev.reject->toString());
    res = ExprResult::kVerdict;
    return Status::ok();
  }

  // `update @set { key }`: the key is in the set from now on (for this packet's later lookups;
  // the trace describes the first packet of a connection, so the set held what the fake holds).
  Status eval(Run& r, const FakeBackend::TableState& table, const Rule&, const Dynset& e, Regs& regs, RuleEval& ev,
              ExprResult&) {
    auto s = table.sets.find(e.set);
    if (s == table.sets.end()) return badRuleset("update of unknown set " + e.set);
    const Set& set = s->second.set;
    if (set.isMap()) return cannotTrace("update of map " + e.set);
    auto src = reg(regs, e.sregKey, set.keyLen());
    if (!src) return src.status();
    Bytes key(*src, *src + set.keyLen());
    r.updated[e.set].insert(key);
    ev.add(fmt::format("@{} ∋ {}", e.set, formatValue(set.key, key)));
    return Status::ok();
  }

  // fib saddr/daddr type: local when the address is one of the node's (TracePacket), else unicast.
  Status eval(Run& r, const FakeBackend::TableState&, const Rule&, const Fib& e, Regs& regs, RuleEval& ev,
              ExprResult&) {
    constexpr uint32_t kFibFlagDaddr = 2, kRtnUnicast = 1;
    if (e.result != kFibResultAddrType || (e.flags != kFibFlagSaddr && e.flags != kFibFlagDaddr))
      return cannotTrace(fmt::format("fib result {} with flags {:#x}", e.result, e.flags));
    const bool source = e.flags == kFibFlagSaddr;
    const IPAddress& addr = source ? r.pkt.saddr : r.pkt.daddr;
    const auto& own = packet_.localAddresses;
    bool local = std::find(own.begin(), own.end(), addr) != own.end();
    if (source) local = local || (packet_.entry == Entry::kOutput && addr == packet_.saddr);
    else local = local || (!r.dnatDone && packet_.daddrLocal);
    ev.add(fmt::format("fib {} type {}", source ? "saddr" : "daddr", local ? "local" : "unicast"));
    return storeU32(regs, e.dreg, local ? kRtnLocal : kRtnUnicast);
  }

  Status eval(Run&, const FakeBackend::TableState&, const Rule&, const Counter&, Regs&, RuleEval&, ExprResult&) {
    return Status::ok();  // counts, decides nothing
  }

  // Header bytes the tracer knows: addresses, protocol and ports. Anything else (TTL, TCP
  // flags, options) is not part of a TracePacket.
  Result<std::vector<uint8_t>> payloadBytes(const Run& r, const Payload& e) const {
    const bool v6 = packet_.family() == IPFamily::kV6;
    std::vector<uint8_t> hdr;
    std::vector<bool> known;
    auto put = [&](size_t off, const uint8_t* p, size_t n) {
      for (size_t i = 0; i < n; ++i) hdr[off + i] = p[i], known[off + i] = true;
    };
    const uint8_t proto = uint8_t(packet_.protocol);
    if (e.base == PayloadBase::kNetwork) {
      hdr.assign(v6 ? 40 : 20, 0);
      known.assign(hdr.size(), false);
      if (v6) {
        put(6, &proto, 1);  // next header, assuming no extension headers
        put(8, r.pkt.saddr.bytes(), 16);
        put(24, r.pkt.daddr.bytes(), 16);
      } else {
        const uint8_t verIhl = 0x45;
        put(0, &verIhl, 1);
        put(9, &proto, 1);
        put(12, r.pkt.saddr.bytes(), 4);
        put(16, r.pkt.daddr.bytes(), 4);
      }
    } else if (e.base == PayloadBase::kTransport) {
      hdr.assign(4, 0);
      known.assign(4, false);
      const uint8_t ports[4] = {uint8_t(r.pkt.sport >> 8), uint8_t(r.pkt.sport), uint8_t(r.pkt.dport >> 8),
                                uint8_t(r.pkt.dport)};
      put(0, ports, 4);
    } else {
      return cannotTrace("link-layer payload");
    }
    if (e.offset + e.len > hdr.size() ||
        !std::all_of(known.begin() + e.offset, known.begin() + e.offset + e.len, [](bool b) { return b; }))
      return cannotTrace(fmt::format("{} header bytes {}..{} are not part of the traced packet",
                                     e.base == PayloadBase::kNetwork ? "network" : "transport", e.offset,
                                     e.offset + e.len));
    return std::vector<uint8_t>(hdr.begin() + e.offset, hdr.begin() + e.offset + e.len);
  }

  const TracePacket& packet_;
  std::map<Hook, std::vector<BaseChain>> hooks_;
  Hook currentHook_ = Hook::kPrerouting;
};

Status validate(const TracePacket& p) {
  if (p.saddr.family() != p.daddr.family()) return Status(Code::kInvalidArgument, "saddr and daddr of different families");
  for (const auto& a : p.localAddresses)
    if (a.family() != p.family()) return Status(Code::kInvalidArgument, "local address " + a.toString() + " of another family");
  return Status::ok();
}

bool sameFate(const TraceOutcome& a, const TraceOutcome& b) {
  return a.disposition == b.disposition && a.reject == b.reject && a.dnat == b.dnat && a.snat == b.snat &&
         a.masquerade == b.masquerade && a.delivered == b.delivered && a.mark == b.mark;
}

std::string hostPort(const IPAddress& a, uint16_t port) {
  return a.isV6() ? fmt::format("[{}]:{}", a.toString(), port) : fmt::format("{}:{}", a.toString(), port);
}

}  // namespace

std::string TracePacket::toString() const {
  std::string s = fmt::format("{} {} {} -> {}", saddr.isV6() ? "ip6" : "ip", protocolNftName(protocol),
                              hostPort(saddr, sport), hostPort(daddr, dport));
  s += entry == Entry::kPrerouting ? " enters prerouting" : " sent by a local process (output)";
  if (entry == Entry::kPrerouting && !iifname.empty()) s += " iif " + iifname;
  if (daddrLocal) s += ", destination local";
  std::vector<std::string> states;
  for (auto [bit, name] : {std::pair{kCtStateNew, "new"}, {kCtStateEstablished, "established"},
                           {kCtStateRelated, "related"}, {kCtStateInvalid, "invalid"}})
    if (ctState & bit) states.push_back(name);
  s += ", ct state " + (states.empty() ? std::string("untracked") : fmt::format("{}", fmt::join(states, ",")));
  if (mark) s += fmt::format(", mark {:#010x}", mark);
  return s;
}

std::string NatTarget::toString() const { return port ? hostPort(address, *port) : address.toString(); }

std::string TraceStep::toString() const {
  std::string where = chain.empty() ? "" : fmt::format("{} {} {}", familyName(table.family), table.name, chain);
  if (rule) where += fmt::format("[{}]", *rule);
  std::string s = fmt::format("{:<11} {}", hookName(hook), where);
  s += where.empty() ? text : ": " + text;
  if (!detail.empty()) s += "  ⇒ " + detail;
  return s;
}

const char* dispositionName(Disposition d) {
  switch (d) {
    case Disposition::kAccepted: return "accepted";
    case Disposition::kDropped: return "dropped";
    case Disposition::kRejected: return "rejected";
  }
  return "?";
}

// Codes as linux/icmp.h, linux/icmpv6.h and NFT_REJECT_ICMPX_* number them.
std::string RejectKind::toString() const {
  static const std::map<uint8_t, const char*> kIcmp = {
      {0, "net-unreachable"}, {1, "host-unreachable"}, {3, "port-unreachable"}, {9, "net-prohibited"},
      {10, "host-prohibited"}, {13, "admin-prohibited"}};
  static const std::map<uint8_t, const char*> kIcmpv6 = {
      {0, "no-route"}, {1, "admin-prohibited"}, {3, "addr-unreachable"}, {4, "port-unreachable"}};
  static const std::map<uint8_t, const char*> kIcmpx = {
      {0, "no-route"}, {1, "port-unreachable"}, {2, "host-unreachable"}, {3, "admin-prohibited"}};
  const std::map<uint8_t, const char*>* names = nullptr;
  const char* kind = "";
  switch (type) {
    case 0: names = v6 ? &kIcmpv6 : &kIcmp, kind = v6 ? "icmpv6" : "icmp"; break;
    case 1: return "tcp reset";
    case 2: names = &kIcmpx, kind = "icmpx"; break;
    default: return fmt::format("reject type {} code {}", type, code);
  }
  auto it = names->find(code);
  return it == names->end() ? fmt::format("{} code {}", kind, code) : fmt::format("{} {}", kind, it->second);
}

std::string TraceOutcome::summary() const {
  std::string s = dispositionName(disposition);
  if (reject) s += " (" + reject->toString() + ")";
  if (delivered) s += ", delivered locally";
  if (dnat) s += ", dnat to " + dnat->toString();
  if (snat) s += ", snat to " + snat->toString();
  if (masquerade) s += fullyRandom() ? ", masquerade fully-random" : ", masquerade";
  return s;
}

std::set<NatTarget> Trace::dnatTargets() const {
  std::set<NatTarget> out;
  for (const auto& o : outcomes)
    if (o.dnat) out.insert(*o.dnat);
  return out;
}

std::optional<Disposition> Trace::disposition() const {
  if (outcomes.empty()) return std::nullopt;
  for (const auto& o : outcomes)
    if (o.disposition != outcomes.front().disposition) return std::nullopt;
  return outcomes.front().disposition;
}

bool Trace::anyMasqueraded() const {
  return std::any_of(outcomes.begin(), outcomes.end(), [](const TraceOutcome& o) { return o.masqueraded(); });
}

bool Trace::allMasqueraded() const {
  return !outcomes.empty() &&
         std::all_of(outcomes.begin(), outcomes.end(), [](const TraceOutcome& o) { return o.masqueraded(); });
}

std::string Trace::toString() const {
  std::string s = packet.toString() + "\n";
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const auto& o = outcomes[i];
    s += outcomes.size() == 1 ? fmt::format("outcome: {}\n", o.summary())
                              : fmt::format("outcome {} of {} ({:.3g} %): {}\n", i + 1, outcomes.size(),
                                            o.probability * 100, o.summary());
    for (const auto& step : o.steps) s += "  " + step.toString() + "\n";
  }
  return s;
}

Result<Trace> trace(const FakeBackend& backend, const TracePacket& packet, const TraceOptions& options) {
  if (Status st = validate(packet); !st) return st;
  Tracer tracer(backend, packet);
  Trace result;
  result.packet = packet;
  std::vector<uint32_t> prefix;
  for (size_t paths = 1;; ++paths) {
    if (paths > options.maxPaths)
      return Status(Code::kResourceExhausted, fmt::format("more than {} combinations of random draws", options.maxPaths));
    Run run;
    run.prefix = prefix;
    if (Status st = tracer.run(run); !st) return st;
    for (uint32_t m : run.mods) run.out.probability /= m;
    auto same = std::find_if(result.outcomes.begin(), result.outcomes.end(),
                             [&](const TraceOutcome& o) { return sameFate(o, run.out); });
    if (same == result.outcomes.end()) result.outcomes.push_back(std::move(run.out));
    else same->probability += run.out.probability;
    // Next combination: advance the last draw that has values left, drop the ones after it.
    size_t k = run.drawn.size();
    while (k > 0 && run.drawn[k - 1] + 1 >= run.mods[k - 1]) --k;
    if (k == 0) break;
    prefix.assign(run.drawn.begin(), run.drawn.begin() + long(k - 1));
    prefix.push_back(run.drawn[k - 1] + 1);
  }
  std::stable_sort(result.outcomes.begin(), result.outcomes.end(),
                   [](const TraceOutcome& a, const TraceOutcome& b) { return a.probability > b.probability + 1e-12; });
  return result;
}

}  // namespace sluice::nft
