// lib/nfnl_query.h — one request/response exchange on a NETLINK_NETFILTER socket opened
// inside a network namespace (libmnl). Private to lib/: used by the conntrack statistics
// reader and the ruleset NAT scanner, which read what libnetfilter_conntrack and the nft
// backend do not offer.
#pragma once

#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include <functional>
#include <memory>
#include <string>

#include "sluice/status.h"

namespace sluice::detail {

struct MnlSocketCloser {
  void operator()(mnl_socket* s) const { mnl_socket_close(s); }
};

class NfnlSocket {
 public:
  // Opens and binds the socket inside `netns` ("" = the caller's namespace).
  // `what` names the caller's purpose in error messages ("conntrack statistics").
  static Result<NfnlSocket> open(const std::string& netns, std::string what);

  // Sends `request` (its sequence number and port id are filled in here) and hands every
  // reply message that is not NLMSG_DONE/NLMSG_ERROR to `each`, until the dump ends or the ACK
  // arrives. `interrupted` reports whether any reply carried NLM_F_DUMP_INTR (the kernel
  // changed what it was dumping; the caller should dump again).
  // Errors: the kernel's errno, with EPERM/EACCES mapped to PermissionDenied naming
  // CAP_NET_ADMIN (nfnetlink checks it on every message, reads included).
  Status query(nlmsghdr* request, const std::function<Status(const nlmsghdr*)>& each,
               bool* interrupted = nullptr);

 private:
  NfnlSocket(std::unique_ptr<mnl_socket, MnlSocketCloser> sock, std::string netns, std::string what)
      : sock_(std::move(sock)), netns_(std::move(netns)), what_(std::move(what)) {}
  Status failure(int err, const std::string& action) const;

  std::unique_ptr<mnl_socket, MnlSocketCloser> sock_;
  std::string netns_;
  std::string what_;
  uint32_t seq_ = 1;
};

// Maps an errno from a netfilter netlink request to a Status; EPERM/EACCES become
// PermissionDenied with the capability named, so every sluice-ct command says the same thing.
Status nfnlErrno(int err, const std::string& what, const std::string& netns);

// The failure of runInNetns() as callers report it: a refused setns() names CAP_SYS_ADMIN.
Status netnsEntryFailure(const Status& entered);

}  // namespace sluice::detail
