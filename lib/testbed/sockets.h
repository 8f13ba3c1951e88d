// sockets.h — internal helpers of sluice_testbed: sockets created inside a namespace and
// sockaddr conversions. Not for tests to include.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

#include "testbed.h"

namespace sluice::testbed::detail {

// socket(family, type | SOCK_CLOEXEC, protocol) created on a thread inside `ns`; the socket
// keeps that namespace for its whole life, whichever thread uses it later.
Result<UniqueFd> socketIn(const Netns& ns, IPFamily family, int type, int protocol);

int ipProtocol(Protocol proto);  // IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP
int socketType(Protocol proto);  // SOCK_DGRAM for UDP, SOCK_STREAM otherwise

// Address + port → sockaddr_in / sockaddr_in6; returns the length.
socklen_t toSockaddr(const IPAddress& ip, uint16_t port, sockaddr_storage& out);
// The wildcard address of `family`.
socklen_t wildcardSockaddr(IPFamily family, uint16_t port, sockaddr_storage& out);
// sockaddr_in / sockaddr_in6 → address + port; false for other families.
bool fromSockaddr(const sockaddr_storage& sa, IPAddress& ip, uint16_t& port);

}  // namespace sluice::testbed::detail
