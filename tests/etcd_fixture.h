// A real etcd (/usr/bin/etcd, Debian etcd-server 3.4) for tests: started on 127.0.0.1 with two
// free ports and a temporary data dir, stopped and removed by the destructor. The child gets
// PR_SET_PDEATHSIG, so it dies with the test process even when that crashes or is killed.
// Election timeouts are short (heartbeat 50 ms, election 500 ms): startup is fast and etcd's
// minimum lease TTL becomes 1 s instead of 2 s.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../lib/etcd_client.h"
#include "sluice/status.h"

namespace sluice::testing {

class EtcdServer {
 public:
  static constexpr const char* kBinary = "/usr/bin/etcd";

  static Result<std::unique_ptr<EtcdServer>> start() {
    if (access(kBinary, X_OK) != 0) return Status(Code::kNotFound, "no etcd at /usr/bin/etcd");
    char tmpl[] = "/tmp/sluice-etcd-XXXXXX";
    if (!mkdtemp(tmpl)) return Status::fromErrno(errno, "mkdtemp");
    std::unique_ptr<EtcdServer> s(new EtcdServer(tmpl));
    s->clientPort_ = freePort();
    s->peerPort_ = freePort();
    if (Status st = s->launch(); !st) return st;
    return s;
  }

  ~EtcdServer() {
    (void)stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(clientPort_); }
  etcd::Client client() const { return etcd::Client({"127.0.0.1", clientPort_}, std::chrono::milliseconds(2000)); }
  bool running() const { return pid_ > 0; }

  // Stops etcd (SIGTERM, SIGKILL after 3 s) and waits for it. Idempotent.
  Status stop() {
    if (pid_ <= 0) return Status::ok();
    kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return Status::ok();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return Status::ok();
  }
  // Starts it again on the same data dir and ports.
  Status restart() {
    if (Status s = stop(); !s) return s;
    return launch();
  }

 private:
  explicit EtcdServer(std::string dir) : dir_(std::move(dir)) {}

  static uint16_t freePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
  }

  Status launch() {
    const std::string client = url();
    const std::string peer = "http://127.0.0.1:" + std::to_string(peerPort_);
    std::vector<std::string> args = {kBinary,
                                     "--name=t",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=t=" + peer,
                                     "--heartbeat-interval=50",
                                     "--election-timeout=500",
                                     "--logger=zap",
                                     "--log-outputs=" + dir_ + "/etcd.log"};
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return Status::fromErrno(errno, "fork etcd");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      int devnull = open("/dev/null", O_RDWR);
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(kBinary, argv.data());
      _exit(127);
    }
    pid_ = pid;
    // Ready when a read through the gateway succeeds (etcd has elected itself).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    etcd::Client c({"127.0.0.1", clientPort_}, std::chrono::milliseconds(500));
    while (std::chrono::steady_clock::now() < until) {
      if (c.rangePrefix("/").isOk()) return Status::ok();
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return Status(Code::kInternal, "etcd exited at start; see " + dir_ + "/etcd.log");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return Status(Code::kUnavailable, "etcd did not become ready");
  }

  std::string dir_;
  uint16_t clientPort_ = 0;
  uint16_t peerPort_ = 0;
  pid_t pid_ = -1;
};

}  // namespace sluice::testing
