// sluice/lease.h — endpoints that register themselves: leases, the store that keeps them, the
// registrant that holds one, and the reconciler that turns the live ones into an EndpointSlice.
//
// This is kube-apiserver's lease endpoint reconciler (`--endpoint-reconciler-type=lease`) made
// general: any process (an apiserver, a database replica, a node-local daemon) registers
// {identity, address, ports} under a TTL and keeps renewing; an observer lists the leases,
// keeps those it has seen renewed within their TTL *on its own monotonic clock*, and publishes
// them as the endpoints of one Service through a StateSink, so the proxy programs them like any
// other endpoints. See docs/design.md §10.
//
// Backends: EmbeddedLeaseStore (in-process, below), EtcdLeaseStore (sluice/lease_etcd.h),
// KubeLeaseStore (sluice/lease_kube.h) and HttpLeaseStore (a client of the embedded store's
// HTTP API, sluice/lease_http.h).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sluice/clock.h"
#include "sluice/model.h"
#include "sluice/source.h"
#include "sluice/status.h"

namespace sluice {

// What a registrant asks to be published as.
struct LeaseSpec {
  std::string identity;             // unique within the store: "apiserver-a", "<host>_<uuid>"
  IPAddress address;                // the endpoint's address
  std::vector<EndpointPort> ports;  // its target ports, named like the Service's ports
  std::string nodeName;             // optional, published as the endpoint's nodeName
  std::string zone;                 // optional
  std::chrono::milliseconds ttl{15000};
  bool operator==(const LeaseSpec&) const = default;
};

// Validates a spec: identity 1..253 characters of [A-Za-z0-9._-], TTL ≥ 1 ms, a specified
// address, at most one port per name. Returns kInvalidArgument naming the field.
Status validateLeaseSpec(const LeaseSpec& spec);

// Proof of holding a lease; returned by acquire, passed to renew/release.
struct LeaseHandle {
  std::string identity;
  int64_t leaseId = 0;    // the store's lease (etcd lease ID, embedded counter)
  uint64_t generation = 0;  // of the record last written
  std::chrono::milliseconds ttl{0};  // as granted
};

// A lease as an observer sees it.
struct LeaseRecord {
  LeaseSpec spec;
  int64_t leaseId = 0;
  // Bumped by every renewal. Observers judge liveness by seeing it change, never by a
  // timestamp, so a registrant's clock cannot keep a dead lease alive or kill a live one.
  uint64_t generation = 0;
  // The registrant's wall clock at its last renewal. For humans only (like a Lease's
  // spec.renewTime); nothing in sluice decides anything with it.
  Clock::WallTime renewTime{};
  bool operator==(const LeaseRecord&) const = default;
};

// A record the store holds but could not decode (garbage written by someone else).
struct LeaseDecodeError {
  std::string key;  // the store's key ("/sluice/leases/web/a")
  Problem problem;
};

struct LeaseListing {
  std::vector<LeaseRecord> leases;  // sorted by identity
  std::vector<LeaseDecodeError> errors;
  int64_t revision = 0;  // the store's revision the listing reflects (0 if it has none)
};

// Where leases live. One store instance holds one group of leases (one Service's). Every call
// is thread-safe. The four calls map one-to-one onto the HTTP API sluiced serves for the
// embedded store (sluice/lease_http.h):
//   acquire  PUT    /v1/leases/<identity>          body: spec + renewTime  → handle
//   renew    POST   /v1/leases/<identity>/renew    body: {leaseId, renewTime} → 200 | 404
//   release  DELETE /v1/leases/<identity>?lease=<leaseId>                  → 200 (also if gone)
//   list     GET    /v1/leases                                            → listing
class LeaseStore {
 public:
  virtual ~LeaseStore() = default;
  // "embedded", "etcd:http://127.0.0.1:2379/sluice/leases/web/"
  virtual std::string name() const = 0;

  // Creates (or takes over) the lease of spec.identity with spec.ttl and writes the record at
  // generation 1. A previous lease of the same identity is superseded. kUnavailable when the
  // store cannot be reached; kInvalidArgument for a bad spec.
  virtual Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime renewTime) = 0;
  // Extends the lease by its TTL and bumps the record's generation (handle.generation is
  // updated). kNotFound when the lease is gone (expired, released, superseded): acquire again.
  virtual Status renew(LeaseHandle& handle, Clock::WallTime renewTime) = 0;
  // Ends the lease and removes the record now. Idempotent: a lease already gone is success; a
  // lease superseded by a newer acquire of the same identity is left alone.
  virtual Status release(const LeaseHandle& handle) = 0;
  // The unexpired leases as the store sees them. kUnavailable when the store cannot be reached
  // or its view is not current (e.g. the etcd watch is reconnecting).
  virtual Result<LeaseListing> list() = 0;
  // `onChange` is called (from any thread, with no store lock held) whenever the listing may
  // have changed, so an observer can reconcile at once instead of at its next tick. One
  // observer; pass {} to clear. The store must not call it after it is cleared.
  virtual void setOnChange(std::function<void()> onChange) = 0;
  // Deletes a lease an observer judged dead long ago, unless it changed since `seen` (what the
  // observer last listed). For stores that keep dead leases: Kubernetes never deletes a Lease
  // object by itself. Stores whose leases vanish on expiry (etcd, embedded) need nothing. A
  // lease that changed, or is gone already, is success.
  virtual Status collect(const LeaseRecord& seen) {
    (void)seen;
    return Status::ok();
  }
};

// The in-process store (the default). Leases expire on the store's monotonic clock: a listing
// never contains a lease whose TTL passed since its last renewal.
class EmbeddedLeaseStore final : public LeaseStore {
 public:
  explicit EmbeddedLeaseStore(const Clock& clock = Clock::system()) : clock_(clock) {}

  std::string name() const override { return "embedded"; }
  Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime renewTime) override;
  Status renew(LeaseHandle& handle, Clock::WallTime renewTime) override;
  Status release(const LeaseHandle& handle) override;
  Result<LeaseListing> list() override;
  void setOnChange(std::function<void()> onChange) override;

 private:
  struct Entry {
    LeaseRecord record;
    Clock::MonoTime expires;
  };
  // Drops expired entries; returns whether any was dropped. Caller holds mu_.
  bool expireLocked(Clock::MonoTime now);
  void notify();

  const Clock& clock_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;  // by identity
  int64_t nextLeaseId_ = 1;
  int64_t revision_ = 0;
  std::mutex notifyMu_;  // serialises onChange_ calls against setOnChange
  std::function<void()> onChange_;
};

// Holds one lease in a store and renews it from its own thread until stopped.
struct LeaseRegistrantOptions {
  // How often to renew; 0 = a third of the TTL (renewals can then fail twice in a row before
  // the lease runs out).
  std::chrono::milliseconds renewInterval{0};
  // Wall clock for the records' renewTime label (injected so tests can step it).
  const Clock* clock = nullptr;  // nullptr = Clock::system()
};

class LeaseRegistrant {
 public:
  // `store` must outlive the registrant.
  LeaseRegistrant(LeaseStore& store, LeaseSpec spec, LeaseRegistrantOptions options = {});
  ~LeaseRegistrant();  // stop()
  LeaseRegistrant(const LeaseRegistrant&) = delete;
  LeaseRegistrant& operator=(const LeaseRegistrant&) = delete;

  // Validates the spec, acquires the lease once (its status is returned, but a failure to
  // reach the store is retried by the thread, so kUnavailable still leaves it running) and
  // starts renewing. kInvalidArgument for a bad spec (nothing started); kFailedPrecondition
  // when already started.
  Status start();
  // Stops renewing and, with `release`, ends the lease at once (otherwise it runs out after
  // its TTL, as if this process had died). Idempotent.
  void stop(bool release = true);

  // Whether the last acquire/renew succeeded.
  bool holding() const;
  // Successful renewals and re-acquisitions since start (for tests and metrics).
  uint64_t renewals() const;

 private:
  void run();
  void step();  // one acquire-or-renew; caller does not hold mu_

  LeaseStore& store_;
  LeaseSpec spec_;
  std::chrono::milliseconds interval_;
  const Clock& clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<LeaseHandle> handle_;
  bool holding_ = false;
  uint64_t renewals_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

struct LeaseReconcilerConfig {
  // The Service whose endpoints the leases are; slices are named "<name>-leases-<family>-<hash>"
  // in its namespace.
  ObjectName service;
  // When set, the source also delivers this Service (e.g. kube-apiserver's default/kubernetes);
  // otherwise another source provides it.
  std::optional<Service> serviceObject;
  // How often to reconcile when nothing changes (kube-apiserver: 10 s). Removal of a dead
  // registrant's endpoint takes at most its TTL plus one interval.
  std::chrono::milliseconds interval{10000};
  // This process's own lease, if it is itself one of the endpoints (kube-apiserver's case): it
  // is renewed at every reconcile, and while it should exist an empty endpoint set is never
  // published — an empty listing then means the store is wrong, not that nobody is there.
  std::optional<LeaseSpec> self;
  // A lease seen unchanged for this long after its TTL ran out is deleted from the store
  // (LeaseStore::collect), so dead registrants do not pile up as Lease objects. Every observer
  // may do it; the store's preconditions make a live lease safe. 0 = never.
  std::chrono::milliseconds collectAfter{std::chrono::minutes(5)};
  const Clock* clock = nullptr;  // nullptr = Clock::system()
};

// The reconcile algorithm, driven from outside (by LeaseSource's thread, or by a test step by
// step). Not thread-safe: one caller at a time.
//
// Expiry is judged on the observer's monotonic clock: a lease is live while the observer has
// seen its generation change (or first seen it) less than its TTL ago. Time in which the
// observer could not observe (the store unreachable, or the observer's clock jumping forward
// past two intervals, e.g. a suspended VM) does not count against any lease: registrants
// could not renew into an unreachable store either.
class LeaseEndpointReconciler {
 public:
  LeaseEndpointReconciler(LeaseStore& store, LeaseReconcilerConfig config);

  struct Outcome {
    Status status;           // not ok: nothing was published (store down, guard refused)
    bool published = false;  // replaceSlices() was called with a new set
    size_t live = 0;         // live leases seen
  };
  // One pass: renew own lease, list, judge expiry, publish if the slice set changed. The first
  // successful pass also reports synced(kEndpointSlice). Never throws.
  Outcome reconcileOnce(StateSink& sink);
  // Releases the own lease, then reconciles once more (an empty set is allowed now). Later
  // passes no longer renew the own lease. Idempotent.
  Outcome shutdown(StateSink& sink);

  // When the next pass should run at the latest (the earliest lease deadline, or one interval).
  Clock::MonoTime nextDeadline() const;
  // What was last published.
  const std::vector<EndpointSlice>& published() const { return published_; }
  const LeaseReconcilerConfig& config() const { return config_; }

 private:
  struct Observed {
    LeaseRecord record;
    Clock::MonoTime deadline;  // on the observer's clock
  };
  void renewSelf();
  std::vector<EndpointSlice> buildSlices() const;
  void reportProblems(StateSink& sink, const std::vector<LeaseDecodeError>& errors);

  LeaseStore& store_;
  LeaseReconcilerConfig config_;
  const Clock& clock_;
  std::optional<LeaseHandle> selfHandle_;
  bool shuttingDown_ = false;
  std::optional<Clock::MonoTime> lastObservation_;
  std::map<std::string, Observed> observed_;  // by identity
  std::vector<EndpointSlice> published_;
  bool synced_ = false;
  std::set<std::string> problemObjects_;
};

// The reconciler as a sluice::Source: a thread that reconciles every interval, and at once when
// the store reports a change. stop() runs the shutdown pass (own lease released, one more
// reconcile) before it returns.
class LeaseSource final : public Source {
 public:
  // `store` must outlive the source.
  LeaseSource(LeaseStore& store, LeaseReconcilerConfig config);
  ~LeaseSource() override;  // stop()

  std::string name() const override;  // "leases:<store name>"
  // Delivers the Service (if configured) and starts the thread; the first slice set follows
  // from the first successful pass. kFailedPrecondition when already started; kInvalidArgument
  // for a bad own-lease spec.
  Status start(StateSink& sink) override;
  void stop() override;

  // Completed passes, successful or not (for tests waiting on progress).
  uint64_t passes() const;

 private:
  void run();

  LeaseStore& store_;
  LeaseEndpointReconciler reconciler_;
  StateSink* sink_ = nullptr;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool wake_ = false;
  bool stopping_ = false;
  uint64_t passes_ = 0;
  std::thread thread_;
};

}  // namespace sluice
