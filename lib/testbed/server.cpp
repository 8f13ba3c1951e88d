// Echo-who-I-am servers on their own threads, with sockets living in a test namespace.
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "sockets.h"
#include "testbed.h"

namespace sluice::testbed {

namespace {

constexpr size_t kMaxConnections = 4096;  // beyond this, new connections are closed at once
constexpr size_t kMaxLine = 4096;         // a longer request line closes the connection
constexpr int kAcceptBurst = 64;          // accepts per poll round, so connections get served
constexpr int kDatagramBurst = 256;

std::string replyFor(const std::string& id, const IPAddress& peer, uint16_t port) {
  return fmt::format("{} {} {}\n", id, peer.toString(), port);
}

struct StreamConn {
  UniqueFd fd;
  IPAddress peer;
  uint16_t peerPort = 0;
  std::string in;
  std::string out;
  bool sawFirst = false;
  bool hold = false;
  bool closeWhenFlushed = false;
};

}  // namespace

bool sctpSupported(const Netns& ns) {
  auto fd = detail::socketIn(ns, IPFamily::kV4, SOCK_STREAM, IPPROTO_SCTP);
  return fd.isOk();
}

Result<std::unique_ptr<Server>> Server::start(const Netns& ns, Protocol proto, IPFamily family,
                                              uint16_t port, std::string id) {
  if (id.empty() || std::any_of(id.begin(), id.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) != 0;
      })) {
    return Status(Code::kInvalidArgument, fmt::format("server id '{}' must be one word", id));
  }
  const std::string what = fmt::format("{} {} server '{}' on port {} in {}", familyName(family),
                                       protocolName(proto), id, port, ns.name());
  auto sock = detail::socketIn(ns, family, detail::socketType(proto) | SOCK_NONBLOCK,
                               detail::ipProtocol(proto));
  if (!sock.isOk()) {
    if (proto == Protocol::kSCTP && sock.status().err() == EPROTONOSUPPORT) {
      // nftables and conntrack handle SCTP in this kernel, but it has no SCTP sockets
      // (CONFIG_IP_SCTP off), so there is nothing to serve SCTP traffic with.
      return Status(Code::kUnimplemented,
                    "this kernel has no SCTP sockets (socket(IPPROTO_SCTP): EPROTONOSUPPORT), "
                    "so SCTP traffic cannot be tested here",
                    EPROTONOSUPPORT);
    }
    return sock.status().withContext(what);
  }
  const int fd = sock->get();
  const int one = 1;
  // Restarting a stream server on the same port must not wait for TIME_WAIT connections to
  // expire. Not for UDP: there it would let two servers share a port silently.
  if (proto != Protocol::kUDP) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == IPFamily::kV6) {
    if (::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
      return Status::fromErrno(errno, "IPV6_V6ONLY for " + what);
  }
  if (proto == Protocol::kUDP) {
    // A wildcard-bound UDP socket must answer from the address it was asked on, or replies
    // from a multi-address namespace (node, ext) would carry the wrong source.
    int rc = family == IPFamily::kV4
                 ? ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one)
                 : ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
    if (rc != 0) return Status::fromErrno(errno, "PKTINFO for " + what);
  }
  sockaddr_storage sa;
  socklen_t len = detail::wildcardSockaddr(family, port, sa);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
    int e = errno;
    return Status::fromErrno(e == EADDRINUSE ? EEXIST : e, "bind " + what);
  }
  if (proto != Protocol::kUDP && ::listen(fd, SOMAXCONN) != 0)
    return Status::fromErrno(errno, "listen " + what);
  len = sizeof sa;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0)
    return Status::fromErrno(errno, "getsockname " + what);
  IPAddress boundIP;
  uint16_t boundPort = 0;
  detail::fromSockaddr(sa, boundIP, boundPort);

  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Status::fromErrno(errno, "eventfd for " + what);
  std::unique_ptr<Server> server(
      new Server(proto, family, std::move(id), std::move(*sock), std::move(wake), boundPort));
  Server* s = server.get();
  s->thread_ = std::thread([s] {
    if (s->proto_ == Protocol::kUDP) {
      s->serveDatagram();
    } else {
      s->serveStream();
    }
  });
  return server;
}

Server::Server(Protocol proto, IPFamily family, std::string id, UniqueFd socket, UniqueFd wake,
               uint16_t port)
    : proto_(proto),
      family_(family),
      id_(std::move(id)),
      socket_(std::move(socket)),
      wake_(std::move(wake)),
      port_(port) {}

Server::~Server() { stop(); }

void Server::stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  ssize_t w = ::write(wake_.get(), &one, sizeof one);
  (void)w;  // an eventfd write only fails on overflow, and then it is readable anyway
  if (thread_.joinable()) thread_.join();
  socket_.reset();
}

void Server::serveStream() {
  std::map<int, StreamConn> conns;
  std::vector<pollfd> pfds;
  auto flush = [&](StreamConn& c) {
    while (!c.out.empty()) {
      ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        c.out.erase(0, static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno == EAGAIN) {
        return true;  // POLLOUT will bring us back
      } else {
        return false;
      }
    }
    return !c.closeWhenFlushed;
  };
  // Consumes complete request lines; false when the connection should be closed now.
  auto handleInput = [&](StreamConn& c) {
    size_t nl;
    while (!c.closeWhenFlushed && (nl = c.in.find('\n')) != std::string::npos) {
      std::string line = c.in.substr(0, nl);
      c.in.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!c.sawFirst) {
        c.sawFirst = true;
        c.hold = line == "HOLD";
      }
      c.out += replyFor(id_, c.peer, c.peerPort);
      served_.fetch_add(1);
      if (!c.hold) c.closeWhenFlushed = true;
    }
    if (c.in.size() > kMaxLine) return false;
    return flush(c);
  };

  while (!stopping_.load()) {
    pfds.clear();
    pfds.push_back({wake_.get(), POLLIN, 0});
    pfds.push_back({socket_.get(), POLLIN, 0});
    for (auto& [fd, c] : conns) {
      short ev = c.closeWhenFlushed ? 0 : POLLIN;
      if (!c.out.empty()) ev |= POLLOUT;
      pfds.push_back({fd, ev, 0});
    }
    int pr = ::poll(pfds.data(), pfds.size(), -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfds[0].revents != 0) break;  // stop()
    std::vector<int> toClose;
    for (size_t i = 2; i < pfds.size(); ++i) {
      if (pfds[i].revents == 0) continue;
      StreamConn& c = conns.at(pfds[i].fd);
      bool keep = true;
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[4096];
        ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
        if (n > 0) {
          c.in.append(buf, static_cast<size_t>(n));
          keep = handleInput(c);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          keep = false;  // the client closed (or reset) its side
        }
      }
      if (keep && (pfds[i].revents & POLLOUT)) keep = flush(c);
      if (!keep) toClose.push_back(pfds[i].fd);
    }
    for (int fd : toClose) conns.erase(fd);
    if (pfds[1].revents & POLLIN) {
      for (int i = 0; i < kAcceptBurst; ++i) {
        sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int fd = ::accept4(socket_.get(), reinterpret_cast<sockaddr*>(&sa), &len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN, or an aborted connection: poll again
        UniqueFd cfd(fd);
        if (conns.size() >= kMaxConnections) continue;  // closes it
        StreamConn c;
        c.fd = std::move(cfd);
        detail::fromSockaddr(sa, c.peer, c.peerPort);
        conns.emplace(fd, std::move(c));
      }
    }
    open_.store(static_cast<int>(conns.size()));
  }
  conns.clear();
  open_.store(0);
}

void Server::serveDatagram() {
  const bool v4 = family_ == IPFamily::kV4;
  while (!stopping_.load()) {
    pollfd pfds[2] = {{wake_.get(), POLLIN, 0}, {socket_.get(), POLLIN, 0}};
    int pr = ::poll(pfds, 2, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfds[0].revents != 0) break;
    for (int i = 0; i < kDatagramBurst; ++i) {
      char buf[2048];
      sockaddr_storage peerSa;
      alignas(cmsghdr) char control[256];
      iovec iov{buf, sizeof buf};
      msghdr msg{};
      msg.msg_name = &peerSa;
      msg.msg_namelen = sizeof peerSa;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(socket_.get(), &msg, 0);
      if (n < 0) break;  // EAGAIN, or an ICMP error queued by an earlier reply: poll again
      IPAddress peer;
      uint16_t peerPort = 0;
      if (!detail::fromSockaddr(peerSa, peer, peerPort)) continue;
      std::string reply = replyFor(id_, peer, peerPort);

      // Reply from the address the datagram was sent to (see start()).
      alignas(cmsghdr) char outControl[256];
      msghdr out{};
      iovec outIov{reply.data(), reply.size()};
      out.msg_name = &peerSa;
      out.msg_namelen = msg.msg_namelen;
      out.msg_iov = &outIov;
      out.msg_iovlen = 1;
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
        if (v4 && cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
          in_pktinfo got;
          std::memcpy(&got, CMSG_DATA(cm), sizeof got);
          in_pktinfo pi{};
          pi.ipi_spec_dst = got.ipi_addr;  // ifindex 0: let routing pick the way back
          out.msg_control = outControl;
          out.msg_controllen = CMSG_SPACE(sizeof pi);
          cmsghdr* oc = CMSG_FIRSTHDR(&out);
          oc->cmsg_level = IPPROTO_IP;
          oc->cmsg_type = IP_PKTINFO;
          oc->cmsg_len = CMSG_LEN(sizeof pi);
          std::memcpy(CMSG_DATA(oc), &pi, sizeof pi);
        } else if (!v4 && cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
          in6_pktinfo got;
          std::memcpy(&got, CMSG_DATA(cm), sizeof got);
          in6_pktinfo pi{};
          pi.ipi6_addr = got.ipi6_addr;
          // Link-local sources only make sense with their interface.
          if (IN6_IS_ADDR_LINKLOCAL(&got.ipi6_addr)) pi.ipi6_ifindex = got.ipi6_ifindex;
          out.msg_control = outControl;
          out.msg_controllen = CMSG_SPACE(sizeof pi);
          cmsghdr* oc = CMSG_FIRSTHDR(&out);
          oc->cmsg_level = IPPROTO_IPV6;
          oc->cmsg_type = IPV6_PKTINFO;
          oc->cmsg_len = CMSG_LEN(sizeof pi);
          std::memcpy(CMSG_DATA(oc), &pi, sizeof pi);
        }
      }
      // Counted before sending, so a client that has its answer also sees the count. A lost
      // reply is a lost datagram; the client will time out and say so.
      served_.fetch_add(1);
      ssize_t sent = ::sendmsg(socket_.get(), &out, MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)sent;
    }
  }
}

}  // namespace sluice::testbed
