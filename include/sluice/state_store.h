// sluice/state_store.h — the desired state shared by every source and the sync runner.
//
// StateStore holds one Snapshot behind a mutex. Each source gets its own StateSink from
// sink(name); what a source delivers is owned by that source, so one source's replace*() only
// removes objects it delivered itself (a manifest file and a lease reconciler can feed the
// same store). Nothing counts as ready to program until every attached source has reported
// synced() for both kinds. Every change calls the change callback (the sync runner's wake-up).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sluice/model.h"
#include "sluice/source.h"

namespace sluice {

class StateStore {
 public:
  using Clock = std::chrono::steady_clock;

  StateStore();
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // The sink of source `sourceName`, created on first use; the reference stays valid for the
  // store's life. Attaching a source makes the store unready until that source has synced
  // both kinds. Thread-safe.
  StateSink& sink(const std::string& sourceName);

  // Called after every change, outside the store's lock, from the thread that made it. When
  // setOnChange() returns, no call of the previous callback is running any more.
  void setOnChange(std::function<void()> onChange);

  // At least one source is attached and every attached source has synced both kinds.
  bool ready() const;

  // Runs `fn(Snapshot&)` under the store's lock (sources wait meanwhile) and returns its result.
  template <class Fn>
  auto withSnapshot(Fn&& fn) {
    std::lock_guard lock(mu_);
    return fn(snapshot_);
  }
  // When the oldest change not yet taken arrived (nullopt: none since the last call); the sync
  // runner takes it under withSnapshot() to measure event → commit latency. Caller holds the
  // lock, i.e. call it only inside withSnapshot().
  std::optional<Clock::time_point> takeOldestChangeLocked();
  // Gives back a change time taken by a sync that then failed (same locking rule).
  void restoreOldestChangeLocked(Clock::time_point t);

  // Problems the sources reported, by object ("Service default/web"); cleared objects vanish.
  std::map<std::string, std::vector<Problem>> problems() const;
  // Which source owns an object ("" if none): for status pages and tests.
  std::string serviceOwner(const ObjectName& id) const;
  std::string sliceOwner(const ObjectName& id) const;

 private:
  class SourceSink;
  friend class SourceSink;
  struct SourceState {
    bool servicesSynced = false;
    bool slicesSynced = false;
  };

  // Each of these runs under mu_ and says whether the snapshot changed. `src` is the calling
  // sink's own name (its address is kept as the owner).
  bool upsertService(const std::string& src, Service svc);
  bool removeService(const std::string& src, const ObjectName& id);
  bool upsertSlice(const std::string& src, EndpointSlice slice);
  bool removeSlice(const std::string& src, const ObjectName& id);
  bool replaceServices(const std::string& src, std::vector<Service> all);
  bool replaceSlices(const std::string& src, std::vector<EndpointSlice> all);
  void changed(bool didChange);  // records the change time (under mu_)
  void notify();                 // outside mu_

  using OwnerMap = std::map<ObjectName, const std::string*>;
  // Owner of an object (nullptr: none), `present` saying whether the Snapshot has it.
  const std::string* ownerOf(const OwnerMap& owners, const ObjectName& id, bool present) const;
  void setOwner(OwnerMap& owners, const ObjectName& id, const std::string& src);

  mutable std::mutex mu_;
  Snapshot snapshot_;
  std::map<std::string, std::unique_ptr<SourceSink>> sinks_;
  std::map<std::string, SourceState> sources_;
  // Owner of each object: the name of the source's sink (stable: sinks are never removed), so
  // 10 000 objects do not hold 10 000 copies of a file path. Objects of the first source
  // attached (`defaultOwner_`) have no entry: with one source, the usual case, every object
  // would otherwise cost a map node (2 MB at 10 000 Services). Which Service a slice is filed
  // under is the Snapshot's (sliceService()).
  const std::string* defaultOwner_ = nullptr;
  OwnerMap serviceOwner_;
  OwnerMap sliceOwner_;
  std::map<std::string, std::vector<Problem>> problems_;
  std::optional<Clock::time_point> oldestChange_;
  std::mutex callbackMu_;  // guards onChange_ and is held while it runs
  std::function<void()> onChange_;
};

}  // namespace sluice
