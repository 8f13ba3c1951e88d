#include "sluice/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

namespace sluice {

std::string netnsPath(const std::string& spec) {
  if (spec.empty() || spec.front() == '/') return spec;
  bool digits = !spec.empty();
  for (char c : spec) digits = digits && std::isdigit(static_cast<unsigned char>(c));
  if (digits) return "/proc/" + spec + "/ns/net";
  return "/run/netns/" + spec;
}

Status runInNetns(const std::string& spec, const std::function<void()>& fn) {
  if (spec.empty()) {
    fn();
    return Status::ok();
  }
  const std::string path = netnsPath(spec);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::fromErrno(errno, fmt::format("cannot open network namespace {}", path));
  Status result;
  // setns() changes only the calling thread, so a dedicated thread joins the namespace and the
  // caller's thread stays where it is; sockets created there keep that namespace for life.
  std::thread t([&] {
    if (::setns(fd, CLONE_NEWNET) != 0) {
      result = Status::fromErrno(errno, fmt::format("cannot enter network namespace {}", path));
      return;
    }
    fn();
  });
  t.join();
  ::close(fd);
  return result;
}

Result<std::string> readFileInNetns(const std::string& spec, const std::string& path) {
  std::string text;
  int err = 0;
  // /proc/net is a link to /proc/self/net, and "self" is the thread-group leader, which never
  // left its namespace; /proc/thread-self/net follows the reading thread.
  std::string resolved = path;
  if (resolved.rfind("/proc/net/", 0) == 0) resolved = "/proc/thread-self/net/" + resolved.substr(10);
  Status entered = runInNetns(spec, [&] {
    std::ifstream in(resolved);
    if (!in) {
      err = errno != 0 ? errno : ENOENT;
      return;
    }
    std::ostringstream buf;
    buf << in.rdbuf();
    text = buf.str();
  });
  if (!entered) return entered;
  if (err != 0) return Status::fromErrno(err, fmt::format("cannot read {}", path));
  return text;
}

}  // namespace sluice
