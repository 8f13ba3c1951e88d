#include "sluice/conntrack.h"

#include <arpa/inet.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>

#include "nfnl_query.h"
#include "sluice/netns.h"

namespace sluice::conntrack {
namespace {

// How often dump() repeats a dump the kernel marked interrupted before giving up.
constexpr int kMaxDumpAttempts = 4;

struct HandleCloser {
  void operator()(nfct_handle* h) const { nfct_close(h); }
};
using HandlePtr = std::unique_ptr<nfct_handle, HandleCloser>;

struct CtDeleter {
  void operator()(nf_conntrack* ct) const { nfct_destroy(ct); }
};
using CtPtr = std::unique_ptr<nf_conntrack, CtDeleter>;

struct FilterDumpDeleter {
  void operator()(nfct_filter_dump* f) const { nfct_filter_dump_destroy(f); }
};
using FilterDumpPtr = std::unique_ptr<nfct_filter_dump, FilterDumpDeleter>;

uint8_t afOf(IPFamily f) { return f == IPFamily::kV4 ? AF_INET : AF_INET6; }

const char* l4Name(Protocol p) {
  switch (p) {
    case Protocol::kTCP: return "tcp";
    case Protocol::kUDP: return "udp";
    case Protocol::kSCTP: return "sctp";
  }
  return "?";
}

std::optional<Protocol> protocolOf(uint8_t l4) {
  switch (l4) {
    case IPPROTO_TCP: return Protocol::kTCP;
    case IPPROTO_UDP: return Protocol::kUDP;
    case IPPROTO_SCTP: return Protocol::kSCTP;
    default: return std::nullopt;
  }
}

// Names as conntrack(8) prints them. TCP_CONNTRACK_LISTEN is the kernel's SYN_SENT2
// (simultaneous open); the numeric values are kernel ABI.
const char* tcpStateName(uint8_t state) {
  switch (state) {
    case TCP_CONNTRACK_NONE: return "NONE";
    case TCP_CONNTRACK_SYN_SENT: return "SYN_SENT";
    case TCP_CONNTRACK_SYN_RECV: return "SYN_RECV";
    case TCP_CONNTRACK_ESTABLISHED: return "ESTABLISHED";
    case TCP_CONNTRACK_FIN_WAIT: return "FIN_WAIT";
    case TCP_CONNTRACK_CLOSE_WAIT: return "CLOSE_WAIT";
    case TCP_CONNTRACK_LAST_ACK: return "LAST_ACK";
    case TCP_CONNTRACK_TIME_WAIT: return "TIME_WAIT";
    case TCP_CONNTRACK_CLOSE: return "CLOSE";
    case TCP_CONNTRACK_SYN_SENT2: return "SYN_SENT2";
    default: return "UNKNOWN";
  }
}

std::string endpointString(const IPAddress& ip, uint16_t port) {
  return ip.isV6() ? fmt::format("[{}]:{}", ip.toString(), port)
                   : fmt::format("{}:{}", ip.toString(), port);
}

IPAddress addressAttr(const nf_conntrack* ct, uint8_t af, nf_conntrack_attr v4, nf_conntrack_attr v6) {
  if (af == AF_INET) {
    uint32_t a = nfct_get_attr_u32(ct, v4);  // network order
    return IPAddress::fromV4Bytes(reinterpret_cast<const uint8_t*>(&a));
  }
  return IPAddress::fromV6Bytes(static_cast<const uint8_t*>(nfct_get_attr(ct, v6)));
}

std::optional<Flow> flowFromCt(const nf_conntrack* ct) {
  if (!nfct_attr_is_set(ct, ATTR_L3PROTO) || !nfct_attr_is_set(ct, ATTR_L4PROTO)) return std::nullopt;
  const uint8_t af = nfct_get_attr_u8(ct, ATTR_L3PROTO);
  if (af != AF_INET && af != AF_INET6) return std::nullopt;
  const std::optional<Protocol> proto = protocolOf(nfct_get_attr_u8(ct, ATTR_L4PROTO));
  if (!proto) return std::nullopt;

  Flow f;
  f.original.proto = *proto;
  f.original.src = addressAttr(ct, af, ATTR_IPV4_SRC, ATTR_IPV6_SRC);
  f.original.dst = addressAttr(ct, af, ATTR_IPV4_DST, ATTR_IPV6_DST);
  f.original.srcPort = ntohs(nfct_get_attr_u16(ct, ATTR_PORT_SRC));
  f.original.dstPort = ntohs(nfct_get_attr_u16(ct, ATTR_PORT_DST));
  f.reply.proto = *proto;
  f.reply.src = addressAttr(ct, af, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC);
  f.reply.dst = addressAttr(ct, af, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST);
  f.reply.srcPort = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC));
  f.reply.dstPort = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
  if (nfct_attr_is_set(ct, ATTR_STATUS)) f.status = nfct_get_attr_u32(ct, ATTR_STATUS);
  if (nfct_attr_is_set(ct, ATTR_MARK)) f.mark = nfct_get_attr_u32(ct, ATTR_MARK);
  if (nfct_attr_is_set(ct, ATTR_TIMEOUT)) f.timeoutSeconds = nfct_get_attr_u32(ct, ATTR_TIMEOUT);
  if (nfct_attr_is_set(ct, ATTR_ID)) f.id = nfct_get_attr_u32(ct, ATTR_ID);
  if (nfct_attr_is_set(ct, ATTR_ZONE)) f.zone = nfct_get_attr_u16(ct, ATTR_ZONE);
  if (*proto == Protocol::kTCP && nfct_attr_is_set(ct, ATTR_TCP_STATE)) {
    f.tcpState = tcpStateName(nfct_get_attr_u8(ct, ATTR_TCP_STATE));
  }
  return f;
}

void setAddress(nf_conntrack* ct, const IPAddress& ip, nf_conntrack_attr v4, nf_conntrack_attr v6) {
  if (ip.isV4()) {
    uint32_t a;
    std::memcpy(&a, ip.bytes(), 4);
    nfct_set_attr_u32(ct, v4, a);
  } else {
    nfct_set_attr_l(ct, v6, ip.bytes(), 16);
  }
}

// The request that names exactly one entry: its original tuple and zone. Beware: a CT_DELETE
// without any tuple is a *flush* of the whole table in the kernel, so this always sets the full
// original tuple, and callers validate it first.
CtPtr entryRequest(const Tuple& t, uint16_t zone) {
  CtPtr ct(nfct_new());
  if (!ct) return ct;
  nfct_set_attr_u8(ct.get(), ATTR_L3PROTO, afOf(t.family()));
  setAddress(ct.get(), t.src, ATTR_IPV4_SRC, ATTR_IPV6_SRC);
  setAddress(ct.get(), t.dst, ATTR_IPV4_DST, ATTR_IPV6_DST);
  nfct_set_attr_u8(ct.get(), ATTR_L4PROTO, static_cast<uint8_t>(t.proto));
  nfct_set_attr_u16(ct.get(), ATTR_PORT_SRC, htons(t.srcPort));
  nfct_set_attr_u16(ct.get(), ATTR_PORT_DST, htons(t.dstPort));
  if (zone != 0) nfct_set_attr_u16(ct.get(), ATTR_ZONE, zone);
  return ct;
}

std::string nsLabel(const std::string& netns) {
  return netns.empty() ? std::string("the current network namespace")
                       : fmt::format("network namespace {}", netns);
}

Status errnoStatus(int err, const std::string& what, const std::string& netns) {
  if (err == EPERM || err == EACCES) {
    return Status(Code::kPermissionDenied,
                  fmt::format("{} in {}: not permitted (conntrack netlink needs CAP_NET_ADMIN)",
                              what, nsLabel(netns)),
                  err);
  }
  return Status::fromErrno(err, fmt::format("{} in {}", what, nsLabel(netns)));
}

// Identity of an entry for de-duplicating one dump: the kernel may send an entry twice when
// it re-walks a hash bucket whose resume point was freed between two recvmsg() calls.
struct FlowKey {
  Tuple original;
  uint16_t zone;
  uint64_t id;
  bool operator==(const FlowKey&) const = default;
};

struct FlowKeyHash {
  size_t operator()(const FlowKey& k) const noexcept {
    std::hash<IPAddress> h;
    size_t x = h(k.original.src);
    auto mix = [&x](size_t v) { x ^= v + 0x9e3779b97f4a7c15ULL + (x << 6) + (x >> 2); };
    mix(h(k.original.dst));
    mix((size_t{k.original.srcPort} << 16) | k.original.dstPort);
    mix(static_cast<size_t>(k.original.proto));
    mix(k.zone);
    mix(static_cast<size_t>(k.id));
    return x;
  }
};

struct DumpContext {
  const std::function<void(Flow&&)>* visit = nullptr;
  bool interrupted = false;
  bool visitFailed = false;
};

// Called by libnetfilter_conntrack for every entry of a dump. It always continues: stopping
// early would leave the rest of the dump queued on the socket, and the next request on it
// would fail (EBUSY from the kernel, EILSEQ from libnfnetlink).
int onDumpEntry(const nlmsghdr* nlh, nf_conntrack_msg_type /*type*/, nf_conntrack* ct, void* data) {
  auto* ctx = static_cast<DumpContext*>(data);
  // libnfnetlink never looks at NLM_F_DUMP_INTR (it swallows the flag on NLMSG_DONE), so it is
  // only visible here, on the data messages. ctnetlink's table dump has no generation counter
  // and does not set it today: it resumes each recvmsg() at the last entry it sent and
  // re-walks the bucket when that entry is gone (hence the de-duplication in dumpComplete);
  // honouring the flag keeps us right if a kernel starts setting it.
  if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) ctx->interrupted = true;
  if (ctx->visitFailed) return NFCT_CB_CONTINUE;
  std::optional<Flow> flow = flowFromCt(ct);
  if (!flow) return NFCT_CB_CONTINUE;
  try {
    (*ctx->visit)(std::move(*flow));
  } catch (...) {
    // Exceptions must not unwind through C code; report as Internal after the dump.
    ctx->visitFailed = true;
  }
  return NFCT_CB_CONTINUE;
}

int onProbeReply(const nlmsghdr*, nf_conntrack_msg_type, nf_conntrack*, void*) {
  return NFCT_CB_CONTINUE;
}

// The families a request must dump: the one asked for, or both.
std::vector<IPFamily> familiesOf(const std::optional<IPFamily>& f) {
  if (f) return {*f};
  return {IPFamily::kV4, IPFamily::kV6};
}

Status validateTuple(const Tuple& t) {
  if (t.src.family() != t.dst.family()) {
    return Status(Code::kInvalidArgument,
                  fmt::format("conntrack tuple {} mixes address families", t.toString()));
  }
  return Status::ok();
}

}  // namespace

// ---- values -----------------------------------------------------------------------------

std::string Tuple::toString() const {
  return fmt::format("{} {} -> {}", l4Name(proto), endpointString(src, srcPort),
                     endpointString(dst, dstPort));
}

bool Flow::tcpClosed() const {
  return original.proto == Protocol::kTCP && (tcpState == "TIME_WAIT" || tcpState == "CLOSE");
}

std::string Flow::toString() const {
  std::string s = fmt::format("{} reply {}", original.toString(), reply.toString());
  if (!tcpState.empty()) s += " " + tcpState;
  if (srcNat()) s += " snat";
  if (dstNat()) s += " dnat";
  if (assured()) s += " assured";
  if (zone != 0) s += fmt::format(" zone={}", zone);
  if (mark != 0) s += fmt::format(" mark={:#x}", mark);
  s += fmt::format(" timeout={}s id={}", timeoutSeconds, id);
  return s;
}

bool Filter::matches(const Flow& f) const {
  const Tuple& o = f.original;
  const Tuple& r = f.reply;
  if (family && f.family() != *family) return false;
  if (proto && o.proto != *proto) return false;
  if (zone && f.zone != *zone) return false;
  if (origSrc && o.src != *origSrc) return false;
  if (origSrcPort && o.srcPort != *origSrcPort) return false;
  if (origDst && o.dst != *origDst) return false;
  if (origDstPort && o.dstPort != *origDstPort) return false;
  if (replySrc && r.src != *replySrc) return false;
  if (replySrcPort && r.srcPort != *replySrcPort) return false;
  if (replyDst && r.dst != *replyDst) return false;
  if (replyDstPort && r.dstPort != *replyDstPort) return false;
  if (replySrcNotIn && replySrcNotIn->count(r.src) != 0) return false;
  if (mark && (f.mark & markMask) != *mark) return false;
  if ((f.status & statusSet) != statusSet) return false;
  if ((f.status & statusClear) != 0) return false;
  if (excludeClosedTcp && f.tcpClosed()) return false;
  return true;
}

bool BackendSelector::matches(const Flow& f) const {
  if (f.family() != backend.family()) return false;
  if (proto && f.proto() != *proto) return false;
  if (vip) {
    if (f.original.dst != *vip) return false;
    if (vipPort && f.original.dstPort != *vipPort) return false;
  }
  // DNATed to the backend or sent to it directly: either way it answers as the reply source.
  // Flows the backend itself opened (it is the original source) are not its traffic to drain.
  return f.reply.src == backend;
}

// ---- client -----------------------------------------------------------------------------

// Two sockets: `query` carries dumps, `control` single requests. A netlink socket can have only
// one dump in flight and answers nothing else until it is drained, so deleting while streaming
// a dump needs the second one.
struct Client::Impl {
  std::string netns;
  HandlePtr query;
  HandlePtr control;
  // Sequence numbers of the hand-built delete requests on `control`. Every request's answer is
  // read in full before the next one is sent, so they only need to differ from one another.
  uint32_t seq = 0x40000000;

  // Opens both handles inside `ns`. Sockets keep the namespace they were created in.
  static Result<std::unique_ptr<Impl>> create(const std::string& ns) {
    auto impl = std::make_unique<Impl>();
    impl->netns = ns;
    int err = 0;
    Status entered = runInNetns(ns, [&] {
      impl->query.reset(nfct_open(CONNTRACK, 0));
      if (!impl->query) {
        err = errno;
        return;
      }
      impl->control.reset(nfct_open(CONNTRACK, 0));
      if (!impl->control) err = errno;
    });
    if (!entered) return detail::netnsEntryFailure(entered);
    if (err != 0) return errnoStatus(err, "cannot open conntrack netlink socket", ns);
    return impl;
  }

  // Replaces the dump socket after a dump failed half-way: whatever the kernel still had queued
  // on it would otherwise answer (and break) the next request.
  void resetQuery() {
    HandlePtr fresh;
    Status s = runInNetns(netns, [&] { fresh.reset(nfct_open(CONNTRACK, 0)); });
    // If the namespace is gone the old handle is kept; the next call reports the real error.
    if (s && fresh) query = std::move(fresh);
  }

  // Nfnetlink checks CAP_NET_ADMIN on every message, including reads, but creating the socket
  // needs nothing. A GET for an entry that cannot exist answers ENOENT when permitted and EPERM
  // when not, so open() fails early and clearly instead of at the first dump.
  Status probe() {
    CtPtr ct = entryRequest(Tuple{IPAddress::v4(0, 0, 0, 0), IPAddress::v4(0, 0, 0, 0), 0, 0,
                                  Protocol::kTCP},
                            0);
    if (!ct) return Status::fromErrno(ENOMEM, "cannot allocate conntrack request");
    nfct_callback_register2(control.get(), NFCT_T_ALL, onProbeReply, nullptr);
    if (nfct_query(control.get(), NFCT_Q_GET, ct.get()) == 0 || errno == ENOENT) {
      return Status::ok();
    }
    return errnoStatus(errno, "cannot query conntrack", netns);
  }

  // One dump of `family`, streamed to `visit`. `interrupted` tells whether the kernel marked it
  // inconsistent.
  Status dumpOnce(IPFamily family, const Filter* pushDown, const std::function<void(Flow&&)>& visit,
                  bool& interrupted) {
    FilterDumpPtr fd(nfct_filter_dump_create());
    if (!fd) return Status::fromErrno(ENOMEM, "cannot allocate conntrack dump filter");
    // Kernel-side filtering only saves copying: every condition is re-checked in user space, so
    // a kernel that ignores part of the filter costs bandwidth, not correctness.
    nfct_filter_dump_set_attr_u8(fd.get(), NFCT_FILTER_DUMP_L3NUM, afOf(family));
    if (pushDown && pushDown->mark) {
      nfct_filter_dump_mark m{*pushDown->mark, pushDown->markMask};
      nfct_filter_dump_set_attr(fd.get(), NFCT_FILTER_DUMP_MARK, &m);
    }
    DumpContext ctx;
    ctx.visit = &visit;
    nfct_callback_register2(query.get(), NFCT_T_ALL, onDumpEntry, &ctx);
    int rc = nfct_query(query.get(), NFCT_Q_DUMP_FILTER, fd.get());
    int err = errno;
    nfct_callback_unregister2(query.get());
    interrupted = ctx.interrupted;
    if (rc != 0) {
      // EINTR arrives in the final NLMSG_DONE/ERROR, so the dump is over and the socket clean.
      if (err == EINTR) {
        interrupted = true;
        return Status::ok();
      }
      // The kernel rejects a request it refuses (permission, bad filter) with one error
      // message, leaving the socket clean; anything else (a sequence mismatch, a receive
      // error) may leave a half-read dump behind, so the socket is replaced. Not replaced on
      // EPERM: a socket re-created on a thread lacking CAP_NET_ADMIN would stay unusable.
      if (err != EPERM && err != EACCES && err != EINVAL && err != EOPNOTSUPP) resetQuery();
      return errnoStatus(err, fmt::format("conntrack dump ({}) failed", familyName(family)), netns);
    }
    if (ctx.visitFailed) {
      return Status(Code::kInternal, "conntrack dump consumer failed (exception)");
    }
    return Status::ok();
  }

  // A complete dump: repeated while interrupted. `restart` discards what an interrupted attempt
  // delivered (consumers that must not double count); `dedup` drops entries sent twice.
  Status dumpComplete(IPFamily family, const Filter* pushDown, bool dedup,
                      const std::function<void()>& restart,
                      const std::function<void(Flow&&)>& visit) {
    std::unordered_set<FlowKey, FlowKeyHash> seen;
    std::function<void(Flow&&)> deduped = [&](Flow&& f) {
      if (dedup && !seen.insert(FlowKey{f.original, f.zone, f.id}).second) return;
      visit(std::move(f));
    };
    for (int attempt = 1; attempt <= kMaxDumpAttempts; ++attempt) {
      bool interrupted = false;
      if (Status s = dumpOnce(family, pushDown, deduped, interrupted); !s) return s;
      if (!interrupted) return Status::ok();
      seen.clear();
      if (restart) restart();
    }
    return Status(Code::kAborted,
                  fmt::format("conntrack dump ({}) in {} was interrupted {} times in a row",
                              familyName(family), nsLabel(netns), kMaxDumpAttempts));
  }

  // Deletes one entry on the control socket. Returns true if this call deleted it, false if it
  // was already gone.
  //
  // Not nfct_query(NFCT_Q_DESTROY): libnetfilter_conntrack 1.0.9 silently drops ATTR_ID from
  // every request it builds (both its nfnl and its mnl builders send only the tuple and zone),
  // and without CTA_ID the kernel deletes whatever entry now holds the tuple. So the request is
  // built with nfct_nlmsg_build, CTA_ID appended by hand, and sent on the control socket, whose
  // answer (one ACK) is read here.
  Result<bool> removeOne(const Flow& flow) {
    if (Status s = validateTuple(flow.original); !s) return s;
    CtPtr ct = entryRequest(flow.original, flow.zone);
    if (!ct) return Status::fromErrno(ENOMEM, "cannot allocate conntrack request");

    alignas(nlmsghdr) char req[512];
    nlmsghdr* nlh = mnl_nlmsg_put_header(req);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = ++seq;
    auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfh->nfgen_family = afOf(flow.family());
    nfh->version = NFNETLINK_V0;
    nfh->res_id = 0;
    if (nfct_nlmsg_build(nlh, ct.get()) < 0) {
      return Status(Code::kInternal, "cannot encode conntrack delete request");
    }
    // The kernel's entry ids are 32 bits. With CTA_ID it deletes only if the entry found by the
    // tuple still has that id, which protects a newer flow that reuses the tuple.
    if (flow.id != 0 && flow.id <= 0xffffffffu) {
      mnl_attr_put_u32(nlh, CTA_ID, htonl(static_cast<uint32_t>(flow.id)));
    }

    const std::string what = fmt::format("cannot delete conntrack entry {}", flow.original.toString());
    const int fd = nfct_fd(control.get());
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, nlh, nlh->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
      return errnoStatus(errno, what, netns);
    }
    int err = ackFor(fd, nlh->nlmsg_seq);
    if (err == 0) return true;
    // ENOENT: the entry expired, was deleted by someone else, or (with an id) was replaced by a
    // newer flow on the same tuple, which must survive. All mean "already gone".
    if (err == ENOENT) return false;
    return errnoStatus(err, what, netns);
  }

  // Reads until the ACK (NLMSG_ERROR) for `seqno` and returns its errno (0 = success).
  // Messages with another sequence number are leftovers of an earlier request and skipped.
  static int ackFor(int fd, uint32_t seqno) {
    alignas(nlmsghdr) char buf[MNL_SOCKET_BUFFER_SIZE];
    while (true) {
      ssize_t got = ::recv(fd, buf, sizeof buf, 0);
      if (got < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      int left = static_cast<int>(got);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(buf); mnl_nlmsg_ok(h, left);
           h = mnl_nlmsg_next(h, &left)) {
        if (h->nlmsg_seq != seqno || h->nlmsg_type != NLMSG_ERROR) continue;
        if (h->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr))) return EBADMSG;
        return -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
      }
    }
  }

  // Streams a dump per family and deletes matching entries on the control socket as they
  // arrive, so memory stays flat however large the table is.
  Result<size_t> removeWhere(std::optional<IPFamily> family, const Filter* pushDown,
                             const std::function<bool(const Flow&)>& predicate) {
    size_t deleted = 0;
    Status firstError;
    for (IPFamily fam : familiesOf(family)) {
      // No de-duplication and no restart: a delete already done stays done, and an entry seen
      // twice is simply "already gone" the second time.
      Status s = dumpComplete(fam, pushDown, /*dedup=*/false, nullptr, [&](Flow&& f) {
        // After the first hard failure (say EPERM) the rest would fail the same way; keep
        // draining the dump (the socket must end clean) but send no more deletes.
        if (!firstError.isOk() || !predicate(f)) return;
        Result<bool> r = removeOne(f);
        if (!r) {
          firstError = r.status();
        } else if (*r) {
          ++deleted;
        }
      });
      if (!s) return s.withContext(fmt::format("after deleting {} entries", deleted));
      if (!firstError.isOk()) {
        return firstError.withContext(fmt::format("after deleting {} entries", deleted));
      }
    }
    return deleted;
  }
};

Client::Client(std::string netns, std::unique_ptr<Impl> impl)
    : netns_(std::move(netns)), impl_(std::move(impl)) {}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

namespace {

Status movedFrom() {
  return Status(Code::kFailedPrecondition, "conntrack client was moved from");
}

}  // namespace

Result<std::unique_ptr<Client>> Client::open(const std::string& netns) {
  Result<std::unique_ptr<Impl>> impl = Impl::create(netns);
  if (!impl) return impl.status();
  if (Status s = (*impl)->probe(); !s) return s;
  return std::unique_ptr<Client>(new Client(netns, std::move(*impl)));
}

Result<std::vector<Flow>> Client::dump(IPFamily family) {
  if (!impl_) return movedFrom();
  std::vector<Flow> flows;
  Status s = impl_->dumpComplete(family, nullptr, /*dedup=*/true, [&] { flows.clear(); },
                                 [&](Flow&& f) { flows.push_back(std::move(f)); });
  if (!s) return s;
  return flows;
}

Result<std::vector<Flow>> Client::dump(const Filter& filter) {
  if (!impl_) return movedFrom();
  std::vector<Flow> flows;
  for (IPFamily family : familiesOf(filter.family)) {
    const size_t base = flows.size();
    Status s = impl_->dumpComplete(
        family, &filter, /*dedup=*/true, [&] { flows.resize(base); },
        [&](Flow&& f) {
          if (filter.matches(f)) flows.push_back(std::move(f));
        });
    if (!s) return s;
  }
  return flows;
}

Result<size_t> Client::count(const Filter& filter) {
  Result<std::vector<size_t>> counts = count(std::vector<Filter>{filter});
  if (!counts) return counts.status();
  return counts->front();
}

Result<std::vector<size_t>> Client::count(const std::vector<Filter>& filters) {
  if (!impl_) return movedFrom();
  std::vector<size_t> counts(filters.size(), 0);
  bool wantV4 = false, wantV6 = false;
  for (const Filter& f : filters) {
    wantV4 = wantV4 || !f.family || *f.family == IPFamily::kV4;
    wantV6 = wantV6 || !f.family || *f.family == IPFamily::kV6;
  }
  // A single filter can push its mark down to the kernel; several filters share one dump.
  const Filter* pushDown = filters.size() == 1 ? &filters.front() : nullptr;
  for (IPFamily family : {IPFamily::kV4, IPFamily::kV6}) {
    if ((family == IPFamily::kV4 && !wantV4) || (family == IPFamily::kV6 && !wantV6)) continue;
    std::vector<size_t> part(filters.size(), 0);
    Status s = impl_->dumpComplete(
        family, pushDown, /*dedup=*/true, [&] { std::fill(part.begin(), part.end(), 0); },
        [&](Flow&& flow) {
          for (size_t i = 0; i < filters.size(); ++i) part[i] += filters[i].matches(flow) ? 1 : 0;
        });
    if (!s) return s;
    for (size_t i = 0; i < counts.size(); ++i) counts[i] += part[i];
  }
  return counts;
}

Status Client::remove(const Flow& flow) {
  if (!impl_) return movedFrom();
  Result<bool> r = impl_->removeOne(flow);
  return r.status();
}

Result<size_t> Client::removeMatching(const Filter& filter) {
  if (!impl_) return movedFrom();
  return impl_->removeWhere(filter.family, &filter,
                            [&filter](const Flow& f) { return filter.matches(f); });
}

Result<size_t> Client::removeIf(std::optional<IPFamily> family,
                                const std::function<bool(const Flow&)>& predicate) {
  if (!impl_) return movedFrom();
  return impl_->removeWhere(family, nullptr, predicate);
}

}  // namespace sluice::conntrack
