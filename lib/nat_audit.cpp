#include "sluice/nat_audit.h"

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <cstring>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "nfnl_query.h"
#include "sluice/netns.h"

namespace sluice::diag {
namespace {

// How often a rule dump cut short by a concurrent commit is repeated.
constexpr int kMaxDumpAttempts = 4;

struct RuleDeleter {
  void operator()(nftnl_rule* r) const { nftnl_rule_free(r); }
};

std::string familyName(uint32_t f) {
  switch (f) {
    case NFPROTO_INET: return "inet";
    case NFPROTO_IPV4: return "ip";
    case NFPROTO_ARP: return "arp";
    case NFPROTO_NETDEV: return "netdev";
    case NFPROTO_BRIDGE: return "bridge";
    case NFPROTO_IPV6: return "ip6";
    default: return fmt::format("family-{}", f);
  }
}

uint32_t readU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);  // host order: the blob is the kernel struct as-is
  return v;
}

struct RuleScan {
  uint8_t family = 0;
  NatStatement where;  // location fields filled in
  std::vector<NatStatement> found;
};

int onExpr(nftnl_expr* e, void* data) {
  auto* scan = static_cast<RuleScan*>(data);
  const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
  if (!name) return MNL_CB_OK;
  NatStatement st = scan->where;
  if (std::strcmp(name, "masq") == 0) {
    st.kind = NatStatement::Kind::kMasquerade;
    st.flags = nftnl_expr_is_set(e, NFTNL_EXPR_MASQ_FLAGS) ? nftnl_expr_get_u32(e, NFTNL_EXPR_MASQ_FLAGS) : 0u;
  } else if (std::strcmp(name, "nat") == 0) {
    if (nftnl_expr_get_u32(e, NFTNL_EXPR_NAT_TYPE) != NFT_NAT_SNAT) return MNL_CB_OK;
    st.kind = NatStatement::Kind::kSnat;
    st.flags = nftnl_expr_is_set(e, NFTNL_EXPR_NAT_FLAGS) ? nftnl_expr_get_u32(e, NFTNL_EXPR_NAT_FLAGS) : 0u;
  } else if (std::strcmp(name, "target") == 0) {
    const char* tg = nftnl_expr_get_str(e, NFTNL_EXPR_TG_NAME);
    if (!tg) return MNL_CB_OK;
    const std::string target = tg;
    if (target != "MASQUERADE" && target != "SNAT") return MNL_CB_OK;
    const uint32_t rev = nftnl_expr_get_u32(e, NFTNL_EXPR_TG_REV);
    uint32_t len = 0;
    const auto* info = static_cast<const uint8_t*>(nftnl_expr_get(e, NFTNL_EXPR_TG_INFO, &len));
    st.kind = target == "SNAT" ? NatStatement::Kind::kSnat : NatStatement::Kind::kMasquerade;
    st.origin = NatStatement::Origin::kXtables;
    st.target = fmt::format("{} rev {}", target, rev);
    st.flags = info ? xtNatFlags(target, rev, scan->family, info, len) : std::nullopt;
  } else {
    return MNL_CB_OK;
  }
  scan->found.push_back(std::move(st));
  return MNL_CB_OK;
}

nlmsghdr* putRuleDump(char* buf) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfh->nfgen_family = NFPROTO_UNSPEC;  // every family, every table
  nfh->version = NFNETLINK_V0;
  nfh->res_id = 0;
  return nlh;
}

}  // namespace

std::string natFlagsText(uint32_t flags) {
  std::vector<std::string> parts;
  if (flags & kNatRangeProtoRandom) parts.emplace_back("random");
  if (flags & kNatRangeProtoRandomFully) parts.emplace_back("fully-random");
  if (flags & kNatRangePersistent) parts.emplace_back("persistent");
  return fmt::format("{}", fmt::join(parts, ","));
}

std::string NatStatement::location() const {
  return fmt::format("{} {} {} handle {}", family, table, chain, handle);
}

std::string NatStatement::kindName() const {
  if (origin == Origin::kXtables) return kind == Kind::kSnat ? "SNAT (iptables-nft)" : "MASQUERADE (iptables-nft)";
  return kind == Kind::kSnat ? "snat" : "masquerade";
}

std::optional<uint32_t> xtNatFlags(const std::string& name, uint32_t revision, uint8_t family,
                                   const uint8_t* info, size_t len) {
  // Layouts (include/uapi/linux/netfilter/nf_nat.h and nf_nat_ipv4_multi_range_compat):
  //  - IPv4 MASQUERADE rev 0 and SNAT rev 0: struct nf_nat_ipv4_multi_range_compat
  //    { u32 rangesize; struct nf_nat_ipv4_range { u32 flags; ... } range[1]; } → flags at 4;
  //  - IPv6 MASQUERADE rev 0, SNAT rev 1: struct nf_nat_range { u32 flags; ... } → flags at 0;
  //  - SNAT rev 2: struct nf_nat_range2 { u32 flags; ... } → flags at 0.
  size_t offset;
  if (name == "MASQUERADE" && revision == 0) {
    offset = family == NFPROTO_IPV6 ? 0 : 4;
  } else if (name == "SNAT" && revision == 0 && family == NFPROTO_IPV4) {
    offset = 4;
  } else if (name == "SNAT" && (revision == 1 || revision == 2)) {
    offset = 0;
  } else {
    return std::nullopt;
  }
  if (info == nullptr || len < offset + sizeof(uint32_t)) return std::nullopt;
  return readU32(info + offset);
}

Result<std::vector<NatStatement>> parseRuleMessage(const nlmsghdr* nlh) {
  std::unique_ptr<nftnl_rule, RuleDeleter> rule(nftnl_rule_alloc());
  if (!rule) return Status::fromErrno(ENOMEM, "cannot allocate nftnl rule");
  if (nftnl_rule_nlmsg_parse(nlh, rule.get()) < 0) {
    return Status(Code::kInvalidArgument, "cannot parse nftables rule message");
  }
  RuleScan scan;
  scan.family = static_cast<uint8_t>(nftnl_rule_get_u32(rule.get(), NFTNL_RULE_FAMILY));
  scan.where.family = familyName(scan.family);
  if (const char* t = nftnl_rule_get_str(rule.get(), NFTNL_RULE_TABLE)) scan.where.table = t;
  if (const char* c = nftnl_rule_get_str(rule.get(), NFTNL_RULE_CHAIN)) scan.where.chain = c;
  scan.where.handle = nftnl_rule_get_u64(rule.get(), NFTNL_RULE_HANDLE);
  nftnl_expr_foreach(rule.get(), onExpr, &scan);
  return std::move(scan.found);
}

Result<std::vector<NatStatement>> readNatStatements(const std::string& netns) {
  Result<detail::NfnlSocket> sock = detail::NfnlSocket::open(netns, "nftables rule dump");
  if (!sock) return sock.status();
  alignas(nlmsghdr) char req[MNL_SOCKET_BUFFER_SIZE];
  for (int attempt = 0; attempt < kMaxDumpAttempts; ++attempt) {
    std::vector<NatStatement> all;
    bool interrupted = false;
    Status s = sock->query(putRuleDump(req), [&](const nlmsghdr* nlh) -> Status {
      if ((nlh->nlmsg_type & 0xff) != NFT_MSG_NEWRULE) return Status::ok();
      Result<std::vector<NatStatement>> found = parseRuleMessage(nlh);
      if (!found) return found.status();
      for (NatStatement& st : *found) all.push_back(std::move(st));
      return Status::ok();
    }, &interrupted);
    if (!s) return s;
    // nf_tables marks a dump whose generation changed under it (a commit in between).
    if (!interrupted) return all;
  }
  return Status(Code::kAborted, fmt::format("the nftables ruleset changed during {} dumps in a row",
                                            kMaxDumpAttempts));
}

std::vector<std::string> legacyIptablesTables(const std::string& netns) {
  std::vector<std::string> tables;
  for (const auto& [path, prefix] : {std::pair<const char*, const char*>{"/proc/net/ip_tables_names", ""},
                                    {"/proc/net/ip6_tables_names", "ip6 "}}) {
    Result<std::string> text = readFileInNetns(netns, path);
    if (!text) continue;  // no legacy backend in this kernel: nothing to report
    std::istringstream lines(*text);
    std::string name;
    while (std::getline(lines, name)) {
      if (!name.empty()) tables.push_back(prefix + name);
    }
  }
  return tables;
}

}  // namespace sluice::diag
