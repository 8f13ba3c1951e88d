#include "nfnl_query.h"

#include <cerrno>
#include <vector>

#include <fmt/format.h>

#include "sluice/netns.h"

namespace sluice::detail {

Status nfnlErrno(int err, const std::string& what, const std::string& netns) {
  const std::string where = netns.empty() ? "the current network namespace"
                                          : fmt::format("network namespace {}", netns);
  if (err == EPERM || err == EACCES) {
    return Status(Code::kPermissionDenied,
                  fmt::format("{} in {}: not permitted (netfilter netlink needs CAP_NET_ADMIN)",
                              what, where),
                  err);
  }
  return Status::fromErrno(err, fmt::format("{} in {}", what, where));
}

Status netnsEntryFailure(const Status& entered) {
  if (entered.code() != Code::kPermissionDenied) return entered;
  return Status(Code::kPermissionDenied,
                entered.message() + " (entering a network namespace needs CAP_SYS_ADMIN)", entered.err());
}

Result<NfnlSocket> NfnlSocket::open(const std::string& netns, std::string what) {
  std::unique_ptr<mnl_socket, MnlSocketCloser> sock;
  int err = 0;
  Status entered = runInNetns(netns, [&] {
    sock.reset(mnl_socket_open(NETLINK_NETFILTER));
    if (!sock || mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) err = errno;
  });
  if (!entered) return netnsEntryFailure(entered);
  if (err != 0) return nfnlErrno(err, fmt::format("cannot open a netlink socket for {}", what), netns);
  return NfnlSocket(std::move(sock), netns, std::move(what));
}

Status NfnlSocket::failure(int err, const std::string& action) const {
  return nfnlErrno(err, fmt::format("{} ({})", what_, action), netns_);
}

namespace {

struct QueryContext {
  const std::function<Status(const nlmsghdr*)>* each;
  Status firstError;
  bool interrupted = false;
};

int onReply(const nlmsghdr* nlh, void* data) {
  auto* ctx = static_cast<QueryContext*>(data);
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) ctx->interrupted = true;
  // Keep reading after a parse error: the rest of the dump must be drained anyway.
  if (ctx->firstError.isOk()) ctx->firstError = (*ctx->each)(nlh);
  return MNL_CB_OK;
}

}  // namespace

Status NfnlSocket::query(nlmsghdr* request, const std::function<Status(const nlmsghdr*)>& each,
                         bool* interrupted) {
  request->nlmsg_seq = ++seq_;
  const uint32_t portid = mnl_socket_get_portid(sock_.get());
  if (mnl_socket_sendto(sock_.get(), request, request->nlmsg_len) < 0) {
    return failure(errno, "send");
  }
  QueryContext ctx{&each, Status::ok()};
  // 32 KiB, the size the kernel uses for dump skbs on large-page hosts; smaller would truncate.
  std::vector<char> buf(32768);
  while (true) {
    ssize_t got = mnl_socket_recvfrom(sock_.get(), buf.data(), buf.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      return failure(errno, "receive");
    }
    // NLMSG_DONE and a zero ACK end the exchange (MNL_CB_STOP); an error ACK sets errno.
    int rc = mnl_cb_run(buf.data(), static_cast<size_t>(got), request->nlmsg_seq, portid, onReply, &ctx);
    if (rc == MNL_CB_ERROR) {
      // EINTR in the final message: the dump was cut short by a concurrent change.
      if (errno == EINTR) {
        ctx.interrupted = true;
        break;
      }
      return failure(errno, "request");
    }
    if (rc == MNL_CB_STOP) break;
  }
  if (interrupted) *interrupted = ctx.interrupted;
  return ctx.firstError;
}

}  // namespace sluice::detail
