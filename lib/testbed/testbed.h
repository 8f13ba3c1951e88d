// testbed.h — throw-away network-namespace topologies and real traffic, for sluice's
// real-kernel tests, benchmarks and demo. Not part of the installed library.
//
// Safety contract: everything this library creates lives inside network namespaces it
// created itself (named "sltb-<run>-<n>-<role>") and removes again — in destructors, on
// partial construction, and (for processes that died without unwinding) through
// reapStaleNamespaces(), which every new Netns triggers once per process. It never adds a
// link, address or route to the root namespace, never reads or writes the root namespace's
// nftables, conntrack or sysctls, and only ever addresses 198.18.0.0/15, 203.0.113.0/24,
// 198.51.100.0/24 and fd00::/8 inside those namespaces. Every traffic loop is bounded in
// count and time.
//
// Kernel facts this code relies on or works around (seen on the 6.18 test kernel):
// - there is no `dummy` link type ("Unknown device type"), so the node IP sits on a port-less
//   bridge instead;
// - there are no SCTP sockets (socket(…, IPPROTO_SCTP) fails with EPROTONOSUPPORT), although
//   nftables and conntrack do know SCTP; Server/probe report that as Code::kUnimplemented /
//   ProbeResult::kError with err == EPROTONOSUPPORT so tests can skip with a message;
// - br_netfilter is built in (its per-netns bridge-nf-call-* switches default to 1), so
//   bridged pod-to-pod frames traverse the node's inet hooks;
// - a new namespace inherits the root namespace's IPv4 conf/{all,default} values
//   (net.core.devconf_inherit_init_net = 0) but IPv6 defaults, so rp_filter is set, not assumed;
// - /proc/sys/net resolves against the calling *thread's* namespace, so sysctls are set from a
//   thread that joined the namespace, with no `ip netns exec`.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/status.h"

namespace sluice::testbed {

// ---------------------------------------------------------------------------------------------
// File descriptors

// Owns one file descriptor (socket, pipe, eventfd, lock file); closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// ---------------------------------------------------------------------------------------------
// Processes

struct RunOptions {
  // The child is killed (SIGKILL, by pid) when it runs longer than this.
  std::chrono::milliseconds timeout{30000};
  // Written to the child's stdin, which is then closed (for `ip -batch -`, `nft -f -`).
  std::string input;
};

// Runs argv[0] (looked up in PATH) with the given arguments — never through a shell — and
// returns its stdout. Fails with kInternal and the child's stderr when it exits non-zero or
// is killed, kUnavailable when it times out, and the spawn errno (e.g. kNotFound) when it
// cannot be started.
Result<std::string> run(const std::vector<std::string>& argv, const RunOptions& options = {});

class Netns;

// Runs a command inside `ns` (`ip netns exec NAME argv…`) and returns its stdout; same error
// contract as run(). For example execIn(topo.node(), {"nft", "-j", "list", "ruleset"}).
Result<std::string> execIn(const Netns& ns, const std::vector<std::string>& argv,
                           const RunOptions& options = {});

// ---------------------------------------------------------------------------------------------
// Namespaces

// Move-only owner of one named network namespace (/run/netns/NAME) with `lo` up. The
// destructor deletes it; deleting what is already gone is fine.
class Netns {
 public:
  // Creates "sltb-<run>-<n>-<role>"; `role` is 1–20 characters of [a-z0-9-] and only makes
  // the name readable. Unique across threads and concurrent processes.
  static Result<Netns> create(std::string_view role);

  Netns(Netns&& other) noexcept;
  Netns& operator=(Netns&& other) noexcept;
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;
  ~Netns();

  const std::string& name() const { return name_; }
  const std::string& role() const { return role_; }
  std::string path() const { return "/run/netns/" + name_; }  // accepted by sluice::runInNetns
  bool valid() const { return !name_.empty(); }

  // Deletes the namespace now (idempotent). Sockets opened inside it keep the kernel object
  // alive, invisibly, until they are closed.
  Status remove();

 private:
  Netns(std::string name, std::string role) : name_(std::move(name)), role_(std::move(role)) {}
  std::string name_;
  std::string role_;
};

// Deletes namespaces named by this library whose creating process has died (its lock under
// /run/sluice-testbed is no longer held), e.g. after a crash or SIGKILL. Namespaces of live
// processes, including this one, are never touched. Returns how many it deleted.
Result<int> reapStaleNamespaces();

// Writes /proc/sys/<key with dots as slashes> as seen from inside `ns` (the caller's thread
// is not moved). Fails with kNotFound when the key does not exist in this kernel.
Status setSysctl(const Netns& ns, std::string_view key, std::string_view value);
Result<std::string> getSysctl(const Netns& ns, std::string_view key);

// ---------------------------------------------------------------------------------------------
// Topology
//
//   client (198.18.1.100, fd00:1::100) ─┐
//   backend i (198.18.1.(10+i), fd00:1::(10+i)) ─┤ eth0 ⇄ vcl / vb<i>, ports of br0
//                                                 │
//   node: br0 198.18.1.1/24 fd00:1::1/64 (pod network, gateway of the pods)
//         nodeip0 198.18.0.1/24 fd00::1/64 (the node IP; default route, a dead end)
//         vext 203.0.113.1/24 198.51.100.1/24 fd00:2::1/64 fd00:3::1/64
//                                                 │
//   ext: eth0 203.0.113.2/24 198.51.100.2/24 fd00:2::2/64 fd00:3::2/64, default via node
//        (source 203.0.113.2 / fd00:2::2 unless a probe binds the 198.51.100.2 / fd00:3::2)
//
// The node forwards (v4 and v6), has rp_filter off, and calls the inet hooks for bridged
// traffic (per bridge and per netns), as a kube-proxy node with a bridge CNI does; bridge
// ports have hairpin on so a pod can reach itself through a Service. Service addresses for
// tests come from serviceIP(): the node routes them (and anything else unknown) into the
// port-less nodeip0, where they die without leaving the namespace.

struct TopologyOptions {
  int backends = 2;            // 1..50 backend pods
  bool ipv6 = true;            // configure the fd00:: addresses and v6 forwarding
  bool externalClient = true;  // create the "ext" namespace
};

class Topology {
 public:
  // Builds the whole topology, or removes whatever it had built and returns why not.
  static Result<std::unique_ptr<Topology>> create(const TopologyOptions& options = {});

  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;
  ~Topology();  // deletes every namespace (members do it; declared for clarity)

  const TopologyOptions& options() const { return options_; }
  Netns& node() { return *node_; }
  const Netns& node() const { return *node_; }
  Netns& client() { return *client_; }
  const Netns& client() const { return *client_; }
  // Asking for a namespace the options did not create is a bug in the test: these abort.
  const Netns& ext() const;  // requires options().externalClient
  Netns& ext() { return const_cast<Netns&>(std::as_const(*this).ext()); }
  const Netns& backend(int i) const;  // 1-based, i ≤ options().backends
  Netns& backend(int i) { return const_cast<Netns&>(std::as_const(*this).backend(i)); }
  int backendCount() const { return static_cast<int>(backends_.size()); }
  // Every namespace of the topology, node first.
  std::vector<const Netns*> namespaces() const;

  // Addresses (v6 ones exist only with options().ipv6).
  static IPAddress nodeIP(IPFamily f);        // 198.18.0.1 / fd00::1 on nodeip0
  static IPAddress podGatewayIP(IPFamily f);  // 198.18.1.1 / fd00:1::1 on br0
  static IPPrefix podCIDR(IPFamily f);        // 198.18.1.0/24 / fd00:1::/64
  static IPAddress backendIP(int i, IPFamily f);  // 198.18.1.(10+i) / fd00:1::(10+i), hex
  static IPAddress clientIP(IPFamily f);      // 198.18.1.100 / fd00:1::100
  static IPAddress nodeExtIP(IPFamily f);     // 203.0.113.1 / fd00:2::1 on vext
  static IPAddress extIP(IPFamily f);         // 203.0.113.2 / fd00:2::2, ext's default source
  static IPAddress extAltIP(IPFamily f);      // 198.51.100.2 / fd00:3::2, second ext source
  // Free addresses for ClusterIPs, external and load-balancer IPs: 198.19.0.0/16 and
  // fd00:100::/64, n in 1..65534 → 198.19.(n/256).(n%256) / fd00:100::n.
  static IPAddress serviceIP(int n, IPFamily f);
  static IPPrefix serviceCIDR(IPFamily f);

  // Interface names. All are inside the topology's namespaces, so they cannot collide with
  // other runs.
  static constexpr const char* kBridge = "br0";            // node
  static constexpr const char* kNodeIPDevice = "nodeip0";  // node
  static constexpr const char* kExtDevice = "vext";        // node side of the ext link
  static constexpr const char* kClientDevice = "vcl";      // node side of the client's veth
  static constexpr const char* kPodDevice = "eth0";        // in client, backends and ext
  static std::string backendDevice(int i) { return "vb" + std::to_string(i); }  // node side

  // Whether the kernel has br_netfilter (bridged traffic hits the node's inet hooks).
  bool bridgeNetfilter() const { return bridgeNetfilter_; }

  // Multi-line human description: namespaces and addresses (for the demo and test logs).
  std::string describe() const;

 private:
  explicit Topology(const TopologyOptions& options) : options_(options) {}
  Status build();

  TopologyOptions options_;
  bool bridgeNetfilter_ = false;
  // Destroyed in reverse order: pods first, node last (the order does not matter to the
  // kernel — deleting a namespace deletes its veth ends and so their peers).
  std::optional<Netns> node_;
  std::optional<Netns> client_;
  std::optional<Netns> ext_;
  std::vector<Netns> backends_;
};

// ---------------------------------------------------------------------------------------------
// Servers

// An echo-who-I-am server on its own thread, with its socket created inside a namespace. For
// every request it answers "<id> <peer-ip> <peer-port>\n" where peer is the source address
// the server saw (so tests observe DNAT/SNAT).
//
// TCP (and SCTP, one-to-one style): many concurrent connections; each sends one line; the
// server answers and closes. If the first line is "HOLD" the connection stays open and every
// further line is answered too, until the client closes. UDP: every datagram is answered to
// its sender, from the address it was sent to.
class Server {
 public:
  // Listens on the wildcard address of `family` (IPV6_V6ONLY for v6) at `port` (0 = pick
  // one; see port()). `id` must be non-empty without whitespace. Fails with kUnimplemented
  // for SCTP when the kernel has no SCTP sockets, kAlreadyExists when the port is taken.
  static Result<std::unique_ptr<Server>> start(const Netns& ns, Protocol proto, IPFamily family,
                                               uint16_t port, std::string id);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  // stop()

  // Stops serving, closes every connection and joins the thread. Idempotent; call it from the
  // owning thread only.
  void stop();

  const std::string& id() const { return id_; }
  Protocol protocol() const { return proto_; }
  IPFamily family() const { return family_; }
  uint16_t port() const { return port_; }
  // Requests answered so far (lines for TCP/SCTP, datagrams for UDP), counted before the
  // reply is sent so a client holding an answer always sees it counted.
  uint64_t served() const { return served_.load(); }
  // TCP/SCTP connections currently open (e.g. held ones).
  int openConnections() const { return open_.load(); }

 private:
  Server(Protocol proto, IPFamily family, std::string id, UniqueFd socket, UniqueFd wake,
         uint16_t port);
  void serveStream();
  void serveDatagram();

  Protocol proto_;
  IPFamily family_;
  std::string id_;
  UniqueFd socket_;  // the listening (stream) or bound (datagram) socket
  UniqueFd wake_;    // eventfd: stop() wakes the poll loop through it
  uint16_t port_;
  std::atomic<uint64_t> served_{0};
  std::atomic<int> open_{0};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Whether this kernel can create SCTP sockets (inside `ns`).
bool sctpSupported(const Netns& ns);

// ---------------------------------------------------------------------------------------------
// Clients

struct ProbeResult {
  enum Kind {
    kAnswered,  // a Server answered; backendId/seenSource/seenSourcePort are set
    kRefused,   // RST or an ICMP(v6) error: port/host/net unreachable, admin prohibited
    kTimeout,   // no answer before the deadline (dropped, blackholed, nobody there)
    kError,     // anything else; err and detail say what
  };
  Kind kind = kError;
  std::string backendId;
  IPAddress seenSource;         // the source address the server saw
  uint16_t seenSourcePort = 0;  // and the source port
  uint16_t localPort = 0;       // the client's own source port
  int err = 0;                  // errno behind kRefused / kError
  std::string detail;

  bool answered() const { return kind == kAnswered; }
  // "answered by b1 (saw 198.18.1.100:40312)", "refused (errno 111: Connection refused)"…
  std::string toString() const;
};

struct ProbeOptions {
  std::chrono::milliseconds timeout{1000};  // for the whole probe: connect, send, reply
  uint16_t localPort = 0;                   // fixed source port (SO_REUSEADDR), 0 = any
  std::optional<IPAddress> localAddress;    // fixed source address (must be local)
};

// Sends one request from inside `from` to dst:port and classifies the outcome. Never throws
// and never blocks longer than the timeout (plus scheduling noise). With a fixed localPort a
// TCP probe retries a busy port (the previous connection's LAST_ACK) until the deadline.
ProbeResult probe(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                  const ProbeOptions& options);
ProbeResult probe(const Netns& from, Protocol proto, const IPAddress& dst, uint16_t port,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(1000),
                  uint16_t localPort = 0);

// `count` sequential probes (each with a fresh source port, so each is a new flow); returns
// answers per backend id, failures under "refused", "timeout" and "error". count ≤ 100000.
std::map<std::string, int> spread(const Netns& from, Protocol proto, const IPAddress& dst,
                                  uint16_t port, int count,
                                  std::chrono::milliseconds timeout =
                                      std::chrono::milliseconds(1000));

// A held TCP (or SCTP) connection: opened with a "HOLD" request, then any number of
// requests over the same flow — for tests that existing connections keep their backend.
class Connection {
 public:
  // Connects and sends "HOLD"; fails (with the ProbeResult's text) unless a Server answers.
  static Result<Connection> open(const Netns& from, Protocol proto, const IPAddress& dst,
                                 uint16_t port, const ProbeOptions& options = {});

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;

  // The answer to the HOLD request.
  const ProbeResult& first() const { return first_; }
  // Sends another request over the same connection. kRefused means the connection was reset
  // (e.g. conntrack entry flushed and the peer answered with RST); kError with detail
  // "closed" means an orderly close.
  ProbeResult ask(std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));
  // Closes the connection (idempotent); the destructor does the same.
  void close();
  bool isOpen() const { return static_cast<bool>(fd_); }

 private:
  Connection(UniqueFd fd, ProbeResult first) : fd_(std::move(fd)), first_(std::move(first)) {}
  UniqueFd fd_;
  ProbeResult first_;
  std::string pending_;  // bytes read past the last reply line
};

}  // namespace sluice::testbed

// ---------------------------------------------------------------------------------------------
// HTTP: a backend with graceful shutdown and a bounded load generator (rolling-update tests)

namespace sluice::testbed {

// A small HTTP/1.1 server (GET only, keep-alive) on its own thread, listening inside a
// namespace. Every response is "200 OK" with body "<id>\n". Graceful shutdown mirrors what a
// well-behaved application does on SIGTERM: during the grace period it keeps accepting and
// serving, but answers every request with `Connection: close` and then closes that connection,
// so keep-alive clients move on; when the grace period ends the process "exits": the listener
// and every connection close at once.
class HttpBackend {
 public:
  static Result<std::unique_ptr<HttpBackend>> start(const Netns& ns, IPFamily family,
                                                    uint16_t port, std::string id);
  HttpBackend(const HttpBackend&) = delete;
  HttpBackend& operator=(const HttpBackend&) = delete;
  ~HttpBackend();  // stop()

  // Begins the graceful shutdown described above (SIGTERM). Idempotent.
  void terminate(std::chrono::milliseconds gracePeriod);
  // Closes everything now (SIGKILL, or the end of the grace period). Idempotent.
  void stop();
  // The grace period has ended and the server is gone.
  bool exited() const { return exited_.load(); }

  const std::string& id() const { return id_; }
  uint16_t port() const { return port_; }
  uint64_t served() const { return served_.load(); }

 private:
  HttpBackend(std::string id, UniqueFd socket, UniqueFd wake, uint16_t port);
  void serve();

  std::string id_;
  UniqueFd socket_;
  UniqueFd wake_;
  uint16_t port_;
  std::atomic<uint64_t> served_{0};
  std::atomic<int64_t> exitAtNs_{0};  // steady_clock deadline of the grace period, 0 = running
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exited_{false};
  std::thread thread_;
};

struct HttpLoadOptions {
  int newConnectionWorkers = 2;  // one connection per request (Connection: close)
  int keepAliveWorkers = 4;      // long-lived connections, reopened only when the server says so
  std::chrono::milliseconds requestTimeout{2000};
  std::chrono::milliseconds pause{2};  // between a worker's requests
  uint64_t maxRequests = 200000;       // over all workers; the load stops by itself after it
};

// A bounded HTTP load generator: worker threads inside `from` send GET requests to dst:port
// until stop() (or maxRequests). A request fails when it cannot connect, is reset, times out,
// or the connection closes before a complete "200" response; `Connection: close` in a response
// is honoured (the next request opens a new connection), which is not a failure.
class HttpLoad {
 public:
  static Result<std::unique_ptr<HttpLoad>> start(const Netns& from, const IPAddress& dst,
                                                 uint16_t port, const HttpLoadOptions& options = {});
  HttpLoad(const HttpLoad&) = delete;
  HttpLoad& operator=(const HttpLoad&) = delete;
  ~HttpLoad();  // stop()
  void stop();  // idempotent; joins the workers

  struct Stats {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t connections = 0;           // connections opened
    std::map<std::string, uint64_t> byBackend;
    std::vector<std::string> failures;  // the first few, with the reason
  };
  Stats stats() const;

 private:
  HttpLoad() = default;
  void record(bool ok, const std::string& backendOrError);
  void work(bool keepAlive);

  std::string netnsPath_;
  IPAddress dst_;
  uint16_t port_ = 0;
  HttpLoadOptions options_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> issued_{0};
  mutable std::mutex mu_;
  Stats stats_;
  std::vector<std::thread> workers_;
};

}  // namespace sluice::testbed
