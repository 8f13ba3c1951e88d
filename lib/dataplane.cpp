#include "sluice/dataplane.h"

namespace sluice {

DataPlane::DataPlane(ProxyConfig cfg, nft::Backend& backend) : planner_(std::move(cfg)), backend_(backend) {}

DataPlane::SyncResult DataPlane::sync(Snapshot& snapshot) {
  using Clock = std::chrono::steady_clock;
  SyncResult r;
  auto t0 = Clock::now();
  auto dirty = snapshot.takeDirty();
  r.full = needFull_ || !planner_.hasCommitted();
  Planner::Plan plan = r.full ? planner_.planFull(snapshot) : planner_.planPartial(snapshot, dirty);
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
    return r;
  }
  r.generation = backend_.lastGeneration();
  planner_.commit(std::move(plan));
  needFull_ = false;
  return r;
}

}  // namespace sluice
