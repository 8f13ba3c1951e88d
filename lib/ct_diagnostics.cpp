#include "sluice/ct_diagnostics.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

namespace sluice::diag {
namespace {

using conntrack::Counter;

std::string percent(double v) { return fmt::format("{:.1f}%", v * 100.0); }

// The part of a finding about the counters, for evidence lines.
std::string counterEvidence(const conntrack::Stats& s) {
  std::string out = fmt::format("insert_failed={}", s.total.get(Counter::kInsertFailed));
  if (s.total.has(Counter::kClashResolve)) {
    out += fmt::format(" clash_resolve={}", s.total.get(Counter::kClashResolve));
  }
  return out;
}

// CPUs with a non-zero value of `c`, busiest first: "cpu1=40 cpu0=3".
std::string perCpu(const conntrack::Stats& s, Counter c) {
  std::vector<std::pair<uint64_t, uint16_t>> hot;
  for (const auto& cpu : s.cpus) {
    if (cpu.get(c) > 0) hot.emplace_back(cpu.get(c), cpu.cpu);
  }
  std::sort(hot.begin(), hot.end(), std::greater<>());
  std::vector<std::string> parts;
  for (const auto& [v, cpu] : hot) parts.push_back(fmt::format("cpu{}={}", cpu, v));
  return fmt::format("{}", fmt::join(parts, " "));
}

Finding natFinding(const NatStatement& st, const std::optional<conntrack::Stats>& stats) {
  Finding f;
  f.id = "snat-not-fully-random";
  f.severity = Severity::kWarning;
  f.location = st.location();
  f.title = fmt::format("{} without fully-random port selection", st.kindName());
  const uint32_t flags = st.flags.value_or(0);
  f.evidence = fmt::format("rule {}: {} with NAT flags {:#x} ({})", st.location(), st.kindName(), flags,
                           flags & (kNatRangeProtoRandom | kNatRangeProtoRandomFully | kNatRangePersistent)
                               ? natFlagsText(flags)
                               : "no random flag");
  if (!st.target.empty()) f.evidence += fmt::format(", iptables-nft target {}", st.target);
  if (flags & kNatRangeProtoRandom) {
    // `random` skips the attempt to keep the client's port. Current kernels then draw the
    // port at random too (nf_nat_l4proto_unique_tuple: get_random_u16()), but older ones
    // start from a hash of (SNAT address, destination address, destination port) — the same
    // for every client of one destination — and walk up from there, so flows racing to the
    // same destination pick the same port.
    f.evidence +=
        ". `random` (0x4) without fully-random (0x10): on older kernels the port search starts "
        "at a hash of the SNAT address and the destination, identical for every client of one "
        "destination, so concurrent flows can be given the same port and the later one fails to "
        "insert; fully-random is the flag whose meaning does not depend on the kernel version";
  } else {
    f.evidence +=
        ". Without NF_NAT_RANGE_PROTO_RANDOM_FULLY (0x10) the kernel first tries to keep the "
        "client's own source port; it checks only entries that are already confirmed, so two "
        "clients that connect to the same destination at the same moment from the same source "
        "port (common: containers share port ranges) are both given that port, and the second "
        "entry fails to insert and its packet is dropped";
  }
  if (stats) f.evidence += fmt::format(" (this namespace: {})", counterEvidence(*stats));
  f.evidence += ".";
  if (st.origin == NatStatement::Origin::kXtables) {
    f.fix = fmt::format("re-add the iptables rule with --random-fully (iptables-nft -t {} ... -j {} "
                        "--random-fully), or move it to native nftables with `{} fully-random`",
                        st.table, st.kind == NatStatement::Kind::kSnat ? "SNAT --to-source ADDR" : "MASQUERADE",
                        st.kind == NatStatement::Kind::kSnat ? "snat to ADDR" : "masquerade");
  } else {
    f.fix = fmt::format("add fully-random to the statement (`{} fully-random`); replace the rule "
                        "in place with `nft replace rule {} {} {} handle {} <same matches> {} fully-random`",
                        st.kind == NatStatement::Kind::kSnat ? "snat to ADDR" : "masquerade",
                        st.family, st.table, st.chain, st.handle,
                        st.kind == NatStatement::Kind::kSnat ? "snat to ADDR" : "masquerade");
  }
  f.tradeoff =
      "fully-random gives up source-port preservation: every flow gets a random port from the "
      "range even when its own port was free, so peers that key on the source port (some "
      "SIP/RTP and game servers, IPsec NAT-T, port-based allow lists) see changing ports, and "
      "the port no longer tells an operator which client a flow came from. Existing flows keep "
      "their mapping; only new flows are affected.";
  return f;
}

}  // namespace

std::optional<PortRange> parsePortRange(const std::string& text) {
  std::istringstream in(text);
  long first = -1, last = -1;
  if (!(in >> first >> last)) return std::nullopt;
  if (first < 0 || last < first || last > 65535) return std::nullopt;
  return PortRange{static_cast<uint16_t>(first), static_cast<uint16_t>(last)};
}

PortReport analyzePorts(const std::vector<conntrack::Flow>& flows, PortRange range, size_t top) {
  PortReport report;
  report.range = range;
  report.flows = flows.size();
  struct Group {
    size_t tuples = 0;
    std::set<IPAddress> clients;
  };
  using Key = std::tuple<Protocol, IPAddress, IPAddress, uint16_t>;
  std::map<Key, Group> groups;
  std::unordered_map<IPAddress, size_t> talkers;
  for (const conntrack::Flow& f : flows) {
    if (!f.srcNat()) continue;
    ++report.snatFlows;
    // Reply tuple: destination (after DNAT) → translated source. Its destination port is the
    // SNAT port this entry holds.
    Group& g = groups[Key{f.proto(), f.reply.dst, f.reply.src, f.reply.srcPort}];
    ++g.tuples;
    g.clients.insert(f.original.src);
    ++talkers[f.original.src];
  }
  const double size = range.size() > 0 ? static_cast<double>(range.size()) : 1.0;
  for (const auto& [key, g] : groups) {
    PortUsage u;
    std::tie(u.proto, u.snatIP, u.dst, u.dstPort) = key;
    u.tuples = g.tuples;
    u.clients = g.clients.size();
    u.utilization = static_cast<double>(g.tuples) / size;
    report.usage.push_back(u);
  }
  std::stable_sort(report.usage.begin(), report.usage.end(),
                   [](const PortUsage& a, const PortUsage& b) { return a.tuples > b.tuples; });
  for (const auto& [ip, n] : talkers) report.topTalkers.push_back({ip, n});
  std::sort(report.topTalkers.begin(), report.topTalkers.end(), [](const Talker& a, const Talker& b) {
    return a.flows != b.flows ? a.flows > b.flows : a.source < b.source;
  });
  if (report.topTalkers.size() > top) report.topTalkers.resize(top);
  return report;
}

const char* severityName(Severity s) {
  switch (s) {
    case Severity::kInfo: return "info";
    case Severity::kWarning: return "warning";
    case Severity::kCritical: return "critical";
  }
  return "?";
}

std::vector<Finding> diagnose(const DoctorInput& in) {
  std::vector<Finding> out;

  size_t notRandom = 0;
  for (const NatStatement& st : in.nat) {
    if (!st.flags) {
      Finding f;
      f.id = "snat-flags-unknown";
      f.severity = Severity::kInfo;
      f.location = st.location();
      f.title = fmt::format("{} with a target revision sluice cannot decode", st.kindName());
      f.evidence = fmt::format("rule {}: target {}; its NAT flags were not read", st.location(), st.target);
      f.fix = "check the rule with `iptables-nft -t nat -S` for --random-fully";
      out.push_back(f);
      continue;
    }
    if (st.fullyRandom()) continue;
    ++notRandom;
    out.push_back(natFinding(st, in.stats));
  }
  if (in.nat.empty()) {
    out.push_back({"no-source-nat", Severity::kInfo, "no masquerade or snat statement in the nftables ruleset",
                   "", "the rule dump of every table of every family held no source NAT", "", ""});
  }

  if (in.stats) {
    const conntrack::Stats& s = *in.stats;
    const uint64_t failed = s.total.get(Counter::kInsertFailed);
    if (failed > 0) {
      Finding f{"insert-failed", Severity::kWarning, "conntrack entries failed to insert (clashes)", "", "", "", ""};
      f.evidence = fmt::format("{} per CPU: {}. {}", counterEvidence(s), perCpu(s, Counter::kInsertFailed),
                               conntrack::insertFailedNote(s.clashResolveReported()));
      f.fix = notRandom > 0 ? "make the source NAT statements above fully-random; watch the rate with "
                              "`sluice-ct watch --threshold insert_failed=1`"
                            : "every source NAT statement is fully-random already: the clashes come from "
                              "parallel packets of one flow (UDP) or a port range too small for the "
                              "concurrency (`sluice-ct ports`)";
      out.push_back(f);
    }
    if (s.total.get(Counter::kDrop) > 0) {
      out.push_back({"table-full-drop", Severity::kCritical, "packets dropped because the conntrack table was full",
                     "", fmt::format("drop={} early_drop={}", s.total.get(Counter::kDrop), s.total.get(Counter::kEarlyDrop)),
                     "raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets) or shorten the "
                     "timeouts of idle entries",
                     "a larger table costs kernel memory (the nf_conntrack slab, /proc/slabinfo)"});
    } else if (s.total.get(Counter::kEarlyDrop) > 0) {
      out.push_back({"table-early-drop", Severity::kWarning, "entries were evicted because the table was full",
                     "", fmt::format("early_drop={}: the table reached nf_conntrack_max and the kernel "
                                     "evicted unassured entries to admit new ones",
                                     s.total.get(Counter::kEarlyDrop)),
                     "raise net.netfilter.nf_conntrack_max", "more kernel memory for the table"});
    }
    if (s.total.get(Counter::kChainTooLong) > 0) {
      out.push_back({"hash-chain-too-long", Severity::kWarning, "inserts refused because a hash chain was too long",
                     "", fmt::format("chaintoolong={}", s.total.get(Counter::kChainTooLong)),
                     "raise net.netfilter.nf_conntrack_buckets", ""});
    }
    if (std::optional<double> fill = s.fill()) {
      Finding f{"table-fill", Severity::kInfo, fmt::format("conntrack table {} full", percent(*fill)), "",
                fmt::format("{} entries of max {} ({})", *s.entries, *s.maxEntries, s.maxSource), "", ""};
      if (*fill >= kFillCritical) {
        f.severity = Severity::kCritical;
      } else if (*fill >= kFillWarning) {
        f.severity = Severity::kWarning;
      }
      if (f.severity != Severity::kInfo) {
        f.fix = "raise net.netfilter.nf_conntrack_max before new flows start to be dropped";
      }
      out.push_back(f);
    }
  } else {
    out.push_back({"stats-unavailable", Severity::kInfo, "conntrack counters could not be read", "",
                   "the statistics request failed; table fill and drops were not checked", "", ""});
  }

  if (!in.legacyTables.empty()) {
    out.push_back({"legacy-iptables", Severity::kWarning, "legacy iptables tables are loaded", "",
                   fmt::format("/proc/net/ip_tables_names lists: {}. Rules of the legacy (ip_tables) backend "
                               "cannot be read over nftables netlink, so NAT rules there were not checked",
                               fmt::join(in.legacyTables, ", ")),
                   "check them with `iptables-legacy-save -t nat` for MASQUERADE/SNAT without --random-fully",
                   ""});
  }

  std::stable_sort(out.begin(), out.end(),
                   [](const Finding& a, const Finding& b) { return a.severity > b.severity; });
  return out;
}

}  // namespace sluice::diag
