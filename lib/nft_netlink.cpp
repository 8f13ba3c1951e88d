// The kernel backend: a Transaction becomes one nfnetlink batch on libnftnl + libmnl.
//
// Shape of an apply():
//   BATCH_BEGIN, one message per object (several for large element lists), BATCH_END,
//   all in one buffer sent with one sendmsg(). nfnetlink processes the whole batch
//   synchronously inside that sendmsg (commit or abort), so when it returns every reply is
//   already queued on the socket; we drain them all before returning.
#include <libmnl/libmnl.h>
#include <libnftnl/batch.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/object.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <endian.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>

#include <fmt/format.h>

#include "sluice/netns.h"
#include "sluice/nft/backend.h"

namespace sluice::nft {

namespace {

// Message types newer than the installed UAPI headers (kernel 6.3 added DESTROY*).
constexpr uint16_t kMsgDestroyTable = 26;
constexpr uint16_t kMsgDestroyChain = 27;
constexpr uint16_t kMsgDestroyRule = 28;
constexpr uint16_t kMsgDestroySet = 29;
constexpr uint16_t kMsgDestroySetElem = 30;
constexpr uint16_t kMsgDestroyObj = 31;
constexpr uint16_t kNoMsg = 0xffff;  // verb not valid for the object (NEWTABLE is 0)

// A netlink attribute's length is 16 bits, so one NFTA_SET_ELEM_LIST_ELEMENTS nest must stay
// below 64 KiB. Element lists are cut into messages of at most this many estimated bytes.
constexpr size_t kMaxElementBytesPerMessage = 48 * 1024;
// Largest single message we build (a rule with many expressions, a chunk of elements).
constexpr size_t kMaxMessageBytes = 128 * 1024;
// Receive-buffer budget per expected reply (skb truesize of an ACK, with headroom).
constexpr size_t kAckBudget = 1024;

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
void freeTable(nftnl_table* t) { nftnl_table_free(t); }
void freeChain(nftnl_chain* c) { nftnl_chain_free(c); }
void freeRule(nftnl_rule* r) { nftnl_rule_free(r); }
void freeSet(nftnl_set* s) { nftnl_set_free(s); }
void freeObj(nftnl_obj* o) { nftnl_obj_free(o); }
void freeUdata(nftnl_udata_buf* b) { nftnl_udata_buf_free(b); }
using TablePtr = std::unique_ptr<nftnl_table, Deleter<nftnl_table, freeTable>>;
using ChainPtr = std::unique_ptr<nftnl_chain, Deleter<nftnl_chain, freeChain>>;
using RulePtr = std::unique_ptr<nftnl_rule, Deleter<nftnl_rule, freeRule>>;
using SetPtr = std::unique_ptr<nftnl_set, Deleter<nftnl_set, freeSet>>;
using ObjPtr = std::unique_ptr<nftnl_obj, Deleter<nftnl_obj, freeObj>>;
using UdataPtr = std::unique_ptr<nftnl_udata_buf, Deleter<nftnl_udata_buf, freeUdata>>;

uint32_t concatTypeId(const std::vector<DataType>& types) {
  uint32_t id = 0;
  for (auto t : types) id = (id << 6) | uint32_t(t);  // nft's TYPE_BITS = 6
  return id;
}

// nft's byte-order tags in set user data (src/datatype.h enum byteorder).
constexpr uint32_t kByteorderInvalid = 0, kByteorderHost = 1, kByteorderBig = 2;

uint32_t byteorderOf(const std::vector<DataType>& types) {
  if (types.size() != 1) return kByteorderInvalid;
  switch (types[0]) {
    case DataType::kIPv4Addr:
    case DataType::kIPv6Addr:
    case DataType::kInetService:
      return kByteorderBig;
    case DataType::kVerdict:
      return kByteorderInvalid;
    default:
      return kByteorderHost;
  }
}

// `typeof` descriptions as nft 1.0.6 stores them: the expression type (src/expression.h
// enum expr_types: 7 payload, 13 concat, 23 numgen) and its attributes, nested. Observed with
// `nft --debug=mnl` for `typeof numgen random mod 1 : ip daddr . th dport`.
constexpr uint32_t kExprPayload = 7, kExprConcat = 13, kExprNumgen = 23;

void putPayloadTypeof(nftnl_udata_buf* buf, uint8_t index, uint32_t desc, uint32_t field) {
  auto* sub = nftnl_udata_nest_start(buf, index);
  nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprPayload);
  auto* data = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
  nftnl_udata_put_u32(buf, 0, desc);   // protocol description (proto_ip 12, proto_ip6 13, proto_th 11)
  nftnl_udata_put_u32(buf, 1, field);  // template field (ip daddr 12, ip6 daddr 8, th dport 2)
  nftnl_udata_nest_end(buf, data);
  nftnl_udata_nest_end(buf, sub);
}

// A `numgen random mod 1` typeof: the expression type and, nested, its type, modulus, offset.
void putNumgenTypeof(nftnl_udata_buf* buf) {
  nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprNumgen);
  auto* data = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
  nftnl_udata_put_u32(buf, 0, NFT_NG_RANDOM);
  nftnl_udata_put_u32(buf, 1, 1);  // mod
  nftnl_udata_put_u32(buf, 2, 0);  // offset
  nftnl_udata_nest_end(buf, data);
}

void putTypeof(nftnl_udata_buf* buf, uint8_t attr, Typeof t, const std::vector<DataType>& types, Family family) {
  auto* nest = nftnl_udata_nest_start(buf, attr);
  switch (t) {
    case Typeof::kNumgen:
      putNumgenTypeof(buf);
      break;
    case Typeof::kNumgenPair: {
      nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprConcat);
      auto* data = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
      for (uint8_t i = 0; i < 2; ++i) {
        auto* sub = nftnl_udata_nest_start(buf, i);
        putNumgenTypeof(buf);
        nftnl_udata_nest_end(buf, sub);
      }
      nftnl_udata_nest_end(buf, data);
      break;
    }
    case Typeof::kDaddrThDport: {
      nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprConcat);
      auto* data = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
      if (family == Family::kIPv6)
        putPayloadTypeof(buf, 0, 13, 8);  // ip6 daddr
      else
        putPayloadTypeof(buf, 0, 12, 12);  // ip daddr
      putPayloadTypeof(buf, 1, 11, 2);  // th dport
      nftnl_udata_nest_end(buf, data);
      break;
    }
    case Typeof::kNone: {
      // A `type a . b` concatenation: the concat marker without sub-expressions.
      (void)types;
      nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprConcat);
      auto* data = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
      nftnl_udata_nest_end(buf, data);
      break;
    }
  }
  nftnl_udata_nest_end(buf, nest);
}

// The set user data nft 1.0.6 writes and needs to print the set: key byte order, for maps the
// data byte order, the key's typeof (or, for a `type a . b` key, the concat marker), the data's
// typeof, for maps the "data is not an interval" flag, then the comment. Observed with
// `nft --debug=mnl`.
UdataPtr setUserData(const Set& s) {
  UdataPtr buf(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
  nftnl_udata_put_u32(buf.get(), NFTNL_UDATA_SET_KEYBYTEORDER, byteorderOf(s.key));
  if (s.isMap()) nftnl_udata_put_u32(buf.get(), NFTNL_UDATA_SET_DATABYTEORDER, byteorderOf(s.data));
  if (s.typeofKey != Typeof::kNone || s.key.size() > 1)
    putTypeof(buf.get(), NFTNL_UDATA_SET_KEY_TYPEOF, s.typeofKey, s.key, s.table.family);
  if (s.typeofData != Typeof::kNone) putTypeof(buf.get(), NFTNL_UDATA_SET_DATA_TYPEOF, s.typeofData, s.data, s.table.family);
  if (s.isMap()) nftnl_udata_put_u32(buf.get(), NFTNL_UDATA_SET_DATA_INTERVAL, 0);
  if (!s.comment.empty()) nftnl_udata_put_strz(buf.get(), NFTNL_UDATA_SET_COMMENT, s.comment.c_str());
  return buf;
}

UdataPtr commentUserData(uint8_t type, const std::string& comment) {
  UdataPtr buf(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
  nftnl_udata_put_strz(buf.get(), type, comment.c_str());
  return buf;
}

uint16_t nlType(uint16_t msg) { return uint16_t((NFNL_SUBSYS_NFTABLES << 8) | msg); }

struct VerbMsg {
  uint16_t msg;
  uint16_t flags;
};

// Message type and flags for a verb on a table/chain/set/element/object.
// new* = the NEW message type, del* = DEL, destroy* = DESTROY (kernel ≥ 6.3).
VerbMsg verbMsg(Verb v, uint16_t newMsg, uint16_t delMsg, uint16_t destroyMsg) {
  switch (v) {
    case Verb::kAdd: return {newMsg, NLM_F_CREATE};
    case Verb::kCreate: return {newMsg, NLM_F_CREATE | NLM_F_EXCL};
    case Verb::kDelete: return {delMsg, 0};
    case Verb::kDestroy: return {destroyMsg, 0};
    default: return {kNoMsg, 0};
  }
}

class BatchWriter {
 public:
  // Writes into `out` from its start. `out` is only ever grown, never shrunk or cleared, so a
  // buffer reused across batches is not zero-filled again (resize value-initialises).
  BatchWriter(std::vector<uint8_t>& out, uint32_t seq) : out_(out), seq_(seq) {}

  // Starts a message for operation `op`; returns the header to fill in.
  nlmsghdr* begin(uint16_t msg, Family family, uint16_t flags, size_t op) {
    reserve();
    // NLM_F_ECHO on the first command makes the kernel unicast the commit's NFT_MSG_NEWGEN
    // (with NFTA_GEN_ID) back to this socket: nf_tables_gen_notify() reports to the sender
    // when nlmsg_hdr() of the batch skb, i.e. the first message after BATCH_BEGIN, asks for
    // it. It also echoes that one message's own notification, which costs little.
    if (seqToOp_.empty()) flags |= NLM_F_ECHO;
    auto* nlh = nftnl_nlmsg_build_hdr(reinterpret_cast<char*>(out_.data() + used_), nlType(msg),
                                      uint16_t(family), uint16_t(flags | NLM_F_ACK), seq_);
    seqToOp_.push_back(op);
    ++seq_;
    return nlh;
  }
  void end(nlmsghdr* nlh) {
    if (messages_ == 0) firstBytes_ = nlh->nlmsg_len;
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
    ++messages_;
  }
  void batchBegin() {
    reserve();
    auto* nlh = nftnl_batch_begin(reinterpret_cast<char*>(out_.data() + used_), seq_++);
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
  }
  void batchEnd() {
    reserve();
    auto* nlh = nftnl_batch_end(reinterpret_cast<char*>(out_.data() + used_), seq_++);
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
  }
  uint32_t nextSetId() { return ++setId_; }
  size_t bytes() const { return used_; }
  size_t messages() const { return messages_; }
  size_t firstMessageBytes() const { return firstBytes_; }
  const std::vector<size_t>& seqToOp() const { return seqToOp_; }

 private:
  // Builders write through raw pointers without bounds checks, so there is always room for
  // the largest message we produce past the current end.
  void reserve() {
    if (out_.size() < used_ + kMaxMessageBytes) out_.resize(std::max(out_.size() * 2, used_ + kMaxMessageBytes));
  }
  std::vector<uint8_t>& out_;
  size_t used_ = 0;
  uint32_t seq_;
  uint32_t setId_ = 0;
  size_t messages_ = 0;
  size_t firstBytes_ = 0;
  std::vector<size_t> seqToOp_;  // index = seq - first command seq
};

nftnl_expr* encodeExpr(const Expr& e, const std::vector<std::pair<std::string, uint32_t>>& anon) {
  return std::visit(
      [&](const auto& x) -> nftnl_expr* {
        using T = std::decay_t<decltype(x)>;
        nftnl_expr* ne = nullptr;
        if constexpr (std::is_same_v<T, Payload>) {
          ne = nftnl_expr_alloc("payload");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_PAYLOAD_DREG, x.dreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_PAYLOAD_BASE, uint32_t(x.base));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_PAYLOAD_OFFSET, x.offset);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_PAYLOAD_LEN, x.len);
        } else if constexpr (std::is_same_v<T, Meta>) {
          ne = nftnl_expr_alloc("meta");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_META_KEY, uint32_t(x.key));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_META_DREG, x.dreg);
        } else if constexpr (std::is_same_v<T, MetaSet>) {
          ne = nftnl_expr_alloc("meta");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_META_KEY, uint32_t(x.key));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_META_SREG, x.sreg);
        } else if constexpr (std::is_same_v<T, Cmp>) {
          ne = nftnl_expr_alloc("cmp");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_CMP_SREG, x.sreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_CMP_OP, uint32_t(x.op));
          nftnl_expr_set(ne, NFTNL_EXPR_CMP_DATA, x.data.data(), uint32_t(x.data.size()));
        } else if constexpr (std::is_same_v<T, Bitwise>) {
          ne = nftnl_expr_alloc("bitwise");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_BITWISE_SREG, x.sreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_BITWISE_DREG, x.dreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_BITWISE_LEN, x.len);
          nftnl_expr_set(ne, NFTNL_EXPR_BITWISE_MASK, x.mask.data(), uint32_t(x.mask.size()));
          nftnl_expr_set(ne, NFTNL_EXPR_BITWISE_XOR, x.xorv.data(), uint32_t(x.xorv.size()));
        } else if constexpr (std::is_same_v<T, Lookup>) {
          ne = nftnl_expr_alloc("lookup");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_LOOKUP_SREG, x.sreg);
          if (x.dreg) nftnl_expr_set_u32(ne, NFTNL_EXPR_LOOKUP_DREG, *x.dreg);
          if (x.anonSet >= 0) {
            // Anonymous sets are named and referenced by their in-batch ID; the kernel
            // allocates the real name ("__map0"…) at commit.
            const auto& [name, id] = anon.at(size_t(x.anonSet));
            nftnl_expr_set_str(ne, NFTNL_EXPR_LOOKUP_SET, name.c_str());
            nftnl_expr_set_u32(ne, NFTNL_EXPR_LOOKUP_SET_ID, id);
          } else {
            nftnl_expr_set_str(ne, NFTNL_EXPR_LOOKUP_SET, x.set.c_str());
          }
          if (x.invert) nftnl_expr_set_u32(ne, NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        } else if constexpr (std::is_same_v<T, Immediate>) {
          ne = nftnl_expr_alloc("immediate");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_IMM_DREG, x.dreg);
          if (x.dreg == kRegVerdict) {
            nftnl_expr_set_u32(ne, NFTNL_EXPR_IMM_VERDICT, uint32_t(int32_t(x.verdict.code)));
            if (!x.verdict.chain.empty()) nftnl_expr_set_str(ne, NFTNL_EXPR_IMM_CHAIN, x.verdict.chain.c_str());
          } else {
            nftnl_expr_set(ne, NFTNL_EXPR_IMM_DATA, x.data.data(), uint32_t(x.data.size()));
          }
        } else if constexpr (std::is_same_v<T, Numgen>) {
          ne = nftnl_expr_alloc("numgen");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NG_DREG, x.dreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NG_MODULUS, x.mod);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM);
          if (x.offset) nftnl_expr_set_u32(ne, NFTNL_EXPR_NG_OFFSET, x.offset);
        } else if constexpr (std::is_same_v<T, Ct>) {
          ne = nftnl_expr_alloc("ct");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_CT_KEY, uint32_t(x.key));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_CT_DREG, x.dreg);
        } else if constexpr (std::is_same_v<T, Nat>) {
          ne = nftnl_expr_alloc("nat");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NAT_TYPE, uint32_t(x.type));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NAT_FAMILY, uint32_t(x.family));
          nftnl_expr_set_u32(ne, NFTNL_EXPR_NAT_REG_ADDR_MIN, x.regAddr);
          if (x.regProto) nftnl_expr_set_u32(ne, NFTNL_EXPR_NAT_REG_PROTO_MIN, x.regProto);
          if (x.flags) nftnl_expr_set_u32(ne, NFTNL_EXPR_NAT_FLAGS, x.flags);
        } else if constexpr (std::is_same_v<T, Masq>) {
          ne = nftnl_expr_alloc("masq");
          if (x.flags) nftnl_expr_set_u32(ne, NFTNL_EXPR_MASQ_FLAGS, x.flags);
        } else if constexpr (std::is_same_v<T, Reject>) {
          ne = nftnl_expr_alloc("reject");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_REJECT_TYPE, x.type);
          nftnl_expr_set_u8(ne, NFTNL_EXPR_REJECT_CODE, x.code);
        } else if constexpr (std::is_same_v<T, Dynset>) {
          ne = nftnl_expr_alloc("dynset");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_DYNSET_SREG_KEY, x.sregKey);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
          nftnl_expr_set_str(ne, NFTNL_EXPR_DYNSET_SET_NAME, x.set.c_str());
        } else if constexpr (std::is_same_v<T, Fib>) {
          ne = nftnl_expr_alloc("fib");
          nftnl_expr_set_u32(ne, NFTNL_EXPR_FIB_DREG, x.dreg);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_FIB_RESULT, x.result);
          nftnl_expr_set_u32(ne, NFTNL_EXPR_FIB_FLAGS, x.flags);
        } else {
          static_assert(std::is_same_v<T, Counter>);
          ne = nftnl_expr_alloc("counter");
        }
        return ne;
      },
      e);
}

size_t estimateElementBytes(const Element& e) {
  size_t n = 16 + NLA_ALIGN(e.key.size()) + 8;
  if (!e.data.empty()) n += 12 + NLA_ALIGN(e.data.size());
  if (e.verdict) n += 28 + NLA_ALIGN(e.verdict->chain.size() + 1);
  if (!e.comment.empty()) n += 8 + NLA_ALIGN(e.comment.size() + 3);
  return n;
}

nftnl_set_elem* encodeElement(const Element& e) {
  auto* ne = nftnl_set_elem_alloc();
  nftnl_set_elem_set(ne, NFTNL_SET_ELEM_KEY, e.key.data(), uint32_t(e.key.size()));
  if (e.verdict) {
    nftnl_set_elem_set_u32(ne, NFTNL_SET_ELEM_VERDICT, uint32_t(int32_t(e.verdict->code)));
    if (!e.verdict->chain.empty()) nftnl_set_elem_set_str(ne, NFTNL_SET_ELEM_CHAIN, e.verdict->chain.c_str());
  } else if (!e.data.empty()) {
    nftnl_set_elem_set(ne, NFTNL_SET_ELEM_DATA, e.data.data(), uint32_t(e.data.size()));
  }
  if (!e.comment.empty()) {
    auto ud = commentUserData(NFTNL_UDATA_SET_ELEM_COMMENT, e.comment);
    nftnl_set_elem_set(ne, NFTNL_SET_ELEM_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
  }
  return ne;
}

// Writes element messages for `elements` of set `name` (or in-batch set `setId`), splitting so
// that no message's element nest approaches the 64 KiB attribute limit.
void writeElements(BatchWriter& w, size_t op, VerbMsg vm, const TableRef& table, const std::string& name,
                   uint32_t setId, const std::vector<Element>& elements) {
  size_t i = 0;
  do {
    SetPtr s(nftnl_set_alloc());
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.name.c_str());
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
    nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, uint32_t(table.family));
    if (setId) nftnl_set_set_u32(s.get(), NFTNL_SET_ID, setId);
    size_t bytes = 0;
    for (; i < elements.size(); ++i) {
      size_t eb = estimateElementBytes(elements[i]);
      if (bytes > 0 && bytes + eb > kMaxElementBytesPerMessage) break;
      bytes += eb;
      nftnl_set_elem_add(s.get(), encodeElement(elements[i]));
    }
    auto* nlh = w.begin(vm.msg, table.family, vm.flags, op);
    nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
    w.end(nlh);
  } while (i < elements.size());
}

SetPtr encodeSet(const Set& s, const std::string& name, uint32_t setId) {
  SetPtr ns(nftnl_set_alloc());
  nftnl_set_set_str(ns.get(), NFTNL_SET_TABLE, s.table.name.c_str());
  nftnl_set_set_str(ns.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_set_u32(ns.get(), NFTNL_SET_FAMILY, uint32_t(s.table.family));
  nftnl_set_set_u32(ns.get(), NFTNL_SET_FLAGS, s.flags | (s.isMap() ? kSetMap : 0));
  nftnl_set_set_u32(ns.get(), NFTNL_SET_KEY_TYPE, concatTypeId(s.key));
  nftnl_set_set_u32(ns.get(), NFTNL_SET_KEY_LEN, s.keyLen());
  if (s.isMap()) {
    nftnl_set_set_u32(ns.get(), NFTNL_SET_DATA_TYPE, s.isVerdictMap() ? NFT_DATA_VERDICT : concatTypeId(s.data));
    nftnl_set_set_u32(ns.get(), NFTNL_SET_DATA_LEN, s.dataLen());
  }
  if (setId) nftnl_set_set_u32(ns.get(), NFTNL_SET_ID, setId);
  if (s.timeoutMs) nftnl_set_set_u64(ns.get(), NFTNL_SET_TIMEOUT, s.timeoutMs);
  if (s.flags & kSetAnonymous)
    nftnl_set_set_u32(ns.get(), NFTNL_SET_DESC_SIZE, uint32_t(s.elements.size()));
  else if (s.size)
    nftnl_set_set_u32(ns.get(), NFTNL_SET_DESC_SIZE, s.size);
  auto ud = setUserData(s);
  nftnl_set_set_data(ns.get(), NFTNL_SET_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
  return ns;
}

Status unsupported(const Operation& op, size_t index) {
  return Status(Code::kInvalidArgument, "unsupported operation: " + Transaction::describe(op), 0, index);
}

Status encodeOp(BatchWriter& w, const Operation& op, size_t index) {
  return std::visit(
      [&](const auto& o) -> Status {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, Table>) {
          VerbMsg vm = op.verb == Verb::kFlush ? VerbMsg{NFT_MSG_DELRULE, 0}
                                               : verbMsg(op.verb, NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, kMsgDestroyTable);
          if (vm.msg == kNoMsg) return unsupported(op, index);
          TablePtr t(nftnl_table_alloc());
          nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, o.ref.name.c_str());
          nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, uint32_t(o.ref.family));
          auto* nlh = w.begin(vm.msg, o.ref.family, vm.flags, index);
          if (op.verb == Verb::kFlush) {
            RulePtr r(nftnl_rule_alloc());  // DELRULE with only a table flushes every chain
            nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, o.ref.name.c_str());
            nftnl_rule_nlmsg_build_payload(nlh, r.get());
          } else {
            if (vm.msg == NFT_MSG_NEWTABLE && !o.comment.empty()) {
              auto ud = commentUserData(NFTNL_UDATA_TABLE_COMMENT, o.comment);
              nftnl_table_set_data(t.get(), NFTNL_TABLE_USERDATA, nftnl_udata_buf_data(ud.get()),
                                   nftnl_udata_buf_len(ud.get()));
            }
            nftnl_table_nlmsg_build_payload(nlh, t.get());
          }
          w.end(nlh);
        } else if constexpr (std::is_same_v<T, Chain>) {
          VerbMsg vm = op.verb == Verb::kFlush ? VerbMsg{NFT_MSG_DELRULE, 0}
                                               : verbMsg(op.verb, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, kMsgDestroyChain);
          if (vm.msg == kNoMsg) return unsupported(op, index);
          auto* nlh = w.begin(vm.msg, o.table.family, vm.flags, index);
          if (op.verb == Verb::kFlush) {
            RulePtr r(nftnl_rule_alloc());
            nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, o.table.name.c_str());
            nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, o.name.c_str());
            nftnl_rule_nlmsg_build_payload(nlh, r.get());
          } else {
            ChainPtr c(nftnl_chain_alloc());
            nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, o.table.name.c_str());
            nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, o.name.c_str());
            nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, uint32_t(o.table.family));
            if (o.base && vm.msg == NFT_MSG_NEWCHAIN) {
              nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, uint32_t(o.base->hook));
              nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, o.base->priority);
              nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, o.base->type.c_str());
              nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
            }
            nftnl_chain_nlmsg_build_payload(nlh, c.get());
          }
          w.end(nlh);
        } else if constexpr (std::is_same_v<T, Rule>) {
          VerbMsg vm;
          switch (op.verb) {
            case Verb::kAdd: vm = {NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND}; break;
            case Verb::kInsert: vm = {NFT_MSG_NEWRULE, NLM_F_CREATE}; break;
            case Verb::kReplace: vm = {NFT_MSG_NEWRULE, NLM_F_REPLACE}; break;
            case Verb::kDelete: vm = {NFT_MSG_DELRULE, 0}; break;
            case Verb::kDestroy: vm = {kMsgDestroyRule, 0}; break;
            default: return unsupported(op, index);
          }
          const bool creates = vm.msg == NFT_MSG_NEWRULE;
          if (!creates || op.verb == Verb::kReplace) {
            if (!o.handle) return Status(Code::kInvalidArgument, "rule operation needs a handle: " + Transaction::describe(op), 0, index);
          }
          // Anonymous sets first: NEWSET + their elements, referenced below by set ID.
          std::vector<std::pair<std::string, uint32_t>> anon;
          if (creates) {
            for (const auto& s : o.anonSets) {
              const uint32_t id = w.nextSetId();
              const std::string name = s.isMap() ? "__map%d" : "__set%d";
              auto ns = encodeSet(s, name, id);
              auto* nlh = w.begin(NFT_MSG_NEWSET, s.table.family, NLM_F_CREATE, index);
              nftnl_set_nlmsg_build_payload(nlh, ns.get());
              w.end(nlh);
              writeElements(w, index, {NFT_MSG_NEWSETELEM, NLM_F_CREATE}, s.table, name, id, s.elements);
              anon.emplace_back(name, id);
            }
          }
          RulePtr r(nftnl_rule_alloc());
          nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, o.table.name.c_str());
          nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, o.chain.c_str());
          nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, uint32_t(o.table.family));
          if (o.handle) {
            if (op.verb == Verb::kAdd || op.verb == Verb::kInsert)
              nftnl_rule_set_u64(r.get(), NFTNL_RULE_POSITION, *o.handle);
            else
              nftnl_rule_set_u64(r.get(), NFTNL_RULE_HANDLE, *o.handle);
          }
          if (creates) {
            for (const auto& e : o.exprs) nftnl_rule_add_expr(r.get(), encodeExpr(e, anon));
            if (!o.comment.empty()) {
              auto ud = commentUserData(NFTNL_UDATA_RULE_COMMENT, o.comment);
              nftnl_rule_set_data(r.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud.get()),
                                  nftnl_udata_buf_len(ud.get()));
            }
          }
          auto* nlh = w.begin(vm.msg, o.table.family, vm.flags, index);
          nftnl_rule_nlmsg_build_payload(nlh, r.get());
          w.end(nlh);
        } else if constexpr (std::is_same_v<T, Set>) {
          if (op.verb == Verb::kFlush) {
            writeElements(w, index, {NFT_MSG_DELSETELEM, 0}, o.table, o.name, 0, {});
            return Status::ok();
          }
          VerbMsg vm = verbMsg(op.verb, NFT_MSG_NEWSET, NFT_MSG_DELSET, kMsgDestroySet);
          if (vm.msg == kNoMsg) return unsupported(op, index);
          auto* nlh = w.begin(vm.msg, o.table.family, vm.flags, index);
          if (vm.msg == NFT_MSG_NEWSET) {
            auto ns = encodeSet(o, o.name, w.nextSetId());
            nftnl_set_nlmsg_build_payload(nlh, ns.get());
          } else {
            SetPtr ns(nftnl_set_alloc());
            nftnl_set_set_str(ns.get(), NFTNL_SET_TABLE, o.table.name.c_str());
            nftnl_set_set_str(ns.get(), NFTNL_SET_NAME, o.name.c_str());
            nftnl_set_nlmsg_build_payload(nlh, ns.get());
          }
          w.end(nlh);
        } else if constexpr (std::is_same_v<T, Elements>) {
          if (op.verb == Verb::kFlush) {
            writeElements(w, index, {NFT_MSG_DELSETELEM, 0}, o.table, o.set, 0, {});
            return Status::ok();
          }
          VerbMsg vm = verbMsg(op.verb, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM, kMsgDestroySetElem);
          if (vm.msg == kNoMsg) return unsupported(op, index);
          if (o.elements.empty()) return Status::ok();  // nothing to say; an empty DEL would flush
          writeElements(w, index, vm, o.table, o.set, 0, o.elements);
        } else {
          if (op.verb == Verb::kReset) return Status::ok();  // runs after the batch commits
          VerbMsg vm = verbMsg(op.verb, NFT_MSG_NEWOBJ, NFT_MSG_DELOBJ, kMsgDestroyObj);
          if (vm.msg == kNoMsg) return unsupported(op, index);
          ObjPtr obj(nftnl_obj_alloc());
          nftnl_obj_set_str(obj.get(), NFTNL_OBJ_TABLE, o.table.name.c_str());
          nftnl_obj_set_str(obj.get(), NFTNL_OBJ_NAME, o.name.c_str());
          nftnl_obj_set_u32(obj.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
          nftnl_obj_set_u32(obj.get(), NFTNL_OBJ_FAMILY, uint32_t(o.table.family));
          auto* nlh = w.begin(vm.msg, o.table.family, vm.flags, index);
          nftnl_obj_nlmsg_build_payload(nlh, obj.get());
          w.end(nlh);
        }
        return Status::ok();
      },
      op.object);
}

// A batch encoded into the first `bytes` bytes of a caller's buffer.
struct Encoded {
  size_t bytes = 0;
  std::vector<size_t> seqToOp;
  uint32_t firstSeq = 0;
  size_t messages = 0;
  size_t firstMessageBytes = 0;
};

Result<Encoded> encodeTx(const Transaction& tx, uint32_t seqBase, std::vector<uint8_t>& buf) {
  Encoded enc;
  enc.firstSeq = seqBase + 1;  // seqBase is the batch-begin message
  BatchWriter w(buf, seqBase);
  w.batchBegin();
  for (size_t i = 0; i < tx.ops().size(); ++i) {
    Status st = encodeOp(w, tx.ops()[i], i);
    if (!st) return st;
  }
  w.batchEnd();
  enc.bytes = w.bytes();
  enc.seqToOp = w.seqToOp();
  enc.messages = w.messages();
  enc.firstMessageBytes = w.firstMessageBytes();
  return enc;
}

// The production transport: a NETLINK_NETFILTER socket.
class SocketTransport : public NetlinkTransport {
 public:
  ~SocketTransport() override {
    if (nl_) mnl_socket_close(nl_);
  }

  static Result<std::unique_ptr<SocketTransport>> open(const std::string& netns) {
    auto t = std::make_unique<SocketTransport>();
    Status st;
    Status ns = runInNetns(netns, [&] {
      t->nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
      if (!t->nl_) {
        st = Status::fromErrno(errno, "cannot open netfilter netlink socket");
        return;
      }
      if (mnl_socket_bind(t->nl_, 0, MNL_SOCKET_AUTOPID) < 0)
        st = Status::fromErrno(errno, "cannot bind netfilter netlink socket");
    });
    if (!ns) return ns;
    if (!st) return st;
    int one = 1;
    // Extended ACK gives the kernel's reason for a rejection; CAP_ACK keeps error replies from
    // echoing the whole offending message, so replies stay small.
    mnl_socket_setsockopt(t->nl_, NETLINK_EXT_ACK, &one, sizeof one);
    mnl_socket_setsockopt(t->nl_, NETLINK_CAP_ACK, &one, sizeof one);
    return t;
  }

  Status send(const uint8_t* data, size_t len) override {
    if (mnl_socket_sendto(nl_, data, len) < 0)
      return Status::fromErrno(errno, fmt::format("sending a batch of {} bytes", len));
    return Status::ok();
  }

  Result<size_t> receive(uint8_t* buf, size_t cap, int timeoutMs) override {
    while (true) {
      ssize_t n = ::recv(fd(), buf, cap, MSG_DONTWAIT);
      if (n >= 0) return size_t(n);
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return Status::fromErrno(errno, "receiving netlink replies");
      if (timeoutMs <= 0) return size_t(0);
      pollfd p{fd(), POLLIN, 0};
      int r = ::poll(&p, 1, timeoutMs);
      if (r == 0) return size_t(0);
      timeoutMs = 0;  // one wait, then report whatever is there
    }
  }

  // SO_*BUFFORCE (CAP_NET_ADMIN) lifts the rmem_max/wmem_max caps; fall back to the capped
  // option if it is not permitted.
  void reserve(size_t batchBytes, size_t replies) override {
    int want = int(std::min<size_t>(INT32_MAX / 2, batchBytes + 64 * 1024));
    if (want > sndbuf_) {
      if (setsockopt(fd(), SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0)
        setsockopt(fd(), SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
      sndbuf_ = want;
    }
    want = int(std::min<size_t>(INT32_MAX / 2, replies * kAckBudget + 256 * 1024));
    if (want > rcvbuf_) {
      if (setsockopt(fd(), SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) != 0)
        setsockopt(fd(), SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
      rcvbuf_ = want;
    }
  }

  uint32_t portId() const override { return mnl_socket_get_portid(nl_); }

 private:
  int fd() const { return mnl_socket_get_fd(nl_); }
  mnl_socket* nl_ = nullptr;
  int rcvbuf_ = 0;
  int sndbuf_ = 0;
};

}  // namespace

// Buffers larger than this are given back after the batch that needed them: a full sync's
// batch (8 MB at 10 000 Services) is not worth keeping for the small ones that follow.
constexpr size_t kKeepBufferBytes = 1024 * 1024;

struct NetlinkBackend::Impl {
  std::unique_ptr<NetlinkTransport> transport;
  uint32_t seq = uint32_t(std::time(nullptr)) << 8;
  // Reused across batches. Allocating and zero-filling them per batch (384 KiB, above
  // malloc's mmap threshold, so freshly faulted pages every time) was most of the cost of a
  // small partial sync: 0.8 ms of page faults and memset for a 0.1 ms kernel commit.
  std::vector<uint8_t> batch;
  std::vector<uint8_t> replies = std::vector<uint8_t>(256 * 1024);
};

Result<std::unique_ptr<NetlinkBackend>> NetlinkBackend::open(const NetlinkOptions& opts) {
  auto t = SocketTransport::open(opts.netns);
  if (!t) return t.status();
  return withTransport(std::move(t).value());
}

std::unique_ptr<NetlinkBackend> NetlinkBackend::withTransport(std::unique_ptr<NetlinkTransport> transport) {
  std::unique_ptr<NetlinkBackend> b(new NetlinkBackend());
  b->impl_ = std::make_unique<Impl>();
  b->impl_->transport = std::move(transport);
  return b;
}

NetlinkBackend::~NetlinkBackend() = default;

uint32_t NetlinkBackend::portId() const { return impl_->transport->portId(); }

std::vector<uint8_t> NetlinkBackend::encode(const Transaction& tx, uint32_t seqBase, size_t* messages) {
  std::vector<uint8_t> batch;
  auto enc = encodeTx(tx, seqBase, batch);
  if (!enc) return {};
  if (messages) *messages = enc->messages;
  batch.resize(enc->bytes);
  return batch;
}

namespace {

struct Reply {
  uint32_t seq;
  int error;  // positive errno, 0 = ACK
  std::string extack;
};

// The NFTA_GEN_ID of an NFT_MSG_NEWGEN message (the GETGEN answer, or a commit's echo).
std::optional<uint32_t> generationOf(const nlmsghdr* nlh) {
  if (nlh->nlmsg_type != nlType(NFT_MSG_NEWGEN) || nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) return std::nullopt;
  std::optional<uint32_t> gen;
  mnl_attr_parse(nlh, sizeof(nfgenmsg), [](const nlattr* a, void* data) {
    if (mnl_attr_get_type(a) == NFTA_GEN_ID && mnl_attr_validate(a, MNL_TYPE_U32) == 0)
      *static_cast<std::optional<uint32_t>*>(data) = be32toh(mnl_attr_get_u32(a));
    return MNL_CB_OK;
  }, &gen);
  return gen;
}

// Collects the ACKs/errors, and the generation echoed for the message with sequence `genSeq`.
void parseReplies(const uint8_t* buf, size_t len, std::vector<Reply>& out, uint32_t genSeq = 0,
                  std::optional<uint32_t>* gen = nullptr) {
  auto* nlh = reinterpret_cast<const nlmsghdr*>(buf);
  int remaining = int(len);
  while (mnl_nlmsg_ok(nlh, remaining)) {
    if (gen && nlh->nlmsg_seq == genSeq)
      if (auto g = generationOf(nlh)) *gen = g;
    if (nlh->nlmsg_type == NLMSG_ERROR) {
      auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      Reply r{nlh->nlmsg_seq, -err->error, {}};
      if (nlh->nlmsg_flags & NLM_F_ACK_TLVS) {
        size_t off = sizeof(nlmsghdr) + sizeof(nlmsgerr);
        if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) off += err->msg.nlmsg_len - sizeof(nlmsghdr);
        const uint8_t* p = reinterpret_cast<const uint8_t*>(nlh) + off;
        const uint8_t* end = reinterpret_cast<const uint8_t*>(nlh) + nlh->nlmsg_len;
        while (p + sizeof(nlattr) <= end) {
          auto* a = reinterpret_cast<const nlattr*>(p);
          if (a->nla_len < sizeof(nlattr) || p + a->nla_len > end) break;
          if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG)
            r.extack.assign(reinterpret_cast<const char*>(p + NLA_HDRLEN), strnlen(reinterpret_cast<const char*>(p + NLA_HDRLEN), a->nla_len - NLA_HDRLEN));
          p += NLA_ALIGN(a->nla_len);
        }
      }
      out.push_back(std::move(r));
    }
    nlh = mnl_nlmsg_next(nlh, &remaining);
  }
}

}  // namespace

Status NetlinkBackend::apply(const Transaction& tx) {
  stats_ = {};
  lastGeneration_.reset();
  if (tx.empty()) return Status::ok();
  Impl& im = *impl_;
  auto enc = encodeTx(tx, im.seq, im.batch);
  if (!enc) return enc.status();
  const uint8_t* batch = im.batch.data();
  struct Release {  // after this batch, whatever the outcome
    std::vector<uint8_t>& buf;
    ~Release() {
      if (buf.size() > kKeepBufferBytes) std::vector<uint8_t>().swap(buf);
    }
  } release{im.batch};
  im.seq += uint32_t(enc->seqToOp.size() + 2);
  stats_.messages = enc->messages;
  stats_.bytes = enc->bytes;
  const uint32_t lastSeq = enc->firstSeq + uint32_t(enc->seqToOp.size());
  auto isCommand = [&](uint32_t seq) { return seq >= enc->firstSeq && seq < lastSeq; };

  if (enc->messages > 0) {
    // Room for the echo of the first command too: one notification per object, for a chunk of
    // elements a few times the request's bytes in skb truesize.
    im.transport->reserve(enc->bytes, enc->messages + 1 + enc->firstMessageBytes * 8 / kAckBudget);
    if (Status st = im.transport->send(batch, enc->bytes); !st)
      return st.withContext(fmt::format("batch of {} messages", enc->messages));

    // Drain. The kernel has processed the batch inside sendmsg, so every reply is queued
    // already; only if some are missing do we wait (briefly) before calling them lost.
    std::vector<Reply> replies;
    std::optional<uint32_t> generation;
    std::vector<uint8_t>& rbuf = im.replies;
    size_t acked = 0;
    bool lost = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (true) {
      const bool complete = acked >= enc->messages;
      auto got = im.transport->receive(rbuf.data(), rbuf.size(), complete ? 0 : 50);
      if (!got) {
        if (got.status().err() == ENOBUFS) {
          lost = true;  // replies were dropped; keep draining what is left
          continue;
        }
        return got.status();
      }
      if (*got == 0) {
        if (complete || std::chrono::steady_clock::now() > deadline) break;
        continue;
      }
      size_t before = replies.size();
      parseReplies(rbuf.data(), *got, replies, enc->firstSeq, &generation);
      for (size_t i = before; i < replies.size(); ++i)
        if (isCommand(replies[i].seq)) ++acked;
    }
    stats_.acks = replies.size();

    // The first error in batch order is the cause; later ones are usually its consequences.
    const Reply* first = nullptr;
    for (const auto& r : replies)
      if (r.error != 0 && (!first || r.seq < first->seq)) first = &r;
    if (first) {
      if (isCommand(first->seq)) {
        size_t op = enc->seqToOp[first->seq - enc->firstSeq];
        std::string msg = Transaction::describe(tx.ops()[op]);
        if (!first->extack.empty()) msg += ": " + first->extack;
        return Status::fromErrno(first->error, msg, op);
      }
      // An error on BATCH_BEGIN is a commit-time failure: the whole batch was aborted.
      return Status::fromErrno(first->error,
                               first->extack.empty() ? "batch commit failed" : "batch commit failed: " + first->extack);
    }
    if (lost || acked < enc->messages)
      return Status(Code::kInternal,
                    fmt::format("received {} of {} batch replies{}; the outcome is unknown", acked, enc->messages,
                                lost ? " (receive buffer overflow)" : ""));
    // A batch whose messages changed nothing (no transaction) commits no generation and
    // echoes none; then lastGeneration() stays empty.
    lastGeneration_ = generation;
  }

  // Counter resets are "get and reset" requests, which the kernel refuses inside a batch.
  for (size_t i = 0; i < tx.ops().size(); ++i) {
    const auto& op = tx.ops()[i];
    if (op.verb != Verb::kReset) continue;
    const auto* c = std::get_if<CounterObject>(&op.object);
    if (!c) return unsupported(op, i);
    std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
    const uint32_t seq = im.seq++;
    auto* nlh = nftnl_nlmsg_build_hdr(reinterpret_cast<char*>(buf.data()), nlType(NFT_MSG_GETOBJ_RESET),
                                      uint16_t(c->table.family), NLM_F_ACK, seq);
    ObjPtr obj(nftnl_obj_alloc());
    nftnl_obj_set_str(obj.get(), NFTNL_OBJ_TABLE, c->table.name.c_str());
    nftnl_obj_set_str(obj.get(), NFTNL_OBJ_NAME, c->name.c_str());
    nftnl_obj_set_u32(obj.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
    nftnl_obj_nlmsg_build_payload(nlh, obj.get());
    if (Status st = im.transport->send(buf.data(), nlh->nlmsg_len); !st) return Status(st.code(), st.message(), st.err(), i);
    bool done = false;
    for (int tries = 0; !done && tries < 40; ++tries) {
      auto got = im.transport->receive(buf.data(), buf.size(), 50);
      if (!got) return Status(got.status().code(), got.status().message(), got.status().err(), i);
      std::vector<Reply> rr;
      parseReplies(buf.data(), *got, rr);
      for (const auto& r : rr) {
        if (r.seq != seq) continue;
        if (r.error) return Status::fromErrno(r.error, Transaction::describe(op), i);
        done = true;
      }
    }
    if (!done) return Status(Code::kInternal, "no reply to " + Transaction::describe(op), 0, i);
  }
  return Status::ok();
}

Result<uint32_t> NetlinkBackend::generation() {
  Impl& im = *impl_;
  std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
  const uint32_t seq = im.seq++;
  // No NLM_F_ACK: success is answered by the NEWGEN message alone, failure by an error.
  auto* nlh = nftnl_nlmsg_build_hdr(reinterpret_cast<char*>(buf.data()), nlType(NFT_MSG_GETGEN), AF_UNSPEC, 0, seq);
  if (Status st = im.transport->send(buf.data(), nlh->nlmsg_len); !st) return st.withContext("asking the ruleset generation");
  for (int tries = 0; tries < 40; ++tries) {
    auto got = im.transport->receive(buf.data(), buf.size(), 50);
    if (!got) return got.status().withContext("asking the ruleset generation");
    std::vector<Reply> rr;
    std::optional<uint32_t> gen;
    parseReplies(buf.data(), *got, rr, seq, &gen);
    if (gen) return *gen;
    for (const auto& r : rr)
      if (r.seq == seq && r.error) return Status::fromErrno(r.error, "asking the ruleset generation");
  }
  return Status(Code::kInternal, "no answer to the ruleset generation request");
}

}  // namespace sluice::nft
