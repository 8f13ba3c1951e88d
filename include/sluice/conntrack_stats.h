// sluice/conntrack_stats.h — the kernel's connection-tracking counters, read over ctnetlink.
//
// libnetfilter_conntrack 1.0.9 has no statistics API, so these are read with libmnl:
// IPCTNL_MSG_CT_GET_STATS_CPU (a dump, one message per possible CPU, the CPU number in
// nfgenmsg.res_id, every counter a big-endian u32 attribute CTA_STATS_*) and
// IPCTNL_MSG_CT_GET_STATS (one message: CTA_STATS_GLOBAL_ENTRIES, the namespace's entry count,
// and CTA_STATS_GLOBAL_MAX_ENTRIES, nf_conntrack_max). The counters are per network namespace.
//
// Parsing is separate from reading so that recorded messages can be unit-tested.
#pragma once

#include <linux/netlink.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/status.h"

namespace sluice::conntrack {

// The counters a current kernel still fills in (CTA_STATS_SEARCHED, NEW, IGNORE, DELETE and
// DELETE_LIST are "no longer used" and always 0, so they are not reported).
enum class Counter : uint8_t {
  kFound,          // lookups that found an entry while another CPU was inserting
  kInvalid,        // packets conntrack could not track (malformed, out of window)
  kInsert,         // always 0 on current kernels (entries are counted in `entries`)
  kInsertFailed,   // an entry could not be confirmed: its tuple was taken (a clash)
  kDrop,           // packets dropped because a new entry could not be allocated
  kEarlyDrop,      // entries evicted to make room when the table was full
  kError,          // ICMP(v6) errors that referred to no entry
  kSearchRestart,  // hash lookups restarted because of a concurrent resize
  kClashResolve,   // clashes the kernel resolved by reusing the existing entry (5.10+)
  kChainTooLong,   // inserts refused because a hash chain was too long (newer kernels)
};
inline constexpr size_t kCounterCount = 10;

// "found", "insert_failed", "chaintoolong" … — the names conntrack(8) -S prints.
const char* counterName(Counter c);
std::optional<Counter> counterByName(std::string_view name);
// Every counter, in kernel attribute order.
const std::array<Counter, kCounterCount>& allCounters();

// One CPU's counters, or their sum. A counter the kernel did not send (an older kernel) is
// unset, which is different from 0.
struct CpuCounters {
  uint16_t cpu = 0;
  std::array<std::optional<uint64_t>, kCounterCount> values{};

  bool has(Counter c) const { return values[static_cast<size_t>(c)].has_value(); }
  uint64_t get(Counter c) const { return values[static_cast<size_t>(c)].value_or(0); }
  void set(Counter c, uint64_t v) { values[static_cast<size_t>(c)] = v; }
};

struct Stats {
  std::vector<CpuCounters> cpus;  // sorted by CPU
  CpuCounters total;              // the sum over cpus (cpu field unused)
  std::optional<uint64_t> entries;     // entries in this namespace's table
  std::optional<uint64_t> maxEntries;  // nf_conntrack_max (global to the host)
  std::string maxSource;               // "netlink" or the /proc path it was read from
  // entries / maxEntries, when both are known and max > 0.
  std::optional<double> fill() const;
  // Whether the kernel reports clash_resolve, i.e. insert_failed counts only the clashes it
  // could not resolve (and dropped the packet for).
  bool clashResolveReported() const { return total.has(Counter::kClashResolve); }
};

// Parses one IPCTNL_MSG_CT_GET_STATS_CPU message. InvalidArgument if it is not one.
Result<CpuCounters> parseCpuStats(const nlmsghdr* nlh);
// Parses one IPCTNL_MSG_CT_GET_STATS message into stats.entries/maxEntries.
Status parseGlobalStats(const nlmsghdr* nlh, Stats& stats);
// Recomputes stats.total from stats.cpus (a counter is set in the total if any CPU has it).
void sumCpus(Stats& stats);

// Reads every counter of network namespace `netns` ("" = the caller's; a name, path or PID as
// sluice::netnsPath). maxEntries falls back to /proc/sys/net/netfilter/nf_conntrack_max read
// inside the namespace when the kernel sends no CTA_STATS_GLOBAL_MAX_ENTRIES. Read-only.
// Errors: NotFound (no such namespace); PermissionDenied naming CAP_NET_ADMIN (nfnetlink checks
// it on every request, reads included) or CAP_SYS_ADMIN (to enter another namespace).
Result<Stats> readStats(const std::string& netns = "");

// Per-second rates between two readings `dt` seconds apart. Counters are u32 in the kernel and
// wrap; a reading lower than the previous one is taken as one wrap. CPUs present in only one
// reading (hot-plug) are left out of the per-CPU rates but the totals stay right.
struct Rates {
  double seconds = 0;
  std::array<std::optional<double>, kCounterCount> total{};
  struct Cpu {
    uint16_t cpu = 0;
    std::array<std::optional<double>, kCounterCount> values{};
  };
  std::vector<Cpu> cpus;
  std::optional<double> get(Counter c) const { return total[static_cast<size_t>(c)]; }
};
Rates rates(const Stats& before, const Stats& after, double seconds);
// Difference of two readings (after − before) per counter, with the same wrap rule.
CpuCounters delta(const CpuCounters& before, const CpuCounters& after);

// A watch threshold: "insert_failed=5" means more than 5 per second is too many.
struct Threshold {
  Counter counter = Counter::kInsertFailed;
  double perSecond = 0;
  bool operator==(const Threshold&) const = default;
};
// Parses "name=rate" (rate ≥ 0, a decimal number). InvalidArgument naming the known counters.
Result<Threshold> parseThreshold(std::string_view text);
// The thresholds `r` exceeds (rate strictly above the limit). A counter the kernel does not
// report never exceeds.
std::vector<Threshold> exceeded(const Rates& r, const std::vector<Threshold>& thresholds);

// The CPUs where `c` rose fastest, busiest first, at most `n`, only those with a rate > 0:
// clashes concentrated on a few CPUs point at a few hot flows or an RSS imbalance.
std::vector<std::pair<uint16_t, double>> hotCpus(const Rates& r, Counter c, size_t n);

// How to read insert_failed on a kernel that does (clashResolve = true) or does not report
// clash_resolve; one paragraph for humans.
std::string insertFailedNote(bool clashResolve);

}  // namespace sluice::conntrack
