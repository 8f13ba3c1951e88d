// A real etcd (/usr/bin/etcd, Debian etcd-server 3.4) for tests: started on 127.0.0.1 with two
// free ports and a temporary data dir, stopped and removed by the destructor. The child gets
// PR_SET_PDEATHSIG, so it dies with the test process even when that crashes or is killed.
// Election timeouts are short (heartbeat 50 ms, election 500 ms): startup is fast and etcd's
// minimum lease TTL becomes 1 s instead of 2 s. With TLS, the client port serves https with a
// throw-away CA and requires client certificates (--client-cert-auth), as a production etcd does.
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
#include <fstream>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../lib/etcd_client.h"
#include "apiserver/pki.h"
#include "sluice/http_client.h"
#include "sluice/status.h"

namespace sluice::testing {

class EtcdServer {
 public:
  static constexpr const char* kBinary = "/usr/bin/etcd";

  struct Options {
    bool tls = false;
  };

  static Result<std::unique_ptr<EtcdServer>> start() { return start(Options{}); }
  static Result<std::unique_ptr<EtcdServer>> start(Options options) {
    if (access(kBinary, X_OK) != 0) return Status(Code::kNotFound, "no etcd at /usr/bin/etcd");
    char tmpl[] = "/tmp/sluice-etcd-XXXXXX";
    if (!mkdtemp(tmpl)) return Status::fromErrno(errno, "mkdtemp");
    std::unique_ptr<EtcdServer> s(new EtcdServer(tmpl));
    if (options.tls) s->makePki();
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

  std::string url() const { return (tls_ ? "https" : "http") + std::string("://127.0.0.1:") + std::to_string(clientPort_); }
  // What a client needs to be let in: the CA and a client certificate (empty without TLS).
  http::TlsConfig clientTls() const { return tls_ ? *tls_ : http::TlsConfig{}; }
  // The CA of this etcd (PEM; empty without TLS).
  std::string caPem() const { return tls_ ? tls_->caData : ""; }
  etcd::Client client(std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) const {
    http::ConnectionOptions server;
    server.url = etcd::parseEndpoint(url()).value();
    server.tls = clientTls();
    server.connectTimeout = timeout;
    return etcd::Client(server, timeout);
  }
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

  // A CA, etcd's server certificate for 127.0.0.1 and a client certificate, as files for etcd.
  void makePki() {
    const testing::KeyPair ca = testing::makeCa("sluice test etcd CA");
    // etcd 3.4's gateway dials etcd's own gRPC port with the server certificate, so with
    // --client-cert-auth that certificate must be good for clients too (kubeadm's are).
    const testing::KeyPair server = testing::issueCert(ca, "etcd", {"IP:127.0.0.1"}, testing::CertUse::kServerAndClient);
    const testing::KeyPair client = testing::issueCert(ca, "sluice", {}, testing::CertUse::kClient);
    auto write = [&](const std::string& name, const std::string& pem) {
      std::ofstream(dir_ + "/" + name) << pem;
      return dir_ + "/" + name;
    };
    tlsArgs_ = {"--cert-file=" + write("server.crt", server.certPem), "--key-file=" + write("server.key", server.keyPem),
                "--trusted-ca-file=" + write("ca.crt", ca.certPem), "--client-cert-auth"};
    tls_ = http::TlsConfig{};
    tls_->caData = ca.certPem;
    tls_->certData = client.certPem;
    tls_->keyData = client.keyPem;
  }

  Status launch() {
    const std::string clientUrl = url();
    const std::string peer = "http://127.0.0.1:" + std::to_string(peerPort_);
    std::vector<std::string> args = {kBinary,
                                     "--name=t",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + clientUrl,
                                     "--advertise-client-urls=" + clientUrl,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=t=" + peer,
                                     "--heartbeat-interval=50",
                                     "--election-timeout=500",
                                     "--logger=zap",
                                     "--log-outputs=" + dir_ + "/etcd.log"};
    args.insert(args.end(), tlsArgs_.begin(), tlsArgs_.end());
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
    etcd::Client c = client(std::chrono::milliseconds(500));
    while (std::chrono::steady_clock::now() < until) {
      if (c.rangePrefix("/").isOk()) return Status::ok();
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return Status(Code::kInternal, "etcd exited at start; see " + dir_ + "/etcd.log");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::ifstream log(dir_ + "/etcd.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    return Status(Code::kUnavailable, "etcd did not become ready; its log ends: " +
                                          text.substr(text.size() > 800 ? text.size() - 800 : 0));
  }

  std::string dir_;
  uint16_t clientPort_ = 0;
  uint16_t peerPort_ = 0;
  pid_t pid_ = -1;
  std::optional<http::TlsConfig> tls_;
  std::vector<std::string> tlsArgs_;
};

}  // namespace sluice::testing
