#include <arpa/inet.h>

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "sluice/ip.h"
#include "sluice/nft/objects.h"
#include "sluice/nft/rule_builder.h"
#include "sluice/nft/transaction.h"

namespace sluice::nft {

const char* familyName(Family f) {
  switch (f) {
    case Family::kIPv4: return "ip";
    case Family::kIPv6: return "ip6";
    case Family::kInet: return "inet";
  }
  return "?";
}

const char* hookName(Hook h) {
  switch (h) {
    case Hook::kPrerouting: return "prerouting";
    case Hook::kInput: return "input";
    case Hook::kForward: return "forward";
    case Hook::kOutput: return "output";
    case Hook::kPostrouting: return "postrouting";
  }
  return "?";
}

uint32_t dataTypeSize(DataType t) {
  switch (t) {
    case DataType::kVerdict: return 0;
    case DataType::kInteger: return 4;
    case DataType::kIPv4Addr: return 4;
    case DataType::kIPv6Addr: return 16;
    case DataType::kInetProto: return 1;
    case DataType::kInetService: return 2;
    case DataType::kMark: return 4;
  }
  return 0;
}

uint32_t dataTypeRegSize(DataType t) { return (dataTypeSize(t) + 3) & ~3u; }

const char* dataTypeName(DataType t) {
  switch (t) {
    case DataType::kVerdict: return "verdict";
    case DataType::kInteger: return "integer";
    case DataType::kIPv4Addr: return "ipv4_addr";
    case DataType::kIPv6Addr: return "ipv6_addr";
    case DataType::kInetProto: return "inet_proto";
    case DataType::kInetService: return "inet_service";
    case DataType::kMark: return "mark";
  }
  return "?";
}

namespace {
uint32_t concatLen(const std::vector<DataType>& types) {
  if (types.size() == 1) return dataTypeSize(types[0]);
  uint32_t n = 0;
  for (auto t : types) n += dataTypeRegSize(t);
  return n;
}
}  // namespace

uint32_t Set::keyLen() const { return concatLen(key); }
uint32_t Set::dataLen() const { return isVerdictMap() ? 0 : concatLen(data); }

namespace {
std::string formatField(DataType t, const uint8_t* p) {
  switch (t) {
    case DataType::kIPv4Addr: return IPAddress::fromV4Bytes(p).toString();
    case DataType::kIPv6Addr: return IPAddress::fromV6Bytes(p).toString();
    case DataType::kInetProto:
      switch (p[0]) {
        case 6: return "tcp";
        case 17: return "udp";
        case 132: return "sctp";
        default: return std::to_string(p[0]);
      }
    case DataType::kInetService: return std::to_string((p[0] << 8) | p[1]);
    case DataType::kInteger:
    case DataType::kMark: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return std::to_string(v);
    }
    case DataType::kVerdict: return "?";
  }
  return "?";
}
}  // namespace

std::string formatValue(const std::vector<DataType>& types, const Bytes& b) {
  std::string out;
  size_t off = 0;
  for (size_t i = 0; i < types.size(); ++i) {
    if (off + dataTypeSize(types[i]) > b.size()) return "<malformed>";
    if (i) out += " . ";
    out += formatField(types[i], b.data() + off);
    off += types.size() == 1 ? dataTypeSize(types[i]) : dataTypeRegSize(types[i]);
  }
  return out;
}

Bytes::Bytes(size_t n, uint8_t value) {
  if (n > kCapacity) throw std::length_error("nft::Bytes: value longer than kCapacity");
  std::fill_n(bytes_.begin(), n, value);
  size_ = uint8_t(n);
}

Bytes& Bytes::append(const uint8_t* p, size_t n) {
  if (n > kCapacity - size_) throw std::length_error("nft::Bytes: value longer than kCapacity");
  std::copy_n(p, n, bytes_.begin() + size_);
  size_ = uint8_t(size_ + n);
  return *this;
}

KeyBuilder& KeyBuilder::ipv4(const uint8_t* b) {
  b_.append(b, 4);
  return *this;
}
KeyBuilder& KeyBuilder::ipv6(const uint8_t* b) {
  b_.append(b, 16);
  return *this;
}
KeyBuilder& KeyBuilder::proto(uint8_t p) {
  b_.append({p, 0, 0, 0});
  return *this;
}
KeyBuilder& KeyBuilder::port(uint16_t p) {
  b_.append({uint8_t(p >> 8), uint8_t(p & 0xff), 0, 0});
  return *this;
}
KeyBuilder& KeyBuilder::u32host(uint32_t v) {
  uint8_t raw[4];
  std::memcpy(raw, &v, 4);
  b_.append(raw, 4);
  return *this;
}

// --- Transaction -------------------------------------------------------------------------

const char* verbName(Verb v) {
  switch (v) {
    case Verb::kAdd: return "add";
    case Verb::kCreate: return "create";
    case Verb::kInsert: return "insert";
    case Verb::kReplace: return "replace";
    case Verb::kDelete: return "delete";
    case Verb::kDestroy: return "destroy";
    case Verb::kFlush: return "flush";
    case Verb::kReset: return "reset";
  }
  return "?";
}

void Transaction::append(Transaction&& other) {
  ops_.insert(ops_.end(), std::make_move_iterator(other.ops_.begin()), std::make_move_iterator(other.ops_.end()));
  other.ops_.clear();
}

size_t Transaction::elementCount() const {
  size_t n = 0;
  for (const auto& op : ops_) {
    if (auto* e = std::get_if<Elements>(&op.object)) n += e->elements.size();
    if (auto* r = std::get_if<Rule>(&op.object))
      for (const auto& s : r->anonSets) n += s.elements.size();
  }
  return n;
}

std::string Transaction::describe(const Operation& op) {
  const char* verb = verbName(op.verb);
  return std::visit(
      [&](const auto& o) -> std::string {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, Table>) {
          return fmt::format("{} table {} {}", verb, familyName(o.ref.family), o.ref.name);
        } else if constexpr (std::is_same_v<T, Chain>) {
          return fmt::format("{} chain {} {} {}", verb, familyName(o.table.family), o.table.name, o.name);
        } else if constexpr (std::is_same_v<T, Rule>) {
          std::string s = fmt::format("{} rule {} {} {}", verb, familyName(o.table.family), o.table.name, o.chain);
          if (o.handle) s += fmt::format(" handle {}", *o.handle);
          if (!o.text.empty()) s += " " + o.text;
          return s;
        } else if constexpr (std::is_same_v<T, Set>) {
          return fmt::format("{} {} {} {} {}", verb, o.isMap() ? "map" : "set", familyName(o.table.family),
                             o.table.name, o.name);
        } else if constexpr (std::is_same_v<T, Elements>) {
          if (op.verb == Verb::kFlush)
            return fmt::format("flush set {} {} {}", familyName(o.table.family), o.table.name, o.set);
          return fmt::format("{} element {} {} {} ({} elements)", verb, familyName(o.table.family), o.table.name,
                             o.set, o.elements.size());
        } else {
          return fmt::format("{} counter {} {} {}", verb, familyName(o.table.family), o.table.name, o.name);
        }
      },
      op.object);
}

std::string Transaction::describe() const {
  std::string out;
  for (const auto& op : ops_) {
    out += describe(op);
    out += '\n';
  }
  return out;
}

}  // namespace sluice::nft
