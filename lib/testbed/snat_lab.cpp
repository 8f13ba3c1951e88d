#include "snat_lab.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <barrier>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "sluice/nat_audit.h"
#include "sluice/netns.h"
#include "sluice/nft/backend.h"
#include "sluice/nft/rule_builder.h"
#include "sockets.h"
#include "testbed.h"

namespace sluice::testbed {
namespace {

using Clock = std::chrono::steady_clock;

const nft::TableRef kLabTable{nft::Family::kIPv4, "sluice-lab"};

// Why the slow path: the collision is a race. NAT picks the reply tuple at postrouting
// priority 100 and checks it only against *confirmed* entries (nf_nat_used_tuple ->
// nf_conntrack_tuple_taken); the entry is confirmed, i.e. inserted into the hash table, by the
// last postrouting hook (nf_confirm, priority INT_MAX). Without fully-random the node first
// tries to keep the client's own source port (get_unique_tuple, "try the original tuple
// first"), so two clients with the same port that pass that window at the same time on two
// CPUs both keep it; the second to confirm finds the reply tuple taken. TCP has no clash
// resolution (only protocols with allow_clash, e.g. UDP, try nf_ct_resolve_clash, and that
// only merges entries of the *same* original tuple), so it counts insert_failed and drops the
// SYN. With fully-random (and, on current kernels, random) the port is drawn at random from
// 1024-65535 and two racing flows collide only with probability ~1/64512.
// Making it reproducible on a 2-CPU test machine took two things (measured on 6.18, 4 clients
// x 4 ports x 20 rounds): (1) each client thread is pinned to its own CPU (pinTo) — unpinned,
// the scheduler often woke every client on one CPU after the barrier and whole runs showed no
// failure at all; (2) a chain of never-matching rules between the two hooks, taken by SYNs
// only, stretches the window from a few microseconds to tens of them. Pinned without the slow
// path: 1-3 failures per run; with 1000 rules: 4-13; fully-random and random: 0 in every run.
// The slow path changes how often the race is hit, not its outcome.
//
// UDP shows no failures in this lab, and that is expected: a UDP client reusing its port for
// the same destination reuses the same conntrack entry (same original tuple, no close), so only
// the first round makes NAT decisions at all.
nft::Transaction labRuleset(uint32_t natFlags, int slowPathRules, std::string& ruleText) {
  nft::Transaction tx;
  tx.add(nft::Table{kLabTable, ""});
  tx.add(nft::Chain{kLabTable, "postrouting", nft::BaseHook{"nat", nft::Hook::kPostrouting, 100}});
  nft::Rule masq = nft::RuleBuilder(kLabTable, "postrouting")
                       .saddrInPrefix(Topology::podCIDR(IPFamily::kV4), false)
                       .build();
  masq.exprs.push_back(nft::Masq{natFlags});
  const std::string flags = diag::natFlagsText(natFlags);
  masq.text += flags.empty() ? " masquerade" : " masquerade " + flags;
  ruleText = masq.text;
  tx.add(std::move(masq));
  if (slowPathRules > 0) {
    tx.add(nft::Chain{kLabTable, "slow-path", nft::BaseHook{"filter", nft::Hook::kPostrouting, 200}});
    // Only a flow's first packet (a TCP SYN) is NATed and confirmed, so only SYNs take the slow
    // path; everything else returns at once and the rest of the traffic runs at full speed.
    nft::Rule notTcp = nft::RuleBuilder(kLabTable, "slow-path").build();
    notTcp.exprs = {nft::Meta{nft::MetaKey::kL4proto, nft::kReg1},
                    nft::Cmp{nft::kReg1, nft::CmpOp::kNeq, nft::Bytes{uint8_t(Protocol::kTCP)}},
                    nft::Immediate{nft::kRegVerdict, {}, nft::Verdict{nft::VerdictCode::kReturn, ""}}};
    notTcp.text = "meta l4proto != tcp return";
    tx.add(std::move(notTcp));
    nft::Rule notSyn = nft::RuleBuilder(kLabTable, "slow-path").build();
    // tcp flags & (fin|syn|rst|ack) != syn return: byte 13 of the TCP header.
    notSyn.exprs = {nft::Payload{nft::PayloadBase::kTransport, 13, 1, nft::kReg1},
                    nft::Bitwise{nft::kReg1, nft::kReg1, 1, nft::Bytes{0x17}, nft::Bytes{0x00}},
                    nft::Cmp{nft::kReg1, nft::CmpOp::kNeq, nft::Bytes{0x02}},
                    nft::Immediate{nft::kRegVerdict, {}, nft::Verdict{nft::VerdictCode::kReturn, ""}}};
    notSyn.text = "tcp flags & (fin | syn | rst | ack) != syn return";
    tx.add(std::move(notSyn));
    for (int i = 0; i < slowPathRules; ++i) {
      // meta mark & 0xffffffff == 0x5a5a0000+i: never true (nothing sets a mark here).
      tx.add(nft::RuleBuilder(kLabTable, "slow-path").markAndEq(0xffffffff, 0x5a5a0000u + i).build());
    }
  }
  return tx;
}

struct Tally {
  std::mutex mu;
  int attempts = 0;
  int answered = 0;
  std::map<std::string, int> failures;
  void add(int tries, int ok, const std::map<std::string, int>& fails) {
    std::lock_guard lock(mu);
    attempts += tries;
    answered += ok;
    for (const auto& [k, v] : fails) failures[k] += v;
  }
};

// One client's share of a round: `burst` connections opened at once, each sends one line and
// waits for the server's answer until the deadline.
void oneRound(const SnatLabOptions& o, uint16_t serverPort, Tally& tally) {
  struct Conn {
    int fd = -1;
    bool sent = false;
    bool done = false;
    std::string got;
  };
  std::vector<Conn> conns(static_cast<size_t>(o.burst));
  std::map<std::string, int> fails;
  int ok = 0;
  sockaddr_storage dst;
  const socklen_t dstLen = detail::toSockaddr(Topology::extIP(IPFamily::kV4), serverPort, dst);
  const bool udp = o.proto == Protocol::kUDP;
  for (Conn& c : conns) {
    c.fd = ::socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      ++fails["error"];
      c.done = true;
      continue;
    }
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&dst), dstLen) != 0 && errno != EINPROGRESS) {
      ++fails[errno == EADDRNOTAVAIL ? "client-ports" : "error"];
      c.done = true;
      continue;
    }
    if (udp) c.sent = ::send(c.fd, "lab\n", 4, MSG_NOSIGNAL) == 4;
  }
  const auto deadline = Clock::now() + o.timeout;
  while (true) {
    std::vector<pollfd> pfds;
    std::vector<Conn*> owners;
    for (Conn& c : conns) {
      if (c.done) continue;
      pfds.push_back({c.fd, static_cast<short>(c.sent ? POLLIN : POLLOUT), 0});
      owners.push_back(&c);
    }
    if (pfds.empty()) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    if (::poll(pfds.data(), pfds.size(), static_cast<int>(left)) < 0 && errno != EINTR) break;
    for (size_t i = 0; i < pfds.size(); ++i) {
      Conn& c = *owners[i];
      if (pfds[i].revents == 0) continue;
      int soErr = 0;
      socklen_t len = sizeof soErr;
      ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soErr, &len);
      if (soErr != 0) {
        ++fails[soErr == ECONNREFUSED || soErr == ECONNRESET ? "refused" : "error"];
        c.done = true;
        continue;
      }
      if (!c.sent) {
        c.sent = ::send(c.fd, "lab\n", 4, MSG_NOSIGNAL) == 4;
        if (!c.sent) {
          ++fails["error"];
          c.done = true;
        }
        continue;
      }
      char buf[256];
      ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) c.got.append(buf, static_cast<size_t>(n));
      if (c.got.find('\n') != std::string::npos) {
        ++ok;
        c.done = true;
      } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        ++fails["error"];
        c.done = true;
      }
    }
  }
  for (Conn& c : conns) {
    if (!c.done) ++fails["timeout"];
    if (c.fd < 0) continue;
    // Abort instead of close: a client that closed first would hold its port in TIME_WAIT
    // for a minute, and the next round would find its few ports taken (EADDRNOTAVAIL).
    linger abort{1, 0};
    ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    ::close(c.fd);
  }
  tally.add(o.burst, ok, fails);
}

// The CPUs this process may run on.
std::vector<int> allowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
  }
  return cpus;
}

// Pins the calling thread to one CPU. A client's SYN is NATed and confirmed in softirq on the
// CPU that sent it (veth delivers to the sender's CPU backlog), so clients pinned to
// different CPUs race through the node truly in parallel; left alone, the scheduler often
// wakes all of them from the barrier on one CPU, where they cannot race at all.
void pinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);
}

Status validate(const SnatLabOptions& o) {
  if (o.clients < 1 || o.clients > 20) return Status(Code::kInvalidArgument, "clients must be 1..20");
  if (o.rounds < 1 || o.rounds > 1000) return Status(Code::kInvalidArgument, "rounds must be 1..1000");
  if (o.burst < 1 || o.burst > 256) return Status(Code::kInvalidArgument, "burst must be 1..256");
  if (o.proto == Protocol::kSCTP) return Status(Code::kInvalidArgument, "the lab runs TCP or UDP");
  if (o.slowPathRules < 0 || o.slowPathRules > 50000) {
    return Status(Code::kInvalidArgument, "slow-path rules must be 0..50000");
  }
  if (o.clientPorts) {
    const auto [first, last] = *o.clientPorts;
    if (first < 1024 || last < first) return Status(Code::kInvalidArgument, "client port range must be 1024 <= first <= last");
    if (static_cast<int>(last - first + 1) < o.burst) {
      return Status(Code::kInvalidArgument, "burst must not exceed the client port range");
    }
  }
  return Status::ok();
}

}  // namespace

Result<SnatLabResult> runSnatLab(const SnatLabOptions& o) {
  if (Status s = validate(o); !s) return s;
  TopologyOptions topoOpts;
  topoOpts.backends = o.clients - 1 > 0 ? o.clients - 1 : 1;  // pods double as clients
  topoOpts.ipv6 = false;
  topoOpts.externalClient = true;
  Result<std::unique_ptr<Topology>> topo = Topology::create(topoOpts);
  if (!topo) return topo.status().withContext("cannot build the lab topology");
  Topology& t = **topo;

  SnatLabResult result;
  result.topology = t.describe();
  std::vector<const Netns*> clients = {&t.client()};
  for (int i = 1; static_cast<int>(clients.size()) < o.clients; ++i) clients.push_back(&t.backend(i));

  if (o.clientPorts) {
    const std::string range = fmt::format("{} {}", o.clientPorts->first, o.clientPorts->second);
    for (const Netns* ns : clients) {
      if (Status s = setSysctl(*ns, "net.ipv4.ip_local_port_range", range); !s) return s;
    }
  }

  Result<std::unique_ptr<nft::NetlinkBackend>> backend = nft::NetlinkBackend::open({t.node().path()});
  if (!backend) return backend.status();
  if (Status s = (*backend)->apply(labRuleset(o.natFlags, o.slowPathRules, result.ruleText)); !s) {
    return s.withContext("cannot program the lab's masquerade");
  }

  Result<std::unique_ptr<Server>> server = Server::start(t.ext(), o.proto, IPFamily::kV4, 0, "lab");
  if (!server) return server.status();

  Result<conntrack::Stats> before = conntrack::readStats(t.node().path());
  if (!before) return before.status();

  Tally tally;
  std::barrier sync(static_cast<std::ptrdiff_t>(clients.size()));
  std::vector<std::thread> workers;
  std::mutex errMu;
  Status workerError;
  const std::vector<int> cpus = allowedCpus();
  for (size_t i = 0; i < clients.size(); ++i) {
    const Netns* ns = clients[i];
    const int cpu = cpus.empty() ? -1 : cpus[i % cpus.size()];
    workers.emplace_back([&, ns, cpu] {
      Status s = runInNetns(ns->path(), [&] {
        if (cpu >= 0) pinTo(cpu);
        for (int r = 0; r < o.rounds; ++r) {
          sync.arrive_and_wait();  // every client starts its burst at the same moment
          oneRound(o, (*server)->port(), tally);
        }
      });
      if (!s) {
        sync.arrive_and_drop();
        std::lock_guard lock(errMu);
        workerError = s;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  if (!workerError.isOk()) return workerError;

  Result<conntrack::Stats> after = conntrack::readStats(t.node().path());
  if (!after) return after.status();
  result.before = *before;
  result.after = *after;
  result.delta = conntrack::delta(before->total, after->total);
  result.attempts = tally.attempts;
  result.answered = tally.answered;
  result.failures = tally.failures;
  return result;
}

}  // namespace sluice::testbed
