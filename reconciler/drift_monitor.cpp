#include "sluice/drift_monitor.h"

#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sluice/netns.h"
#include "sluice/nft/backend.h"

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

// More commits than this in one pause window are not looked at one by one: drift.
constexpr uint32_t kMaxWindowCommits = 1 << 16;
// Own generations remembered per pause window (a full sync and the partial syncs of the other
// family committed meanwhile); beyond it they count as foreign, which only costs a repair.
constexpr size_t kMaxOwnCommits = 4096;

std::string tableName(const nft::TableRef& t) { return fmt::format("{} {}", nft::familyName(t.family), t.name); }

void poke(int eventFd) {
  uint64_t one = 1;
  ssize_t w = ::write(eventFd, &one, sizeof one);
  (void)w;  // only fails on counter overflow, and then it is readable anyway
}

void clearEvents(int eventFd) {
  uint64_t n;
  ssize_t r = ::read(eventFd, &n, sizeof n);
  (void)r;
}

}  // namespace

struct DriftMonitor::Impl {
  mnl_socket* nl = nullptr;
  int wake = -1;  // stop()
  int kick = -1;  // resume() found foreign commits: report them on the monitor's thread
  int rcvbuf = 0;
  // Asks the ruleset generation (GETGEN) for pause()/resume(): not the listening socket,
  // whose reader is the monitor's thread.
  std::unique_ptr<nft::NetlinkBackend> query;

  std::mutex mu;  // everything below
  int pauses = 0;
  bool left = false;      // out of the group in the current pause
  bool hearNext = false;  // the next pause stays in the group (see pause())
  uint32_t generationAtPause = 0;
  std::vector<uint32_t> own;  // noted in the current pause
  std::string windowDrift;    // for the monitor's thread

  ~Impl() {
    if (nl) mnl_socket_close(nl);
    if (wake >= 0) ::close(wake);
    if (kick >= 0) ::close(kick);
  }
  void growBuffer(int want) {
    want = std::min(want, kMaxRcvBuf);
    if (want <= rcvbuf) return;
    int fd = mnl_socket_get_fd(nl);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) != 0)
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
    rcvbuf = want;
  }
  Status membership(int option) {
    int group = NFNLGRP_NFTABLES;
    if (mnl_socket_setsockopt(nl, option, &group, sizeof group) < 0)
      return Status::fromErrno(errno, option == NETLINK_ADD_MEMBERSHIP ? "cannot join the nftables notification group"
                                                                       : "cannot leave the nftables notification group");
    return Status::ok();
  }
  // Commits in (generationAtPause, now] not noted as sluice's own. The kernel skips 0 when
  // the 32-bit counter wraps (nf_tables_commit: `while (++base_seq == 0)`).
  uint32_t foreignCommits(uint32_t now) const {
    uint32_t foreign = 0, seen = 0;
    for (uint32_t g = generationAtPause; g != now;) {
      if (++g == 0) continue;
      if (++seen > kMaxWindowCommits) return seen;
      if (std::find(own.begin(), own.end(), g) == own.end()) ++foreign;
    }
    return foreign;
  }
};

Result<std::unique_ptr<DriftMonitor>> DriftMonitor::open(DriftOptions options,
                                                         std::function<void(const DriftEvent&)> onDrift) {
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
    st = impl->membership(NETLINK_ADD_MEMBERSHIP);
  });
  if (!ns) return ns.withContext("drift monitor");
  if (!st) return st.withContext("drift monitor");
  auto query = nft::NetlinkBackend::open({options.netns});
  if (!query) return query.status().withContext("drift monitor");
  impl->query = std::move(query).value();
  impl->wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  impl->kick = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl->wake < 0 || impl->kick < 0) return Status::fromErrno(errno, "drift monitor: eventfd");
  impl->growBuffer(kInitialRcvBuf);
  return std::unique_ptr<DriftMonitor>(new DriftMonitor(std::move(options), std::move(onDrift), std::move(impl)));
}

DriftMonitor::DriftMonitor(DriftOptions options, std::function<void(const DriftEvent&)> onDrift,
                           std::unique_ptr<Impl> impl)
    : options_(std::move(options)), onDrift_(std::move(onDrift)), impl_(std::move(impl)) {}

DriftMonitor::~DriftMonitor() { stop(); }

void DriftMonitor::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void DriftMonitor::stop() {
  if (!thread_.joinable()) return;
  poke(impl_->wake);
  thread_.join();
  clearEvents(impl_->wake);
}

bool DriftMonitor::pause() {
  Impl& im = *impl_;
  std::lock_guard lock(im.mu);
  if (im.pauses++ > 0) return im.left;
  if (std::exchange(im.hearNext, false)) return false;
  // The generation first, then leave: a commit in between is both heard and counted (at
  // worst a needless repair); the other order would let one be neither.
  auto gen = im.query->generation();
  if (!gen) {
    spdlog::warn("drift monitor keeps listening through a full sync: {}", gen.status().toString());
    return false;
  }
  if (Status st = im.membership(NETLINK_DROP_MEMBERSHIP); !st) {
    spdlog::warn("drift monitor keeps listening through a full sync: {}", st.toString());
    return false;
  }
  im.left = true;
  im.generationAtPause = *gen;
  im.own.clear();
  return true;
}

void DriftMonitor::noteOwnCommit(uint32_t generation) {
  Impl& im = *impl_;
  std::lock_guard lock(im.mu);
  if (im.left && im.own.size() < kMaxOwnCommits) im.own.push_back(generation);
}

void DriftMonitor::resume() {
  Impl& im = *impl_;
  std::string drift;
  {
    std::lock_guard lock(im.mu);
    if (im.pauses == 0 || --im.pauses > 0 || !std::exchange(im.left, false)) return;
    // Join first, then read the generation: a later commit is heard, an earlier one counted.
    if (Status st = im.membership(NETLINK_ADD_MEMBERSHIP); !st) {
      spdlog::error("drift monitor: {}; drift is not detected until the next pause", st.toString());
      drift = "the monitor could not rejoin the notification group";
    } else if (auto now = im.query->generation(); !now) {
      drift = "the ruleset generation could not be read after a pause: " + now.status().toString();
    } else if (uint32_t foreign = im.foreignCommits(*now); foreign > 0) {
      drift = fmt::format("{} commit(s) not sluice's own while the monitor was paused, generation {} → {}", foreign,
                          im.generationAtPause, *now);
    }
    if (drift.empty()) return;
    im.hearNext = true;
    im.windowDrift = drift;
  }
  poke(im.kick);
}

SyncHooks DriftMonitor::syncHooks() {
  return {[this] { pause(); },
          [this](const SyncReport& report) {
            if (report.generation) noteOwnCommit(*report.generation);
            if (report.full) resume();
          }};
}

void DriftMonitor::report(const DriftEvent& event) {
  ++drifts_;
  if (event.table)
    spdlog::warn("table {} changed by someone else ({}); repairing", tableName(*event.table), event.reason);
  else
    spdlog::warn("sluice's tables may have been changed by someone else ({}); repairing all", event.reason);
  onDrift_(event);
}

void DriftMonitor::loop() {
  std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE * 16);
  const int fd = mnl_socket_get_fd(impl_->nl);
  // Notifications of one transaction arrive in a row and end with NFT_MSG_NEWGEN; the drift
  // found in them is reported once per table, at that end.
  std::vector<nft::TableRef> touched;
  std::string pending;
  while (true) {
    pollfd p[3] = {{impl_->wake, POLLIN, 0}, {impl_->kick, POLLIN, 0}, {fd, POLLIN, 0}};
    int r = ::poll(p, 3, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[0].revents) return;
    if (p[1].revents) {
      clearEvents(impl_->kick);
      std::string why;
      {
        std::lock_guard lock(impl_->mu);
        why = std::exchange(impl_->windowDrift, {});
      }
      if (!why.empty()) report({std::nullopt, why});
      continue;
    }
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ENOBUFS) {
        impl_->growBuffer(impl_->rcvbuf * 2);
        report({std::nullopt, "ruleset notifications were lost (receive buffer overflow)"});
        touched.clear();
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
        for (const auto& t : touched) report({t, pending});
        touched.clear();
        continue;
      }
      if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) continue;
      auto* gen = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
      if (options_.isOwnPort && options_.isOwnPort(nlh->nlmsg_pid)) continue;
      const nft::TableRef table{nft::Family(gen->nfgen_family), tableOf(nlh)};
      if (std::find(options_.tables.begin(), options_.tables.end(), table) == options_.tables.end()) continue;
      if (std::find(touched.begin(), touched.end(), table) != touched.end()) continue;
      if (touched.empty()) pending = fmt::format("notification {} from netlink port {}", msg, nlh->nlmsg_pid);
      touched.push_back(table);
    }
  }
}

}  // namespace sluice
