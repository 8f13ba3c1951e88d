// lease-agent: endpoints that register themselves. Three replicas of a registry hold leases
// with a short TTL in an EmbeddedLeaseStore; the lease reconciler (LeaseSource) publishes the
// live ones as the endpoints of Service infra/registry, and the sync runner programs them.
// Then one replica stops renewing, as if it had crashed: its endpoint leaves once its lease
// runs out (TTL + at most one reconcile interval). Another shuts down cleanly and releases its
// lease: it leaves at once. The program prints each committed endpoint set and exits 0 only
// if both left when they should.
//
//   lease-agent [--dry-run] [--ttl MS]
//     --dry-run  program the shipped FakeBackend instead of this namespace's kernel
//
// Try it without touching your host's rules: `unshare --net lease-agent`. In production the
// registrants are other processes (an apiserver, database replicas) and the store is etcd:
// swap EmbeddedLeaseStore for EtcdLeaseStore (sluice/lease_etcd.h); nothing else changes.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "sluice/dataplane.h"
#include "sluice/lease.h"
#include "sluice/nft/backend.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"

using namespace sluice;
using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

const ObjectName kService{"infra", "registry"};

// Watches commits: which endpoints of the Service the kernel now has. afterCommit runs under
// the store's lock on the runner's thread, so it only copies and signals.
class CommittedEndpoints : public CommitListener {
 public:
  void afterCommit(const CommitInfo& info) override {
    std::set<std::string> now;
    for (const auto& [id, slice] : info.snapshot.slicesFor(kService))
      for (const Endpoint& e : slice.endpoints) now.insert(e.addresses.front().toString());
    std::lock_guard lock(mu_);
    if (now == current_) return;
    current_ = now;
    std::string list;
    for (const auto& ip : now) list += " " + ip;
    std::printf("  [%6.3f s] committed endpoints of %s:%s\n", elapsed(), kService.toString().c_str(),
                now.empty() ? " (none)" : list.c_str());
    std::fflush(stdout);
    cv_.notify_all();
  }
  // Waits until exactly `want` is committed; false after `timeout`.
  bool waitFor(const std::set<std::string>& want, Ms timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return current_ == want; });
  }
  double elapsed() const { return std::chrono::duration<double>(SteadyClock::now() - start_).count(); }

 private:
  const SteadyClock::time_point start_ = SteadyClock::now();
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> current_;
};

LeaseSpec replica(const std::string& name, const char* ip, Ms ttl) {
  LeaseSpec spec;
  spec.identity = name;
  spec.address = IPAddress::parse(ip).value();
  spec.ports = {{"registry", Protocol::kTCP, 5000}};  // named like the Service's port
  spec.ttl = ttl;
  return spec;
}

int main(int argc, char** argv) {
  bool dryRun = false;
  Ms ttl{600};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dry-run") dryRun = true;
    else if (a == "--ttl" && i + 1 < argc) ttl = Ms(std::stol(argv[++i]));
    else { std::fprintf(stderr, "usage: %s [--dry-run] [--ttl MS]\n", argv[0]); return 2; }
  }

  ProxyConfig cfg;
  cfg.nodeName = "node-1";
  nft::FakeBackend fake;
  std::unique_ptr<nft::NetlinkBackend> kernel;
  if (!dryRun) {
    auto opened = nft::NetlinkBackend::open({});  // this process's network namespace
    if (!opened) { std::fprintf(stderr, "netlink: %s\n", opened.status().toString().c_str()); return 1; }
    kernel = std::move(opened).value();
  }
  DataPlane dataplane(cfg, kernel ? static_cast<nft::Backend&>(*kernel) : fake);
  StateStore store;
  CommittedEndpoints committed;
  SyncRunner runner(store, dataplane);
  runner.addListener(&committed);
  runner.start();

  // The reconciler publishes the Service itself too (kube-apiserver's default/kubernetes
  // works this way); without serviceObject another source would deliver it.
  EmbeddedLeaseStore leases;
  LeaseReconcilerConfig rc;
  rc.service = kService;
  Service svc;
  svc.id = kService;
  svc.clusterIPs = {IPAddress::parse("198.18.200.20").value()};
  svc.ports = {{"registry", Protocol::kTCP, 5000, 0}};
  rc.serviceObject = svc;
  rc.interval = ttl / 4;  // reconcile often: a dead replica leaves within TTL + interval
  LeaseSource source(leases, rc);
  if (Status st = source.start(store.sink(source.name())); !st) {
    std::fprintf(stderr, "lease source: %s\n", st.toString().c_str());
    return 1;
  }

  std::printf("%s backend, lease TTL %lld ms, reconcile interval %lld ms\n", dryRun ? "fake" : "netlink",
              (long long)ttl.count(), (long long)rc.interval.count());
  LeaseRegistrant a(leases, replica("registry-a", "198.18.8.10", ttl));
  LeaseRegistrant b(leases, replica("registry-b", "198.18.8.11", ttl));
  LeaseRegistrant c(leases, replica("registry-c", "198.18.8.12", ttl));
  for (LeaseRegistrant* r : {&a, &b, &c}) {
    if (Status st = r->start(); !st) { std::fprintf(stderr, "registrant: %s\n", st.toString().c_str()); return 1; }
  }
  const Ms patience{5000};  // generous: CI machines are shared and slow
  bool ok = committed.waitFor({"198.18.8.10", "198.18.8.11", "198.18.8.12"}, patience);
  if (!ok) std::printf("FAIL: the three replicas were not all programmed\n");

  // A crash: no more renewals, no release. The lease must outlive its last renewal by the
  // TTL, so the endpoint may not leave before TTL minus one renew interval (TTL/3).
  if (ok) {
    std::printf("registry-b stops renewing (as if it crashed)\n");
    const auto t0 = SteadyClock::now();
    b.stop(/*release=*/false);
    ok = committed.waitFor({"198.18.8.10", "198.18.8.12"}, patience);
    const auto took = std::chrono::duration_cast<Ms>(SteadyClock::now() - t0);
    std::printf("  registry-b left after %lld ms (TTL %lld ms)\n", (long long)took.count(), (long long)ttl.count());
    if (!ok || took < ttl - ttl / 3) {
      std::printf("FAIL: registry-b should leave after its lease ran out\n");
      ok = false;
    }
  }
  // A clean shutdown: release ends the lease now; the store tells the reconciler at once.
  if (ok) {
    std::printf("registry-c shuts down and releases its lease\n");
    const auto t0 = SteadyClock::now();
    c.stop(/*release=*/true);
    ok = committed.waitFor({"198.18.8.10"}, patience);
    std::printf("  registry-c left after %lld ms\n",
                (long long)std::chrono::duration_cast<Ms>(SteadyClock::now() - t0).count());
    if (!ok) std::printf("FAIL: registry-c should leave right after its release\n");
  }

  a.stop();
  source.stop();  // publishes the (now empty) set once more: no lease is left
  committed.waitFor({}, patience);
  runner.stop();  // rules stay in place, as sluiced leaves them
  std::printf("%s\n", ok ? "lease agent: ok" : "lease agent: FAILED");
  return ok ? 0 : 1;
}
