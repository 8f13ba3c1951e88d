// sluice-ct's library parts without a kernel: ctnetlink statistics messages (built byte for byte
// as the kernel's ctnetlink_ct_stat_cpu_fill_info writes them), nftables rule messages with
// masquerade/snat/xtables targets (built with libnftnl as a rule dump reply), port usage and
// the doctor's findings over synthetic inputs, the backend selector, thresholds and rates.
#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include <doctest/doctest.h>

#include "sluice/conntrack.h"
#include "sluice/conntrack_stats.h"
#include "sluice/ct_diagnostics.h"
#include "sluice/nat_audit.h"

namespace sluice {
namespace {

using conntrack::Counter;

IPAddress ip(const char* text) { return IPAddress::parse(text).value(); }

// One ctnetlink stats message: nfgenmsg (family AF_UNSPEC, res_id = htons(cpu)) followed by
// big-endian u32 attributes, as ctnetlink_ct_stat_cpu_fill_info / ctnetlink_stat_ct_fill_info
// put them (nla_put_be32).
struct StatsMessage {
  alignas(nlmsghdr) char buf[1024];
  nlmsghdr* nlh;
  StatsMessage(uint8_t type, uint16_t cpu, std::vector<std::pair<uint16_t, uint32_t>> attrs) {
    nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | type;
    nlh->nlmsg_flags = NLM_F_MULTI;
    auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfh->nfgen_family = AF_UNSPEC;
    nfh->version = NFNETLINK_V0;
    nfh->res_id = htons(cpu);
    for (auto [t, v] : attrs) mnl_attr_put_u32(nlh, t, htonl(v));
  }
};

conntrack::Stats twoCpus(uint32_t failed0, uint32_t failed1) {
  conntrack::Stats s;
  conntrack::CpuCounters a, b;
  a.cpu = 0;
  b.cpu = 1;
  for (Counter c : conntrack::allCounters()) {
    a.set(c, 0);
    b.set(c, 0);
  }
  a.set(Counter::kInsertFailed, failed0);
  b.set(Counter::kInsertFailed, failed1);
  s.cpus = {b, a};  // out of order on purpose: sumCpus sorts
  conntrack::sumCpus(s);
  return s;
}

TEST_CASE("ct stats: a per-CPU message of a 6.x kernel parses into named counters") {
  StatsMessage m(IPCTNL_MSG_CT_GET_STATS_CPU, 3,
                 {{CTA_STATS_SEARCHED, 0}, {CTA_STATS_FOUND, 11}, {CTA_STATS_INVALID, 12},
                  {CTA_STATS_INSERT, 0}, {CTA_STATS_INSERT_FAILED, 7}, {CTA_STATS_DROP, 2},
                  {CTA_STATS_EARLY_DROP, 1}, {CTA_STATS_ERROR, 5}, {CTA_STATS_SEARCH_RESTART, 9},
                  {CTA_STATS_CLASH_RESOLVE, 4}, {CTA_STATS_CHAIN_TOOLONG, 6}, {99, 123}});
  Result<conntrack::CpuCounters> c = conntrack::parseCpuStats(m.nlh);
  REQUIRE(c.isOk());
  CHECK(c->cpu == 3);
  CHECK(c->get(Counter::kFound) == 11);
  CHECK(c->get(Counter::kInvalid) == 12);
  CHECK(c->get(Counter::kInsertFailed) == 7);
  CHECK(c->get(Counter::kDrop) == 2);
  CHECK(c->get(Counter::kEarlyDrop) == 1);
  CHECK(c->get(Counter::kError) == 5);
  CHECK(c->get(Counter::kSearchRestart) == 9);
  CHECK(c->get(Counter::kClashResolve) == 4);
  CHECK(c->get(Counter::kChainTooLong) == 6);
}

TEST_CASE("ct stats: counters an older kernel does not send stay unset, not zero") {
  // A 5.4 kernel: no clash_resolve, no chaintoolong.
  StatsMessage m(IPCTNL_MSG_CT_GET_STATS_CPU, 0, {{CTA_STATS_FOUND, 1}, {CTA_STATS_INSERT_FAILED, 3}});
  Result<conntrack::CpuCounters> c = conntrack::parseCpuStats(m.nlh);
  REQUIRE(c.isOk());
  CHECK(c->has(Counter::kInsertFailed));
  CHECK_FALSE(c->has(Counter::kClashResolve));
  CHECK_FALSE(c->has(Counter::kChainTooLong));
  conntrack::Stats s;
  s.cpus = {*c};
  conntrack::sumCpus(s);
  CHECK_FALSE(s.clashResolveReported());
  CHECK(conntrack::insertFailedNote(false).find("before 5.10") != std::string::npos);
  CHECK(conntrack::insertFailedNote(true).find("could NOT resolve") != std::string::npos);
}

TEST_CASE("ct stats: the global message gives entries and max, fill is their ratio") {
  StatsMessage m(IPCTNL_MSG_CT_GET_STATS, 0, {{CTA_STATS_GLOBAL_ENTRIES, 900}, {CTA_STATS_GLOBAL_MAX_ENTRIES, 1000}});
  conntrack::Stats s;
  REQUIRE(conntrack::parseGlobalStats(m.nlh, s).isOk());
  CHECK(s.entries == 900u);
  CHECK(s.maxEntries == 1000u);
  CHECK(s.maxSource == "netlink");
  REQUIRE(s.fill());
  CHECK(*s.fill() == doctest::Approx(0.9));
}

TEST_CASE("ct stats: wrong message types and malformed attributes are rejected") {
  StatsMessage global(IPCTNL_MSG_CT_GET_STATS, 0, {{CTA_STATS_GLOBAL_ENTRIES, 1}});
  CHECK(conntrack::parseCpuStats(global.nlh).status().code() == Code::kInvalidArgument);
  StatsMessage cpu(IPCTNL_MSG_CT_GET_STATS_CPU, 0, {});
  conntrack::Stats s;
  CHECK(conntrack::parseGlobalStats(cpu.nlh, s).code() == Code::kInvalidArgument);
  // A 2-byte attribute where a u32 belongs.
  StatsMessage shortAttr(IPCTNL_MSG_CT_GET_STATS_CPU, 0, {});
  mnl_attr_put_u16(shortAttr.nlh, CTA_STATS_FOUND, 1);
  CHECK(conntrack::parseCpuStats(shortAttr.nlh).status().code() == Code::kInvalidArgument);
}

TEST_CASE("ct stats: totals sum the CPUs, rates handle a u32 wrap per CPU") {
  conntrack::Stats before = twoCpus(0xfffffff0u, 10);
  conntrack::Stats after = twoCpus(0x10u, 30);
  CHECK(before.cpus.front().cpu == 0);
  CHECK(after.total.get(Counter::kInsertFailed) == 0x10u + 30);
  conntrack::Rates r = conntrack::rates(before, after, 2.0);
  // cpu0 wrapped: 0x20 = 32 in 2 s; cpu1: 20 in 2 s → (32 + 20) / 2.
  REQUIRE(r.get(Counter::kInsertFailed));
  CHECK(*r.get(Counter::kInsertFailed) == doctest::Approx(26.0));
  auto hot = conntrack::hotCpus(r, Counter::kInsertFailed, 1);
  REQUIRE(hot.size() == 1);
  CHECK(hot[0].first == 0);
  CHECK(hot[0].second == doctest::Approx(16.0));
  CHECK(conntrack::hotCpus(r, Counter::kDrop, 4).empty());
}

TEST_CASE("ct stats: thresholds parse NAME=RATE and fire strictly above the limit") {
  Result<conntrack::Threshold> t = conntrack::parseThreshold("insert_failed=5");
  REQUIRE(t.isOk());
  CHECK(t->counter == Counter::kInsertFailed);
  CHECK(t->perSecond == 5.0);
  CHECK(conntrack::parseThreshold("drop=0.5").isOk());
  for (const char* bad : {"insert_failed", "bogus=1", "drop=", "drop=-1", "drop=1x", "=3"}) {
    CAPTURE(bad);
    Result<conntrack::Threshold> r = conntrack::parseThreshold(bad);
    REQUIRE_FALSE(r.isOk());
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find("insert_failed") != std::string::npos);  // names the choices
  }
  conntrack::Rates r = conntrack::rates(twoCpus(0, 0), twoCpus(5, 5), 1.0);  // 10/s
  CHECK(conntrack::exceeded(r, {*t}).size() == 1);
  CHECK(conntrack::exceeded(r, {{Counter::kInsertFailed, 10.0}}).empty());  // not above
  CHECK(conntrack::exceeded(r, {{Counter::kDrop, 0.0}}).empty());
}

// ---- nftables rule messages ---------------------------------------------------------------

struct RuleMessage {
  alignas(nlmsghdr) char buf[4096];
  nlmsghdr* nlh;
  // A rule dump reply for `family table chain handle`, with the given expressions.
  RuleMessage(uint16_t family, const char* table, const char* chain, uint64_t handle,
              const std::vector<nftnl_expr*>& exprs) {
    nftnl_rule* r = nftnl_rule_alloc();
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table);
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain);
    nftnl_rule_set_u64(r, NFTNL_RULE_HANDLE, handle);
    for (nftnl_expr* e : exprs) nftnl_rule_add_expr(r, e);
    nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWRULE, family, NLM_F_MULTI, 1);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    nftnl_rule_free(r);
  }
};

nftnl_expr* masq(std::optional<uint32_t> flags) {
  nftnl_expr* e = nftnl_expr_alloc("masq");
  if (flags) nftnl_expr_set_u32(e, NFTNL_EXPR_MASQ_FLAGS, *flags);
  return e;
}

nftnl_expr* nat(uint32_t type, uint32_t flags) {
  nftnl_expr* e = nftnl_expr_alloc("nat");
  nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_TYPE, type);
  nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_FAMILY, NFPROTO_IPV4);
  nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_REG_ADDR_MIN, 1);
  if (flags) nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_FLAGS, flags);
  return e;
}

// An xtables target expression; the info blob is the kernel struct iptables-nft passes.
nftnl_expr* target(const char* name, uint32_t rev, const std::vector<uint8_t>& info) {
  nftnl_expr* e = nftnl_expr_alloc("target");
  nftnl_expr_set_str(e, NFTNL_EXPR_TG_NAME, name);
  nftnl_expr_set_u32(e, NFTNL_EXPR_TG_REV, rev);
  // libnftnl takes ownership of the info buffer (and frees it with the expression).
  void* blob = std::malloc(info.size());
  std::memcpy(blob, info.data(), info.size());
  nftnl_expr_set(e, NFTNL_EXPR_TG_INFO, blob, static_cast<uint32_t>(info.size()));
  return e;
}

// struct nf_nat_ipv4_multi_range_compat { u32 rangesize; { u32 flags; be32 min_ip, max_ip;
// u16 min, max } range[1]; } with the given flags.
std::vector<uint8_t> ipv4MultiRange(uint32_t flags) {
  std::vector<uint8_t> b(20, 0);
  uint32_t one = 1;
  std::memcpy(b.data(), &one, 4);
  std::memcpy(b.data() + 4, &flags, 4);
  return b;
}

// struct nf_nat_range2 (flags first), 52 bytes... only the flags matter here.
std::vector<uint8_t> natRange2(uint32_t flags) {
  std::vector<uint8_t> b(56, 0);
  std::memcpy(b.data(), &flags, 4);
  return b;
}

TEST_CASE("nat audit: native masquerade and snat statements with their flags and location") {
  RuleMessage plain(NFPROTO_IPV4, "nat", "post", 7, {masq(std::nullopt)});
  Result<std::vector<diag::NatStatement>> a = diag::parseRuleMessage(plain.nlh);
  REQUIRE(a.isOk());
  REQUIRE(a->size() == 1);
  CHECK(a->front().kind == diag::NatStatement::Kind::kMasquerade);
  CHECK(a->front().flags == 0u);
  CHECK_FALSE(a->front().fullyRandom());
  CHECK(a->front().location() == "ip nat post handle 7");

  RuleMessage random(NFPROTO_INET, "fw", "srcnat", 9, {masq(diag::kNatRangeProtoRandomFully)});
  Result<std::vector<diag::NatStatement>> b = diag::parseRuleMessage(random.nlh);
  REQUIRE(b.isOk());
  REQUIRE(b->size() == 1);
  CHECK(b->front().fullyRandom());
  CHECK(b->front().family == "inet");

  RuleMessage snat(NFPROTO_IPV6, "t", "c", 3, {nat(NFT_NAT_SNAT, diag::kNatRangeMapIps | diag::kNatRangeProtoRandom)});
  Result<std::vector<diag::NatStatement>> c = diag::parseRuleMessage(snat.nlh);
  REQUIRE(c.isOk());
  REQUIRE(c->size() == 1);
  CHECK(c->front().kind == diag::NatStatement::Kind::kSnat);
  CHECK(c->front().flags == (diag::kNatRangeMapIps | diag::kNatRangeProtoRandom));
  CHECK_FALSE(c->front().fullyRandom());

  // dnat is not source NAT; a rule without NAT yields nothing.
  RuleMessage dnat(NFPROTO_IPV4, "t", "c", 4, {nat(NFT_NAT_DNAT, 0)});
  CHECK(diag::parseRuleMessage(dnat.nlh)->empty());
  RuleMessage counter(NFPROTO_IPV4, "t", "c", 5, {nftnl_expr_alloc("counter")});
  CHECK(diag::parseRuleMessage(counter.nlh)->empty());
}

TEST_CASE("nat audit: iptables-nft MASQUERADE and SNAT targets are decoded by revision") {
  RuleMessage m0(NFPROTO_IPV4, "nat", "POSTROUTING", 2, {target("MASQUERADE", 0, ipv4MultiRange(0))});
  Result<std::vector<diag::NatStatement>> a = diag::parseRuleMessage(m0.nlh);
  REQUIRE(a.isOk());
  REQUIRE(a->size() == 1);
  CHECK(a->front().origin == diag::NatStatement::Origin::kXtables);
  CHECK(a->front().target == "MASQUERADE rev 0");
  CHECK(a->front().flags == 0u);

  RuleMessage m1(NFPROTO_IPV4, "nat", "POSTROUTING", 3,
                 {target("MASQUERADE", 0, ipv4MultiRange(diag::kNatRangeProtoRandomFully))});
  CHECK(diag::parseRuleMessage(m1.nlh)->front().fullyRandom());

  RuleMessage s2(NFPROTO_IPV4, "nat", "POSTROUTING", 4,
                 {target("SNAT", 2, natRange2(diag::kNatRangeMapIps | diag::kNatRangeProtoRandomFully))});
  Result<std::vector<diag::NatStatement>> c = diag::parseRuleMessage(s2.nlh);
  REQUIRE(c->size() == 1);
  CHECK(c->front().kind == diag::NatStatement::Kind::kSnat);
  CHECK(c->front().fullyRandom());

  // Not a NAT target: ignored. A NAT target with a revision sluice does not know: flags unset.
  RuleMessage accept(NFPROTO_IPV4, "filter", "INPUT", 5, {target("LOG", 0, std::vector<uint8_t>(32, 0))});
  CHECK(diag::parseRuleMessage(accept.nlh)->empty());
  RuleMessage future(NFPROTO_IPV4, "nat", "POSTROUTING", 6, {target("SNAT", 9, natRange2(0x10))});
  REQUIRE(diag::parseRuleMessage(future.nlh)->size() == 1);
  CHECK_FALSE(diag::parseRuleMessage(future.nlh)->front().flags.has_value());
}

TEST_CASE("nat audit: xtNatFlags offsets by target, revision and family, short blobs refused") {
  const uint32_t f = 0x14;
  std::vector<uint8_t> v4 = ipv4MultiRange(f);
  std::vector<uint8_t> r2 = natRange2(f);
  CHECK(diag::xtNatFlags("MASQUERADE", 0, NFPROTO_IPV4, v4.data(), v4.size()) == f);
  CHECK(diag::xtNatFlags("MASQUERADE", 0, NFPROTO_IPV6, r2.data(), r2.size()) == f);
  CHECK(diag::xtNatFlags("SNAT", 0, NFPROTO_IPV4, v4.data(), v4.size()) == f);
  CHECK(diag::xtNatFlags("SNAT", 1, NFPROTO_IPV6, r2.data(), r2.size()) == f);
  CHECK(diag::xtNatFlags("SNAT", 2, NFPROTO_IPV4, r2.data(), r2.size()) == f);
  CHECK_FALSE(diag::xtNatFlags("MASQUERADE", 0, NFPROTO_IPV4, v4.data(), 6).has_value());
  CHECK_FALSE(diag::xtNatFlags("SNAT", 0, NFPROTO_IPV6, r2.data(), r2.size()).has_value());
  CHECK_FALSE(diag::xtNatFlags("DNAT", 2, NFPROTO_IPV4, r2.data(), r2.size()).has_value());
  CHECK(diag::natFlagsText(0x14) == "random,fully-random");
  CHECK(diag::natFlagsText(0x1).empty());
}

// ---- ports --------------------------------------------------------------------------------

conntrack::Flow snatFlow(const char* client, uint16_t cport, const char* dst, uint16_t dport, uint16_t snatPort,
                         Protocol proto = Protocol::kTCP) {
  conntrack::Flow f;
  f.original = {ip(client), ip(dst), cport, dport, proto};
  f.reply = {ip(dst), ip("203.0.113.1"), dport, snatPort, proto};
  f.status = conntrack::kStatusConfirmed | conntrack::kStatusSrcNat;
  return f;
}

TEST_CASE("ports: SNAT tuples are grouped per (protocol, SNAT IP, destination) with top talkers") {
  std::vector<conntrack::Flow> flows = {
      snatFlow("198.18.1.10", 40000, "203.0.113.2", 80, 40000),
      snatFlow("198.18.1.11", 40000, "203.0.113.2", 80, 51000),
      snatFlow("198.18.1.11", 40001, "203.0.113.2", 80, 40001),
      snatFlow("198.18.1.10", 40002, "203.0.113.2", 443, 40002),
      snatFlow("198.18.1.12", 5353, "203.0.113.2", 80, 5353, Protocol::kUDP),
  };
  conntrack::Flow direct = snatFlow("198.18.1.13", 1, "203.0.113.2", 80, 1);
  direct.status = conntrack::kStatusConfirmed;  // not source-NATed: not counted
  flows.push_back(direct);

  diag::PortReport r = diag::analyzePorts(flows, diag::PortRange{40000, 40009}, 1);
  CHECK(r.flows == 6);
  CHECK(r.snatFlows == 5);
  REQUIRE(r.usage.size() == 3);
  CHECK(r.usage[0].proto == Protocol::kTCP);
  CHECK(r.usage[0].dst == ip("203.0.113.2"));
  CHECK(r.usage[0].dstPort == 80);
  CHECK(r.usage[0].snatIP == ip("203.0.113.1"));
  CHECK(r.usage[0].tuples == 3);
  CHECK(r.usage[0].clients == 2);
  CHECK(r.usage[0].utilization == doctest::Approx(0.3));
  REQUIRE(r.topTalkers.size() == 1);  // `top` bounds the list
  CHECK(r.topTalkers[0].flows == 2);  // .10 and .11 tie at 2; the lower address first
  CHECK(r.topTalkers[0].source == ip("198.18.1.10"));
  CHECK(diag::parsePortRange("32768\t60999\n") == diag::PortRange{32768, 60999});
  CHECK_FALSE(diag::parsePortRange("60999 32768").has_value());
  CHECK_FALSE(diag::parsePortRange("").has_value());
  CHECK(diag::kNatDefaultRange.size() == 64512);
}

// ---- doctor -------------------------------------------------------------------------------

diag::NatStatement rule(uint64_t handle, uint32_t flags) {
  diag::NatStatement s;
  s.family = "ip";
  s.table = "nat";
  s.chain = "post";
  s.handle = handle;
  s.flags = flags;
  return s;
}

size_t countSeverity(const std::vector<diag::Finding>& fs, diag::Severity s) {
  size_t n = 0;
  for (const auto& f : fs) n += f.severity == s ? 1 : 0;
  return n;
}

TEST_CASE("doctor: every source NAT without fully-random is a finding with its location") {
  diag::DoctorInput in;
  in.nat = {rule(1, 0), rule(2, diag::kNatRangeProtoRandomFully), rule(3, diag::kNatRangeProtoRandom)};
  in.stats = twoCpus(0, 0);
  in.stats->entries = 10;
  in.stats->maxEntries = 1000;
  std::vector<diag::Finding> fs = diag::diagnose(in);
  std::vector<std::string> where;
  for (const auto& f : fs) {
    if (f.id == "snat-not-fully-random") {
      where.push_back(f.location);
      CHECK(f.severity == diag::Severity::kWarning);
      CHECK(f.tradeoff.find("port preservation") != std::string::npos);
      CHECK(f.fix.find("fully-random") != std::string::npos);
    }
  }
  CHECK(where == std::vector<std::string>{"ip nat post handle 1", "ip nat post handle 3"});
  // `random` alone gets its own explanation.
  for (const auto& f : fs) {
    if (f.location == "ip nat post handle 3") CHECK(f.evidence.find("older kernels") != std::string::npos);
  }
}

TEST_CASE("doctor: a healthy node has only informational findings") {
  diag::DoctorInput in;
  in.nat = {rule(1, diag::kNatRangeProtoRandomFully)};
  in.stats = twoCpus(0, 0);
  in.stats->entries = 100;
  in.stats->maxEntries = 1000;
  std::vector<diag::Finding> fs = diag::diagnose(in);
  CHECK(countSeverity(fs, diag::Severity::kWarning) == 0);
  CHECK(countSeverity(fs, diag::Severity::kCritical) == 0);
  bool fill = false;
  for (const auto& f : fs) fill = fill || (f.id == "table-fill" && f.evidence.find("100 entries of max 1000") != std::string::npos);
  CHECK(fill);
}

TEST_CASE("doctor: insert failures, drops, a full table and legacy iptables are reported, worst first") {
  diag::DoctorInput in;
  in.nat = {rule(1, 0)};
  in.stats = twoCpus(3, 40);
  in.stats->total.set(Counter::kDrop, 2);
  in.stats->total.set(Counter::kEarlyDrop, 5);
  in.stats->entries = 960;
  in.stats->maxEntries = 1000;
  in.legacyTables = {"nat", "filter"};
  std::vector<diag::Finding> fs = diag::diagnose(in);
  REQUIRE_FALSE(fs.empty());
  CHECK(fs.front().severity == diag::Severity::kCritical);
  auto find = [&](const std::string& id) -> const diag::Finding* {
    for (const auto& f : fs) if (f.id == id) return &f;
    return nullptr;
  };
  REQUIRE(find("insert-failed"));
  CHECK(find("insert-failed")->evidence.find("cpu1=40 cpu0=3") != std::string::npos);  // hot CPU first
  REQUIRE(find("table-full-drop"));
  CHECK(find("table-full-drop")->severity == diag::Severity::kCritical);
  REQUIRE(find("table-fill"));
  CHECK(find("table-fill")->severity == diag::Severity::kCritical);  // 96% ≥ kFillCritical
  REQUIRE(find("legacy-iptables"));
  CHECK(find("legacy-iptables")->evidence.find("nat, filter") != std::string::npos);
  for (size_t i = 1; i < fs.size(); ++i) CHECK(fs[i - 1].severity >= fs[i].severity);

  in.stats->entries = 850;  // 85%: a warning, not critical
  for (const auto& f : diag::diagnose(in)) {
    if (f.id == "table-fill") CHECK(f.severity == diag::Severity::kWarning);
  }
  in.stats.reset();
  bool unavailable = false;
  for (const auto& f : diag::diagnose(in)) unavailable = unavailable || f.id == "stats-unavailable";
  CHECK(unavailable);
}

// ---- flush-backend selector ---------------------------------------------------------------

TEST_CASE("backend selector: flows answered by the backend, optionally per Service and protocol") {
  conntrack::Flow viaService;  // client → VIP 198.19.0.1:53, DNATed to backend 198.18.1.11:5353
  viaService.original = {ip("198.18.1.100"), ip("198.19.0.1"), 40000, 53, Protocol::kUDP};
  viaService.reply = {ip("198.18.1.11"), ip("198.18.1.100"), 5353, 40000, Protocol::kUDP};
  viaService.status = conntrack::kStatusDstNat;
  conntrack::Flow direct;  // client → backend directly
  direct.original = {ip("198.18.1.100"), ip("198.18.1.11"), 40001, 5353, Protocol::kTCP};
  direct.reply = {ip("198.18.1.11"), ip("198.18.1.100"), 5353, 40001, Protocol::kTCP};
  conntrack::Flow fromBackend;  // the backend as a client: not its traffic to drain
  fromBackend.original = {ip("198.18.1.11"), ip("203.0.113.2"), 40002, 80, Protocol::kTCP};
  fromBackend.reply = {ip("203.0.113.2"), ip("198.18.1.11"), 80, 40002, Protocol::kTCP};

  conntrack::BackendSelector all{ip("198.18.1.11")};
  CHECK(all.matches(viaService));
  CHECK(all.matches(direct));
  CHECK_FALSE(all.matches(fromBackend));

  conntrack::BackendSelector service{ip("198.18.1.11"), ip("198.19.0.1"), 53, Protocol::kUDP};
  CHECK(service.matches(viaService));
  CHECK_FALSE(service.matches(direct));
  service.vipPort = 54;
  CHECK_FALSE(service.matches(viaService));

  conntrack::BackendSelector tcpOnly{ip("198.18.1.11"), std::nullopt, std::nullopt, Protocol::kTCP};
  CHECK_FALSE(tcpOnly.matches(viaService));
  CHECK(tcpOnly.matches(direct));
  conntrack::BackendSelector v6{ip("fd00:1::11")};
  CHECK_FALSE(v6.matches(direct));
}

}  // namespace
}  // namespace sluice
