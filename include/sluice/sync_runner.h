// sluice/sync_runner.h — the bounded loop that turns desired-state changes into kernel commits.
//
// SyncRunner wakes when the StateStore changes, coalesces everything that arrived meanwhile
// into one DataPlane::sync(), and keeps the table honest:
//  - minSyncPeriod: at most one sync per period (0 = as fast as changes come; changes that
//    arrive while a sync runs are coalesced into the next one);
//  - syncPeriod: periodic verification at least this often: a full sync (whole-table
//    replacement, which also repairs anything edited behind sluice's back), skipped when the
//    ruleset generation shows that nobody has committed since sluice did;
//  - a failed transaction makes the next sync full and is retried with exponential backoff;
//  - nothing is programmed before the store is ready (every source synced both kinds).
// After each successful commit the CommitListeners (drain tracker, UDP conntrack cleanup) see
// the committed state, under the store's lock, on the runner's thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "sluice/dataplane.h"
#include "sluice/state_store.h"

namespace sluice {

struct SyncOptions {
  std::chrono::milliseconds minSyncPeriod{0};
  std::chrono::milliseconds syncPeriod{std::chrono::seconds(30)};  // periodic verification (above)
  std::chrono::milliseconds initialBackoff{100};  // after the first failure; doubles each time
  std::chrono::milliseconds maxBackoff{std::chrono::seconds(30)};
  // Idle work after a full sync: DNAT chains given their count window per commit
  // (DataPlane::widen). A change arriving meanwhile waits for at most one such commit.
  // 0 = never widen (count changes then rewrite rules until the next partial change does).
  size_t widenChains = 1000;
  // Widening starts only after the runner has been idle this long (sources often deliver a
  // burst right after the first sync).
  std::chrono::milliseconds widenAfter{100};
};

// One finished sync attempt, for metrics.
struct SyncReport {
  Status status;
  bool full = false;
  std::chrono::nanoseconds duration{0};  // plan + apply
  size_t operations = 0;
  size_t servicesPlanned = 0;
  // The ruleset generation the commit produced, if the backend knows it (DriftMonitor).
  std::optional<uint32_t> generation;
  // A step of idle widening (DataPlane::widen), not a sync; seen by the sync hooks only.
  bool widening = false;
  size_t narrowChains = 0;  // chains left narrow after this commit
};

// Called on the runner's thread around syncs: `beforeFullSync` right before a full sync
// (whole-table replacement) is planned, `afterSync` when any sync attempt has ended, committed
// or not, after the observer saw it (report.full says which kind). DriftMonitor::syncHooks()
// pauses drift detection with them: a listener makes the kernel build one notification per
// object and element of the batch, ~40% of a large commit (docs/design.md §9).
struct SyncHooks {
  std::function<void()> beforeFullSync;
  std::function<void(const SyncReport& report)> afterSync;
};

// Metrics hooks; called on the runner's thread (or syncOnce()'s caller). Keep them cheap.
class SyncObserver {
 public:
  virtual ~SyncObserver() = default;
  virtual void onSync(const SyncReport& report) { (void)report; }
  // Time from the oldest change a successful sync carried arriving in the store to its commit
  // (kube-proxy's network_programming_duration).
  virtual void onProgrammingLatency(std::chrono::nanoseconds latency) { (void)latency; }
};

// What a successful commit changed.
struct CommitInfo {
  const Snapshot& snapshot;
  const Planner& planner;           // its mirror is now what the kernel has
  const std::set<ObjectName>& changed;  // Services re-planned (all of them after a full sync)
  bool full = false;
};

class CommitListener {
 public:
  virtual ~CommitListener() = default;
  // Runs under the store's lock: copy what is needed and return quickly; do I/O elsewhere.
  virtual void afterCommit(const CommitInfo& info) = 0;
};

class SyncRunner {
 public:
  // `store` and `dataplane` must outlive the runner; `observer` may be null.
  SyncRunner(StateStore& store, DataPlane& dataplane, SyncOptions options = {},
             SyncObserver* observer = nullptr);
  ~SyncRunner();  // stop()
  SyncRunner(const SyncRunner&) = delete;
  SyncRunner& operator=(const SyncRunner&) = delete;

  // Listeners must outlive the runner; add them before start().
  void addListener(CommitListener* listener);
  // Set before start() (or between syncOnce() calls).
  void setSyncHooks(SyncHooks hooks) { hooks_ = std::move(hooks); }

  // Starts the loop on its own thread and hooks the store's change callback. Idempotent.
  void start();
  // Stops the loop and waits for a sync in progress to finish. Idempotent. The table stays
  // as it is: a restarted agent adopts it (see docs/design.md §9).
  void stop();

  // One sync now, on the caller's thread (tests, single-threaded agents): FailedPrecondition
  // if the store is not ready yet, else the sync's status. Must not be mixed with start().
  Status syncOnce();

  // Makes the next sync full and wakes the loop (drift monitor, admin request). Thread-safe.
  void requestFullSync();
  // Wakes the loop for a partial sync (the store's change callback does this).
  void wake();

  struct Stats {
    uint64_t syncs = 0;
    uint64_t fullSyncs = 0;
    uint64_t failures = 0;
    uint64_t widenSteps = 0;   // commits of DataPlane::widen()
    // Periodic full syncs skipped because the ruleset generation had not moved since sluice's
    // last commit (DataPlane::unchangedSinceCommit()).
    uint64_t verifiedUnchanged = 0;
    size_t narrowChains = 0;   // after the last commit: DNAT chains whose count window is not written yet
    std::optional<std::chrono::system_clock::time_point> lastSuccess;
  };
  Stats stats() const;

 private:
  void loop();
  // The sync itself; fills `report`. Returns the sync's status.
  Status runSync(SyncReport& report);
  // One step of idle work (DataPlane::widen). Returns its status.
  Status runWiden();

  StateStore& store_;
  DataPlane& dataplane_;
  SyncOptions options_;
  SyncObserver* observer_;
  std::vector<CommitListener*> listeners_;
  SyncHooks hooks_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = true;  // a change (or the first sync) waits
  bool fullRequested_ = false;
  bool stopping_ = false;
  Stats stats_;
  std::thread thread_;
};

}  // namespace sluice
