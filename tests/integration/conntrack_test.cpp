// Real-kernel tests of sluice::conntrack::Client.
//
// Everything happens inside network namespaces this file creates (and removes, also on
// failure): a client namespace C and a server namespace S joined by a veth pair, with a
// Service-like DNAT in S (VIP 198.18.1.100 / fd00:5c:1::100 → endpoints in S). The root
// namespace's nftables and conntrack are never touched. Addresses: 198.18.0.0/15, fd00::/8.
#include "sluice/conntrack.h"

#include <arpa/inet.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "sluice/netns.h"

namespace sluice::conntrack {
namespace {

using namespace std::chrono_literals;

IPAddress ip(const char* text) { return IPAddress::parse(text).value(); }

const IPAddress kClient4 = ip("198.18.0.1");
const IPAddress kSnat4 = ip("198.18.0.3");
const IPAddress kEndpointA4 = ip("198.18.0.2");
const IPAddress kEndpointB4 = ip("198.18.0.4");
const IPAddress kVip4 = ip("198.18.1.100");
const IPAddress kClient6 = ip("fd00:5c::1");
const IPAddress kEndpointA6 = ip("fd00:5c::2");
const IPAddress kEndpointB6 = ip("fd00:5c::4");
const IPAddress kVip6 = ip("fd00:5c:1::100");

struct CmdResult {
  int rc = -1;
  std::string out;
};

// Runs a shell command (tests only may shell out to ip/nft/conntrack); `input` goes to stdin.
CmdResult run(const std::string& cmd, const std::string& input = "") {
  CmdResult r;
  char tmpl[] = "/tmp/slct-out-XXXXXX";
  int fd = ::mkstemp(tmpl);
  if (fd < 0) return r;
  ::close(fd);
  const std::string full = cmd + " >" + tmpl + " 2>&1";
  FILE* p = ::popen(full.c_str(), "w");
  if (p == nullptr) {
    ::unlink(tmpl);
    return r;
  }
  if (!input.empty()) std::fwrite(input.data(), 1, input.size(), p);
  int status = ::pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (FILE* f = std::fopen(tmpl, "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, n);
    std::fclose(f);
  }
  ::unlink(tmpl);
  return r;
}

void mustRun(const std::string& cmd, const std::string& input = "") {
  CmdResult r = run(cmd, input);
  REQUIRE_MESSAGE(r.rc == 0, cmd << " failed (" << r.rc << "): " << r.out);
}

// A throw-away network namespace, deleted on destruction. The constructor does not throw, so
// the destructor always runs once `ip netns add` may have happened.
class Netns {
 public:
  Netns() {
    static int counter = 0;
    name_ = fmt::format("slct{}x{}", ::getpid(), ++counter);
    ok_ = run("ip netns add " + name_).rc == 0 &&
          run(fmt::format("ip -n {} link set lo up", name_)).rc == 0;
  }
  ~Netns() { run("ip netns del " + name_); }
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;

  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }
  void ip(const std::string& args) const { mustRun(fmt::format("ip -n {} {}", name_, args)); }
  void nft(const std::string& ruleset) const {
    mustRun(fmt::format("ip netns exec {} nft -f -", name_), ruleset);
  }
  // `conntrack -L ARGS` inside the namespace: one line per entry.
  std::vector<std::string> conntrackList(const std::string& args) const {
    CmdResult r = run(fmt::format("ip netns exec {} conntrack -L {}", name_, args));
    REQUIRE_MESSAGE(r.rc == 0, "conntrack -L " << args << ": " << r.out);
    std::vector<std::string> lines;
    size_t pos = 0;
    while (pos < r.out.size()) {
      size_t nl = r.out.find('\n', pos);
      if (nl == std::string::npos) nl = r.out.size();
      std::string line = r.out.substr(pos, nl - pos);
      // The summary line ("conntrack v1.4.7 ...: N flow entries have been shown.") goes to
      // stderr, which run() merges.
      if (!line.empty() && line.rfind("conntrack v", 0) != 0) lines.push_back(line);
      pos = nl + 1;
    }
    return lines;
  }

 private:
  std::string name_;
  bool ok_ = false;
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  void reset() { *this = Fd(); }

 private:
  int fd_ = -1;
};

socklen_t toSockaddr(const IPAddress& addr, uint16_t port, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (addr.isV4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, addr.bytes(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, addr.bytes(), 16);
  return sizeof(sockaddr_in6);
}

uint16_t localPort(const Fd& fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// Creates a socket inside `ns` (it keeps that namespace) and runs `setup` on it there.
Fd socketIn(const Netns& ns, IPFamily family, int type, const std::function<bool(int)>& setup) {
  int fd = -1;
  std::string error;
  Status entered = runInNetns(ns.name(), [&] {
    fd = ::socket(family == IPFamily::kV4 ? AF_INET : AF_INET6, type | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      return;
    }
    // Bounded: a connect or send that cannot complete fails after 3 s instead of hanging.
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (!setup(fd)) error = std::strerror(errno);
  });
  Fd owned(fd);
  REQUIRE_MESSAGE(entered.isOk(), entered.toString());
  REQUIRE_MESSAGE(error.empty(), "socket setup in " << ns.name() << ": " << error);
  return owned;
}

Fd listenOn(const Netns& ns, IPFamily family, int type, uint16_t port) {
  return socketIn(ns, family, type, [&](int fd) {
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (family == IPFamily::kV6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    sockaddr_storage ss;
    socklen_t len = toSockaddr(family == IPFamily::kV4 ? IPAddress::v4(0, 0, 0, 0)
                                                       : IPAddress::parse("::").value(),
                               port, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return false;
    return type == SOCK_DGRAM || ::listen(fd, 16) == 0;
  });
}

Fd tcpConnect(const Netns& ns, const IPAddress& dst, uint16_t port) {
  return socketIn(ns, dst.family(), SOCK_STREAM, [&](int fd) {
    sockaddr_storage ss;
    socklen_t len = toSockaddr(dst, port, ss);
    return ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0;
  });
}

// One datagram from a fresh ephemeral port; the socket is kept so the port stays distinct.
Fd udpSend(const Netns& ns, const IPAddress& dst, uint16_t port) {
  return socketIn(ns, dst.family(), SOCK_DGRAM, [&](int fd) {
    sockaddr_storage ss;
    socklen_t len = toSockaddr(dst, port, ss);
    const char msg[] = "sluice";
    return ::sendto(fd, msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&ss), len) ==
           static_cast<ssize_t>(sizeof msg);
  });
}

// Packets cross the veth asynchronously (softirq), so conntrack entries appear shortly after
// the sending syscall returns: poll, bounded.
bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 3s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (true) {
    if (cond()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// C --veth-- S. S holds two "endpoints" (A = .2/::2 and B = .4/::4) and DNATs the VIP:
// udp 53 → A:5300, udp 54 → B:5300, tcp 80 → A:8080. Conntrack runs in S (the nat chain
// needs it) and in C only where a test loads its own ruleset.
struct Topology {
  Netns c;
  Netns s;

  Topology() {
    REQUIRE_MESSAGE(c.ok(), "cannot create network namespace " << c.name());
    REQUIRE_MESSAGE(s.ok(), "cannot create network namespace " << s.name());
    c.ip(fmt::format("link add vc type veth peer name vs netns {}", s.name()));
    c.ip("addr add 198.18.0.1/24 dev vc");
    c.ip("addr add 198.18.0.3/24 dev vc");
    c.ip("addr add fd00:5c::1/64 dev vc nodad");
    c.ip("link set vc up");
    c.ip("route add 198.18.1.0/24 via 198.18.0.2");
    c.ip("-6 route add fd00:5c:1::/64 via fd00:5c::2");
    s.ip("addr add 198.18.0.2/24 dev vs");
    s.ip("addr add 198.18.0.4/24 dev vs");
    s.ip("addr add fd00:5c::2/64 dev vs nodad");
    s.ip("addr add fd00:5c::4/64 dev vs nodad");
    s.ip("link set vs up");
    s.nft(R"(
table inet slct {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.18.1.100 udp dport 53 dnat ip to 198.18.0.2:5300
    ip daddr 198.18.1.100 udp dport 54 dnat ip to 198.18.0.4:5300
    ip daddr 198.18.1.100 tcp dport 80 dnat ip to 198.18.0.2:8080
    ip6 daddr fd00:5c:1::100 udp dport 53 dnat ip6 to [fd00:5c::2]:5300
    ip6 daddr fd00:5c:1::100 udp dport 54 dnat ip6 to [fd00:5c::4]:5300
    ip6 daddr fd00:5c:1::100 tcp dport 80 dnat ip6 to [fd00:5c::2]:8080
  }
  chain in {
    type filter hook input priority filter; policy accept;
    ct state new counter
  }
}
)");
    udp4 = listenOn(s, IPFamily::kV4, SOCK_DGRAM, 5300);
    udp6 = listenOn(s, IPFamily::kV6, SOCK_DGRAM, 5300);
    tcp4 = listenOn(s, IPFamily::kV4, SOCK_STREAM, 8080);
    tcp6 = listenOn(s, IPFamily::kV6, SOCK_STREAM, 8080);
  }

  std::unique_ptr<Client> serverClient() const {
    auto client = Client::open(s.name());
    REQUIRE_MESSAGE(client.isOk(), client.status().toString());
    return std::move(client).value();
  }

  Fd udp4, udp6, tcp4, tcp6;  // S's listeners
};

size_t countNow(Client& client, const Filter& filter) {
  Result<size_t> n = client.count(filter);
  REQUIRE_MESSAGE(n.isOk(), n.status().toString());
  return *n;
}

std::vector<Flow> dumpNow(Client& client, IPFamily family) {
  Result<std::vector<Flow>> flows = client.dump(family);
  REQUIRE_MESSAGE(flows.isOk(), flows.status().toString());
  return std::move(flows).value();
}

const Flow* findByOrig(const std::vector<Flow>& flows, const IPAddress& src, uint16_t srcPort,
                       Protocol proto) {
  for (const Flow& f : flows) {
    if (f.original.src == src && f.original.srcPort == srcPort && f.original.proto == proto) {
      return &f;
    }
  }
  return nullptr;
}

// Lowers this thread's effective capability `cap`; capabilities are per thread, so the rest
// of the test process keeps its privileges.
bool dropEffectiveCapability(int cap) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &hdr, data) != 0) return false;
  data[CAP_TO_INDEX(cap)].effective &= ~CAP_TO_MASK(cap);
  return ::syscall(SYS_capset, &hdr, data) == 0;
}

}  // namespace

TEST_CASE("conntrack: dump reports TCP and UDP flows with their tuples (IPv4 and IPv6)") {
  Topology t;
  auto client = t.serverClient();

  struct Probe {
    IPAddress vip, client, endpoint;
    Protocol proto;
    uint16_t port, targetPort;
  };
  for (const Probe& p : {Probe{kVip4, kClient4, kEndpointA4, Protocol::kTCP, 80, 8080},
                         Probe{kVip4, kClient4, kEndpointA4, Protocol::kUDP, 53, 5300},
                         Probe{kVip6, kClient6, kEndpointA6, Protocol::kTCP, 80, 8080},
                         Probe{kVip6, kClient6, kEndpointA6, Protocol::kUDP, 53, 5300}}) {
    CAPTURE(p.vip.toString());
    CAPTURE(protocolName(p.proto));
    Fd sock = p.proto == Protocol::kTCP ? tcpConnect(t.c, p.vip, p.port)
                                        : udpSend(t.c, p.vip, p.port);
    const uint16_t port = localPort(sock);
    const IPFamily family = p.vip.family();
    const IPFamily other = family == IPFamily::kV4 ? IPFamily::kV6 : IPFamily::kV4;

    // For TCP wait for the client's last handshake ACK to reach S.
    std::vector<Flow> flows;
    REQUIRE(eventually([&] {
      flows = dumpNow(*client, family);
      const Flow* f = findByOrig(flows, p.client, port, p.proto);
      return f != nullptr && (p.proto != Protocol::kTCP || f->tcpState == "ESTABLISHED");
    }));
    const Flow* f = findByOrig(flows, p.client, port, p.proto);
    REQUIRE(f != nullptr);
    INFO(f->toString());
    CHECK(f->original == Tuple{p.client, p.vip, port, p.port, p.proto});
    CHECK(f->reply == Tuple{p.endpoint, p.client, p.targetPort, port, p.proto});
    CHECK(f->family() == family);
    CHECK(f->dstNat());
    CHECK_FALSE(f->srcNat());
    CHECK((f->status & kStatusConfirmed) != 0);
    CHECK(f->id != 0);
    CHECK(f->timeoutSeconds > 0);
    CHECK(f->zone == 0);
    if (p.proto == Protocol::kTCP) {
      CHECK(f->tcpState == "ESTABLISHED");
      CHECK((f->status & kStatusSeenReply) != 0);
    } else {
      // Nobody answers the datagram: unreplied, hence never assured.
      CHECK(f->tcpState.empty());
      CHECK((f->status & kStatusSeenReply) == 0);
      CHECK_FALSE(f->assured());
    }
    // The other family's dump never carries it.
    CHECK(findByOrig(dumpNow(*client, other), p.client, port, p.proto) == nullptr);
    // dump(Filter) narrows to it.
    Result<std::vector<Flow>> narrowed =
        client->dump(Filter{.proto = p.proto, .origSrcPort = port, .origDst = p.vip});
    REQUIRE(narrowed.isOk());
    REQUIRE(narrowed->size() == 1);
    CHECK(narrowed->front().original == f->original);
  }
}

TEST_CASE("conntrack: count matches filters, one dump for many") {
  Topology t;
  auto client = t.serverClient();

  std::vector<Fd> socks;
  for (int i = 0; i < 3; ++i) socks.push_back(udpSend(t.c, kVip4, 53));  // → A
  for (int i = 0; i < 2; ++i) socks.push_back(udpSend(t.c, kVip4, 54));  // → B
  socks.push_back(tcpConnect(t.c, kVip4, 80));                           // → A
  socks.push_back(udpSend(t.c, kVip6, 53));                              // → A6
  REQUIRE(eventually([&] { return countNow(*client, Filter{}) == 7; }));

  CHECK(countNow(*client, Filter{.family = IPFamily::kV4}) == 6);
  CHECK(countNow(*client, Filter{.family = IPFamily::kV6}) == 1);
  CHECK(countNow(*client, Filter{.family = IPFamily::kV4, .proto = Protocol::kUDP}) == 5);
  CHECK(countNow(*client, Filter{.proto = Protocol::kUDP}) == 6);
  CHECK(countNow(*client, Filter{.origDst = kVip4, .origDstPort = 53}) == 3);
  CHECK(countNow(*client, Filter{.replySrc = kEndpointB4}) == 2);
  CHECK(countNow(*client, Filter{.replySrc = kEndpointA4, .replySrcPort = 8080}) == 1);
  CHECK(countNow(*client, Filter{.origSrc = kClient4}) == 6);
  CHECK(countNow(*client, Filter{.statusSet = kStatusDstNat}) == 7);
  CHECK(countNow(*client, Filter{.statusSet = kStatusSrcNat}) == 0);
  // The mark condition is also pushed down to the kernel: nothing here is marked.
  CHECK(countNow(*client, Filter{.mark = 0u}) == 7);
  CHECK(countNow(*client, Filter{.mark = 0x4000u, .markMask = 0x4000}) == 0);

  // Draining asks for many endpoints at once.
  Result<std::vector<size_t>> many = client->count(std::vector<Filter>{
      Filter{.replySrc = kEndpointA4}, Filter{.replySrc = kEndpointB4},
      Filter{.replySrc = kEndpointA6}, Filter{.replySrc = ip("198.18.0.99")}});
  REQUIRE_MESSAGE(many.isOk(), many.status().toString());
  CHECK(*many == std::vector<size_t>{4, 2, 1, 0});

  // A closed TCP connection lingers in TIME_WAIT but is not a live flow to drain.
  Fd accepted(::accept(t.tcp4.get(), nullptr, nullptr));
  REQUIRE(accepted.get() >= 0);
  const Filter liveTcp{.proto = Protocol::kTCP, .replySrc = kEndpointA4, .excludeClosedTcp = true};
  CHECK(countNow(*client, liveTcp) == 1);
  socks[5].reset();  // the client closes first ...
  accepted.reset();  // ... then the server: FIN both ways, conntrack goes to TIME_WAIT
  CHECK(eventually([&] { return countNow(*client, liveTcp) == 0; }));
  CHECK(countNow(*client, Filter{.proto = Protocol::kTCP}) == 1);  // still in the table
}

TEST_CASE("conntrack: remove deletes one entry and is idempotent") {
  Topology t;
  auto client = t.serverClient();
  Fd first = udpSend(t.c, kVip4, 53);
  Fd second = udpSend(t.c, kVip4, 53);
  Fd third = udpSend(t.c, kVip6, 53);
  REQUIRE(eventually([&] { return countNow(*client, Filter{.proto = Protocol::kUDP}) == 3; }));

  std::vector<Flow> v4 = dumpNow(*client, IPFamily::kV4);
  const Flow* victim = findByOrig(v4, kClient4, localPort(first), Protocol::kUDP);
  REQUIRE(victim != nullptr);
  const Flow gone = *victim;
  REQUIRE_MESSAGE(client->remove(gone).isOk(), gone.toString());

  v4 = dumpNow(*client, IPFamily::kV4);
  CHECK(findByOrig(v4, kClient4, localPort(first), Protocol::kUDP) == nullptr);
  CHECK(findByOrig(v4, kClient4, localPort(second), Protocol::kUDP) != nullptr);
  CHECK(t.s.conntrackList(fmt::format("-p udp --orig-port-src {}", localPort(first))).empty());
  CHECK(t.s.conntrackList(fmt::format("-p udp --orig-port-src {}", localPort(second))).size() == 1);

  // Deleting what is already gone is success.
  Status again = client->remove(gone);
  CHECK_MESSAGE(again.isOk(), again.toString());

  // An id that no longer names the entry on that tuple protects it (the tuple was reused by a
  // newer flow): success, and the entry stays.
  const Flow* survivor = findByOrig(v4, kClient4, localPort(second), Protocol::kUDP);
  REQUIRE(survivor != nullptr);
  Flow stale = *survivor;
  stale.id = survivor->id ^ 0x5a5a5a5au;
  CHECK(client->remove(stale).isOk());
  CHECK(countNow(*client, Filter{.origSrcPort = localPort(second)}) == 1);

  // IPv6 by its tuple alone (no id): deleted.
  std::vector<Flow> v6 = dumpNow(*client, IPFamily::kV6);
  const Flow* six = findByOrig(v6, kClient6, localPort(third), Protocol::kUDP);
  REQUIRE(six != nullptr);
  Flow byTuple = *six;
  byTuple.id = 0;
  CHECK(client->remove(byTuple).isOk());
  CHECK(countNow(*client, Filter{.family = IPFamily::kV6}) == 0);
  CHECK(client->remove(byTuple).isOk());

  // A tuple mixing families is refused before anything reaches the kernel.
  Flow mixed = gone;
  mixed.original.dst = kVip6;
  CHECK(client->remove(mixed).code() == Code::kInvalidArgument);
}

TEST_CASE("conntrack: removeMatching deletes exactly the stale UDP entries") {
  Topology t;
  auto client = t.serverClient();
  std::vector<Fd> socks;
  for (const IPAddress& vip : {kVip4, kVip6}) {
    for (int i = 0; i < 3; ++i) socks.push_back(udpSend(t.c, vip, 53));  // → A
    for (int i = 0; i < 2; ++i) socks.push_back(udpSend(t.c, vip, 54));  // → B
    socks.push_back(tcpConnect(t.c, vip, 80));                           // → A, TCP
  }
  socks.push_back(udpSend(t.c, kEndpointB4, 5300));  // straight to B, not via the VIP
  socks.push_back(udpSend(t.c, kEndpointB6, 5300));
  REQUIRE(eventually([&] { return countNow(*client, Filter{}) == 14; }));

  // Endpoint B stopped serving the VIP's UDP ports; A still serves.
  const Filter stale4{.family = IPFamily::kV4, .proto = Protocol::kUDP, .origDst = kVip4,
                      .replySrcNotIn = std::unordered_set<IPAddress>{kEndpointA4}};
  Result<size_t> deleted = client->removeMatching(stale4);
  REQUIRE_MESSAGE(deleted.isOk(), deleted.status().toString());
  CHECK(*deleted == 2);
  CHECK(countNow(*client, Filter{.family = IPFamily::kV4}) == 5);
  CHECK(countNow(*client, Filter{.replySrc = kEndpointB4}) == 1);  // the direct one survives
  CHECK(countNow(*client, Filter{.family = IPFamily::kV6}) == 7);  // other family untouched
  // Cross-check with conntrack(8): exactly the three VIP:53 UDP entries remain in v4.
  CHECK(t.s.conntrackList("-f ipv4 -p udp --orig-dst 198.18.1.100").size() == 3);
  CHECK(t.s.conntrackList("-f ipv4 -p udp --reply-src 198.18.0.4").size() == 1);

  // Nothing stale is left: a second pass deletes nothing and succeeds.
  deleted = client->removeMatching(stale4);
  REQUIRE(deleted.isOk());
  CHECK(*deleted == 0);

  // The same for IPv6, with no serving endpoint left at all: every UDP entry to the VIP goes.
  const Filter stale6{.family = IPFamily::kV6, .proto = Protocol::kUDP, .origDst = kVip6,
                      .replySrcNotIn = std::unordered_set<IPAddress>{}};
  deleted = client->removeMatching(stale6);
  REQUIRE_MESSAGE(deleted.isOk(), deleted.status().toString());
  CHECK(*deleted == 5);
  CHECK(countNow(*client, Filter{.family = IPFamily::kV6}) == 2);  // TCP + direct UDP
  CHECK(t.s.conntrackList("-f ipv6 -p udp --orig-dst fd00:5c:1::100").empty());
  CHECK(t.s.conntrackList("-f ipv6 -p tcp").size() == 1);

  // Both families at once through an arbitrary predicate: the remaining direct UDP entries.
  deleted = client->removeIf(std::nullopt, [](const Flow& f) {
    return f.proto() == Protocol::kUDP && f.original.dstPort == 5300;
  });
  REQUIRE(deleted.isOk());
  CHECK(*deleted == 2);
  CHECK(countNow(*client, Filter{}) == 5);  // 3 × v4 VIP:53 UDP + 2 TCP
}

// Hundreds of entries span many netlink messages and recvmsg() calls: the dump must see each
// once, and deleting while the dump streams must neither lose nor double count.
TEST_CASE("conntrack: large tables dump once per entry and delete while streaming") {
  Topology t;
  auto client = t.serverClient();
  constexpr uint16_t kFlows = 400;
  constexpr uint16_t kFirstPort = 20000;
  for (uint16_t i = 0; i < kFlows; ++i) {
    // An explicit source port per datagram gives each its own entry; the socket can close at
    // once, the entry stays until it times out.
    socketIn(t.c, IPFamily::kV4, SOCK_DGRAM, [&](int fd) {
      sockaddr_storage ss;
      socklen_t len = toSockaddr(kClient4, static_cast<uint16_t>(kFirstPort + i), ss);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return false;
      len = toSockaddr(kVip4, i % 2 == 0 ? 53 : 54, ss);
      return ::sendto(fd, "x", 1, 0, reinterpret_cast<sockaddr*>(&ss), len) == 1;
    });
  }
  const Filter viaVip{.proto = Protocol::kUDP, .origDst = kVip4};
  REQUIRE(eventually([&] { return countNow(*client, viaVip) == kFlows; }));

  std::vector<Flow> flows = dumpNow(*client, IPFamily::kV4);
  std::vector<bool> seen(kFlows, false);
  for (const Flow& f : flows) {
    const int i = f.original.srcPort - kFirstPort;
    REQUIRE((i >= 0 && i < kFlows));
    CHECK_FALSE(seen[i]);
    seen[i] = true;
    CHECK(f.reply.src == (i % 2 == 0 ? kEndpointA4 : kEndpointB4));
  }
  CHECK(flows.size() == kFlows);
  CHECK(countNow(*client, Filter{.replySrc = kEndpointB4}) == kFlows / 2);

  Result<size_t> deleted = client->removeMatching(viaVip);
  REQUIRE_MESSAGE(deleted.isOk(), deleted.status().toString());
  CHECK(*deleted == kFlows);
  CHECK(countNow(*client, Filter{}) == 0);
  CHECK(t.s.conntrackList("-p udp").empty());
}

TEST_CASE("conntrack: SNAT shows in the reply tuple") {
  Topology t;
  // C rewrites the source of its UDP to VIP:55 into 198.18.0.3, as a node masquerades pods.
  t.c.nft(R"(
table inet slct {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr 198.18.1.100 udp dport 55 snat ip to 198.18.0.3
  }
}
)");
  auto client = Client::open(t.c.name());
  REQUIRE_MESSAGE(client.isOk(), client.status().toString());
  Fd masqueraded = udpSend(t.c, kVip4, 55);
  Fd plain = udpSend(t.c, kVip4, 53);
  const Filter snat{.statusSet = kStatusSrcNat};
  REQUIRE(eventually([&] { return countNow(**client, snat) == 1; }));
  Result<std::vector<Flow>> flows = (*client)->dump(snat);
  REQUIRE(flows.isOk());
  REQUIRE(flows->size() == 1);
  const Flow& f = flows->front();
  INFO(f.toString());
  CHECK(f.srcNat());
  CHECK_FALSE(f.dstNat());
  CHECK(f.original.src == kClient4);
  CHECK(f.original.srcPort == localPort(masqueraded));
  CHECK(f.reply.dst == kSnat4);  // the SNAT address (and port) a diagnostics tool reports
  CHECK(f.reply.dstPort != 0);
  CHECK(countNow(**client, Filter{.replyDst = kSnat4}) == 1);
  CHECK(countNow(**client, Filter{.origDstPort = 53, .statusClear = kStatusSrcNat}) == 1);
}

TEST_CASE("conntrack: a namespace's dump does not see another namespace's flows") {
  Topology t;
  Netns other;
  REQUIRE(other.ok());
  other.ip("addr add 198.18.9.1/32 dev lo");
  other.nft(R"(
table inet slct {
  chain out {
    type filter hook output priority filter; policy accept;
    ct state new counter
  }
}
)");
  Fd inS = udpSend(t.c, kVip4, 53);
  Fd listener = listenOn(other, IPFamily::kV4, SOCK_DGRAM, 9999);
  Fd inOther = udpSend(other, ip("198.18.9.1"), 9999);

  auto serverClient = t.serverClient();
  auto otherClient = Client::open(other.name());
  REQUIRE_MESSAGE(otherClient.isOk(), otherClient.status().toString());
  REQUIRE(eventually([&] { return countNow(*serverClient, Filter{}) == 1; }));
  REQUIRE(eventually([&] { return countNow(**otherClient, Filter{}) == 1; }));

  CHECK(countNow(*serverClient, Filter{.origDst = ip("198.18.9.1")}) == 0);
  CHECK(countNow(**otherClient, Filter{.origDst = kVip4}) == 0);
  CHECK(countNow(**otherClient, Filter{.origDst = ip("198.18.9.1"), .origDstPort = 9999}) == 1);
  // C loaded no ruleset, so nothing there needs conntrack and its table stays empty.
  auto clientSide = Client::open(t.c.name());
  REQUIRE(clientSide.isOk());
  CHECK(countNow(**clientSide, Filter{}) == 0);

  // Deleting everything in `other` leaves S alone.
  Result<size_t> deleted = (*otherClient)->removeMatching(Filter{});
  REQUIRE(deleted.isOk());
  CHECK(*deleted == 1);
  CHECK(countNow(*serverClient, Filter{}) == 1);
}

TEST_CASE("conntrack: open and requests report missing namespaces and privileges") {
  Result<std::unique_ptr<Client>> missing =
      Client::open(fmt::format("slct{}-does-not-exist", ::getpid()));
  REQUIRE_FALSE(missing.isOk());
  CHECK(missing.status().code() == Code::kNotFound);

  Netns ns;
  REQUIRE(ns.ok());
  auto privileged = Client::open(ns.name());
  REQUIRE_MESSAGE(privileged.isOk(), privileged.status().toString());

  // Without CAP_NET_ADMIN (dropped on one thread only) nfnetlink refuses every request.
  Status openStatus, dumpStatus, removeStatus;
  bool dropped = false;
  std::thread unprivileged([&] {
    dropped = dropEffectiveCapability(CAP_NET_ADMIN);
    if (!dropped) return;
    Result<std::unique_ptr<Client>> c = Client::open(ns.name());
    openStatus = c.status();
    dumpStatus = (*privileged)->dump(IPFamily::kV4).status();
    Flow f;
    f.original = Tuple{kClient4, kVip4, 1000, 53, Protocol::kUDP};
    removeStatus = (*privileged)->remove(f);
  });
  unprivileged.join();
  REQUIRE(dropped);
  CHECK(openStatus.code() == Code::kPermissionDenied);
  CHECK(openStatus.message().find("CAP_NET_ADMIN") != std::string::npos);
  CHECK(dumpStatus.code() == Code::kPermissionDenied);
  CHECK(dumpStatus.message().find("CAP_NET_ADMIN") != std::string::npos);
  CHECK(removeStatus.code() == Code::kPermissionDenied);

  // The client is still usable by a privileged thread afterwards.
  Result<std::vector<Flow>> flows = (*privileged)->dump(IPFamily::kV4);
  CHECK_MESSAGE(flows.isOk(), flows.status().toString());

  // A moved-from client fails cleanly.
  Client moved = std::move(**privileged);
  CHECK((*privileged)->dump(IPFamily::kV6).status().code() == Code::kFailedPrecondition);
  CHECK(moved.dump(IPFamily::kV6).isOk());
}

}  // namespace sluice::conntrack
