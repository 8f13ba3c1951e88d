// sluice/nft/objects.h — nftables objects as plain values: tables, chains, rules (as the
// expression list the kernel runs), sets/maps and their elements, counters.
//
// Expressions mirror the kernel's nf_tables expressions one to one (payload, meta, cmp, …) so
// that the netlink encoder is a direct translation, the fake backend can check references the
// way the kernel does, and a packet tracer can run them. Each rule also carries the text `nft`
// prints for it, produced by the RuleBuilder together with the expressions.
#pragma once

#include <algorithm>
#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace sluice::nft {

// A value as nftables holds it: a set key, a map's data, an operand of cmp or bitwise. The bytes
// live inline, so the hundred thousand elements of a large table cost no allocation of their
// own. The interface is the part of std::vector<uint8_t> that values need, with the same
// (lexicographic) order.
class Bytes {
 public:
  // The longest value sluice's layout builds is a concatenation of two IPv6 addresses (32
  // bytes). The kernel allows up to NFT_DATA_VALUE_MAXLEN (64), but every element of every set
  // carries a key and data of this capacity, so it is not reserved for values nobody builds.
  static constexpr size_t kCapacity = 32;

  Bytes() = default;
  Bytes(std::initializer_list<uint8_t> bytes) { append(bytes.begin(), bytes.size()); }
  Bytes(const uint8_t* first, const uint8_t* last) { append(first, size_t(last - first)); }
  explicit Bytes(size_t n, uint8_t value = 0);

  const uint8_t* data() const { return bytes_.data(); }
  uint8_t* data() { return bytes_.data(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const uint8_t* begin() const { return data(); }
  const uint8_t* end() const { return data() + size_; }
  uint8_t* begin() { return data(); }
  uint8_t* end() { return data() + size_; }
  uint8_t operator[](size_t i) const { return bytes_[i]; }
  uint8_t& operator[](size_t i) { return bytes_[i]; }

  // Growing past kCapacity is a programming error and throws std::length_error, as a vector
  // does past its max_size().
  Bytes& append(const uint8_t* p, size_t n);
  Bytes& append(std::initializer_list<uint8_t> bytes) { return append(bytes.begin(), bytes.size()); }
  void push_back(uint8_t b) { append(&b, 1); }
  void pop_back() { --size_; }

  friend bool operator==(const Bytes& a, const Bytes& b) { return std::equal(a.begin(), a.end(), b.begin(), b.end()); }
  friend std::strong_ordering operator<=>(const Bytes& a, const Bytes& b) {
    return std::lexicographical_compare_three_way(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  uint8_t size_ = 0;
  std::array<uint8_t, kCapacity> bytes_{};
};

enum class Family : uint8_t { kIPv4 = 2 /*NFPROTO_IPV4*/, kIPv6 = 10 /*NFPROTO_IPV6*/, kInet = 1 };
const char* familyName(Family f);  // "ip", "ip6", "inet"

// Registers as nft allocates them: 16-byte NFT_REG_1.. for a single value, 4-byte NFT_REG32_xx
// for the later fields of a concatenation.
inline constexpr uint32_t kRegVerdict = 0;
inline constexpr uint32_t kReg1 = 1;
inline constexpr uint32_t kReg32_00 = 8;  // NFT_REG32_00 aliases the first word of NFT_REG_1

enum class VerdictCode : int32_t { kAccept = 1, kDrop = 0, kReturn = -5, kJump = -3, kGoto = -4, kContinue = -1 };

struct Verdict {
  VerdictCode code = VerdictCode::kAccept;
  std::string chain;  // for jump/goto
  bool operator==(const Verdict&) const = default;
};

// --- expressions -------------------------------------------------------------------------
enum class PayloadBase : uint8_t { kLink = 0, kNetwork = 1, kTransport = 2 };
struct Payload { PayloadBase base; uint32_t offset; uint32_t len; uint32_t dreg; bool operator==(const Payload&) const = default; };
enum class MetaKey : uint32_t { kLen = 0, kProtocol = 1, kMark = 3, kIif = 4, kOif = 5, kNfproto = 15, kL4proto = 16 };
struct Meta { MetaKey key; uint32_t dreg; bool operator==(const Meta&) const = default; };
struct MetaSet { MetaKey key; uint32_t sreg; bool operator==(const MetaSet&) const = default; };
enum class CmpOp : uint32_t { kEq = 0, kNeq = 1, kLt = 2, kLte = 3, kGt = 4, kGte = 5 };
struct Cmp { uint32_t sreg; CmpOp op; Bytes data; bool operator==(const Cmp&) const = default; };
struct Bitwise { uint32_t sreg; uint32_t dreg; uint32_t len; Bytes mask; Bytes xorv; bool operator==(const Bitwise&) const = default; };
// Set lookup. `set` names a table set; `anonSet` >= 0 refers to the rule's own anonymous set.
struct Lookup { uint32_t sreg; std::string set; int anonSet = -1; std::optional<uint32_t> dreg; bool invert = false; bool operator==(const Lookup&) const = default; };
struct Immediate { uint32_t dreg; Bytes data; Verdict verdict; bool operator==(const Immediate&) const = default; };
struct Numgen { uint32_t dreg; uint32_t mod; uint32_t offset = 0; bool operator==(const Numgen&) const = default; };  // random
enum class CtKey : uint32_t { kState = 0, kStatus = 2, kMark = 3 };
struct Ct { CtKey key; uint32_t dreg; bool operator==(const Ct&) const = default; };
enum class NatType : uint32_t { kSnat = 0, kDnat = 1 };
inline constexpr uint32_t kNatRangeProtoRandomFully = 0x10;  // NF_NAT_RANGE_PROTO_RANDOM_FULLY
struct Nat { NatType type; Family family; uint32_t regAddr; uint32_t regProto; uint32_t flags = 0; bool operator==(const Nat&) const = default; };
struct Masq { uint32_t flags; bool operator==(const Masq&) const = default; };
struct Reject { uint32_t type; uint8_t code; bool operator==(const Reject&) const = default; };
struct Counter { bool operator==(const Counter&) const = default; };
// `update @set { <sreg> }`: adds the key to a dynamic set, or refreshes its timeout if present.
struct Dynset { uint32_t sregKey; std::string set; bool operator==(const Dynset&) const = default; };
// `fib saddr type`: the address type (RTN_LOCAL = 2, host order) of the packet's source address.
inline constexpr uint32_t kFibResultAddrType = 3, kFibFlagSaddr = 1, kRtnLocal = 2;
struct Fib { uint32_t dreg; uint32_t result; uint32_t flags; bool operator==(const Fib&) const = default; };

using Expr = std::variant<Payload, Meta, MetaSet, Cmp, Bitwise, Lookup, Immediate, Numgen, Ct, Nat, Masq, Reject, Counter,
                          Dynset, Fib>;

// --- objects -----------------------------------------------------------------------------
struct TableRef {
  Family family = Family::kIPv4;
  std::string name;
  bool operator==(const TableRef&) const = default;
};

struct Table {
  TableRef ref;
  std::string comment;
  bool operator==(const Table&) const = default;
};

enum class Hook : uint32_t { kPrerouting = 0, kInput = 1, kForward = 2, kOutput = 3, kPostrouting = 4 };
const char* hookName(Hook h);

struct BaseHook {
  std::string type;  // "filter" / "nat"
  Hook hook;
  int32_t priority;
  bool operator==(const BaseHook&) const = default;
};

struct Chain {
  TableRef table;
  std::string name;
  std::optional<BaseHook> base;  // set for base chains
  bool operator==(const Chain&) const = default;
};

// Data types as nft numbers them (src/datatype.h); the set's key/data type is their
// concatenation, 6 bits per field.
enum class DataType : uint32_t {
  kVerdict = 1, kInteger = 4, kIPv4Addr = 7, kIPv6Addr = 8, kInetProto = 12, kInetService = 13, kMark = 19,
};
uint32_t dataTypeSize(DataType t);            // bytes of the value (verdict: 0)
uint32_t dataTypeRegSize(DataType t);         // bytes in a concatenation (rounded up to 4)
const char* dataTypeName(DataType t);         // "ipv4_addr", "inet_proto" ...
// A key or data value as nft prints it: "198.18.0.1 . tcp . 80"; "<malformed>" if too short.
std::string formatValue(const std::vector<DataType>& types, const Bytes& value);

inline constexpr uint32_t kSetAnonymous = 0x1, kSetConstant = 0x2, kSetInterval = 0x4, kSetMap = 0x8, kSetTimeout = 0x10,
                          kSetEval = 0x20 /* "dynamic": updated from the packet path */;

struct Element {
  Bytes key;              // concatenated, every field padded to 4 bytes
  Bytes data;             // for data maps
  std::optional<Verdict> verdict;  // for verdict maps
  std::string comment;
  bool operator==(const Element&) const = default;
};

// How nft shows a set declared with `typeof` (needed where the key or data type alone does not
// tell nft how to print it, e.g. a bare integer key).
enum class Typeof : uint8_t {
  kNone,
  kNumgen,        // typeof numgen random mod 1
  kDaddrThDport,  // typeof ip daddr . th dport (ip6 daddr in an ip6 table)
  kNumgenPair,    // typeof numgen random mod 1 . numgen random mod 1 (two integers)
};

struct Set {
  TableRef table;
  std::string name;                  // for anonymous sets: assigned by the kernel ("__map%d")
  std::vector<DataType> key;
  std::vector<DataType> data;        // empty: plain set; {kVerdict}: verdict map
  uint32_t flags = 0;                // kSet* (kSetMap is derived from `data` by the encoders)
  std::string comment;
  std::vector<Element> elements;     // only for anonymous sets, which are created with the rule
  bool isMap() const { return !data.empty(); }
  bool isVerdictMap() const { return data.size() == 1 && data[0] == DataType::kVerdict; }
  Typeof typeofKey = Typeof::kNone;
  Typeof typeofData = Typeof::kNone;
  // NFTA_SET_DESC_SIZE. For a named set the kernel treats it as the maximum element count
  // (ENFILE beyond it) and sizes its hash table from it.
  uint32_t size = 0;
  // NFTA_SET_TIMEOUT in milliseconds (with kSetTimeout): the lifetime of elements that dynset
  // expressions add or refresh.
  uint64_t timeoutMs = 0;
  uint32_t keyLen() const;
  uint32_t dataLen() const;
  bool operator==(const Set&) const = default;
};

struct Rule {
  TableRef table;
  std::string chain;
  std::vector<Expr> exprs;
  std::vector<Set> anonSets;           // anonymous sets bound to this rule (Lookup::anonSet)
  std::string text;                    // how `nft list` prints it
  std::string comment;
  std::optional<uint64_t> handle;      // replace / delete by handle; insert/add "position"
  bool operator==(const Rule&) const = default;
};

// Element batch of one set (add/create/delete/destroy), or the whole set (flush).
struct Elements {
  TableRef table;
  std::string set;
  std::vector<Element> elements;
  bool operator==(const Elements&) const = default;
};

// A named counter object (the only stateful object sluice uses; `reset` applies to it).
struct CounterObject {
  TableRef table;
  std::string name;
  bool operator==(const CounterObject&) const = default;
};

using Object = std::variant<Table, Chain, Rule, Set, Elements, CounterObject>;

// Key encoding helpers: each field goes into a 4-byte aligned slot as nft's registers hold it.
class KeyBuilder {
 public:
  KeyBuilder& ipv4(const uint8_t* b);
  KeyBuilder& ipv6(const uint8_t* b);
  KeyBuilder& proto(uint8_t p);
  KeyBuilder& port(uint16_t p);     // network byte order
  KeyBuilder& u32host(uint32_t v);  // integer keys such as numgen results: host byte order
  Bytes take() const { return b_; }

 private:
  Bytes b_;
};

}  // namespace sluice::nft
