// The packet tracer: the planner's real ruleset programmed into a FakeBackend through DataPlane,
// then hand-built rulesets for each expression kind and for the netfilter hook order.
#include <doctest/doctest.h>

#include <fmt/format.h>

#include "builders.h"
#include "sluice/dataplane.h"
#include "sluice/nft/rule_builder.h"
#include "sluice/nft/tracer.h"

using namespace sluice;
using namespace sluice::nft;
using namespace sluice::testing;

namespace {

// A ClusterIP Service "default/<name>" on port 80/TCP with `backends` behind target port 8080.
void addService(Snapshot& s, const std::string& name, const char* clusterIP, std::vector<Endpoint> backends) {
  s.upsertService(clusterIPService("default", name, clusterIP, {{"http", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("default", name + "-1", name, {{"http", Protocol::kTCP, 8080}}, std::move(backends)));
}

// The planner's table for three Services: web (three endpoints elsewhere, one of them local),
// empty (no endpoints), local-only (iTP Local, endpoints only on other nodes).
struct Programmed {
  FakeBackend fake;
  Programmed() {
    DataPlane dp(config(), fake);
    Snapshot s;
    addService(s, "web", "198.19.0.10",
               {endpoint("198.18.1.11", true, true, false, "node-a"), endpoint("198.18.1.12", true, true, false, "node-b"),
                endpoint("198.18.1.13", true, true, false, "node-b")});
    addService(s, "empty", "198.19.0.11", {});
    Service local = clusterIPService("default", "local-only", "198.19.0.12", {{"http", Protocol::kTCP, 80, 0}});
    local.internalTrafficPolicy = TrafficPolicy::kLocal;
    s.upsertService(local);
    s.upsertSlice(slice("default", "local-only-1", "local-only", {{"http", Protocol::kTCP, 8080}},
                        {endpoint("198.18.1.14", true, true, false, "node-b")}));
    auto r = dp.sync(s);
    REQUIRE_MESSAGE(r.status.isOk(), r.status.toString());
  }
};

TracePacket tcp(const char* src, const char* dst, uint16_t dport, Entry entry = Entry::kPrerouting) {
  TracePacket p;
  p.saddr = ip(src);
  p.daddr = ip(dst);
  p.dport = dport;
  p.entry = entry;
  p.iifname = entry == Entry::kPrerouting ? "eth0" : "";
  return p;
}

Trace mustTrace(const FakeBackend& fake, const TracePacket& p) {
  auto t = trace(fake, p);
  REQUIRE_MESSAGE(t.isOk(), t.status().toString());
  return *t;
}

NatTarget target(const char* addr, uint16_t port) { return {ip(addr), port}; }

bool mentions(const TraceOutcome& o, const std::string& needle) {
  for (const auto& s : o.steps)
    if (s.toString().find(needle) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("tracer: ClusterIP traffic from a pod reaches every endpoint, equally likely, unmasqueraded") {
  Programmed p;
  Trace t = mustTrace(p.fake, tcp("198.18.2.5", "198.19.0.10", 80));
  CHECK(t.disposition() == Disposition::kAccepted);
  CHECK(t.dnatTargets() ==
        std::set<NatTarget>{target("198.18.1.11", 8080), target("198.18.1.12", 8080), target("198.18.1.13", 8080)});
  REQUIRE(t.outcomes.size() == 3);
  double total = 0;
  for (const auto& o : t.outcomes) {
    CHECK(o.probability == doctest::Approx(1.0 / 3));
    CHECK_FALSE(o.masqueraded());
    CHECK_FALSE(o.delivered);
    CHECK(mentions(o, "nat-prerouting[0]: jump services"));
    CHECK(mentions(o, "svc-"));
    CHECK(mentions(o, "routing: ip 198.18.1.1"));  // forwarded to the endpoint
    total += o.probability;
  }
  CHECK(total == doctest::Approx(1.0));
  const std::string text = t.toString();
  CHECK(text.find("outcome 1 of 3 (33.3 %): accepted, dnat to 198.18.1.1") != std::string::npos);
  CHECK(text.find("ip sluice nat-prerouting[0]: jump services") != std::string::npos);
}

TEST_CASE("tracer: ClusterIP traffic from outside the cluster CIDR is masqueraded fully-random") {
  Programmed p;
  Trace t = mustTrace(p.fake, tcp("203.0.113.2", "198.19.0.10", 80));
  CHECK(t.disposition() == Disposition::kAccepted);
  CHECK(t.dnatTargets().size() == 3);
  CHECK(t.allMasqueraded());
  for (const auto& o : t.outcomes) {
    CHECK(o.fullyRandom());
    CHECK(o.mark == 0);  // the masquerade bit is cleared again before it leaves
    CHECK(mentions(o, "meta mark set meta mark | 0x00004000"));
  }
}

TEST_CASE("tracer: a pod load-balanced to itself is masqueraded (hairpin), the other endpoints are not") {
  Programmed p;
  Trace t = mustTrace(p.fake, tcp("198.18.1.11", "198.19.0.10", 80));
  REQUIRE(t.outcomes.size() == 3);
  int masqueraded = 0;
  for (const auto& o : t.outcomes) {
    REQUIRE(o.dnat);
    CHECK(o.masqueraded() == (o.dnat->address == ip("198.18.1.11")));
    if (o.masqueraded()) {
      ++masqueraded;
      CHECK(mentions(o, "@hairpin"));
    }
  }
  CHECK(masqueraded == 1);
  CHECK(t.anyMasqueraded());
  CHECK_FALSE(t.allMasqueraded());
}

TEST_CASE("tracer: a Service without endpoints is rejected, iTP Local without local endpoints drops") {
  Programmed p;
  Trace empty = mustTrace(p.fake, tcp("198.18.2.5", "198.19.0.11", 80));
  CHECK(empty.disposition() == Disposition::kRejected);
  REQUIRE(empty.outcomes.size() == 1);
  CHECK(empty.dnatTargets().empty());
  REQUIRE(empty.outcomes[0].reject);
  // TCP is refused with a reset (see planBase for why not an ICMP error).
  CHECK(empty.outcomes[0].reject->toString() == "tcp reset");
  CHECK(mentions(empty.outcomes[0], "goto reject-chain (default/empty:http)"));
  CHECK(mentions(empty.outcomes[0], "reject-chain[0]: reject"));

  Trace local = mustTrace(p.fake, tcp("198.18.2.5", "198.19.0.12", 80));
  CHECK(local.disposition() == Disposition::kDropped);
  CHECK_FALSE(local.outcomes[0].reject);

  // A port the Service does not have is rejected by the cluster-IP check.
  Trace wrongPort = mustTrace(p.fake, tcp("198.18.2.5", "198.19.0.10", 81));
  CHECK(wrongPort.disposition() == Disposition::kRejected);
  CHECK(mentions(wrongPort.outcomes[0], "cluster-ips-check[0]"));
  // The same Service from a local process goes through nat-output and filter-output.
  Trace out = mustTrace(p.fake, tcp("198.18.0.1", "198.19.0.11", 80, Entry::kOutput));
  CHECK(out.disposition() == Disposition::kRejected);
  CHECK(mentions(out.outcomes[0], "filter-output"));
}

TEST_CASE("tracer: locally generated ClusterIP traffic, established flows and unrelated traffic") {
  Programmed p;
  Trace out = mustTrace(p.fake, tcp("198.18.0.1", "198.19.0.10", 80, Entry::kOutput));
  CHECK(out.dnatTargets().size() == 3);
  CHECK(mentions(out.outcomes[0], "nat-output[0]"));
  CHECK_FALSE(out.anyMasqueraded());  // 198.18.0.1 is inside the cluster CIDR
  // From a node address outside the cluster CIDR the flow is masqueraded.
  CHECK(mustTrace(p.fake, tcp("198.51.100.1", "198.19.0.10", 80, Entry::kOutput)).allMasqueraded());

  TracePacket est = tcp("198.18.2.5", "198.19.0.10", 80);
  est.ctState = kCtStateEstablished;
  Trace e = mustTrace(p.fake, est);
  CHECK(e.disposition() == Disposition::kAccepted);
  CHECK(e.dnatTargets().empty());  // an existing connection keeps its mapping; the ruleset does not decide it
  CHECK(mentions(e.outcomes[0], "nat chains see only the first packet"));

  Trace other = mustTrace(p.fake, tcp("198.18.2.5", "198.18.2.6", 22));
  CHECK(other.disposition() == Disposition::kAccepted);
  CHECK(other.dnatTargets().empty());
  CHECK_FALSE(other.anyMasqueraded());
}

TEST_CASE("tracer: IPv6 ruleset of the planner (ip6 payload offsets)") {
  FakeBackend fake;
  DataPlane dp(config(IPFamily::kV6), fake);
  Snapshot s;
  s.upsertService(clusterIPService("default", "web6", "fd00:100::10", {{"http", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("default", "web6-1", "web6", {{"http", Protocol::kTCP, 8080}},
                      {endpoint("fd00:1::b", true, true, false, "node-b"), endpoint("fd00:1::c", true, true, false, "node-b")}));
  REQUIRE(dp.sync(s).status.isOk());
  Trace t = mustTrace(fake, tcp("fd00:1::64", "fd00:100::10", 80));
  CHECK(t.dnatTargets() == std::set<NatTarget>{target("fd00:1::b", 8080), target("fd00:1::c", 8080)});
  CHECK_FALSE(t.anyMasqueraded());
  CHECK(t.outcomes[0].dnat->toString().front() == '[');
  Trace outside = mustTrace(fake, tcp("fd00:2::2", "fd00:100::10", 80));
  CHECK(outside.allMasqueraded());
  Trace wrong = mustTrace(fake, tcp("fd00:1::64", "fd00:100::10", 81));
  REQUIRE(wrong.outcomes[0].reject);
  CHECK(wrong.outcomes[0].reject->toString() == "tcp reset");
  // An IPv4 packet does not see the ip6 table at all.
  Trace v4 = mustTrace(fake, tcp("198.18.2.5", "198.19.0.10", 80));
  CHECK(v4.outcomes.size() == 1);
  CHECK(v4.outcomes[0].steps.size() == 1);  // only the routing note
}

// --- hand-built rulesets ---------------------------------------------------------------------

namespace {

const TableRef kT{Family::kIPv4, "t"};

Bytes be16(uint16_t v) { return Bytes{uint8_t(v >> 8), uint8_t(v)}; }

Rule rule(const std::string& chain, std::vector<Expr> exprs, std::string text) {
  Rule r;
  r.table = kT;
  r.chain = chain;
  r.exprs = std::move(exprs);
  r.text = std::move(text);
  return r;
}

Expr verdict(VerdictCode c, std::string chain = {}) { return Immediate{kRegVerdict, {}, Verdict{c, std::move(chain)}}; }
Expr dport() { return Payload{PayloadBase::kTransport, 2, 2, kReg1}; }
Expr daddr() { return Payload{PayloadBase::kNetwork, 16, 4, kReg1}; }

// Table t with a filter chain on each hook at priority 0 and a nat prerouting chain at -100,
// plus the given extra objects and rules.
FakeBackend build(const std::vector<Object>& objects, const std::vector<Rule>& rules) {
  FakeBackend fake;
  Transaction tx;
  tx.add(Table{kT, ""});
  tx.add(Chain{kT, "pre", BaseHook{"nat", Hook::kPrerouting, -100}});
  tx.add(Chain{kT, "fwd", BaseHook{"filter", Hook::kForward, 0}});
  tx.add(Chain{kT, "in", BaseHook{"filter", Hook::kInput, 0}});
  tx.add(Chain{kT, "post", BaseHook{"nat", Hook::kPostrouting, 100}});
  for (const auto& o : objects) tx.add(o);
  for (const auto& r : rules) tx.add(r);
  Status st = fake.apply(tx);
  REQUIRE_MESSAGE(st.isOk(), st.toString());
  return fake;
}

Chain regular(const std::string& name) { return Chain{kT, name, std::nullopt}; }

}  // namespace

TEST_CASE("tracer: cmp operators, bitwise prefixes, meta and counters") {
  FakeBackend fake = build({}, {
      // th dport 1000-2000 drop, as nft encodes a range: two cmps
      rule("fwd", {dport(), Cmp{kReg1, CmpOp::kGte, be16(1000)}, Cmp{kReg1, CmpOp::kLte, be16(2000)}, Counter{},
                   verdict(VerdictCode::kDrop)}, "th dport 1000-2000 counter drop"),
      rule("fwd", {dport(), Cmp{kReg1, CmpOp::kLt, be16(10)}, verdict(VerdictCode::kDrop)}, "th dport < 10 drop"),
      rule("fwd", {dport(), Cmp{kReg1, CmpOp::kGt, be16(60000)}, verdict(VerdictCode::kDrop)}, "th dport > 60000 drop"),
      rule("fwd", {Meta{MetaKey::kNfproto, kReg1}, Cmp{kReg1, CmpOp::kNeq, Bytes{2}}, verdict(VerdictCode::kDrop)},
           "meta nfproto != ipv4 drop"),
      rule("fwd", {Meta{MetaKey::kProtocol, kReg1}, Cmp{kReg1, CmpOp::kNeq, be16(0x0800)}, verdict(VerdictCode::kDrop)},
           "meta protocol != ip drop"),
      RuleBuilder(kT, "fwd").saddrInPrefix(IPPrefix::parse("203.0.113.0/24").value(), false).reject().build(),
      rule("fwd", {Meta{MetaKey::kL4proto, kReg1}, Cmp{kReg1, CmpOp::kEq, Bytes{17}}, verdict(VerdictCode::kAccept)},
           "meta l4proto udp accept"),
      RuleBuilder(kT, "fwd").markAndEq(0xff, 0x7).verdict(VerdictCode::kDrop).build(),
  });
  auto disp = [&](TracePacket p) { return mustTrace(fake, p).disposition(); };
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 1500)) == Disposition::kDropped);
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 1000)) == Disposition::kDropped);
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 2001)) == Disposition::kAccepted);
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 9)) == Disposition::kDropped);
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 10)) == Disposition::kAccepted);
  CHECK(disp(tcp("198.18.2.5", "198.18.3.5", 60001)) == Disposition::kDropped);
  CHECK(disp(tcp("203.0.113.77", "198.18.3.5", 80)) == Disposition::kRejected);
  CHECK(disp(tcp("203.0.114.77", "198.18.3.5", 80)) == Disposition::kAccepted);
  TracePacket marked = tcp("198.18.2.5", "198.18.3.5", 80);
  marked.mark = 0x1207;
  CHECK(disp(marked) == Disposition::kDropped);
  marked.protocol = Protocol::kUDP;  // accepted before the mark rule
  CHECK(disp(marked) == Disposition::kAccepted);
  marked.mark = 0x1208;
  marked.protocol = Protocol::kTCP;
  CHECK(disp(marked) == Disposition::kAccepted);
}

TEST_CASE("tracer: jump, goto, return, verdict maps and plain, inverted and concatenated set lookups") {
  Set blocked{kT, "blocked", {DataType::kIPv4Addr}, {}, 0, "", {}};
  Set pairs{kT, "pairs", {DataType::kIPv4Addr, DataType::kInetService}, {}, 0, "", {}};
  Set dispatch{kT, "dispatch", {DataType::kInetService}, {DataType::kVerdict}, 0, "", {}};
  FakeBackend fake = build(
      {regular("a"), regular("b"), regular("c"), blocked, pairs, dispatch},
      {
          rule("a", {Payload{PayloadBase::kNetwork, 12, 4, kReg1}, Lookup{kReg1, "blocked"}, verdict(VerdictCode::kDrop)},
               "ip saddr @blocked drop"),
          rule("a", {dport(), Cmp{kReg1, CmpOp::kEq, be16(7)}, verdict(VerdictCode::kReturn)}, "th dport 7 return"),
          rule("a", {dport(), Lookup{kReg1, "dispatch", -1, kRegVerdict}}, "th dport vmap @dispatch"),
          rule("a", {verdict(VerdictCode::kDrop)}, "drop"),
          rule("b", {daddr(), Payload{PayloadBase::kTransport, 2, 2, kReg32_00 + 1}, Lookup{kReg1, "pairs"},
                     verdict(VerdictCode::kAccept)}, "ip daddr . th dport @pairs accept"),
          rule("b", {verdict(VerdictCode::kGoto, "c")}, "goto c"),
          rule("c", {Payload{PayloadBase::kNetwork, 12, 4, kReg1}, Lookup{kReg1, "blocked", -1, std::nullopt, true},
                     verdict(VerdictCode::kDrop)},
               "ip saddr != @blocked drop"),
          rule("fwd", {verdict(VerdictCode::kJump, "a")}, "jump a"),
          rule("fwd", {verdict(VerdictCode::kDrop)}, "drop"),
      });
  Transaction elems;
  const uint8_t bad[4] = {198, 18, 9, 9}, dst[4] = {198, 18, 3, 5};
  elems.add(Elements{kT, "blocked", {Element{KeyBuilder().ipv4(bad).take(), {}, {}, {}}}});
  elems.add(Elements{kT, "pairs", {Element{KeyBuilder().ipv4(dst).port(443).take(), {}, {}, {}}}});
  elems.add(Elements{kT, "dispatch", {Element{be16(443), {}, Verdict{VerdictCode::kJump, "b"}, "https"},
                                      Element{be16(8443), {}, Verdict{VerdictCode::kGoto, "c"}, {}}}});
  REQUIRE(fake.apply(elems).isOk());

  // 443 to the listed address: jump a → vmap jump b → concatenation matches → accept
  Trace ok = mustTrace(fake, tcp("198.18.2.5", "198.18.3.5", 443));
  CHECK(ok.disposition() == Disposition::kAccepted);
  CHECK(mentions(ok.outcomes[0], "@dispatch[443] → jump b (https)"));
  CHECK(mentions(ok.outcomes[0], "b[0]: ip daddr . th dport @pairs accept"));
  // 443 elsewhere: b falls through to goto c; the source is not blocked → drop by the inverted lookup
  CHECK(mustTrace(fake, tcp("198.18.2.5", "198.18.3.6", 443)).disposition() == Disposition::kDropped);
  // a blocked source is dropped first
  CHECK(mustTrace(fake, tcp("198.18.9.9", "198.18.3.5", 443)).disposition() == Disposition::kDropped);
  // port 7 returns from a to fwd, whose next rule drops
  Trace ret = mustTrace(fake, tcp("198.18.2.5", "198.18.3.5", 7));
  CHECK(ret.disposition() == Disposition::kDropped);
  CHECK(mentions(ret.outcomes[0], "fwd[1]: drop"));
  // 8443 → goto c from the blocked... source not blocked → c's inverted lookup drops
  CHECK(mustTrace(fake, tcp("198.18.2.5", "198.18.3.5", 8443)).disposition() == Disposition::kDropped);
}

TEST_CASE("tracer: numgen enumerates every slot, map misses break the rule, nested draws multiply") {
  Set slots{kT, "slots", {DataType::kInteger}, {DataType::kIPv4Addr, DataType::kInetService}, 0, "", {}};
  slots.typeofKey = Typeof::kNumgen;
  FakeBackend fake = build({slots, regular("svc")},
                           {
                               rule("pre", {dport(), Cmp{kReg1, CmpOp::kEq, be16(80)}, verdict(VerdictCode::kJump, "svc")},
                                    "th dport 80 jump svc"),
                               // slots 4..7; slot 7 is empty, so one draw in four falls through
                               RuleBuilder(kT, "svc").l4proto(Protocol::kTCP).dnatNumgenMap(4, 4, "slots").build(),
                               // nested: an inline map of two after a coin flip on the mark
                               rule("svc", {Numgen{kReg1, 2, 0}, MetaSet{MetaKey::kMark, kReg1}}, "meta mark set numgen random mod 2"),
                               RuleBuilder(kT, "svc")
                                   .l4proto(Protocol::kTCP)
                                   .dnatNumgen({{ip("198.18.5.1"), 81}, {ip("198.18.5.2"), 82}})
                                   .build(),
                           });
  Transaction elems;
  std::vector<Element> es;
  for (uint32_t slot = 4; slot < 7; ++slot) {
    const uint8_t a[4] = {198, 18, 4, uint8_t(slot)};
    es.push_back(Element{KeyBuilder().u32host(slot).take(), KeyBuilder().ipv4(a).port(8080).take(), {}, {}});
  }
  elems.add(Elements{kT, "slots", es});
  REQUIRE(fake.apply(elems).isOk());
  Trace t = mustTrace(fake, tcp("198.18.2.5", "198.19.0.1", 80));
  CHECK(t.dnatTargets() == std::set<NatTarget>{target("198.18.4.4", 8080), target("198.18.4.5", 8080),
                                                target("198.18.4.6", 8080), target("198.18.5.1", 81),
                                                target("198.18.5.2", 82)});
  double total = 0;
  for (const auto& o : t.outcomes) {
    total += o.probability;
    if (o.dnat->port == 8080) CHECK(o.probability == doctest::Approx(0.25));
    else CHECK(o.probability == doctest::Approx(0.0625));  // 1/4 (empty slot) × 1/2 (mark) × 1/2 (endpoint)
  }
  CHECK(total == doctest::Approx(1.0));
  CHECK(t.outcomes.size() == 3 + 2 * 2);  // the mark value (0 or 1) tells outcomes apart
  CHECK(mentions(t.outcomes[0], "numgen → "));
  CHECK(mentions(t.outcomes[0], "@slots["));

  TraceOptions few;
  few.maxPaths = 3;
  CHECK(trace(fake, tcp("198.18.2.5", "198.19.0.1", 80), few).status().code() == Code::kResourceExhausted);
}

TEST_CASE("tracer: hook order by priority across tables, one NAT per kind, snat and local delivery") {
  const TableRef other{Family::kInet, "other"};
  FakeBackend fake = build({}, {
      rule("pre", {daddr(), Cmp{kReg1, CmpOp::kEq, Bytes{198, 18, 0, 1}},
                   Immediate{kReg32_00 + 1, be16(8080), {}}, Nat{NatType::kDnat, Family::kIPv4, kReg1, kReg32_00 + 1, 0}},
           "ip daddr 198.18.0.1 dnat to 198.18.0.1:8080 (sic: address from the daddr register)"),
      rule("in", {dport(), Cmp{kReg1, CmpOp::kEq, be16(8080)}, Counter{}, verdict(VerdictCode::kAccept)},
           "th dport 8080 counter accept"),
      rule("in", {verdict(VerdictCode::kDrop)}, "drop"),
      rule("post", {Immediate{kReg1, Bytes{198, 18, 0, 1}, {}}, Nat{NatType::kSnat, Family::kIPv4, kReg1, 0, 0}},
           "snat to 198.18.0.1"),
  });
  Transaction tx;
  tx.add(Table{other, ""});
  // An earlier filter chain (priority -200) of another table, and a later nat chain that must
  // be skipped once the first nat chain did DNAT.
  tx.add(Chain{other, "early", BaseHook{"filter", Hook::kPrerouting, -200}});
  tx.add(Chain{other, "late-nat", BaseHook{"nat", Hook::kPrerouting, -50}});
  Rule early = rule("early", {dport(), Cmp{kReg1, CmpOp::kEq, be16(23)}, verdict(VerdictCode::kDrop)}, "th dport 23 drop");
  early.table = other;
  Rule late = rule("late-nat", {Immediate{kReg1, Bytes{198, 18, 7, 7}, {}}, Nat{NatType::kDnat, Family::kIPv4, kReg1, 0, 0}},
                   "dnat ip to 198.18.7.7");
  late.table = other;
  tx.add(early).add(late);
  REQUIRE(fake.apply(tx).isOk());

  CHECK(mustTrace(fake, tcp("198.18.2.5", "198.18.0.1", 23)).disposition() == Disposition::kDropped);
  // DNAT to a node address: local delivery through the input hook, no postrouting
  TracePacket toNode = tcp("198.18.2.5", "198.18.0.1", 80);
  toNode.localAddresses = {ip("198.18.0.1")};
  Trace local = mustTrace(fake, toNode);
  REQUIRE(local.outcomes.size() == 1);
  CHECK(local.outcomes[0].delivered);
  CHECK(local.dnatTargets() == std::set<NatTarget>{target("198.18.0.1", 8080)});
  CHECK_FALSE(local.outcomes[0].snat);
  CHECK_FALSE(mentions(local.outcomes[0], "late-nat"));
  CHECK(mentions(local.outcomes[0], "in[0]: th dport 8080 counter accept"));
  // Without the local address the same packet is forwarded and SNATed in postrouting.
  Trace fwd = mustTrace(fake, tcp("198.18.2.5", "198.18.0.1", 80));
  CHECK_FALSE(fwd.outcomes[0].delivered);
  CHECK(fwd.outcomes[0].snat == NatTarget{ip("198.18.0.1"), std::nullopt});
  // Another destination: the first nat chain does nothing, the later one DNATs (without port).
  Trace late2 = mustTrace(fake, tcp("198.18.2.5", "198.18.3.3", 80));
  CHECK(late2.dnatTargets() == std::set<NatTarget>{NatTarget{ip("198.18.7.7"), std::nullopt}});
  // A local destination without NAT (an established flow skips the nat chains): input hook,
  // where port 80 is dropped.
  TracePacket direct = tcp("198.18.2.5", "198.18.3.3", 80);
  direct.daddrLocal = true;
  direct.ctState = kCtStateEstablished;
  Trace in = mustTrace(fake, direct);
  CHECK(in.disposition() == Disposition::kDropped);
  CHECK(mentions(in.outcomes[0], "in[1]: drop"));
  // From a local process to a local address: output, postrouting (snat), then looped back
  // through prerouting — where the nat chains no longer run, so port 80 is not redirected —
  // and input, which drops it; 8080 is delivered.
  TracePacket lo = tcp("198.18.0.1", "198.18.0.1", 80, Entry::kOutput);
  lo.localAddresses = {ip("198.18.0.1")};
  Trace loop = mustTrace(fake, lo);
  CHECK(loop.disposition() == Disposition::kDropped);
  CHECK(loop.dnatTargets().empty());
  CHECK(mentions(loop.outcomes[0], "looped back"));
  lo.dport = 8080;
  Trace loop8080 = mustTrace(fake, lo);
  CHECK(loop8080.outcomes[0].delivered);
  CHECK(loop8080.outcomes[0].snat == NatTarget{ip("198.18.0.1"), std::nullopt});
}

TEST_CASE("tracer: what it cannot know is an error, never a guess") {
  Set ranges{kT, "ranges", {DataType::kIPv4Addr}, {}, kSetInterval, "", {}};
  auto fails = [](const std::vector<Object>& objects, std::vector<Rule> r, const TracePacket& p, Code code,
                  const char* text) {
    FakeBackend fake = build(objects, r);
    auto t = trace(fake, p);
    REQUIRE_FALSE(t.isOk());
    CHECK(t.status().code() == code);
    CHECK_MESSAGE(t.status().message().find(text) != std::string::npos, t.status().message());
  };
  const TracePacket p = tcp("198.18.2.5", "198.18.3.5", 80);
  fails({}, {rule("fwd", {Payload{PayloadBase::kNetwork, 8, 1, kReg1}, Cmp{kReg1, CmpOp::kEq, Bytes{64}}}, "ip ttl 64")}, p,
        Code::kUnimplemented, "cannot trace: network header bytes 8..9");
  fails({}, {rule("fwd", {Payload{PayloadBase::kLink, 0, 6, kReg1}}, "ether daddr")}, p, Code::kUnimplemented,
        "link-layer");
  fails({}, {rule("fwd", {Meta{MetaKey::kIif, kReg1}}, "meta iif 3")}, p, Code::kUnimplemented, "meta key 4");
  fails({}, {rule("fwd", {Meta{MetaKey(10), kReg1}}, "meta skuid 0")}, p, Code::kUnimplemented, "meta key 10");
  fails({}, {rule("fwd", {Ct{CtKey(1), kReg1}}, "ct direction original")}, p, Code::kUnimplemented, "ct key 1");
  fails({ranges}, {rule("fwd", {daddr(), Lookup{kReg1, "ranges"}}, "ip daddr @ranges")}, p, Code::kUnimplemented,
        "interval set");
  fails({}, {rule("fwd", {Meta{MetaKey(7), kReg1}}, "meta oifname \"x\"")}, p, Code::kUnimplemented, "oifname");
  TracePacket est = p;
  est.ctState = kCtStateEstablished;
  fails({}, {RuleBuilder(kT, "fwd").ctStatusDnat().build()}, est, Code::kUnimplemented, "ct status of an existing");
  // The error names the rule it stopped at.
  fails({}, {rule("fwd", {Meta{MetaKey::kLen, kReg1}}, "meta length 60")}, p, Code::kUnimplemented, "fwd[0] \"meta length 60\"");
  // A jump loop the kernel would refuse to load.
  fails({regular("loop")},
        {rule("fwd", {verdict(VerdictCode::kJump, "loop")}, "jump loop"),
         rule("loop", {verdict(VerdictCode::kJump, "loop")}, "jump loop")},
        p, Code::kFailedPrecondition, "jump stack overflow");
  TracePacket mixed = p;
  mixed.daddr = ip("fd00::1");
  CHECK(trace(FakeBackend(), mixed).status().code() == Code::kInvalidArgument);
}

TEST_CASE("tracer: meta iifname is the packet's input interface, empty for locally generated packets") {
  Bytes eth0(16, 0);
  eth0[0] = 'e', eth0[1] = 't', eth0[2] = 'h', eth0[3] = '0';
  FakeBackend fake = build({}, {rule("fwd", {Meta{MetaKey(6), kReg1}, Cmp{kReg1, CmpOp::kEq, eth0}, verdict(VerdictCode::kDrop)},
                                     "meta iifname \"eth0\" drop")});
  TracePacket p = tcp("198.18.2.5", "198.18.3.5", 80);
  CHECK(mustTrace(fake, p).disposition() == Disposition::kDropped);
  p.iifname = "eth1";
  CHECK(mustTrace(fake, p).disposition() == Disposition::kAccepted);
  p.iifname.clear();
  CHECK(trace(fake, p).status().code() == Code::kUnimplemented);
}

TEST_CASE("tracer: fib address type and dynamic set updates (session affinity)") {
  Set aff{kT, "aff", {DataType::kIPv4Addr}, {}, kSetTimeout | kSetEval, "", {}};
  FakeBackend fake = build({aff}, {
      RuleBuilder(kT, "fwd").fibSaddrLocal().verdict(VerdictCode::kDrop).build(),
      RuleBuilder(kT, "fwd").updateSaddr("aff").build(),
      RuleBuilder(kT, "fwd").saddrInSet("aff").verdict(VerdictCode::kAccept).build(),
      rule("fwd", {verdict(VerdictCode::kDrop)}, "drop"),
  });
  TracePacket p = tcp("198.18.2.5", "198.18.3.5", 80);
  Trace t = mustTrace(fake, p);
  CHECK(t.disposition() == Disposition::kAccepted);  // the update is seen by the next lookup
  CHECK(mentions(t.outcomes[0], "@aff ∋ 198.18.2.5"));
  CHECK(mentions(t.outcomes[0], "fwd[2]: ip saddr @aff accept"));
  p.localAddresses = {ip("198.18.2.5")};  // now the source is one of the node's addresses
  Trace local = mustTrace(fake, p);
  CHECK(local.disposition() == Disposition::kDropped);
  CHECK(mentions(local.outcomes[0], "fib saddr type local"));
}

TEST_CASE("tracer: the planner's ClientIP affinity chain reaches every endpoint with equal probability") {
  FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  Service svc = clusterIPService("default", "sticky", "198.19.0.20", {{"http", Protocol::kTCP, 80, 0}});
  svc.sessionAffinity = SessionAffinity::kClientIP;
  s.upsertService(svc);
  s.upsertSlice(slice("default", "sticky-1", "sticky", {{"http", Protocol::kTCP, 8080}},
                      {endpoint("198.18.1.11", true, true, false, "node-b"), endpoint("198.18.1.12", true, true, false, "node-b"),
                       endpoint("198.18.1.13", true, true, false, "node-b")}));
  REQUIRE(dp.sync(s).status.isOk());
  Trace t = mustTrace(fake, tcp("198.18.2.5", "198.19.0.20", 80));
  CHECK(t.dnatTargets() ==
        std::set<NatTarget>{target("198.18.1.11", 8080), target("198.18.1.12", 8080), target("198.18.1.13", 8080)});
  for (const auto& o : t.outcomes) {
    CHECK(o.probability == doctest::Approx(1.0 / 3));
    CHECK(mentions(o, "∋ 198.18.2.5"));  // the client is recorded for the next connection
  }
}

TEST_CASE("tracer: a count-gated chain sends each connection to exactly the current endpoints, equally likely") {
  FakeBackend fake;
  DataPlane dp(config(), fake);
  Snapshot s;
  s.upsertService(clusterIPService("default", "gated", "198.19.0.21", {{"http", Protocol::kTCP, 80, 0}}));
  auto publish = [&](std::vector<const char*> ips) {
    std::vector<Endpoint> eps;
    for (const char* ip : ips) eps.push_back(endpoint(ip, true, true, false, "node-b"));
    s.upsertSlice(slice("default", "gated-1", "gated", {{"http", Protocol::kTCP, 8080}}, eps));
    REQUIRE(dp.sync(s).status.isOk());
    while (dp.narrowChains() > 0) REQUIRE(dp.widen(10).status.isOk());
  };
  auto expectSpread = [&](std::vector<const char*> ips) {
    Trace t = mustTrace(fake, tcp("198.18.2.5", "198.19.0.21", 80));
    std::set<NatTarget> want;
    for (const char* ip : ips) want.insert(target(ip, 8080));
    CHECK(t.dnatTargets() == want);
    double total = 0;
    for (const auto& o : t.outcomes) {
      CHECK(o.probability == doctest::Approx(1.0 / double(ips.size())));
      total += o.probability;
    }
    CHECK(total == doctest::Approx(1.0));
  };
  publish({"198.18.1.11", "198.18.1.12", "198.18.1.13"});
  expectSpread({"198.18.1.11", "198.18.1.12", "198.18.1.13"});
  // 3 → 4 and 4 → 2 (back through the window's centre): only the gate and the slots move.
  publish({"198.18.1.11", "198.18.1.12", "198.18.1.13", "198.18.1.14"});
  expectSpread({"198.18.1.11", "198.18.1.12", "198.18.1.13", "198.18.1.14"});
  publish({"198.18.1.12", "198.18.1.14"});
  expectSpread({"198.18.1.12", "198.18.1.14"});
}
