// Layer 3: what the netlink backend puts on the wire and how it reads the answers, against a
// scripted peer instead of the kernel.
#include <doctest/doctest.h>
#include <endian.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <sys/socket.h>

#include <cstring>
#include <deque>
#include <set>

#include "sluice/nft/backend.h"
#include "sluice/nft/rule_builder.h"

using namespace sluice;
using namespace sluice::nft;

namespace {

struct Message {
  uint16_t type;  // NFT_MSG_* or NFNL_MSG_BATCH_*
  uint16_t flags;
  uint32_t seq;
  std::vector<uint8_t> bytes;
};

std::vector<Message> splitBatch(const uint8_t* data, size_t len) {
  std::vector<Message> out;
  auto* nlh = reinterpret_cast<const nlmsghdr*>(data);
  int rem = int(len);
  while (mnl_nlmsg_ok(nlh, rem)) {
    const uint16_t type = nlh->nlmsg_type == NFNL_MSG_BATCH_BEGIN || nlh->nlmsg_type == NFNL_MSG_BATCH_END
                              ? nlh->nlmsg_type
                              : uint16_t(nlh->nlmsg_type & 0xff);
    out.push_back({type, nlh->nlmsg_flags, nlh->nlmsg_seq,
                   std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(nlh), reinterpret_cast<const uint8_t*>(nlh) + nlh->nlmsg_len)});
    nlh = mnl_nlmsg_next(nlh, &rem);
  }
  CHECK(rem == 0);
  return out;
}

std::vector<uint8_t> errorReply(uint32_t seq, int err, const std::string& extack) {
  std::vector<uint8_t> b(NLMSG_ALIGN(sizeof(nlmsghdr) + sizeof(nlmsgerr)) + (extack.empty() ? 0 : NLA_ALIGN(NLA_HDRLEN + extack.size() + 1)));
  auto* nlh = reinterpret_cast<nlmsghdr*>(b.data());
  nlh->nlmsg_len = uint32_t(b.size());
  nlh->nlmsg_type = NLMSG_ERROR;
  nlh->nlmsg_flags = NLM_F_CAPPED | (extack.empty() ? 0 : NLM_F_ACK_TLVS);
  nlh->nlmsg_seq = seq;
  auto* e = reinterpret_cast<nlmsgerr*>(b.data() + sizeof(nlmsghdr));
  e->error = -err;
  e->msg.nlmsg_seq = seq;
  e->msg.nlmsg_len = sizeof(nlmsghdr);
  if (!extack.empty()) {
    auto* a = reinterpret_cast<nlattr*>(b.data() + sizeof(nlmsghdr) + sizeof(nlmsgerr));
    a->nla_type = NLMSGERR_ATTR_MSG;
    a->nla_len = uint16_t(NLA_HDRLEN + extack.size() + 1);
    std::memcpy(reinterpret_cast<uint8_t*>(a) + NLA_HDRLEN, extack.c_str(), extack.size() + 1);
  }
  return b;
}

// NFT_MSG_NEWGEN as the kernel sends it: nfgenmsg, then NFTA_GEN_ID (big endian).
std::vector<uint8_t> newGen(uint32_t seq, uint32_t generation) {
  std::vector<uint8_t> b(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(b.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
  nlh->nlmsg_seq = seq;
  auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  g->nfgen_family = AF_UNSPEC;
  mnl_attr_put_u32(nlh, NFTA_GEN_ID, htobe32(generation));
  b.resize(nlh->nlmsg_len);
  return b;
}

// Behaves like nfnetlink: one reply per command that asked for an ACK, an error where scripted;
// a commit bumps the generation and, if the first command asked for an echo, reports it
// first (nf_tables_gen_notify); GETGEN is answered with the generation.
struct ScriptedPeer {
  std::vector<Message> lastBatch;
  std::optional<size_t> failCommand;  // index among command messages
  int failErrno = 0;
  std::string failExtack;
  int commitErrno = 0;
  size_t dropLast = 0;   // replies lost
  bool enobufs = false;  // and report ENOBUFS once
  std::deque<std::vector<uint8_t>> queue;
  size_t reserveBytes = 0, reserveReplies = 0;
  uint32_t generation = 41;
  int getgenErrno = 0;
};

class ScriptedTransport : public NetlinkTransport {
 public:
  explicit ScriptedTransport(ScriptedPeer& p) : p_(p) {}
  Status send(const uint8_t* data, size_t len) override {
    auto msgs = splitBatch(data, len);
    if (msgs.size() == 1 && msgs[0].type == NFT_MSG_GETGEN) {
      p_.queue.push_back(p_.getgenErrno ? errorReply(msgs[0].seq, p_.getgenErrno, "") : newGen(msgs[0].seq, p_.generation));
      return Status::ok();
    }
    p_.lastBatch = std::move(msgs);
    size_t cmd = 0;
    std::vector<std::vector<uint8_t>> replies;
    if (!p_.commitErrno && !p_.failCommand && p_.lastBatch.size() > 2) {
      ++p_.generation;
      if (p_.lastBatch[1].flags & NLM_F_ECHO) replies.push_back(newGen(p_.lastBatch[1].seq, p_.generation));
    }
    for (const auto& m : p_.lastBatch) {
      if (m.type == NFNL_MSG_BATCH_BEGIN) {
        if (p_.commitErrno) replies.push_back(errorReply(m.seq, p_.commitErrno, "commit refused"));
        continue;
      }
      if (m.type == NFNL_MSG_BATCH_END) continue;
      if (p_.failCommand == cmd) replies.push_back(errorReply(m.seq, p_.failErrno, p_.failExtack));
      else if (m.flags & NLM_F_ACK) replies.push_back(errorReply(m.seq, 0, ""));
      ++cmd;
    }
    replies.resize(replies.size() - std::min(p_.dropLast, replies.size()));
    for (auto& r : replies) p_.queue.push_back(std::move(r));
    return Status::ok();
  }
  Result<size_t> receive(uint8_t* buf, size_t cap, int) override {
    if (p_.enobufs) {
      p_.enobufs = false;
      return Status::fromErrno(ENOBUFS, "overflow");
    }
    size_t n = 0;
    while (!p_.queue.empty() && n + p_.queue.front().size() <= cap) {  // several replies per read
      std::memcpy(buf + n, p_.queue.front().data(), p_.queue.front().size());
      n += p_.queue.front().size();
      p_.queue.pop_front();
    }
    return n;
  }
  void reserve(size_t bytes, size_t replies) override {
    p_.reserveBytes = bytes;
    p_.reserveReplies = replies;
  }

 private:
  ScriptedPeer& p_;
};

template <typename F>
void forEachAttr(const uint8_t* p, const uint8_t* end, F&& f) {
  while (p + sizeof(nlattr) <= end) {
    auto* a = reinterpret_cast<const nlattr*>(p);
    if (a->nla_len < sizeof(nlattr) || p + a->nla_len > end) break;
    f(a);
    p += NLA_ALIGN(a->nla_len);
  }
}

template <typename F>
void forEachNested(const nlattr* nest, F&& f) {
  auto* p = static_cast<const uint8_t*>(mnl_attr_get_payload(nest));
  forEachAttr(p, p + mnl_attr_get_payload_len(nest), f);
}

const TableRef kT{Family::kIPv4, "sluice"};

Transaction smallTx() {
  Transaction tx;
  tx.add(Table{kT, "c"});                                            // 0
  tx.add(Chain{kT, "a", std::nullopt});                              // 1
  tx.add(Set{kT, "ips", {DataType::kIPv4Addr}, {}, 0, "", {}});      // 2
  tx.add(RuleBuilder(kT, "a").daddrInSet("ips").reject().build());   // 3
  tx.add(RuleBuilder(kT, "a").l4proto(Protocol::kTCP)
             .dnatNumgen({{IPAddress::v4(198, 18, 1, 1), 80}, {IPAddress::v4(198, 18, 1, 2), 80}}).build());  // 4
  return tx;
}

}  // namespace

TEST_CASE("netlink: one batch, rising sequence numbers, an ACK requested for every command") {
  ScriptedPeer peer;
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  REQUIRE(be->apply(smallTx()).isOk());
  const auto& b = peer.lastBatch;
  REQUIRE(b.size() >= 2);
  CHECK(b.front().type == NFNL_MSG_BATCH_BEGIN);
  CHECK(b.back().type == NFNL_MSG_BATCH_END);
  for (size_t i = 1; i < b.size(); ++i) CHECK(b[i].seq == b[i - 1].seq + 1);
  std::vector<uint16_t> types;
  for (size_t i = 1; i + 1 < b.size(); ++i) {
    CHECK((b[i].flags & NLM_F_ACK) != 0);
    types.push_back(b[i].type);
  }
  // table, chain, set, rule, then the anonymous map + its elements before the rule using it.
  CHECK(types == std::vector<uint16_t>{NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWSET, NFT_MSG_NEWRULE,
                                       NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWRULE});
  CHECK(be->lastStats().messages == 7);
  CHECK(be->lastStats().acks == 7);  // the echoed NEWGEN is not an ACK
  CHECK(peer.reserveReplies == 8);  // and the echoed NEWGEN (the table message echoes little)
  CHECK(peer.queue.empty());  // every reply drained
}

TEST_CASE("netlink: a rejected message maps back to its operation with the extended ACK text") {
  ScriptedPeer peer;
  peer.failCommand = 5;  // the NEWSETELEM of the anonymous map, part of operation 4
  peer.failErrno = EINVAL;
  peer.failExtack = "element key length mismatch";
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  Status st = be->apply(smallTx());
  REQUIRE_FALSE(st.isOk());
  CHECK(st.code() == Code::kInvalidArgument);
  CHECK(st.err() == EINVAL);
  CHECK(st.opIndex() == std::optional<size_t>(4));
  CHECK(st.message().find("add rule ip sluice a") != std::string::npos);
  CHECK(st.message().find("element key length mismatch") != std::string::npos);
  CHECK(peer.queue.empty());

  // The next apply on the same socket is not confused by leftovers.
  peer.failCommand.reset();
  CHECK(be->apply(smallTx()).isOk());
}

TEST_CASE("netlink: a commit failure, lost replies and overflow are errors, never success") {
  ScriptedPeer peer;
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  SUBCASE("commit refused on BATCH_BEGIN") {
    peer.commitErrno = ENOMEM;
    Status st = be->apply(smallTx());
    CHECK(st.code() == Code::kResourceExhausted);
    CHECK_FALSE(st.opIndex().has_value());
    CHECK(st.message().find("commit refused") != std::string::npos);
  }
  SUBCASE("missing replies") {
    peer.dropLast = 2;
    Status st = be->apply(smallTx());
    CHECK(st.code() == Code::kInternal);
    CHECK(st.message().find("received 5 of 7") != std::string::npos);
  }
  SUBCASE("receive buffer overflow") {
    peer.enobufs = true;
    peer.dropLast = 1;
    Status st = be->apply(smallTx());
    CHECK(st.code() == Code::kInternal);
    CHECK(st.message().find("overflow") != std::string::npos);
  }
}

TEST_CASE("netlink: 100 000 elements are split below the attribute limit, none lost, one batch") {
  Transaction tx;
  std::vector<Element> elems;
  for (uint32_t i = 0; i < 100000; ++i) {
    const uint8_t ip[4] = {198, 19, uint8_t(i >> 8), uint8_t(i)};
    elems.push_back(Element{KeyBuilder().ipv4(ip).proto(6).port(uint16_t(i % 50000 + 1)).take(), {},
                            Verdict{VerdictCode::kGoto, "svc-ABCDEFGH-namespace/some-service/tcp/http"},
                            i % 10 == 0 ? "ns/svc:port" : ""});
  }
  tx.add(Elements{kT, "service-ips", elems});
  ScriptedPeer peer;
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  REQUIRE(be->apply(tx).isOk());
  std::set<std::vector<uint8_t>> keys;
  size_t messages = 0;
  for (const auto& m : peer.lastBatch) {
    if (m.type != NFT_MSG_NEWSETELEM) continue;
    ++messages;
    CHECK(m.bytes.size() < 65535);
    // libnftnl 1.2.4 numbers the element nests 1, 2, 3… when building but its own parser
    // (nftnl_set_elems_nlmsg_parse) accepts only type 1, so it cannot read back more than one
    // element; the kernel ignores the nest type. Walk the attributes with libmnl instead.
    auto* nlh = reinterpret_cast<const nlmsghdr*>(m.bytes.data());
    const nlattr* list = nullptr;
    forEachAttr(static_cast<const uint8_t*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg))),
                static_cast<const uint8_t*>(mnl_nlmsg_get_payload_tail(nlh)), [&](const nlattr* a) {
                  if (mnl_attr_get_type(a) == NFTA_SET_ELEM_LIST_SET)
                    CHECK(std::string(mnl_attr_get_str(a)) == "service-ips");
                  if (mnl_attr_get_type(a) == NFTA_SET_ELEM_LIST_ELEMENTS) list = a;
                });
    REQUIRE(list);
    forEachNested(list, [&](const nlattr* elem) {
      forEachNested(elem, [&](const nlattr* field) {
        if (mnl_attr_get_type(field) != NFTA_SET_ELEM_KEY) return;
        auto* value = static_cast<const nlattr*>(mnl_attr_get_payload(field));
        auto* k = static_cast<const uint8_t*>(mnl_attr_get_payload(value));
        keys.insert(std::vector<uint8_t>(k, k + mnl_attr_get_payload_len(value)));
      });
    });
  }
  CHECK(messages > 10);
  CHECK(keys.size() == 100000);
  CHECK(be->lastStats().acks == messages);
}

TEST_CASE("netlink: operations that need a handle are refused before anything is sent") {
  ScriptedPeer peer;
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  Transaction tx;
  tx.add(Table{kT, ""});
  tx.del(RuleBuilder(kT, "a").reject().build());
  Status st = be->apply(tx);
  CHECK(st.code() == Code::kInvalidArgument);
  CHECK(st.opIndex() == std::optional<size_t>(1));
  CHECK(peer.lastBatch.empty());
}

TEST_CASE("netlink: every commit reports its ruleset generation, echoed for the first command") {
  ScriptedPeer peer;
  auto be = NetlinkBackend::withTransport(std::make_unique<ScriptedTransport>(peer));
  CHECK_FALSE(be->lastGeneration().has_value());
  REQUIRE(be->apply(smallTx()).isOk());
  // Only the first command asks for the echo: the kernel reports the commit's NEWGEN to the
  // sender when the batch's first message has NLM_F_ECHO, and echoes that message's objects.
  const auto& b = peer.lastBatch;
  CHECK((b[1].flags & NLM_F_ECHO) != 0);
  for (size_t i = 2; i + 1 < b.size(); ++i) CHECK((b[i].flags & NLM_F_ECHO) == 0);
  CHECK(be->lastGeneration() == std::optional<uint32_t>(42));
  CHECK(peer.queue.empty());
  REQUIRE(be->apply(smallTx()).isOk());
  CHECK(be->lastGeneration() == std::optional<uint32_t>(43));

  auto gen = be->generation();
  REQUIRE_MESSAGE(gen.isOk(), gen.status().toString());
  CHECK(*gen == 43);

  SUBCASE("a failed commit has none") {
    peer.commitErrno = ENOMEM;
    CHECK_FALSE(be->apply(smallTx()).isOk());
    CHECK_FALSE(be->lastGeneration().has_value());
  }
  SUBCASE("an empty transaction has none") {
    REQUIRE(be->apply(Transaction{}).isOk());
    CHECK_FALSE(be->lastGeneration().has_value());
  }
  SUBCASE("a refused generation request is an error") {
    peer.getgenErrno = EPERM;
    auto refused = be->generation();
    REQUIRE_FALSE(refused.isOk());
    CHECK(refused.status().err() == EPERM);
  }
}
