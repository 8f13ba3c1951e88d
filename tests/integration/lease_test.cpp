// Lease-registered endpoints through the real data plane: registrant processes hold leases (in a
// real etcd, or in the embedded store), a LeaseSource publishes them, DataPlane programs the
// node namespace's nftables, and probes from the client namespace check who serves. Killing a
// registrant with SIGKILL must take its endpoint out of the data plane within TTL + one
// reconcile interval while the others keep serving.
//
// Registrant children are forked before this process starts any thread of its own (etcd
// variant), or only ever call write() and nanosleep() (embedded variant), so fork is safe.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "../etcd_fixture.h"
#include "../lease_helpers.h"
#include "sluice/dataplane.h"
#include "sluice/lease_etcd.h"
#include "sluice/nft/backend.h"
#include "testbed.h"

using namespace sluice;
using namespace sluice::testbed;
using namespace std::chrono_literals;

namespace {

constexpr IPFamily kV4 = IPFamily::kV4;
constexpr uint16_t kPort = 80, kTarget = 8080;
const ObjectName kSvc{"demo", "leased"};
constexpr auto kTTL = 1000ms;
constexpr auto kInterval = 200ms;

LeaseSpec registrantSpec(int backend) {
  LeaseSpec s;
  s.identity = "b" + std::to_string(backend);
  s.address = Topology::backendIP(backend, kV4);
  s.ports = {{"http", Protocol::kTCP, kTarget}};
  s.ttl = kTTL;
  return s;
}

// A StateSink in front of a Snapshot, and a thread that syncs the DataPlane whenever the
// snapshot changed (the sync runner's job in the daemon; minimal here).
class SyncPump final : public StateSink {
 public:
  SyncPump(DataPlane& dp) : dp_(dp), thread_([this] { run(); }) {}
  ~SyncPump() override {
    stop_ = true;
    thread_.join();
  }
  void upsertService(Service s) override { with([&] { snap_.upsertService(std::move(s)); }); }
  void removeService(const ObjectName& id) override { with([&] { snap_.removeService(id); }); }
  void upsertSlice(EndpointSlice s) override { with([&] { snap_.upsertSlice(std::move(s)); }); }
  void removeSlice(const ObjectName& id) override { with([&] { snap_.removeSlice(id); }); }
  void replaceServices(std::vector<Service> all) override {
    with([&] {
      for (const auto& [id, svc] : std::map(snap_.services())) snap_.removeService(id);
      for (auto& s : all) snap_.upsertService(std::move(s));
    });
  }
  void replaceSlices(std::vector<EndpointSlice> all) override {
    with([&] {
      for (const auto& [id, svc] : snap_.services())
        for (const auto& [sid, slice] : std::map(snap_.slicesFor(id))) snap_.removeSlice(sid);
      for (auto& s : all) snap_.upsertSlice(std::move(s));
    });
  }
  // Nothing is programmed before both kinds are synced (the Source contract), so the Service
  // is never programmed without its endpoints at startup.
  void synced(ResourceKind kind) override { with([&] { synced_.insert(kind); }); }
  void problem(Problem p) override { FAIL_CHECK("problem: " << p.toString()); }

  // Endpoint addresses of the Service as last programmed successfully.
  std::set<std::string> programmed() const {
    std::lock_guard lock(mu_);
    return programmed_;
  }
  bool waitProgrammed(const std::set<std::string>& want, std::chrono::milliseconds timeout) const {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (programmed() == want) return true;
      std::this_thread::sleep_for(10ms);
    }
    return programmed() == want;
  }
  bool everProgrammedEmpty() const { return everEmpty_; }

 private:
  template <typename F>
  void with(F f) {
    std::lock_guard lock(mu_);
    f();
  }
  void run() {
    while (!stop_) {
      {
        std::lock_guard lock(mu_);
        if (synced_.size() == 2 && !snap_.dirty().empty()) {
          std::set<std::string> eps;
          for (const auto& [sid, slice] : snap_.slicesFor(kSvc))
            for (const auto& e : slice.endpoints) eps.insert(e.addresses.front().toString());
          DataPlane::SyncResult r = dp_.sync(snap_);
          if (r.status) {
            programmed_ = eps;
            if (eps.empty() && snap_.service(kSvc)) everEmpty_ = true;
          }
        }
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  DataPlane& dp_;
  mutable std::mutex mu_;
  Snapshot snap_;
  std::set<std::string> programmed_;
  std::set<ResourceKind> synced_;
  std::atomic<bool> everEmpty_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

Service leasedService() {
  Service s;
  s.id = kSvc;
  s.clusterIPs = {Topology::serviceIP(1, kV4)};
  s.ports = {{"http", Protocol::kTCP, kPort, 0}};
  return s;
}

// A child process; SIGKILLed and reaped by the destructor if still alive.
struct Child {
  pid_t pid = -1;
  Child() = default;
  Child(Child&& o) noexcept : pid(std::exchange(o.pid, -1)) {}
  ~Child() { kill(); }
  void kill() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
};

// In the child: die with the parent, never return.
void childSetup(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
}

// etcd registrant: its own store and registrant thread, renewing until killed.
Child forkEtcdRegistrant(const std::string& url, int backend) {
  const pid_t parent = getpid();
  Child c;
  c.pid = fork();
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    childSetup(parent);
    auto store = EtcdLeaseStore::create({url, "/sluice/leases/demo/leased/", 1000ms, 100ms});
    if (!store) _exit(2);
    LeaseRegistrant r(**store, registrantSpec(backend));
    (void)r.start();  // keeps retrying on its own
    for (;;) pause();
  }
  return c;
}

// Embedded-store registrant: the child says "renew" over a pipe every TTL/3; a relay thread in
// this process renews on its behalf, as the daemon's HTTP API will for remote registrants. The
// child being killed closes the pipe; the relay then stops renewing without releasing.
struct PipeRegistrant {
  Child child;
  UniqueFd readEnd;
  std::thread relay;
  ~PipeRegistrant() {
    child.kill();
    if (relay.joinable()) relay.join();
  }
};

std::unique_ptr<PipeRegistrant> forkPipeRegistrant(LeaseStore& store, int backend) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  auto r = std::make_unique<PipeRegistrant>();
  const pid_t parent = getpid();
  r->child.pid = fork();
  REQUIRE(r->child.pid >= 0);
  if (r->child.pid == 0) {
    childSetup(parent);
    close(fds[0]);
    const timespec interval{0, std::chrono::nanoseconds(kTTL / 3).count()};
    for (;;) {
      if (write(fds[1], "renew\n", 6) != 6) _exit(3);
      nanosleep(&interval, nullptr);
    }
  }
  close(fds[1]);
  r->readEnd = UniqueFd(fds[0]);
  auto handle = store.acquire(registrantSpec(backend), std::chrono::system_clock::now());
  REQUIRE_MESSAGE(handle.isOk(), handle.status().toString());
  r->relay = std::thread([&store, fd = r->readEnd.get(), h = *handle]() mutable {
    char buf[64];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) return;
      if (read(fd, buf, sizeof buf) <= 0) return;  // EOF: the registrant is gone
      if (store.renew(h, std::chrono::system_clock::now()).code() == Code::kNotFound) {
        auto again = store.acquire(registrantSpec(std::stoi(h.identity.substr(1))), std::chrono::system_clock::now());
        if (again) h = *again;
      }
    }
  });
  return r;
}

std::set<std::string> backendIPs(std::initializer_list<int> backends) {
  std::set<std::string> out;
  for (int b : backends) out.insert(Topology::backendIP(b, kV4).toString());
  return out;
}

std::set<std::string> ids(std::initializer_list<int> backends) {
  std::set<std::string> out;
  for (int b : backends) out.insert("b" + std::to_string(b));
  return out;
}

// 60 probes through the Service IP are answered by exactly `expected`, each at least once
// (P(miss) < 3·(2/3)^60 < 1e-10), and none fails.
void checkServing(const Topology& topo, const std::set<std::string>& expected) {
  auto counts = spread(topo.client(), Protocol::kTCP, Topology::serviceIP(1, kV4), kPort, 60, 2000ms);
  int total = 0;
  for (const auto& [id, n] : counts) {
    CHECK_MESSAGE(expected.count(id) == 1, "unexpected answer " << id << " x" << n);
    total += n;
  }
  for (const auto& id : expected) CHECK_MESSAGE(counts.count(id) == 1, "backend " << id << " never answered");
  CHECK(total == 60);
}

struct DataPath {
  std::unique_ptr<Topology> topo;
  std::vector<std::unique_ptr<Server>> servers;
  std::unique_ptr<nft::NetlinkBackend> backend;
  std::unique_ptr<DataPlane> dp;
  std::unique_ptr<SyncPump> pump;

  DataPath() {
    auto t = Topology::create({.backends = 3, .ipv6 = false, .externalClient = false});
    REQUIRE_MESSAGE(t.isOk(), t.status().toString());
    topo = std::move(t).value();
    for (int i = 1; i <= 3; ++i) {
      auto s = Server::start(topo->backend(i), Protocol::kTCP, kV4, kTarget, "b" + std::to_string(i));
      REQUIRE_MESSAGE(s.isOk(), s.status().toString());
      servers.push_back(std::move(s).value());
    }
    auto b = nft::NetlinkBackend::open({topo->node().path()});
    REQUIRE_MESSAGE(b.isOk(), b.status().toString());
    backend = std::move(b).value();
    ProxyConfig cfg;
    cfg.nodeName = "node";
    cfg.clusterCIDRs = {Topology::podCIDR(kV4)};
    dp = std::make_unique<DataPlane>(cfg, *backend);
    pump = std::make_unique<SyncPump>(*dp);
  }
  ~DataPath() {
    pump.reset();  // before the data plane it drives
  }
};

LeaseReconcilerConfig sourceConfig() {
  LeaseReconcilerConfig cfg;
  cfg.service = kSvc;
  cfg.serviceObject = leasedService();
  cfg.interval = kInterval;
  return cfg;
}

// The common part: all three serve; SIGKILL registrant 2; its endpoint leaves the data plane
// within TTL + one interval (+ slack for a loaded CI machine); b1 and b3 keep serving.
void killOneRegistrant(DataPath& path, const std::function<void()>& killRegistrant2) {
  REQUIRE(path.pump->waitProgrammed(backendIPs({1, 2, 3}), 10s));
  checkServing(*path.topo, ids({1, 2, 3}));

  const auto killed = std::chrono::steady_clock::now();
  killRegistrant2();
  constexpr auto kSlack = 1000ms;
  CHECK(path.pump->waitProgrammed(backendIPs({1, 3}), kTTL + kInterval + kSlack));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  MESSAGE("registrant 2 killed; endpoint left the data plane after " << took.count() << " ms");
  // Not before its lease could have run out: its last renewal was at most one renew interval
  // (TTL/3, plus the time a renewal takes) before the kill.
  CHECK(took >= kTTL - kTTL / 3 - 100ms);
  checkServing(*path.topo, ids({1, 3}));
  CHECK_FALSE(path.pump->everProgrammedEmpty());
}

}  // namespace

TEST_CASE("leases in etcd feed the data plane, a SIGKILLed registrant leaves within TTL + interval") {
  auto e = testing::EtcdServer::start();
  REQUIRE_MESSAGE(e.isOk(), e.status().toString());
  auto etcd = std::move(e).value();
  std::vector<Child> registrants;
  for (int b = 1; b <= 3; ++b) registrants.push_back(forkEtcdRegistrant(etcd->url(), b));

  DataPath path;
  auto store = EtcdLeaseStore::create({etcd->url(), "/sluice/leases/demo/leased/", 1000ms, 100ms});
  REQUIRE(store.isOk());
  LeaseSource source(**store, sourceConfig());
  REQUIRE(source.start(*path.pump).isOk());
  killOneRegistrant(path, [&] { registrants[1].kill(); });
  source.stop();
}

TEST_CASE("leases in the embedded store feed the data plane, a SIGKILLed registrant leaves within TTL + interval") {
  EmbeddedLeaseStore store;
  std::vector<std::unique_ptr<PipeRegistrant>> registrants;
  for (int b = 1; b <= 3; ++b) registrants.push_back(forkPipeRegistrant(store, b));

  DataPath path;
  LeaseSource source(store, sourceConfig());
  REQUIRE(source.start(*path.pump).isOk());
  killOneRegistrant(path, [&] { registrants[1]->child.kill(); });
  source.stop();
  registrants.clear();
}
