// Running helper programs (ip, nft, conntrack, sysctl) without a shell.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "testbed.h"

extern char** environ;

namespace sluice::testbed {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

std::string joinArgv(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    s += a;
  }
  return s;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class SpawnActions {
 public:
  SpawnActions() { ::posix_spawn_file_actions_init(&fa_); }
  ~SpawnActions() { ::posix_spawn_file_actions_destroy(&fa_); }
  posix_spawn_file_actions_t* get() { return &fa_; }

 private:
  posix_spawn_file_actions_t fa_;
};

class SpawnAttr {
 public:
  SpawnAttr() { ::posix_spawnattr_init(&attr_); }
  ~SpawnAttr() { ::posix_spawnattr_destroy(&attr_); }
  posix_spawnattr_t* get() { return &attr_; }

 private:
  posix_spawnattr_t attr_;
};

}  // namespace

Result<std::string> run(const std::vector<std::string>& argv, const RunOptions& options) {
  if (argv.empty()) return Status(Code::kInvalidArgument, "run: empty argv");
  const std::string what = "`" + joinArgv(argv) + "`";

  int outPipe[2], errPipe[2], inPair[2];
  if (::pipe2(outPipe, O_CLOEXEC) != 0) return Status::fromErrno(errno, "pipe for " + what);
  UniqueFd outRead(outPipe[0]), outWrite(outPipe[1]);
  if (::pipe2(errPipe, O_CLOEXEC) != 0) return Status::fromErrno(errno, "pipe for " + what);
  UniqueFd errRead(errPipe[0]), errWrite(errPipe[1]);
  // stdin is a socket pair rather than a pipe so that writing to a child that has already
  // exited fails with EPIPE (MSG_NOSIGNAL) instead of raising SIGPIPE in this process.
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, inPair) != 0)
    return Status::fromErrno(errno, "socketpair for " + what);
  UniqueFd inChild(inPair[0]), inParent(inPair[1]);

  // dup2 onto 0/1/2 clears O_CLOEXEC on the copies; every original (and every other fd this
  // library opens) is O_CLOEXEC, so the child inherits nothing else of ours.
  SpawnActions actions;
  ::posix_spawn_file_actions_adddup2(actions.get(), inChild.get(), 0);
  ::posix_spawn_file_actions_adddup2(actions.get(), outWrite.get(), 1);
  ::posix_spawn_file_actions_adddup2(actions.get(), errWrite.get(), 2);
  // Test frameworks install signal handlers and may block signals; give the child defaults.
  SpawnAttr attr;
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  ::posix_spawnattr_setsigmask(attr.get(), &none);
  ::posix_spawnattr_setsigdefault(attr.get(), &defaults);
  ::posix_spawnattr_setflags(attr.get(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0].c_str(), actions.get(), attr.get(), args.data(), environ);
  inChild.reset();
  outWrite.reset();
  errWrite.reset();
  if (rc != 0) return Status::fromErrno(rc, "cannot run " + what);

  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  auto remainingMs = [&] {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
  };

  std::string out, err;
  size_t inputOffset = 0;
  if (options.input.empty()) {
    inParent.reset();
  } else {
    ::fcntl(inParent.get(), F_SETFL, O_NONBLOCK);
  }
  bool timedOut = false;
  char buf[16384];
  while (outRead || errRead) {
    pollfd pfds[3];
    int n = 0;
    int outIdx = -1, errIdx = -1, inIdx = -1;
    if (outRead) { outIdx = n; pfds[n++] = {outRead.get(), POLLIN, 0}; }
    if (errRead) { errIdx = n; pfds[n++] = {errRead.get(), POLLIN, 0}; }
    if (inParent) { inIdx = n; pfds[n++] = {inParent.get(), POLLOUT, 0}; }
    int left = remainingMs();
    if (left == 0) {
      timedOut = true;
      break;
    }
    int pr = ::poll(pfds, n, left);
    if (pr < 0 && errno != EINTR) break;
    if (pr <= 0) continue;
    auto drain = [&](int idx, UniqueFd& fd, std::string& into) {
      if (idx < 0 || pfds[idx].revents == 0) return;
      ssize_t r = ::read(fd.get(), buf, sizeof buf);
      if (r > 0) {
        into.append(buf, static_cast<size_t>(r));
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
        fd.reset();
      }
    };
    drain(outIdx, outRead, out);
    drain(errIdx, errRead, err);
    if (inIdx >= 0 && pfds[inIdx].revents != 0) {
      ssize_t w = ::send(inParent.get(), options.input.data() + inputOffset,
                         options.input.size() - inputOffset, MSG_NOSIGNAL);
      if (w > 0) inputOffset += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || inputOffset == options.input.size())
        inParent.reset();  // EOF for the child
    }
  }
  inParent.reset();

  // The child normally exits right after closing its output; give it what is left of the
  // deadline, then kill it (by its pid — it is our own child).
  int wstatus = 0;
  if (timedOut) ::kill(pid, SIGKILL);
  while (true) {
    pid_t w = ::waitpid(pid, &wstatus, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return Status::fromErrno(errno, "waitpid for " + what);
    if (w == 0) {
      if (!timedOut && remainingMs() == 0) {
        timedOut = true;
        ::kill(pid, SIGKILL);
      }
      ::usleep(1000);
    }
  }
  if (timedOut) {
    return Status(Code::kUnavailable,
                  fmt::format("{} timed out after {} ms", what, options.timeout.count()));
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return out;
  std::string how = WIFEXITED(wstatus) ? fmt::format("exited with status {}", WEXITSTATUS(wstatus))
                                       : fmt::format("killed by signal {}", WTERMSIG(wstatus));
  return Status(Code::kInternal, fmt::format("{} {}: {}", what, how, trimmed(err)));
}

Result<std::string> execIn(const Netns& ns, const std::vector<std::string>& argv,
                           const RunOptions& options) {
  if (!ns.valid()) return Status(Code::kFailedPrecondition, "execIn: namespace was removed");
  std::vector<std::string> full = {"ip", "netns", "exec", ns.name()};
  full.insert(full.end(), argv.begin(), argv.end());
  return run(full, options);
}

}  // namespace sluice::testbed
