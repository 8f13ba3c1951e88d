// FakeBackend: nftables in memory, with the kernel's answers to the same mistakes.
//
// Each apply() works on a copy of the state and swaps it in only when every operation
// succeeded, which is the atomicity the kernel's batch gives. Error codes follow
// net/netfilter/nf_tables_api.c: ENOENT for missing objects and dangling references, EEXIST for
// create on an existing object or an element clash, EBUSY for deleting a chain or set still in
// use, EINVAL for malformed keys, EOPNOTSUPP for jumping to a base chain.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "sluice/nft/backend.h"
#include "sluice/nft/rule_builder.h"

namespace sluice::nft {

namespace {

using Tables = std::map<std::pair<Family, std::string>, FakeBackend::TableState>;

Status err(int e, const Operation& op, size_t index, const std::string& why) {
  return Status::fromErrno(e, Transaction::describe(op) + ": " + why, index);
}

std::string typeofText(Typeof t, Family family) {
  switch (t) {
    case Typeof::kNumgen: return "numgen random mod 1";
    case Typeof::kDaddrThDport: return family == Family::kIPv6 ? "ip6 daddr . th dport" : "ip daddr . th dport";
    case Typeof::kNumgenPair: return "numgen random mod 1 . numgen random mod 1";
    case Typeof::kNone: return "";
  }
  return "";
}

std::string typeText(const std::vector<DataType>& types) {
  std::string out;
  for (size_t i = 0; i < types.size(); ++i) out += (i ? " . " : "") + std::string(dataTypeName(types[i]));
  return out;
}

// Every chain name a rule or element refers to, for reference checks.
void chainRefs(const Rule& r, std::vector<std::string>& out) {
  for (const auto& e : r.exprs)
    if (auto* imm = std::get_if<Immediate>(&e); imm && !imm->verdict.chain.empty()) out.push_back(imm->verdict.chain);
  for (const auto& s : r.anonSets)
    for (const auto& el : s.elements)
      if (el.verdict && !el.verdict->chain.empty()) out.push_back(el.verdict->chain);
}

bool chainReferenced(const FakeBackend::TableState& t, const std::string& chain, const std::string& except) {
  for (const auto& [name, cs] : t.chains) {
    if (name == except) continue;  // the chain's own rules go with it
    for (const auto& r : cs.rules) {
      std::vector<std::string> refs;
      chainRefs(r, refs);
      if (std::find(refs.begin(), refs.end(), chain) != refs.end()) return true;
    }
  }
  for (const auto& [_, ss] : t.sets)
    for (const auto& [k, el] : ss.elements)
      if (el.verdict && el.verdict->chain == chain) return true;
  return false;
}

bool setReferenced(const FakeBackend::TableState& t, const std::string& set) {
  for (const auto& [_, cs] : t.chains)
    for (const auto& r : cs.rules)
      for (const auto& e : r.exprs)
        if (auto* l = std::get_if<Lookup>(&e); l && l->anonSet < 0 && l->set == set) return true;
        else if (auto* d = std::get_if<Dynset>(&e); d && d->set == set) return true;
  return false;
}

Status checkElement(const Set& s, const Element& e, const FakeBackend::TableState& t, const Operation& op,
                    size_t index, bool needData) {
  if (e.key.size() != s.keyLen())
    return err(EINVAL, op, index, fmt::format("key of {} bytes for set {} with {}-byte keys", e.key.size(), s.name, s.keyLen()));
  if (!needData) return Status::ok();
  if (s.isVerdictMap()) {
    if (!e.verdict) return err(EINVAL, op, index, "verdict map element without a verdict");
    if (!e.verdict->chain.empty()) {
      auto c = t.chains.find(e.verdict->chain);
      if (c == t.chains.end()) return err(ENOENT, op, index, "element jumps to unknown chain " + e.verdict->chain);
      if (c->second.chain.base) return err(EOPNOTSUPP, op, index, "element jumps to base chain " + e.verdict->chain);
    }
  } else if (s.isMap()) {
    if (e.data.size() != s.dataLen()) return err(EINVAL, op, index, fmt::format("data of {} bytes for map {}", e.data.size(), s.name));
  } else if (e.verdict || !e.data.empty()) {
    return err(EINVAL, op, index, "data for an element of a plain set " + s.name);
  }
  return Status::ok();
}

Status checkRule(const Rule& r, const FakeBackend::TableState& t, const Operation& op, size_t index) {
  for (size_t i = 0; i < r.anonSets.size(); ++i)
    for (const auto& e : r.anonSets[i].elements)
      if (Status st = checkElement(r.anonSets[i], e, t, op, index, true); !st) return st;
  for (const auto& e : r.exprs) {
    if (auto* imm = std::get_if<Immediate>(&e); imm && !imm->verdict.chain.empty()) {
      auto c = t.chains.find(imm->verdict.chain);
      if (c == t.chains.end()) return err(ENOENT, op, index, "jump to unknown chain " + imm->verdict.chain);
      if (c->second.chain.base) return err(EOPNOTSUPP, op, index, "jump to base chain " + imm->verdict.chain);
    }
    if (auto* l = std::get_if<Lookup>(&e)) {
      if (l->anonSet >= 0) {
        if (size_t(l->anonSet) >= r.anonSets.size()) return err(ENOENT, op, index, "lookup of unknown anonymous set");
      } else if (!t.sets.count(l->set)) {
        return err(ENOENT, op, index, "lookup of unknown set " + l->set);
      } else if (l->dreg && !t.sets.at(l->set).set.isMap()) {
        return err(EINVAL, op, index, "map lookup on plain set " + l->set);
      }
    }
    if (auto* d = std::get_if<Dynset>(&e)) {
      auto s = t.sets.find(d->set);
      if (s == t.sets.end()) return err(ENOENT, op, index, "update of unknown set " + d->set);
      // nft_dynset_init: the set must be updatable from the packet path.
      if (!(s->second.set.flags & kSetEval)) return err(EOPNOTSUPP, op, index, "update of non-dynamic set " + d->set);
    }
  }
  return Status::ok();
}

Status applyOp(Tables& tables, const Operation& op, size_t index) {
  auto tableOf = [&](const TableRef& ref) -> FakeBackend::TableState* {
    auto it = tables.find({ref.family, ref.name});
    return it == tables.end() ? nullptr : &it->second;
  };
  return std::visit(
      [&](const auto& o) -> Status {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, Table>) {
          auto* t = tableOf(o.ref);
          switch (op.verb) {
            case Verb::kCreate:
              if (t) return err(EEXIST, op, index, "table exists");
              [[fallthrough]];
            case Verb::kAdd:
              if (!t) tables[{o.ref.family, o.ref.name}].table = o;
              return Status::ok();
            case Verb::kDelete:
              if (!t) return err(ENOENT, op, index, "no such table");
              [[fallthrough]];
            case Verb::kDestroy:
              tables.erase({o.ref.family, o.ref.name});
              return Status::ok();
            case Verb::kFlush:
              if (!t) return err(ENOENT, op, index, "no such table");
              for (auto& [_, c] : t->chains) c.rules.clear();
              return Status::ok();
            default: return err(EOPNOTSUPP, op, index, "verb not valid for a table");
          }
        } else if constexpr (std::is_same_v<T, Chain>) {
          auto* t = tableOf(o.table);
          if (!t) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such table");
          auto c = t->chains.find(o.name);
          switch (op.verb) {
            case Verb::kCreate:
              if (c != t->chains.end()) return err(EEXIST, op, index, "chain exists");
              [[fallthrough]];
            case Verb::kAdd:
              if (o.name.empty() || o.name.size() > 255) return err(EINVAL, op, index, "bad chain name length");
              if (c == t->chains.end()) {
                t->chains[o.name].chain = o;
              } else if (c->second.chain.base != o.base) {
                return err(EOPNOTSUPP, op, index, "chain exists with another hook");
              }
              return Status::ok();
            case Verb::kDelete:
              if (c == t->chains.end()) return err(ENOENT, op, index, "no such chain");
              [[fallthrough]];
            case Verb::kDestroy:
              if (c == t->chains.end()) return Status::ok();
              if (chainReferenced(*t, o.name, o.name)) return err(EBUSY, op, index, "chain is still referenced");
              t->chains.erase(c);
              return Status::ok();
            case Verb::kFlush:
              if (c == t->chains.end()) return err(ENOENT, op, index, "no such chain");
              c->second.rules.clear();
              return Status::ok();
            default: return err(EOPNOTSUPP, op, index, "verb not valid for a chain");
          }
        } else if constexpr (std::is_same_v<T, Rule>) {
          auto* t = tableOf(o.table);
          if (!t) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such table");
          auto c = t->chains.find(o.chain);
          if (c == t->chains.end()) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such chain");
          auto& rules = c->second.rules;
          auto byHandle = [&](uint64_t h) {
            return std::find_if(rules.begin(), rules.end(), [&](const Rule& r) { return r.handle == h; });
          };
          switch (op.verb) {
            case Verb::kAdd:
            case Verb::kInsert:
            case Verb::kReplace: {
              if (Status st = checkRule(o, *t, op, index); !st) return st;
              Rule r = o;
              if (op.verb == Verb::kReplace) {
                if (!o.handle) return err(EINVAL, op, index, "replace needs a handle");
                auto it = byHandle(*o.handle);
                if (it == rules.end()) return err(ENOENT, op, index, "no rule with that handle");
                *it = r;  // keeps its handle
                return Status::ok();
              }
              r.handle = t->nextHandle++;
              auto pos = op.verb == Verb::kAdd ? rules.end() : rules.begin();
              if (o.handle) {
                auto it = byHandle(*o.handle);
                if (it == rules.end()) return err(ENOENT, op, index, "no rule at that position");
                pos = op.verb == Verb::kAdd ? it + 1 : it;
              }
              rules.insert(pos, std::move(r));
              return Status::ok();
            }
            case Verb::kDelete:
            case Verb::kDestroy: {
              if (!o.handle) return err(EINVAL, op, index, "rule delete needs a handle");
              auto it = byHandle(*o.handle);
              if (it == rules.end()) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such rule");
              rules.erase(it);
              return Status::ok();
            }
            default: return err(EOPNOTSUPP, op, index, "verb not valid for a rule");
          }
        } else if constexpr (std::is_same_v<T, Set>) {
          auto* t = tableOf(o.table);
          if (!t) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such table");
          auto s = t->sets.find(o.name);
          switch (op.verb) {
            case Verb::kCreate:
              if (s != t->sets.end()) return err(EEXIST, op, index, "set exists");
              [[fallthrough]];
            case Verb::kAdd:
              if (o.key.empty()) return err(EINVAL, op, index, "set without key type");
              if (s == t->sets.end()) {
                auto& st = t->sets[o.name];
                st.set = o;
                st.set.elements.clear();
              } else if (s->second.set.key != o.key || s->second.set.data != o.data) {
                return err(EEXIST, op, index, "set exists with another type");
              }
              return Status::ok();
            case Verb::kDelete:
              if (s == t->sets.end()) return err(ENOENT, op, index, "no such set");
              [[fallthrough]];
            case Verb::kDestroy:
              if (s == t->sets.end()) return Status::ok();
              if (setReferenced(*t, o.name)) return err(EBUSY, op, index, "set is still referenced");
              t->sets.erase(s);
              return Status::ok();
            case Verb::kFlush:
              if (s == t->sets.end()) return err(ENOENT, op, index, "no such set");
              s->second.elements.clear();
              return Status::ok();
            default: return err(EOPNOTSUPP, op, index, "verb not valid for a set");
          }
        } else if constexpr (std::is_same_v<T, Elements>) {
          auto* t = tableOf(o.table);
          if (!t) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such table");
          auto s = t->sets.find(o.set);
          if (s == t->sets.end()) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such set " + o.set);
          auto& elems = s->second.elements;
          if (op.verb == Verb::kFlush) {
            elems.clear();
            return Status::ok();
          }
          for (const auto& e : o.elements) {
            const bool adding = op.verb == Verb::kAdd || op.verb == Verb::kCreate;
            if (Status st = checkElement(s->second.set, e, *t, op, index, adding); !st) return st;
            auto it = elems.find(e.key);
            switch (op.verb) {
              case Verb::kAdd:
              case Verb::kCreate:
                if (it != elems.end()) {
                  if (op.verb == Verb::kCreate) return err(EEXIST, op, index, "element exists");
                  // An add of an identical element is a no-op; different data is a clash.
                  if (it->second.data != e.data || it->second.verdict != e.verdict)
                    return err(EEXIST, op, index, "element exists with other data");
                  continue;
                }
                elems.emplace(e.key, e);
                break;
              case Verb::kDelete:
                if (it == elems.end()) return err(ENOENT, op, index, "no such element");
                elems.erase(it);
                break;
              case Verb::kDestroy:
                if (it != elems.end()) elems.erase(it);
                break;
              default: return err(EOPNOTSUPP, op, index, "verb not valid for elements");
            }
          }
          return Status::ok();
        } else {
          auto* t = tableOf(o.table);
          if (!t) return op.verb == Verb::kDestroy ? Status::ok() : err(ENOENT, op, index, "no such table");
          auto c = t->counters.find(o.name);
          switch (op.verb) {
            case Verb::kCreate:
              if (c != t->counters.end()) return err(EEXIST, op, index, "counter exists");
              [[fallthrough]];
            case Verb::kAdd:
              t->counters.emplace(o.name, std::pair<uint64_t, uint64_t>{0, 0});
              return Status::ok();
            case Verb::kDelete:
              if (c == t->counters.end()) return err(ENOENT, op, index, "no such counter");
              [[fallthrough]];
            case Verb::kDestroy:
              if (c != t->counters.end()) t->counters.erase(c);
              return Status::ok();
            case Verb::kReset:
              if (c == t->counters.end()) return err(ENOENT, op, index, "no such counter");
              c->second = {0, 0};
              return Status::ok();
            default: return err(EOPNOTSUPP, op, index, "verb not valid for a counter");
          }
        }
      },
      op.object);
}

}  // namespace

FakeBackend::FakeBackend() = default;
FakeBackend::~FakeBackend() = default;
FakeBackend::FakeBackend(const FakeBackend&) = default;
FakeBackend& FakeBackend::operator=(const FakeBackend&) = default;

void FakeBackend::failNextAt(size_t index, Status status) { injected_ = {index, std::move(status)}; }

Status FakeBackend::apply(const Transaction& tx) {
  if (injected_) {
    auto [index, st] = *std::exchange(injected_, std::nullopt);
    return Status(st.code(), st.message(), st.err(), index);
  }
  Tables next = tables_;
  for (size_t i = 0; i < tx.ops().size(); ++i)
    if (Status st = applyOp(next, tx.ops()[i], i); !st) return st;
  tables_ = std::move(next);
  ++applied_;
  return Status::ok();
}

std::vector<TableRef> FakeBackend::tables() const {
  std::vector<TableRef> out;
  out.reserve(tables_.size());
  for (const auto& [key, _] : tables_) out.push_back({key.first, key.second});
  return out;
}

const FakeBackend::TableState* FakeBackend::table(Family family, const std::string& name) const {
  auto it = tables_.find({family, name});
  return it == tables_.end() ? nullptr : &it->second;
}

std::string FakeBackend::dumpTable(Family family, const std::string& name) const {
  const TableState* t = table(family, name);
  if (!t) return {};
  std::string out = fmt::format("table {} {} {{\n", familyName(family), name);
  if (!t->table.comment.empty()) out += fmt::format("\tcomment \"{}\"\n", t->table.comment);
  for (const auto& [cname, _] : t->counters) out += fmt::format("\tcounter {} {{ }}\n", cname);
  for (const auto& [sname, ss] : t->sets) {
    const Set& s = ss.set;
    if (s.typeofKey != Typeof::kNone) {
      out += fmt::format("\t{} {} {{\n\t\ttypeof {}", s.isMap() ? "map" : "set", sname, typeofText(s.typeofKey, family));
      if (s.isMap()) out += " : " + typeofText(s.typeofData, family);
    } else {
      out += fmt::format("\t{} {} {{\n\t\ttype {}", s.isMap() ? "map" : "set", sname, typeText(s.key));
      if (s.isMap()) out += " : " + typeText(s.data);
    }
    out += "\n";
    if (s.size) out += fmt::format("\t\tsize {}\n", s.size);
    if (s.flags & kSetEval) out += (s.flags & kSetTimeout) ? "\t\tflags dynamic,timeout\n" : "\t\tflags dynamic\n";
    if (s.timeoutMs) out += fmt::format("\t\ttimeout {}s\n", s.timeoutMs / 1000);
    if (s.flags & (kSetTimeout | kSetEval))
      out += fmt::format("\t\tflags {}\n", (s.flags & kSetEval) && (s.flags & kSetTimeout) ? "dynamic,timeout"
                                            : (s.flags & kSetEval)                          ? "dynamic"
                                                                                            : "timeout");
    if (s.timeoutMs) out += fmt::format("\t\ttimeout {}s\n", s.timeoutMs / 1000);
    if (!s.comment.empty()) out += fmt::format("\t\tcomment \"{}\"\n", s.comment);
    for (const auto& [key, e] : ss.elements) {
      out += "\t\telement " + formatValue(s.key, key);
      if (e.verdict) out += " : " + verdictText(*e.verdict);
      if (!e.data.empty()) out += " : " + formatValue(s.data, e.data);
      if (!e.comment.empty()) out += fmt::format(" comment \"{}\"", e.comment);
      out += "\n";
    }
    out += "\t}\n";
  }
  for (const auto& [cname, cs] : t->chains) {
    out += fmt::format("\tchain {} {{\n", cname);
    if (cs.chain.base)
      out += fmt::format("\t\ttype {} hook {} priority {}; policy accept;\n", cs.chain.base->type,
                         hookName(cs.chain.base->hook), cs.chain.base->priority);
    for (const auto& r : cs.rules) {
      out += "\t\t" + r.text;
      if (!r.comment.empty()) out += fmt::format(" comment \"{}\"", r.comment);
      out += "\n";
    }
    out += "\t}\n";
  }
  out += "}\n";
  return out;
}

std::string FakeBackend::dump() const {
  std::string out;
  for (const auto& [key, _] : tables_) out += dumpTable(key.first, key.second);
  return out;
}

}  // namespace sluice::nft
