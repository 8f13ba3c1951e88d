#include "sluice/conntrack_stats.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <map>

#include <fmt/format.h>

#include "nfnl_query.h"
#include "sluice/netns.h"

namespace sluice::conntrack {
namespace {

constexpr std::array<Counter, kCounterCount> kAll = {
    Counter::kFound,  Counter::kInvalid,       Counter::kInsert,       Counter::kInsertFailed,
    Counter::kDrop,   Counter::kEarlyDrop,     Counter::kError,        Counter::kSearchRestart,
    Counter::kClashResolve, Counter::kChainTooLong,
};

// CTA_STATS_* attribute → counter. Attributes the kernel marks "no longer used" are skipped.
// Spelled out with numbers as a cross-check of the uapi header: these are kernel ABI.
std::optional<Counter> counterOfAttr(uint16_t type) {
  static_assert(CTA_STATS_FOUND == 2 && CTA_STATS_INVALID == 4 && CTA_STATS_INSERT == 8 &&
                CTA_STATS_INSERT_FAILED == 9 && CTA_STATS_DROP == 10 && CTA_STATS_EARLY_DROP == 11 &&
                CTA_STATS_ERROR == 12 && CTA_STATS_SEARCH_RESTART == 13 &&
                CTA_STATS_CLASH_RESOLVE == 14 && CTA_STATS_CHAIN_TOOLONG == 15);
  switch (type) {
    case CTA_STATS_FOUND: return Counter::kFound;
    case CTA_STATS_INVALID: return Counter::kInvalid;
    case CTA_STATS_INSERT: return Counter::kInsert;
    case CTA_STATS_INSERT_FAILED: return Counter::kInsertFailed;
    case CTA_STATS_DROP: return Counter::kDrop;
    case CTA_STATS_EARLY_DROP: return Counter::kEarlyDrop;
    case CTA_STATS_ERROR: return Counter::kError;
    case CTA_STATS_SEARCH_RESTART: return Counter::kSearchRestart;
    case CTA_STATS_CLASH_RESOLVE: return Counter::kClashResolve;
    case CTA_STATS_CHAIN_TOOLONG: return Counter::kChainTooLong;
    default: return std::nullopt;
  }
}

Status checkMessage(const nlmsghdr* nlh, uint8_t msgType, const char* what) {
  if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(nfgenmsg))) {
    return Status(Code::kInvalidArgument, fmt::format("{} message too short", what));
  }
  if (nlh->nlmsg_type != ((NFNL_SUBSYS_CTNETLINK << 8) | msgType)) {
    return Status(Code::kInvalidArgument,
                  fmt::format("not a {} message (type {:#x})", what, nlh->nlmsg_type));
  }
  return Status::ok();
}

// Every attribute of a stats message is a big-endian u32; anything shorter is malformed.
Status forEachU32(const nlmsghdr* nlh, const char* what,
                  const std::function<void(uint16_t, uint32_t)>& fn) {
  // Not mnl_attr_for_each: the C macro does not compile as C++ (void* conversion).
  const auto* payload = static_cast<const char*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
  const char* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(nlh));
  for (auto* attr = reinterpret_cast<const nlattr*>(payload);
       mnl_attr_ok(attr, static_cast<int>(tail - reinterpret_cast<const char*>(attr)));
       attr = mnl_attr_next(attr)) {
    if (mnl_attr_validate(attr, MNL_TYPE_U32) < 0) {
      return Status(Code::kInvalidArgument,
                    fmt::format("{}: attribute {} is not a u32", what, mnl_attr_get_type(attr)));
    }
    fn(mnl_attr_get_type(attr), ntohl(mnl_attr_get_u32(attr)));
  }
  return Status::ok();
}

nlmsghdr* putRequest(char* buf, uint8_t msgType, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | msgType;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfh->nfgen_family = AF_UNSPEC;
  nfh->version = NFNETLINK_V0;
  nfh->res_id = 0;
  return nlh;
}

// The kernel's counters are unsigned 32-bit and wrap (nothing resets them).
uint64_t counterDelta(uint64_t before, uint64_t after) {
  if (after >= before) return after - before;
  return (after + (uint64_t{1} << 32)) - before;
}

}  // namespace

const char* counterName(Counter c) {
  switch (c) {
    case Counter::kFound: return "found";
    case Counter::kInvalid: return "invalid";
    case Counter::kInsert: return "insert";
    case Counter::kInsertFailed: return "insert_failed";
    case Counter::kDrop: return "drop";
    case Counter::kEarlyDrop: return "early_drop";
    case Counter::kError: return "error";
    case Counter::kSearchRestart: return "search_restart";
    case Counter::kClashResolve: return "clash_resolve";
    case Counter::kChainTooLong: return "chaintoolong";
  }
  return "?";
}

std::optional<Counter> counterByName(std::string_view name) {
  for (Counter c : kAll) {
    if (name == counterName(c)) return c;
  }
  return std::nullopt;
}

const std::array<Counter, kCounterCount>& allCounters() { return kAll; }

std::optional<double> Stats::fill() const {
  if (!entries || !maxEntries || *maxEntries == 0) return std::nullopt;
  return static_cast<double>(*entries) / static_cast<double>(*maxEntries);
}

Result<CpuCounters> parseCpuStats(const nlmsghdr* nlh) {
  if (Status s = checkMessage(nlh, IPCTNL_MSG_CT_GET_STATS_CPU, "per-CPU conntrack statistics"); !s) {
    return s;
  }
  CpuCounters c;
  c.cpu = ntohs(static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh))->res_id);
  Status s = forEachU32(nlh, "per-CPU conntrack statistics", [&](uint16_t type, uint32_t v) {
    if (std::optional<Counter> counter = counterOfAttr(type)) c.set(*counter, v);
  });
  if (!s) return s;
  return c;
}

Status parseGlobalStats(const nlmsghdr* nlh, Stats& stats) {
  if (Status s = checkMessage(nlh, IPCTNL_MSG_CT_GET_STATS, "conntrack statistics"); !s) return s;
  return forEachU32(nlh, "conntrack statistics", [&](uint16_t type, uint32_t v) {
    if (type == CTA_STATS_GLOBAL_ENTRIES) stats.entries = v;
    if (type == CTA_STATS_GLOBAL_MAX_ENTRIES) {
      stats.maxEntries = v;
      stats.maxSource = "netlink";
    }
  });
}

void sumCpus(Stats& stats) {
  std::sort(stats.cpus.begin(), stats.cpus.end(),
            [](const CpuCounters& a, const CpuCounters& b) { return a.cpu < b.cpu; });
  stats.total = CpuCounters{};
  for (const CpuCounters& cpu : stats.cpus) {
    for (Counter c : kAll) {
      if (cpu.has(c)) stats.total.set(c, stats.total.get(c) + cpu.get(c));
    }
  }
}

Result<Stats> readStats(const std::string& netns) {
  Result<detail::NfnlSocket> sock = detail::NfnlSocket::open(netns, "conntrack statistics");
  if (!sock) return sock.status();

  Stats stats;
  alignas(nlmsghdr) char req[MNL_SOCKET_BUFFER_SIZE];
  // A per-CPU dump has no generation counter; a CPU's message is a snapshot of that CPU.
  Status s = sock->query(putRequest(req, IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_DUMP),
                         [&](const nlmsghdr* nlh) -> Status {
                           Result<CpuCounters> cpu = parseCpuStats(nlh);
                           if (!cpu) return cpu.status();
                           stats.cpus.push_back(*cpu);
                           return Status::ok();
                         });
  if (!s) return s;
  s = sock->query(putRequest(req, IPCTNL_MSG_CT_GET_STATS, NLM_F_ACK),
                  [&](const nlmsghdr* nlh) { return parseGlobalStats(nlh, stats); });
  if (!s) return s;
  sumCpus(stats);

  if (!stats.maxEntries) {
    // Kernels before CTA_STATS_GLOBAL_MAX_ENTRIES: the sysctl, as this namespace sees it.
    const std::string path = "/proc/sys/net/netfilter/nf_conntrack_max";
    Result<std::string> text = readFileInNetns(netns, path);
    if (text) {
      char* end = nullptr;
      unsigned long long v = std::strtoull(text->c_str(), &end, 10);
      if (end != text->c_str()) {
        stats.maxEntries = v;
        stats.maxSource = path;
      }
    }
  }
  return stats;
}

CpuCounters delta(const CpuCounters& before, const CpuCounters& after) {
  CpuCounters d;
  d.cpu = after.cpu;
  for (Counter c : kAll) {
    if (before.has(c) && after.has(c)) d.set(c, counterDelta(before.get(c), after.get(c)));
  }
  return d;
}

Rates rates(const Stats& before, const Stats& after, double seconds) {
  Rates r;
  r.seconds = seconds;
  if (seconds <= 0) return r;
  auto toRates = [seconds](const CpuCounters& d) {
    std::array<std::optional<double>, kCounterCount> out{};
    for (Counter c : kAll) {
      if (d.has(c)) out[static_cast<size_t>(c)] = static_cast<double>(d.get(c)) / seconds;
    }
    return out;
  };
  // Totals from per-CPU deltas, so a wrap on one CPU is handled where it happened.
  std::map<uint16_t, const CpuCounters*> old;
  for (const CpuCounters& c : before.cpus) old[c.cpu] = &c;
  CpuCounters sum;
  for (const CpuCounters& c : after.cpus) {
    auto it = old.find(c.cpu);
    if (it == old.end()) continue;
    CpuCounters d = delta(*it->second, c);
    r.cpus.push_back({c.cpu, toRates(d)});
    for (Counter k : kAll) {
      if (d.has(k)) sum.set(k, sum.get(k) + d.get(k));
    }
  }
  r.total = toRates(sum);
  return r;
}

Result<Threshold> parseThreshold(std::string_view text) {
  const size_t eq = text.find('=');
  auto bad = [&](const std::string& why) {
    std::vector<std::string> names;
    for (Counter c : kAll) names.emplace_back(counterName(c));
    return Status(Code::kInvalidArgument,
                  fmt::format("threshold '{}': {} (want NAME=RATE, NAME one of {})", text, why,
                              fmt::join(names, ", ")));
  };
  if (eq == std::string_view::npos) return bad("no '='");
  std::optional<Counter> c = counterByName(text.substr(0, eq));
  if (!c) return bad("unknown counter");
  const std::string rate(text.substr(eq + 1));
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(rate.c_str(), &end);
  if (rate.empty() || end != rate.c_str() + rate.size() || errno != 0 || !(v >= 0)) {
    return bad("rate is not a number >= 0");
  }
  return Threshold{*c, v};
}

std::vector<Threshold> exceeded(const Rates& r, const std::vector<Threshold>& thresholds) {
  std::vector<Threshold> out;
  for (const Threshold& t : thresholds) {
    std::optional<double> v = r.get(t.counter);
    if (v && *v > t.perSecond) out.push_back(t);
  }
  return out;
}

std::vector<std::pair<uint16_t, double>> hotCpus(const Rates& r, Counter c, size_t n) {
  std::vector<std::pair<uint16_t, double>> out;
  for (const Rates::Cpu& cpu : r.cpus) {
    const std::optional<double>& v = cpu.values[static_cast<size_t>(c)];
    if (v && *v > 0) out.emplace_back(cpu.cpu, *v);
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (out.size() > n) out.resize(n);
  return out;
}

std::string insertFailedNote(bool clashResolve) {
  if (clashResolve) {
    return "This kernel reports clash_resolve (5.10+): insert_failed counts only clashes it "
           "could NOT resolve, and each one dropped a packet (for TCP usually a SYN, seen by the "
           "client as a ~1 s connect delay; for UDP a lost datagram, e.g. a DNS timeout). "
           "clash_resolve counts clashes it resolved by reusing the entry another CPU had just "
           "inserted for the same flow (harmless). A rising insert_failed with SNAT usually means "
           "two flows were given the same source port at the same time: see `sluice-ct doctor`.";
  }
  return "This kernel does not report clash_resolve (before 5.10): insert_failed counts every "
         "clash when an entry was confirmed, including the ones it resolved without a drop "
         "(parallel UDP packets of one flow), so it over-states packet loss.";
}

}  // namespace sluice::conntrack
