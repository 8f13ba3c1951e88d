// HTTP backend with graceful shutdown and a bounded HTTP load generator, for rolling-update
// tests through a Service IP. Deliberately minimal HTTP/1.1: GET, Content-Length bodies,
// keep-alive and `Connection: close` — the parts whose timing decides whether a request fails
// while endpoints come and go.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "sluice/netns.h"
#include "sockets.h"
#include "testbed.h"

namespace sluice::testbed {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxHeader = 8192;
constexpr size_t kMaxFailuresKept = 20;

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Value of header `name` (lower case) in a header block, "" if absent.
std::string headerValue(const std::string& head, const std::string& name) {
  std::string l = lower(head);
  size_t pos = l.find("\r\n" + name + ":");
  if (pos == std::string::npos) return "";
  pos += name.size() + 3;
  size_t end = l.find("\r\n", pos);
  std::string v = l.substr(pos, end - pos);
  v.erase(0, v.find_first_not_of(' '));
  return v;
}

struct HttpConn {
  UniqueFd fd;
  std::string in;
  std::string out;
  bool closeWhenFlushed = false;
};

}  // namespace

// ---- server -------------------------------------------------------------------------------

Result<std::unique_ptr<HttpBackend>> HttpBackend::start(const Netns& ns, IPFamily family,
                                                        uint16_t port, std::string id) {
  const std::string what = fmt::format("HTTP backend '{}' on port {} in {}", id, port, ns.name());
  auto sock = detail::socketIn(ns, family, SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_TCP);
  if (!sock) return sock.status().withContext(what);
  const int fd = sock->get();
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == IPFamily::kV6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  sockaddr_storage sa;
  socklen_t len = detail::wildcardSockaddr(family, port, sa);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0)
    return Status::fromErrno(errno, "bind " + what);
  if (::listen(fd, SOMAXCONN) != 0) return Status::fromErrno(errno, "listen " + what);
  len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  IPAddress boundIP;
  uint16_t boundPort = 0;
  detail::fromSockaddr(sa, boundIP, boundPort);
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Status::fromErrno(errno, "eventfd for " + what);
  std::unique_ptr<HttpBackend> b(new HttpBackend(std::move(id), std::move(*sock), std::move(wake), boundPort));
  HttpBackend* self = b.get();
  b->thread_ = std::thread([self] { self->serve(); });
  return b;
}

HttpBackend::HttpBackend(std::string id, UniqueFd socket, UniqueFd wake, uint16_t port)
    : id_(std::move(id)), socket_(std::move(socket)), wake_(std::move(wake)), port_(port) {}

HttpBackend::~HttpBackend() { stop(); }

void HttpBackend::terminate(std::chrono::milliseconds gracePeriod) {
  int64_t expected = 0;
  int64_t at = nowNs() + std::chrono::duration_cast<std::chrono::nanoseconds>(gracePeriod).count();
  if (!exitAtNs_.compare_exchange_strong(expected, at)) return;
  uint64_t one = 1;
  ssize_t w = ::write(wake_.get(), &one, sizeof one);
  (void)w;
}

void HttpBackend::stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  ssize_t w = ::write(wake_.get(), &one, sizeof one);
  (void)w;
  if (thread_.joinable()) thread_.join();
  socket_.reset();
  exited_ = true;
}

void HttpBackend::serve() {
  std::map<int, HttpConn> conns;
  std::vector<pollfd> pfds;
  const std::string body = id_ + "\n";
  while (!stopping_.load()) {
    const int64_t exitAt = exitAtNs_.load();
    int timeoutMs = -1;
    if (exitAt != 0) {
      int64_t left = exitAt - nowNs();
      if (left <= 0) break;  // the grace period is over: the process exits
      timeoutMs = int(left / 1000000) + 1;
    }
    pfds.clear();
    pfds.push_back({wake_.get(), POLLIN, 0});
    pfds.push_back({socket_.get(), POLLIN, 0});
    for (auto& [fd, c] : conns) pfds.push_back({fd, short(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
    int pr = ::poll(pfds.data(), pfds.size(), timeoutMs);
    if (pr < 0 && errno != EINTR) break;
    if (pr <= 0) continue;
    if (pfds[0].revents) {
      uint64_t v;
      ssize_t r = ::read(wake_.get(), &v, sizeof v);
      (void)r;  // terminate() or stop(): re-evaluated at the top of the loop
    }
    const bool terminating = exitAtNs_.load() != 0;
    std::vector<int> toClose;
    for (size_t i = 2; i < pfds.size(); ++i) {
      if (!pfds[i].revents) continue;
      HttpConn& c = conns.at(pfds[i].fd);
      bool keep = true;
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[4096];
        ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
        if (n > 0) {
          c.in.append(buf, size_t(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          keep = false;
        }
      }
      size_t end;
      while (keep && !c.closeWhenFlushed && (end = c.in.find("\r\n\r\n")) != std::string::npos) {
        std::string head = c.in.substr(0, end + 2);
        c.in.erase(0, end + 4);
        const bool close = terminating || headerValue(head, "connection") == "close";
        c.out += fmt::format("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
                             body.size(), close ? "close" : "keep-alive", body);
        served_.fetch_add(1);
        if (close) c.closeWhenFlushed = true;
      }
      if (c.in.size() > kMaxHeader) keep = false;
      while (keep && !c.out.empty()) {
        ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
        if (n > 0) {
          c.out.erase(0, size_t(n));
        } else if (n < 0 && errno == EINTR) {
          continue;
        } else {
          keep = n < 0 && errno == EAGAIN;
          break;
        }
      }
      if (keep && c.closeWhenFlushed && c.out.empty()) keep = false;
      if (!keep) toClose.push_back(pfds[i].fd);
    }
    for (int fd : toClose) conns.erase(fd);
    if (pfds[1].revents & POLLIN) {
      for (int k = 0; k < 64; ++k) {
        int cfd = ::accept4(socket_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) break;
        conns[cfd].fd = UniqueFd(cfd);
      }
    }
  }
  // Exit: the listener and every connection close at once, as when a process ends.
  conns.clear();
  socket_.reset();
  exited_ = true;
}

// ---- load generator -----------------------------------------------------------------------

namespace {

int msUntil(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return int(std::max<int64_t>(0, ms));
}


// Connects (non-blocking, bounded by `deadline`) in the calling thread's namespace.
Result<UniqueFd> connectTo(const IPAddress& dst, uint16_t port, Clock::time_point deadline) {
  UniqueFd fd(::socket(dst.isV4() ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Status::fromErrno(errno, "socket");
  const int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_storage sa;
  socklen_t len = detail::toSockaddr(dst, port, sa);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0 && errno != EINPROGRESS)
    return Status::fromErrno(errno, "connect");
  pollfd p{fd.get(), POLLOUT, 0};
  if (::poll(&p, 1, msUntil(deadline)) <= 0) return Status(Code::kUnavailable, "connect: timeout");
  int err = 0;
  socklen_t el = sizeof err;
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &el);
  if (err != 0) return Status::fromErrno(err, "connect");
  return fd;
}

// One request/response on `fd`. Returns the backend id; sets `serverCloses` when the response
// said `Connection: close`.
Result<std::string> exchange(int fd, bool closeAfter, Clock::time_point deadline, bool& serverCloses) {
  std::string req = fmt::format("GET / HTTP/1.1\r\nHost: svc\r\nConnection: {}\r\n\r\n",
                                closeAfter ? "close" : "keep-alive");
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += size_t(n);
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, msUntil(deadline)) <= 0) return Status(Code::kUnavailable, "send: timeout");
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return Status::fromErrno(errno, "send");
  }
  std::string in;
  while (true) {
    size_t end = in.find("\r\n\r\n");
    if (end != std::string::npos) {
      std::string head = in.substr(0, end + 2);
      size_t want = std::stoul("0" + headerValue(head, "content-length"));
      if (in.size() >= end + 4 + want) {
        if (head.rfind("HTTP/1.1 200", 0) != 0)
          return Status(Code::kInternal, "status: " + head.substr(0, head.find("\r\n")));
        serverCloses = headerValue(head, "connection") == "close";
        std::string body = in.substr(end + 4, want);
        while (!body.empty() && body.back() == '\n') body.pop_back();
        return body;
      }
    }
    pollfd p{fd, POLLIN, 0};
    int pr = ::poll(&p, 1, msUntil(deadline));
    if (pr == 0) return Status(Code::kUnavailable, "response: timeout");
    if (pr < 0 && errno == EINTR) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      in.append(buf, size_t(n));
    } else if (n == 0) {
      return Status(Code::kAborted, "connection closed before a complete response");
    } else if (errno != EAGAIN && errno != EINTR) {
      return Status::fromErrno(errno, "recv");
    }
  }
}

}  // namespace

Result<std::unique_ptr<HttpLoad>> HttpLoad::start(const Netns& from, const IPAddress& dst,
                                                  uint16_t port, const HttpLoadOptions& options) {
  std::unique_ptr<HttpLoad> load(new HttpLoad());
  load->netnsPath_ = from.path();
  load->dst_ = dst;
  load->port_ = port;
  load->options_ = options;
  HttpLoad* self = load.get();
  for (int i = 0; i < options.newConnectionWorkers + options.keepAliveWorkers; ++i) {
    const bool keepAlive = i >= options.newConnectionWorkers;
    self->workers_.emplace_back([self, keepAlive] {
      Status st = runInNetns(self->netnsPath_, [&] { self->work(keepAlive); });
      if (!st) self->record(false, "cannot enter the client namespace: " + st.toString());
    });
  }
  return load;
}

HttpLoad::~HttpLoad() { stop(); }

void HttpLoad::stop() {
  stopping_ = true;
  for (auto& t : workers_)
    if (t.joinable()) t.join();
}

HttpLoad::Stats HttpLoad::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void HttpLoad::record(bool ok, const std::string& backendOrError) {
  std::lock_guard lock(mu_);
  if (ok) {
    ++stats_.ok;
    ++stats_.byBackend[backendOrError];
  } else {
    ++stats_.failed;
    if (stats_.failures.size() < kMaxFailuresKept) stats_.failures.push_back(backendOrError);
  }
}

void HttpLoad::work(bool keepAlive) {
  UniqueFd conn;
  while (!stopping_.load() && issued_.fetch_add(1) < options_.maxRequests) {
    const auto deadline = Clock::now() + options_.requestTimeout;
    const bool fresh = !conn;
    if (!conn) {
      auto c = connectTo(dst_, port_, deadline);
      if (!c) {
        record(false, fmt::format("{} connect: {}", keepAlive ? "keep-alive" : "new", c.status().toString()));
        std::this_thread::sleep_for(options_.pause);
        continue;
      }
      conn = std::move(c).value();
      std::lock_guard lock(mu_);
      ++stats_.connections;
    }
    bool serverCloses = false;
    auto r = exchange(conn.get(), !keepAlive, deadline, serverCloses);
    if (r) {
      record(true, *r);
    } else {
      record(false, fmt::format("{} {}connection: {}", keepAlive ? "keep-alive" : "new",
                                fresh ? "fresh " : "reused ", r.status().toString()));
    }
    if (!r || !keepAlive || serverCloses) conn.reset();
    std::this_thread::sleep_for(options_.pause);
  }
}

}  // namespace sluice::testbed
