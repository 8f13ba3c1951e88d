// Client probes: one request from inside a namespace, classified by what came back.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "sockets.h"
#include "testbed.h"

namespace sluice::testbed {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxSpread = 100000;
constexpr size_t kMaxReply = 4096;
constexpr auto kBusyPortRetry = std::chrono::milliseconds(5);

int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Errors that mean "somebody actively said no": a TCP RST, or an ICMP(v6) destination
// unreachable — port (ECONNREFUSED), host/net (EHOSTUNREACH/ENETUNREACH, also a local "no
// route"), admin-prohibited (EHOSTUNREACH for v4's "packet filtered", EACCES for v6), and
// EPERM: a datagram the sender's own output path rejects (a reject rule in the node itself)
// fails send() with EPERM before any ICMP exists.
bool isRefusal(int e) {
  return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EACCES ||
         e == ECONNRESET || e == EPERM;
}

ProbeResult failed(int err, std::string detail) {
  ProbeResult r;
  r.err = err;
  r.detail = std::move(detail);
  if (isRefusal(err)) {
    r.kind = ProbeResult::kRefused;
  } else if (err == ETIMEDOUT) {
    r.kind = ProbeResult::kTimeout;
  } else {
    r.kind = ProbeResult::kError;
  }
  return r;
}

ProbeResult timedOut(std::string detail) {
  ProbeResult r;
  r.kind = ProbeResult::kTimeout;
  r.detail = std::move(detail);
  return r;
}

// "<id> <ip> <port>" → answered result.
ProbeResult parseReply(const std::string& line) {
  ProbeResult r;
  size_t a = line.find(' ');
  size_t b = a == std::string::npos ? a : line.find(' ', a + 1);
  if (b != std::string::npos) {
    auto ip = IPAddress::parse(line.substr(a + 1, b - a - 1));
    const std::string portText = line.substr(b + 1);
    char* end = nullptr;
    unsigned long port = std::strtoul(portText.c_str(), &end, 10);
    if (ip.isOk() && !portText.empty() && *end == '\0' && port <= 65535) {
      r.kind = ProbeResult::kAnswered;
      r.backendId = line.substr(0, a);
      r.seenSource = *ip;
      r.seenSourcePort = static_cast<uint16_t>(port);
      return r;
    }
  }
  r.kind = ProbeResult::kError;
  r.detail = fmt::format("unexpected reply '{}'", line);
  return r;
}

// Waits until `fd` reports one of `events` or the deadline passes; 0 on timeout.
short waitFor(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, msLeft(deadline));
    if (rc > 0) return p.revents;
    if (rc == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

uint16_t localPortOf(int fd) {
  sockaddr_storage sa;
  socklen_t len = sizeof sa;
  IPAddress ip;
  uint16_t port = 0;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    detail::fromSockaddr(sa, ip, port);
  return port;
}

// Binds the fixed source address/port, if any. Returns 0 or an errno.
int bindLocal(int fd, IPFamily family, const ProbeOptions& o) {
  if (o.localPort == 0 && !o.localAddress) return 0;
  if (o.localAddress && o.localAddress->family() != family) return EAFNOSUPPORT;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage sa;
  socklen_t len = o.localAddress ? detail::toSockaddr(*o.localAddress, o.localPort, sa)
                                 : detail::wildcardSockaddr(family, o.localPort, sa);
  return ::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0 ? 0 : errno;
}

// Connects a stream socket from inside `from`; on failure returns an empty fd and sets `r`.
UniqueFd connectStream(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                       const ProbeOptions& o, Clock::time_point deadline, ProbeResult& r) {
  while (true) {
    auto sock = detail::socketIn(from, dst.family(), detail::socketType(proto) | SOCK_NONBLOCK,
                                 detail::ipProtocol(proto));
    if (!sock.isOk()) {
      r = failed(sock.status().err(), sock.status().toString());
      r.kind = ProbeResult::kError;  // cannot even make a socket: not the network's answer
      return {};
    }
    UniqueFd fd = std::move(*sock);
    int e = bindLocal(fd.get(), dst.family(), o);
    if (e == 0) {
      sockaddr_storage sa;
      socklen_t len = detail::toSockaddr(dst, port, sa);
      if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) == 0) return fd;
      e = errno;
      if (e == EINPROGRESS) {
        if (waitFor(fd.get(), POLLOUT, deadline) == 0) {
          r = timedOut("no answer to connect");
          return {};
        }
        socklen_t elen = sizeof e;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &e, &elen) != 0) e = errno;
        if (e == 0) return fd;
      }
    }
    // A fixed source port may still belong to the previous probe's connection for a moment
    // (LAST_ACK until the peer's final ACK): retry while there is time.
    if ((e == EADDRINUSE || e == EADDRNOTAVAIL) && o.localPort != 0 && msLeft(deadline) > 0) {
      std::this_thread::sleep_for(kBusyPortRetry);
      continue;
    }
    r = failed(e, "connect");
    return {};
  }
}

// Sends `request` and reads one reply line (leftover bytes stay in `pending`).
ProbeResult exchange(int fd, const std::string& request, Clock::time_point deadline,
                     std::string& pending) {
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (waitFor(fd, POLLOUT, deadline) == 0) return timedOut("cannot send request");
      continue;
    }
    return failed(errno == EPIPE ? ECONNRESET : errno, "send");
  }
  while (true) {
    size_t nl = pending.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      return parseReply(line);
    }
    if (pending.size() > kMaxReply) return failed(EMSGSIZE, "reply line too long");
    if (waitFor(fd, POLLIN, deadline) == 0) return timedOut("no reply");
    char buf[1024];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      pending.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      ProbeResult r;
      r.kind = ProbeResult::kError;
      r.detail = "closed";
      return r;
    } else if (errno != EINTR && errno != EAGAIN) {
      return failed(errno, "recv");
    }
  }
}

ProbeResult probeStream(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                        const ProbeOptions& o) {
  const auto deadline = Clock::now() + o.timeout;
  ProbeResult r;
  UniqueFd fd = connectStream(from, proto, dst, port, o, deadline, r);
  if (!fd) return r;
  std::string pending;
  r = exchange(fd.get(), "hello\n", deadline, pending);
  r.localPort = localPortOf(fd.get());
  if (r.answered()) {
    // Let the server's FIN arrive before closing, so this side ends in LAST_ACK (gone within
    // a round trip) rather than TIME_WAIT, which would block reusing a fixed source port for
    // a minute. A peer that does not close gets an RST instead (linger 0), for the same reason.
    bool eof = false;
    char buf[256];
    while (!eof && waitFor(fd.get(), POLLIN, deadline) != 0) {
      ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) eof = true;
    }
    if (!eof) {
      linger l{1, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
  }
  return r;
}

ProbeResult probeDatagram(const Netns& from, const IPAddress& dst, uint16_t port,
                          const ProbeOptions& o) {
  const auto deadline = Clock::now() + o.timeout;
  auto sock = detail::socketIn(from, dst.family(), SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_UDP);
  if (!sock.isOk()) {
    ProbeResult r = failed(sock.status().err(), sock.status().toString());
    r.kind = ProbeResult::kError;
    return r;
  }
  const int fd = sock->get();
  // Without IP_RECVERR a connected UDP socket hears only "hard" ICMP errors (port and
  // protocol unreachable, admin prohibited); with it, host/net unreachable too, so every
  // kind of reject a ruleset can send shows up as kRefused rather than as a timeout.
  const int one = 1;
  if (dst.isV4()) {
    ::setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one);
  } else {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof one);
  }
  if (int e = bindLocal(fd, dst.family(), o); e != 0) return failed(e, "bind");
  sockaddr_storage sa;
  socklen_t len = detail::toSockaddr(dst, port, sa);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) return failed(errno, "connect");
  const std::string request = "hello\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) return failed(errno, "send");
  const uint16_t localPort = localPortOf(fd);
  while (true) {
    if (waitFor(fd, POLLIN, deadline) == 0) {
      ProbeResult r = timedOut("no reply");
      r.localPort = localPort;
      return r;
    }
    char buf[kMaxReply];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    ProbeResult r;
    if (n < 0) {
      r = failed(errno, "recv");
    } else {
      std::string line(buf, static_cast<size_t>(n));
      if (!line.empty() && line.back() == '\n') line.pop_back();
      r = parseReply(line);
    }
    r.localPort = localPort;
    return r;
  }
}

}  // namespace

std::string ProbeResult::toString() const {
  std::string errText = err != 0 ? fmt::format(" (errno {}: {})", err, std::strerror(err)) : "";
  std::string detailText = detail.empty() ? "" : ": " + detail;
  switch (kind) {
    case kAnswered:
      return fmt::format("answered by {} (saw {}:{})", backendId,
                         seenSource.isV4() ? seenSource.toString()
                                           : "[" + seenSource.toString() + "]",
                         seenSourcePort);
    case kRefused: return fmt::format("refused{}{}", detailText, errText);
    case kTimeout: return fmt::format("timeout{}", detailText);
    case kError: return fmt::format("error{}{}", detailText, errText);
  }
  return "?";
}

ProbeResult probe(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                  const ProbeOptions& options) {
  if (proto == Protocol::kUDP) return probeDatagram(from, dst, port, options);
  return probeStream(from, proto, dst, port, options);
}

ProbeResult probe(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                  std::chrono::milliseconds timeout, uint16_t localPort) {
  ProbeOptions o;
  o.timeout = timeout;
  o.localPort = localPort;
  return probe(from, proto, dst, port, o);
}

std::map<std::string, int> spread(const Netns& from, Protocol proto, const IPAddress& dst,
                                  uint16_t port, int count, std::chrono::milliseconds timeout) {
  std::map<std::string, int> seen;
  count = std::clamp(count, 0, kMaxSpread);
  for (int i = 0; i < count; ++i) {
    ProbeResult r = probe(from, proto, dst, port, timeout);
    switch (r.kind) {
      case ProbeResult::kAnswered: ++seen[r.backendId]; break;
      case ProbeResult::kRefused: ++seen["refused"]; break;
      case ProbeResult::kTimeout: ++seen["timeout"]; break;
      case ProbeResult::kError: ++seen["error"]; break;
    }
  }
  return seen;
}

Result<Connection> Connection::open(const Netns& from, Protocol proto, const IPAddress& dst,
                                    uint16_t port, const ProbeOptions& options) {
  if (proto == Protocol::kUDP)
    return Status(Code::kInvalidArgument, "a held connection needs TCP or SCTP");
  const auto deadline = Clock::now() + options.timeout;
  ProbeResult r;
  UniqueFd fd = connectStream(from, proto, dst, port, options, deadline, r);
  if (!fd) {
    return Status(Code::kUnavailable, fmt::format("holding a connection to {} port {}: {}",
                                                  dst.toString(), port, r.toString()), r.err);
  }
  std::string pending;
  r = exchange(fd.get(), "HOLD\n", deadline, pending);
  r.localPort = localPortOf(fd.get());
  if (!r.answered()) {
    return Status(Code::kUnavailable, fmt::format("holding a connection to {} port {}: {}",
                                                  dst.toString(), port, r.toString()), r.err);
  }
  Connection c(std::move(fd), r);
  c.pending_ = std::move(pending);
  return c;
}

ProbeResult Connection::ask(std::chrono::milliseconds timeout) {
  if (!fd_) {
    ProbeResult r;
    r.detail = "connection is closed";
    return r;
  }
  ProbeResult r = exchange(fd_.get(), "hello\n", Clock::now() + timeout, pending_);
  r.localPort = first_.localPort;
  return r;
}

void Connection::close() { fd_.reset(); }

}  // namespace sluice::testbed
