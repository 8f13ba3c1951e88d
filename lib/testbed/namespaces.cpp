// Named network namespaces owned by this process, their clean-up after crashes, sysctls.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include <fmt/format.h>

#include "sluice/netns.h"
#include "testbed.h"

namespace sluice::testbed {

namespace {

constexpr const char* kPrefix = "sltb-";
constexpr const char* kNetnsDir = "/run/netns";
// One lock file per live run. A namespace is ours-and-alive exactly while the lock of the run
// that named it is held; the kernel drops a flock when its process dies, however it dies.
// flock() works across PID namespaces, which a `kill(pid, 0)` liveness check would not.
constexpr const char* kLockDir = "/run/sluice-testbed";

std::string lockPath(const std::string& runId) {
  return fmt::format("{}/{}.lock", kLockDir, runId);
}

// The run id (hex pid + random) and its held lock. This is the library's only process-wide
// state: names must be unique per process, and the lock must live exactly as long as the
// process, which a function-local static does.
struct RunIdentity {
  RunIdentity() {
    std::random_device rd;
    runId = fmt::format("{:x}{:04x}", static_cast<unsigned>(::getpid()), rd() & 0xffff);
    if (::mkdir(kLockDir, 0700) != 0 && errno != EEXIST) {
      status = Status::fromErrno(errno, fmt::format("cannot create {}", kLockDir));
      return;
    }
    // Created under a temporary name and renamed once locked, so a concurrent reaper can
    // never see our lock file unlocked (and take our namespaces for stale ones).
    std::string tmp = fmt::format("{}/{}.tmp", kLockDir, runId);
    UniqueFd fd(::open(tmp.c_str(), O_CREAT | O_RDWR | O_CLOEXEC | O_TRUNC, 0600));
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 ||
        ::rename(tmp.c_str(), lockPath(runId).c_str()) != 0) {
      status = Status::fromErrno(errno, fmt::format("cannot create lock file {}", tmp));
      ::unlink(tmp.c_str());
      return;
    }
    lock = std::move(fd);
  }
  // At a normal exit every Netns is gone already; any that leaked become reapable.
  ~RunIdentity() {
    if (lock) ::unlink(lockPath(runId).c_str());
  }

  std::string runId;
  UniqueFd lock;
  Status status;
  std::atomic<uint64_t> counter{0};
};

RunIdentity& runIdentity() {
  static RunIdentity id;
  return id;
}

// "sltb-<run>-<n>-<role>" → "<run>", or "" when the name is not one of ours.
std::string runIdOf(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return "";
  std::string rest = name.substr(std::char_traits<char>::length(kPrefix));
  size_t dash = rest.find('-');
  if (dash == 0 || dash == std::string::npos) return "";
  std::string run = rest.substr(0, dash);
  bool hex = std::all_of(run.begin(), run.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
  return hex ? run : "";
}

Status deleteNetns(const std::string& name) {
  auto r = run({"ip", "netns", "del", name});
  if (r.isOk()) return Status::ok();
  // Deleting what is already gone is success.
  struct stat st;
  if (::stat((std::string(kNetnsDir) + "/" + name).c_str(), &st) != 0 && errno == ENOENT)
    return Status::ok();
  return r.status();
}

std::string sysctlPath(std::string_view key) {
  std::string path = "/proc/sys/";
  for (char c : key) path += c == '.' ? '/' : c;
  return path;
}

}  // namespace

Result<int> reapStaleNamespaces() {
  RunIdentity& self = runIdentity();
  DIR* dir = ::opendir(kNetnsDir);
  if (dir == nullptr) {
    if (errno == ENOENT) return 0;  // no namespace was ever named on this machine
    return Status::fromErrno(errno, "opendir /run/netns");
  }
  std::map<std::string, std::vector<std::string>> byRun;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    std::string run = runIdOf(name);
    if (!run.empty() && run != self.runId) byRun[run].push_back(name);
  }
  ::closedir(dir);

  int reaped = 0;
  Status firstError;
  for (const auto& [run, names] : byRun) {
    UniqueFd lock(::open(lockPath(run).c_str(), O_RDWR | O_CLOEXEC));
    // No lock file: its owner died and someone removed the file, or /run was wiped — stale.
    // A lock file we can lock: its owner died — stale. Otherwise the run is alive.
    if (lock && ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;
    for (const auto& name : names) {
      Status st = deleteNetns(name);
      if (st.isOk()) {
        ++reaped;
      } else if (firstError.isOk()) {
        firstError = st;
      }
    }
    if (lock) ::unlink(lockPath(run).c_str());
  }
  // Lock files of dead runs that left no namespace behind.
  if (DIR* locks = ::opendir(kLockDir)) {
    while (dirent* e = ::readdir(locks)) {
      std::string file = e->d_name;
      const std::string suffix = ".lock";
      if (file.size() <= suffix.size() ||
          file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      std::string run = file.substr(0, file.size() - suffix.size());
      if (run == self.runId || byRun.count(run) != 0) continue;
      UniqueFd lock(::open(lockPath(run).c_str(), O_RDWR | O_CLOEXEC));
      if (lock && ::flock(lock.get(), LOCK_EX | LOCK_NB) == 0) ::unlink(lockPath(run).c_str());
    }
    ::closedir(locks);
  }
  if (!firstError.isOk() && reaped == 0) return firstError;
  return reaped;
}

Result<Netns> Netns::create(std::string_view role) {
  if (role.empty() || role.size() > 20 ||
      !std::all_of(role.begin(), role.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
      })) {
    return Status(Code::kInvalidArgument,
                  fmt::format("namespace role '{}' must be 1-20 characters of [a-z0-9-]", role));
  }
  RunIdentity& id = runIdentity();
  if (!id.status.isOk()) return id.status.withContext("testbed run lock");
  // Once per process: clear what crashed or killed runs left behind.
  static std::once_flag reapOnce;
  std::call_once(reapOnce, [] {
    auto reaped = reapStaleNamespaces();
    if (reaped.isOk() && *reaped > 0) {
      fmt::print(stderr, "sluice-testbed: removed {} namespace(s) left by dead runs\n", *reaped);
    } else if (!reaped.isOk()) {
      fmt::print(stderr, "sluice-testbed: reaping stale namespaces: {}\n",
                 reaped.status().toString());
    }
  });

  std::string name = fmt::format("{}{}-{}-{}", kPrefix, id.runId, id.counter++, role);
  auto added = run({"ip", "netns", "add", name});
  if (!added.isOk()) return added.status().withContext("creating network namespace");
  Netns ns(std::move(name), std::string(role));  // owns it from here on, even if lo fails
  auto lo = run({"ip", "-n", ns.name(), "link", "set", "lo", "up"});
  if (!lo.isOk()) return lo.status().withContext("bringing up lo in " + ns.name());
  return ns;
}

Netns::Netns(Netns&& other) noexcept
    : name_(std::exchange(other.name_, {})), role_(std::move(other.role_)) {}

Netns& Netns::operator=(Netns&& other) noexcept {
  if (this != &other) {
    Status st = remove();
    (void)st;  // best effort, as in the destructor
    name_ = std::exchange(other.name_, {});
    role_ = std::move(other.role_);
  }
  return *this;
}

Netns::~Netns() {
  Status st = remove();
  if (!st.isOk()) fmt::print(stderr, "sluice-testbed: {}\n", st.toString());
}

Status Netns::remove() {
  if (name_.empty()) return Status::ok();
  std::string name = std::exchange(name_, {});
  return deleteNetns(name).withContext("deleting network namespace " + name);
}

Status setSysctl(const Netns& ns, std::string_view key, std::string_view value) {
  const std::string path = sysctlPath(key);
  Status result;
  // /proc/sys/net resolves against the *calling thread's* network namespace at open time,
  // so a thread that has joined `ns` sees that namespace's values (no `ip netns exec`).
  Status entered = runInNetns(ns.path(), [&] {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) {
      result = Status::fromErrno(errno, "open " + path);
      return;
    }
    std::string v(value);
    v += '\n';
    if (::write(fd.get(), v.data(), v.size()) != static_cast<ssize_t>(v.size()))
      result = Status::fromErrno(errno, fmt::format("write '{}' to {}", value, path));
  });
  if (!entered.isOk()) return entered;
  return result.withContext(fmt::format("sysctl {} in {}", key, ns.name()));
}

Result<std::string> getSysctl(const Netns& ns, std::string_view key) {
  const std::string path = sysctlPath(key);
  Status result;
  std::string out;
  Status entered = runInNetns(ns.path(), [&] {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      result = Status::fromErrno(errno, "open " + path);
      return;
    }
    char buf[4096];
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      result = Status::fromErrno(errno, "read " + path);
      return;
    }
    out.assign(buf, static_cast<size_t>(n));
  });
  if (!entered.isOk()) return entered;
  if (!result.isOk()) return result.withContext(fmt::format("sysctl {} in {}", key, ns.name()));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace sluice::testbed
