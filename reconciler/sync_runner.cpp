#include "sluice/sync_runner.h"

#include <algorithm>

#include <spdlog/spdlog.h>

namespace sluice {

SyncRunner::SyncRunner(StateStore& store, DataPlane& dataplane, SyncOptions options,
                       SyncObserver* observer)
    : store_(store), dataplane_(dataplane), options_(options), observer_(observer) {}

SyncRunner::~SyncRunner() { stop(); }

void SyncRunner::addListener(CommitListener* listener) { listeners_.push_back(listener); }

void SyncRunner::start() {
  {
    std::lock_guard lock(mu_);
    if (thread_.joinable()) return;
    stopping_ = false;
    pending_ = true;  // changes may have arrived while stopped, without a wake-up
    thread_ = std::thread([this] { loop(); });
  }
  // Outside mu_: the store calls wake() (which takes mu_) while holding its callback lock.
  store_.setOnChange([this] { wake(); });
}

void SyncRunner::stop() {
  {
    std::lock_guard lock(mu_);
    if (!thread_.joinable()) return;
    stopping_ = true;
  }
  store_.setOnChange(nullptr);
  cv_.notify_all();
  thread_.join();
}

void SyncRunner::wake() {
  {
    std::lock_guard lock(mu_);
    pending_ = true;
  }
  cv_.notify_all();
}

void SyncRunner::requestFullSync() {
  {
    std::lock_guard lock(mu_);
    fullRequested_ = true;
    pending_ = true;
  }
  cv_.notify_all();
}

SyncRunner::Stats SyncRunner::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

Status SyncRunner::syncOnce() {
  {
    std::lock_guard lock(mu_);
    pending_ = false;
  }
  SyncReport report;
  return runSync(report);
}

Status SyncRunner::runSync(SyncReport& report) {
  if (!store_.ready())
    return Status(Code::kFailedPrecondition, "not every source has synced yet; nothing programmed");
  {
    std::lock_guard lock(mu_);
    if (std::exchange(fullRequested_, false)) dataplane_.requestFullSync();
  }
  const bool full = dataplane_.fullSyncPending();
  if (full && hooks_.beforeFullSync) hooks_.beforeFullSync();
  DataPlane::SyncResult r;
  std::optional<StateStore::Clock::time_point> oldest;
  store_.withSnapshot([&](Snapshot& snap) {
    oldest = store_.takeOldestChangeLocked();
    // The dirty set is consumed by sync(); listeners need it afterwards.
    std::set<ObjectName> changed = snap.dirty();
    r = dataplane_.sync(snap);
    if (!r.status) return;
    if (r.full) {
      changed.clear();
      for (const auto& [id, _] : snap.services()) changed.insert(id);
    }
    CommitInfo info{snap, dataplane_.planner(), changed, r.full};
    for (auto* l : listeners_) l->afterCommit(info);
  });
  const auto committed = StateStore::Clock::now();
  report.status = r.status;
  report.full = full;  // what the hooks were told; sync() decides by the same test
  report.duration = r.planTime + r.applyTime;
  report.operations = r.operations;
  report.servicesPlanned = r.servicesPlanned;
  report.generation = r.generation;
  {
    std::lock_guard lock(mu_);
    ++stats_.syncs;
    if (r.full) ++stats_.fullSyncs;
    stats_.narrowChains = dataplane_.narrowChains();
    if (!r.status) {
      ++stats_.failures;
      // The changes this attempt carried are re-planned by the full retry; keep their age.
      pending_ = true;
    } else {
      stats_.lastSuccess = std::chrono::system_clock::now();
    }
  }
  if (!r.status) {
    spdlog::warn("sync failed ({}), next sync replaces the whole table: {}",
                 r.full ? "full" : "partial", r.status.toString());
    if (oldest) {
      // Put the change time back so the eventual commit reports the whole latency.
      store_.withSnapshot([&](Snapshot&) { store_.restoreOldestChangeLocked(*oldest); });
    }
  }
  if (observer_) {
    observer_->onSync(report);
    if (r.status && oldest) observer_->onProgrammingLatency(committed - *oldest);
  }
  if (hooks_.afterSync) hooks_.afterSync(report);
  return r.status;
}

Status SyncRunner::runWiden() {
  const auto r = dataplane_.widen(options_.widenChains);
  SyncReport report;
  report.status = r.status;
  report.duration = r.planTime + r.applyTime;
  report.operations = r.operations;
  report.servicesPlanned = r.servicesPlanned;
  report.generation = r.generation;
  report.widening = true;
  report.narrowChains = dataplane_.narrowChains();
  {
    std::lock_guard lock(mu_);
    ++stats_.widenSteps;
    stats_.narrowChains = dataplane_.narrowChains();
    if (!r.status) {
      ++stats_.failures;
      pending_ = true;  // the next sync replaces the table (DataPlane::sync)
    }
  }
  if (!r.status)
    spdlog::warn("widening count windows failed, next sync replaces the whole table: {}", r.status.toString());
  else
    spdlog::debug("count gates: chains of {} Services gated ({} operations) in {:.3f} ms, {} chains left",
                  r.servicesPlanned, r.operations, std::chrono::duration<double, std::milli>(report.duration).count(),
                  dataplane_.narrowChains());
  // The drift monitor must know this commit is sluice's own.
  if (hooks_.afterSync) hooks_.afterSync(report);
  return r.status;
}

void SyncRunner::loop() {
  using Clock = std::chrono::steady_clock;
  auto lastSync = Clock::time_point::min();
  auto lastFull = Clock::now();
  auto backoff = options_.initialBackoff;
  // When a failed sync may be retried (min() = no retry pending).
  auto retryAt = Clock::time_point::min();
  std::unique_lock lock(mu_);
  while (!stopping_) {
    auto now = Clock::now();
    auto fullDue = lastFull + options_.syncPeriod;
    // Earliest moment the next sync may start.
    auto notBefore = lastSync == Clock::time_point::min() ? now : lastSync + options_.minSyncPeriod;
    notBefore = std::max(notBefore, retryAt);
    bool want = pending_ || fullRequested_ || now >= fullDue;
    if (!want && options_.widenChains > 0 && stats_.narrowChains > 0 && now >= retryAt) {
      // Idle: a step of widening, then look for changes again.
      if (now < lastSync + options_.widenAfter) {
        cv_.wait_until(lock, lastSync + options_.widenAfter);
        continue;
      }
      lock.unlock();
      const Status st = runWiden();
      lock.lock();
      if (!st) retryAt = Clock::now() + backoff;
      continue;
    }
    if (!want) {
      cv_.wait_until(lock, fullDue);
      continue;
    }
    if (now < notBefore) {
      cv_.wait_until(lock, notBefore, [&] { return stopping_; });
      continue;
    }
    if (now >= fullDue && !pending_ && !fullRequested_ && dataplane_.unchangedSinceCommit()) {
      // Periodic verification by generation: nobody committed since sluice did, so the table
      // is what sluice left and rebuilding it would change nothing.
      ++stats_.verifiedUnchanged;
      lastFull = now;
      continue;
    }
    if (now >= fullDue) fullRequested_ = true;
    pending_ = false;
    lock.unlock();
    SyncReport report;
    Status st = runSync(report);
    lock.lock();
    lastSync = Clock::now();
    if (st.code() == Code::kFailedPrecondition && report.status.isOk()) {
      // Not ready: the store wakes us when a source syncs. Nothing to retry, and the
      // periodic full sync starts counting from the first real one.
      retryAt = Clock::time_point::min();
      lastFull = lastSync;
      continue;
    }
    if (!st) {
      retryAt = lastSync + backoff;
      backoff = std::min(backoff * 2, options_.maxBackoff);
      pending_ = true;
    } else {
      retryAt = Clock::time_point::min();
      backoff = options_.initialBackoff;
      if (report.full) lastFull = lastSync;
    }
  }
}

}  // namespace sluice
