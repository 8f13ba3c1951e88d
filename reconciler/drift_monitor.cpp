#include "sluice/drift_monitor.h"

#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sluice/netns.h"

namespace sluice {

namespace {

// Notifications are coalesced by the kernel into skbs of a few KiB, but a full sync of a large
// table still sends megabytes; start big and grow on overflow.
constexpr int kInitialRcvBuf = 8 << 20;
constexpr int kMaxRcvBuf = 256 << 20;

// Every nftables notification of an object inside a table carries the table name as attribute
// 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE all equal 1).
constexpr uint16_t kTableNameAttr = 1;

std::string tableOf(const nlmsghdr* nlh) {
  std::string name;
  const char* end = reinterpret_cast<const char*>(nlh) + nlh->nlmsg_len;
  auto* attr = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
  for (; mnl_attr_ok(attr, int(end - reinterpret_cast<const char*>(attr))); attr = mnl_attr_next(attr)) {
    if (mnl_attr_get_type(attr) == kTableNameAttr && mnl_attr_get_payload_len(attr) > 0) {
      const char* p = static_cast<const char*>(mnl_attr_get_payload(attr));
      name.assign(p, strnlen(p, mnl_attr_get_payload_len(attr)));
      break;
    }
  }
  return name;
}

}  // namespace

struct DriftMonitor::Impl {
  mnl_socket* nl = nullptr;
  int wake = -1;
  int rcvbuf = 0;
  ~Impl() {
    if (nl) mnl_socket_close(nl);
    if (wake >= 0) ::close(wake);
  }
  void growBuffer(int want) {
    want = std::min(want, kMaxRcvBuf);
    if (want <= rcvbuf) return;
    int fd = mnl_socket_get_fd(nl);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) != 0)
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
    rcvbuf = want;
  }
};

Result<std::unique_ptr<DriftMonitor>> DriftMonitor::open(
    DriftOptions options, std::function<void(const std::string&)> onDrift) {
  auto impl = std::make_unique<Impl>();
  Status st;
  Status ns = runInNetns(options.netns, [&] {
    impl->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (!impl->nl) {
      st = Status::fromErrno(errno, "cannot open netfilter netlink socket");
      return;
    }
    if (mnl_socket_bind(impl->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
      st = Status::fromErrno(errno, "cannot bind netfilter netlink socket");
      return;
    }
    int group = NFNLGRP_NFTABLES;
    if (mnl_socket_setsockopt(impl->nl, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0)
      st = Status::fromErrno(errno, "cannot join the nftables notification group");
  });
  if (!ns) return ns.withContext("drift monitor");
  if (!st) return st.withContext("drift monitor");
  impl->wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl->wake < 0) return Status::fromErrno(errno, "drift monitor: eventfd");
  impl->growBuffer(kInitialRcvBuf);
  return std::unique_ptr<DriftMonitor>(
      new DriftMonitor(std::move(options), std::move(onDrift), std::move(impl)));
}

DriftMonitor::DriftMonitor(DriftOptions options, std::function<void(const std::string&)> onDrift,
                           std::unique_ptr<Impl> impl)
    : options_(std::move(options)), onDrift_(std::move(onDrift)), impl_(std::move(impl)) {}

DriftMonitor::~DriftMonitor() { stop(); }

void DriftMonitor::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void DriftMonitor::stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  ssize_t w = ::write(impl_->wake, &one, sizeof one);
  (void)w;  // only fails on counter overflow, and then it is readable anyway
  thread_.join();
  uint64_t drain;
  ssize_t r = ::read(impl_->wake, &drain, sizeof drain);
  (void)r;
}

void DriftMonitor::loop() {
  std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE * 16);
  const int fd = mnl_socket_get_fd(impl_->nl);
  // Notifications of one transaction arrive in a row and end with NFT_MSG_NEWGEN; the drift
  // found in them is reported once, at that end.
  std::string pending;
  while (true) {
    pollfd p[2] = {{impl_->wake, POLLIN, 0}, {fd, POLLIN, 0}};
    int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[0].revents) return;
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ENOBUFS) {
        impl_->growBuffer(impl_->rcvbuf * 2);
        ++drifts_;
        onDrift_("ruleset notifications were lost (receive buffer overflow)");
        pending.clear();
        continue;
      }
      spdlog::error("drift monitor stops: recv: {}", std::strerror(errno));
      return;
    }
    auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
    int len = int(n);
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_NFTABLES) continue;
      const int msg = NFNL_MSG_TYPE(nlh->nlmsg_type);
      if (msg == NFT_MSG_NEWGEN) {
        if (!pending.empty()) {
          ++drifts_;
          spdlog::warn("table {} {} changed by someone else ({}); repairing",
                       nft::familyName(options_.table.family), options_.table.name, pending);
          onDrift_(pending);
          pending.clear();
        }
        continue;
      }
      if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) continue;
      auto* gen = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
      if (gen->nfgen_family != uint8_t(options_.table.family)) continue;
      if (options_.isOwnPort && options_.isOwnPort(nlh->nlmsg_pid)) continue;
      if (tableOf(nlh) != options_.table.name) continue;
      if (pending.empty())
        pending = fmt::format("notification {} from netlink port {}", msg, nlh->nlmsg_pid);
    }
  }
}

}  // namespace sluice
