// sluice/conntrack_stats.h — the kernel's per-CPU conntrack statistics of a network namespace.
//
// Counters such as insert_failed and drop are how a node learns that conntrack is losing
// flows (table full, insertion races on UDP). The kernel keeps them per CPU and per network
// namespace and prints them in /proc/net/stat/nf_conntrack, one hexadecimal line per CPU
// under a header naming the columns (which differ between kernel versions, so columns are
// found by name).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "sluice/status.h"

namespace sluice::conntrack {

struct CpuStats {
  unsigned cpu = 0;
  // Column name → value, e.g. "insert_failed", "drop", "early_drop", "clashres".
  std::map<std::string, uint64_t> values;
  uint64_t get(const std::string& column) const;  // 0 when the kernel has no such column
};

// Parses the text of /proc/net/stat/nf_conntrack. Fails with kInvalidArgument on a line that
// does not match the header.
Result<std::vector<CpuStats>> parseCpuStats(const std::string& text);

// Reads the statistics of namespace `netns` ("" = the caller's). kNotFound when the kernel has
// no conntrack (module not loaded).
Result<std::vector<CpuStats>> readCpuStats(const std::string& netns = "");

}  // namespace sluice::conntrack
