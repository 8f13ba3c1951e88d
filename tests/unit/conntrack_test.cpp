// Pure conntrack logic: Filter::matches and the Flow/Tuple helpers. No kernel involved.
#include "sluice/conntrack.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace sluice::conntrack {
namespace {

IPAddress ip(const char* text) { return IPAddress::parse(text).value(); }

// A client 198.18.0.1:40000 talking to Service IP 198.18.1.100:53, DNATed to endpoint
// 198.18.0.2:5300, as the reply tuple shows.
Flow udpViaService() {
  Flow f;
  f.original = Tuple{ip("198.18.0.1"), ip("198.18.1.100"), 40000, 53, Protocol::kUDP};
  f.reply = Tuple{ip("198.18.0.2"), ip("198.18.0.1"), 5300, 40000, Protocol::kUDP};
  f.status = kStatusConfirmed | kStatusDstNat;
  f.timeoutSeconds = 30;
  f.id = 1234;
  return f;
}

// A masqueraded TCP flow: pod 198.18.2.5:33000 → 198.19.0.9:443, SNATed to node 198.18.0.1:61000.
Flow tcpMasqueraded(const char* state) {
  Flow f;
  f.original = Tuple{ip("198.18.2.5"), ip("198.19.0.9"), 33000, 443, Protocol::kTCP};
  f.reply = Tuple{ip("198.19.0.9"), ip("198.18.0.1"), 443, 61000, Protocol::kTCP};
  f.status = kStatusConfirmed | kStatusSeenReply | kStatusAssured | kStatusSrcNat;
  f.mark = 0x4000;
  f.tcpState = state;
  return f;
}

Flow v6ViaService() {
  Flow f;
  f.original = Tuple{ip("fd00::1"), ip("fd00:1::100"), 40001, 80, Protocol::kTCP};
  f.reply = Tuple{ip("fd00::2"), ip("fd00::1"), 8080, 40001, Protocol::kTCP};
  f.status = kStatusConfirmed | kStatusDstNat | kStatusSeenReply;
  f.tcpState = "ESTABLISHED";
  return f;
}

Flow sctpFlow() {
  Flow f;
  f.original = Tuple{ip("198.18.0.1"), ip("198.18.0.2"), 5000, 3868, Protocol::kSCTP};
  f.reply = Tuple{ip("198.18.0.2"), ip("198.18.0.1"), 3868, 5000, Protocol::kSCTP};
  f.zone = 7;
  return f;
}

struct Case {
  const char* name;
  Filter filter;
  Flow flow;
  bool want;
};

}  // namespace

TEST_CASE("conntrack: Filter::matches") {
  const Flow udp = udpViaService();
  const Flow tcp = tcpMasqueraded("ESTABLISHED");
  const Flow v6 = v6ViaService();
  const Flow sctp = sctpFlow();

  std::vector<Case> cases = {
      {"empty filter matches udp", Filter{}, udp, true},
      {"empty filter matches v6", Filter{}, v6, true},
      {"family v4 vs v4", Filter{.family = IPFamily::kV4}, udp, true},
      {"family v4 vs v6", Filter{.family = IPFamily::kV4}, v6, false},
      {"family v6 vs v6", Filter{.family = IPFamily::kV6}, v6, true},
      {"proto udp vs udp", Filter{.proto = Protocol::kUDP}, udp, true},
      {"proto udp vs tcp", Filter{.proto = Protocol::kUDP}, tcp, false},
      {"proto sctp vs sctp", Filter{.proto = Protocol::kSCTP}, sctp, true},
      {"zone 0 vs default zone", Filter{.zone = 0}, udp, true},
      {"zone 0 vs zone 7", Filter{.zone = 0}, sctp, false},
      {"zone 7 vs zone 7", Filter{.zone = 7}, sctp, true},
      {"origSrc equal", Filter{.origSrc = ip("198.18.0.1")}, udp, true},
      {"origSrc differs", Filter{.origSrc = ip("198.18.0.3")}, udp, false},
      {"origSrcPort equal", Filter{.origSrcPort = 40000}, udp, true},
      {"origSrcPort differs", Filter{.origSrcPort = 40001}, udp, false},
      {"origDst is the Service IP", Filter{.origDst = ip("198.18.1.100")}, udp, true},
      {"origDst is not the endpoint", Filter{.origDst = ip("198.18.0.2")}, udp, false},
      {"origDstPort is the Service port", Filter{.origDstPort = 53}, udp, true},
      {"origDstPort is not the target port", Filter{.origDstPort = 5300}, udp, false},
      {"replySrc is the endpoint", Filter{.replySrc = ip("198.18.0.2")}, udp, true},
      {"replySrc is not the Service IP", Filter{.replySrc = ip("198.18.1.100")}, udp, false},
      {"replySrcPort is the target port", Filter{.replySrcPort = 5300}, udp, true},
      {"replySrcPort differs", Filter{.replySrcPort = 53}, udp, false},
      {"replyDst is the SNAT address", Filter{.replyDst = ip("198.18.0.1")}, tcp, true},
      {"replyDst is not the pod", Filter{.replyDst = ip("198.18.2.5")}, tcp, false},
      {"replyDstPort is the SNAT port", Filter{.replyDstPort = 61000}, tcp, true},
      {"replyDstPort differs", Filter{.replyDstPort = 33000}, tcp, false},
      {"v6 origDst", Filter{.origDst = ip("fd00:1::100"), .origDstPort = 80}, v6, true},
      {"v4 address never equals a v6 one",
       Filter{.origDst = ip("198.18.1.100")}, v6, false},
      {"mark exact", Filter{.mark = 0x4000u}, tcp, true},
      {"mark exact differs", Filter{.mark = 0x4001u}, tcp, false},
      {"mark under mask", Filter{.mark = 0x4000u, .markMask = 0x4000}, tcp, true},
      {"mark under mask clear", Filter{.mark = 0u, .markMask = 0x4000}, udp, true},
      {"mark under mask set vs clear", Filter{.mark = 0u, .markMask = 0x4000}, tcp, false},
      {"statusSet dnat on dnat flow", Filter{.statusSet = kStatusDstNat}, udp, true},
      {"statusSet dnat on snat flow", Filter{.statusSet = kStatusDstNat}, tcp, false},
      {"statusSet needs every bit", Filter{.statusSet = kStatusDstNat | kStatusAssured}, udp,
       false},
      {"statusClear dnat on dnat flow", Filter{.statusClear = kStatusDstNat}, udp, false},
      {"statusClear dnat on snat flow", Filter{.statusClear = kStatusDstNat}, tcp, true},
      {"statusClear any of the bits", Filter{.statusClear = kStatusSrcNat | kStatusDstNat}, tcp,
       false},
      {"excludeClosedTcp keeps ESTABLISHED", Filter{.excludeClosedTcp = true}, tcp, true},
      {"excludeClosedTcp drops TIME_WAIT", Filter{.excludeClosedTcp = true},
       tcpMasqueraded("TIME_WAIT"), false},
      {"excludeClosedTcp drops CLOSE", Filter{.excludeClosedTcp = true},
       tcpMasqueraded("CLOSE"), false},
      {"excludeClosedTcp keeps FIN_WAIT (half-open still carries data)",
       Filter{.excludeClosedTcp = true}, tcpMasqueraded("FIN_WAIT"), true},
      {"excludeClosedTcp keeps UDP", Filter{.excludeClosedTcp = true}, udp, true},
      {"conjunction: all hold",
       Filter{.family = IPFamily::kV4, .proto = Protocol::kUDP, .origDst = ip("198.18.1.100"),
              .origDstPort = 53, .replySrc = ip("198.18.0.2")},
       udp, true},
      {"conjunction: one fails",
       Filter{.family = IPFamily::kV4, .proto = Protocol::kUDP, .origDst = ip("198.18.1.100"),
              .origDstPort = 54, .replySrc = ip("198.18.0.2")},
       udp, false},
  };

  for (const Case& c : cases) {
    CAPTURE(c.name);
    CHECK(c.filter.matches(c.flow) == c.want);
  }
}

// The UDP stale-entry rule of spec §5: orig-dst is the Service IP/port and the reply source is
// no longer a serving endpoint.
TEST_CASE("conntrack: Filter::matches replySrcNotIn (stale UDP endpoints)") {
  const Flow udp = udpViaService();  // answered by 198.18.0.2
  auto staleFilter = [](std::unordered_set<IPAddress> serving) {
    return Filter{.proto = Protocol::kUDP, .origDst = ip("198.18.1.100"), .origDstPort = 53,
                  .replySrcNotIn = std::move(serving)};
  };
  struct NotInCase {
    const char* name;
    std::unordered_set<IPAddress> serving;
    bool stale;
  };
  std::vector<NotInCase> cases = {
      {"endpoint still serving", {ip("198.18.0.2")}, false},
      {"endpoint serving among others", {ip("198.18.0.3"), ip("198.18.0.2")}, false},
      {"endpoint gone, another serves", {ip("198.18.0.3")}, true},
      // No serving endpoint left: every entry of the Service is stale (the kube-proxy
      // regression fixed by PR #139629 skipped this case).
      {"no serving endpoints at all", {}, true},
      {"same bytes, other family is a different address", {ip("::ffff:198.18.0.2")}, true},
  };
  for (const NotInCase& c : cases) {
    CAPTURE(c.name);
    CHECK(staleFilter(c.serving).matches(udp) == c.stale);
  }
  // An unset set is no condition at all.
  CHECK(Filter{.replySrcNotIn = std::nullopt}.matches(udp));
  // The Service IP itself answered (no DNAT: the packet was rejected) ⇒ stale.
  Flow rejected = udp;
  rejected.reply.src = ip("198.18.1.100");
  rejected.status = kStatusConfirmed;
  CHECK(staleFilter({ip("198.18.0.2")}).matches(rejected));
}

TEST_CASE("conntrack: Flow status helpers") {
  const Flow udp = udpViaService();
  CHECK(udp.dstNat());
  CHECK_FALSE(udp.srcNat());
  CHECK_FALSE(udp.assured());
  CHECK_FALSE(udp.tcpClosed());
  const Flow tcp = tcpMasqueraded("ESTABLISHED");
  CHECK(tcp.srcNat());
  CHECK_FALSE(tcp.dstNat());
  CHECK(tcp.assured());
  CHECK_FALSE(tcp.tcpClosed());
  CHECK(tcpMasqueraded("TIME_WAIT").tcpClosed());
  CHECK(tcp.family() == IPFamily::kV4);
  CHECK(v6ViaService().family() == IPFamily::kV6);
  CHECK(sctpFlow().proto() == Protocol::kSCTP);
}

TEST_CASE("conntrack: Tuple and Flow render readably") {
  CHECK(udpViaService().original.toString() == "udp 198.18.0.1:40000 -> 198.18.1.100:53");
  CHECK(v6ViaService().original.toString() == "tcp [fd00::1]:40001 -> [fd00:1::100]:80");
  CHECK(sctpFlow().original.toString() == "sctp 198.18.0.1:5000 -> 198.18.0.2:3868");
  const std::string s = tcpMasqueraded("ESTABLISHED").toString();
  CHECK(s.find("reply tcp 198.19.0.9:443 -> 198.18.0.1:61000") != std::string::npos);
  CHECK(s.find("ESTABLISHED") != std::string::npos);
  CHECK(s.find("snat") != std::string::npos);
  CHECK(s.find("mark=0x4000") != std::string::npos);
}

}  // namespace sluice::conntrack
