// sluice/ct_diagnostics.h — analyses behind sluice-ct: who uses which SNAT ports, and what is
// wrong with a node's source NAT. Pure functions over values (flows from conntrack::Client,
// counters from conntrack_stats.h, NAT statements from nat_audit.h), so they are unit-tested
// without a kernel and usable by any node agent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sluice/conntrack.h"
#include "sluice/conntrack_stats.h"
#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/nat_audit.h"

namespace sluice::diag {

// ---- SNAT port usage -----------------------------------------------------------------------

// The source ports NAT may hand out, inclusive.
struct PortRange {
  uint16_t first = 1024;
  uint16_t last = 65535;
  uint32_t size() const { return last >= first ? uint32_t{last} - first + 1 : 0; }
  bool operator==(const PortRange&) const = default;
};
// A masquerade or snat without a port range picks from 1024–65535 for a source port ≥ 1024
// (nf_nat_l4proto_unique_tuple), not from ip_local_port_range.
inline constexpr PortRange kNatDefaultRange{1024, 65535};
// Parses "32768\t60999\n" (net.ipv4.ip_local_port_range).
std::optional<PortRange> parsePortRange(const std::string& text);

// One (protocol, SNAT address, destination) triple: the unit within which SNAT ports must be
// unique, because two flows from the same SNAT address to the same destination IP:port can
// only be told apart by their source port.
struct PortUsage {
  Protocol proto = Protocol::kTCP;
  IPAddress snatIP;   // reply destination: the translated source address
  IPAddress dst;      // reply source: where the flow really goes (after any DNAT)
  uint16_t dstPort = 0;
  size_t tuples = 0;  // live entries (each holds one source port)
  size_t clients = 0; // distinct original source addresses behind them
  double utilization = 0;  // tuples / range size
};

struct Talker {
  IPAddress source;  // original source address
  size_t flows = 0;  // SNATed entries it owns
};

struct PortReport {
  size_t flows = 0;      // entries looked at
  size_t snatFlows = 0;  // entries with the SNAT status bit
  PortRange range;       // what utilization was computed against
  std::vector<PortUsage> usage;  // busiest first
  std::vector<Talker> topTalkers;  // busiest first, at most `top`
};

// From one dump: groups the source-NATed flows (status bit IPS_SRC_NAT) by (protocol, SNAT
// address, destination IP:port) and counts their tuples against `range`. O(flows).
PortReport analyzePorts(const std::vector<conntrack::Flow>& flows, PortRange range, size_t top = 10);

// ---- doctor --------------------------------------------------------------------------------

enum class Severity : uint8_t { kInfo, kWarning, kCritical };
const char* severityName(Severity s);  // "info", "warning", "critical"

struct Finding {
  std::string id;        // stable, for scripts: "snat-not-fully-random", "table-fill", ...
  Severity severity = Severity::kInfo;
  std::string title;     // one line
  std::string location;  // "ip nat POSTROUTING handle 4"; empty when not about one rule
  std::string evidence;  // what was seen
  std::string fix;       // what to do
  std::string tradeoff;  // what the fix costs; may be empty
};

struct DoctorInput {
  std::vector<NatStatement> nat;
  std::optional<conntrack::Stats> stats;  // unset when the counters could not be read
  std::vector<std::string> legacyTables;  // legacyIptablesTables()
};

// Fill ratios at which the doctor warns and calls the table critical.
inline constexpr double kFillWarning = 0.80;
inline constexpr double kFillCritical = 0.95;

// Every finding, most severe first. A ruleset with only fully-random source NAT, a table well
// below its limit and no drops gives no warning or critical finding.
std::vector<Finding> diagnose(const DoctorInput& input);

}  // namespace sluice::diag
