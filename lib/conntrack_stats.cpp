#include "sluice/conntrack_stats.h"

#include <cerrno>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "sluice/netns.h"

namespace sluice::conntrack {

uint64_t CpuStats::get(const std::string& column) const {
  auto it = values.find(column);
  return it == values.end() ? 0 : it->second;
}

Result<std::vector<CpuStats>> parseCpuStats(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line)) return Status(Code::kInvalidArgument, "conntrack stats: empty");
  std::vector<std::string> columns;
  {
    std::istringstream header(line);
    for (std::string c; header >> c;) columns.push_back(c);
  }
  std::vector<CpuStats> out;
  for (unsigned cpu = 0; std::getline(in, line); ++cpu) {
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream row(line);
    CpuStats stats;
    stats.cpu = cpu;
    std::string field;
    size_t i = 0;
    for (; row >> field; ++i) {
      if (i >= columns.size())
        return Status(Code::kInvalidArgument, fmt::format("conntrack stats: line {} has more fields than the header", cpu + 2));
      try {
        size_t used = 0;
        stats.values[columns[i]] = std::stoull(field, &used, 16);
        if (used != field.size()) throw std::invalid_argument(field);
      } catch (const std::exception&) {
        return Status(Code::kInvalidArgument, fmt::format("conntrack stats: \"{}\" is not hexadecimal", field));
      }
    }
    if (i != columns.size())
      return Status(Code::kInvalidArgument, fmt::format("conntrack stats: line {} has {} fields, header {}", cpu + 2, i, columns.size()));
    out.push_back(std::move(stats));
  }
  return out;
}

Result<std::vector<CpuStats>> readCpuStats(const std::string& netns) {
  std::string text;
  int err = 0;
  // /proc/net follows the *thread's* namespace only through /proc/thread-self; /proc/self/net
  // is the namespace of the process's main thread.
  Status ns = runInNetns(netns, [&] {
    std::ifstream f("/proc/thread-self/net/stat/nf_conntrack");
    if (!f) {
      err = errno ? errno : ENOENT;
      return;
    }
    std::ostringstream s;
    s << f.rdbuf();
    text = s.str();
  });
  if (!ns) return ns;
  if (err) return Status::fromErrno(err, "cannot read /proc/net/stat/nf_conntrack (no conntrack in this kernel?)");
  return parseCpuStats(text);
}

}  // namespace sluice::conntrack
