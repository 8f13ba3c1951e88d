#include "sockets.h"

#include <cstring>

#include <fmt/format.h>

#include "sluice/netns.h"

namespace sluice::testbed::detail {

Result<UniqueFd> socketIn(const Netns& ns, IPFamily family, int type, int protocol) {
  if (!ns.valid()) return Status(Code::kFailedPrecondition, "namespace was removed");
  UniqueFd fd;
  int err = 0;
  const int domain = family == IPFamily::kV4 ? AF_INET : AF_INET6;
  Status entered = runInNetns(ns.path(), [&] {
    fd.reset(::socket(domain, type | SOCK_CLOEXEC, protocol));
    if (!fd) err = errno;
  });
  if (!entered.isOk()) return entered;
  if (!fd) return Status::fromErrno(err, fmt::format("socket in {}", ns.name()));
  return fd;
}

int ipProtocol(Protocol proto) {
  switch (proto) {
    case Protocol::kTCP: return IPPROTO_TCP;
    case Protocol::kUDP: return IPPROTO_UDP;
    case Protocol::kSCTP: return IPPROTO_SCTP;
  }
  return 0;
}

int socketType(Protocol proto) { return proto == Protocol::kUDP ? SOCK_DGRAM : SOCK_STREAM; }

socklen_t toSockaddr(const IPAddress& ip, uint16_t port, sockaddr_storage& out) {
  std::memset(&out, 0, sizeof out);
  if (ip.isV4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&out);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, ip.bytes(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, ip.bytes(), 16);
  return sizeof(sockaddr_in6);
}

socklen_t wildcardSockaddr(IPFamily family, uint16_t port, sockaddr_storage& out) {
  IPAddress any = family == IPFamily::kV4 ? IPAddress::v4(0, 0, 0, 0)
                                          : IPAddress::fromV6Bytes(in6addr_any.s6_addr);
  return toSockaddr(any, port, out);
}

bool fromSockaddr(const sockaddr_storage& sa, IPAddress& ip, uint16_t& port) {
  if (sa.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&sa);
    ip = IPAddress::fromV4Bytes(reinterpret_cast<const uint8_t*>(&sin->sin_addr));
    port = ntohs(sin->sin_port);
    return true;
  }
  if (sa.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&sa);
    ip = IPAddress::fromV6Bytes(sin6->sin6_addr.s6_addr);
    port = ntohs(sin6->sin6_port);
    return true;
  }
  return false;
}

}  // namespace sluice::testbed::detail
