#include "sluice/dataplane.h"

namespace sluice {

DataPlane::DataPlane(ProxyConfig cfg, nft::Backend& backend) : planner_(std::move(cfg)), backend_(backend) {}

DataPlane::SyncResult DataPlane::sync(Snapshot& snapshot) {
  const auto t0 = std::chrono::steady_clock::now();
  auto dirty = snapshot.takeDirty();
  const bool full = fullSyncPending();
  return apply(full ? planner_.planFull(snapshot) : planner_.planPartial(snapshot, dirty), t0);
}

bool DataPlane::unchangedSinceCommit() {
  if (fullSyncPending() || !lastGeneration_) return false;
  const auto now = backend_.currentGeneration();
  return now && *now == *lastGeneration_;
}

DataPlane::SyncResult DataPlane::widen(size_t maxChains) {
  if (fullSyncPending() || planner_.narrowChains() == 0) return {};
  return apply(planner_.planWiden(maxChains), std::chrono::steady_clock::now());
}

DataPlane::SyncResult DataPlane::apply(Planner::Plan&& plan, std::chrono::steady_clock::time_point t0) {
  using Clock = std::chrono::steady_clock;
  SyncResult r;
  r.full = plan.full;
  auto t1 = Clock::now();
  r.planTime = t1 - t0;
  r.servicesPlanned = plan.servicesPlanned;
  r.operations = plan.tx.size();
  r.status = backend_.apply(plan.tx);
  r.applyTime = Clock::now() - t1;
  if (!r.status) {
    // Atomic: nothing of the plan reached the kernel. Replace everything next time, which
    // also re-plans the Services whose changes this attempt carried.
    needFull_ = true;
    lastGeneration_.reset();
    return r;
  }
  r.generation = backend_.lastGeneration();
  // An empty batch commits no generation; the last one still describes the table then.
  if (r.generation) lastGeneration_ = r.generation;
  planner_.commit(std::move(plan));
  needFull_ = false;
  return r;
}

}  // namespace sluice
