// sluice/dataplane.h — the facade a node agent drives: desired state in, kernel programmed.
//
// DataPlane owns the Planner's mirror of what was committed. sync() plans a partial update for
// the Services the Snapshot marked dirty (or the whole table when needed), applies it on the
// backend, and adopts the new mirror only if the backend succeeded. A failure leaves the
// mirror as it was (the transaction was atomic) and makes the next sync replace the table.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "sluice/model.h"
#include "sluice/nft/backend.h"
#include "sluice/planner.h"

namespace sluice {

class DataPlane {
 public:
  // `backend` must outlive the DataPlane.
  DataPlane(ProxyConfig cfg, nft::Backend& backend);

  struct SyncResult {
    Status status;
    bool full = false;
    size_t servicesPlanned = 0;
    size_t operations = 0;
    std::chrono::nanoseconds planTime{0};
    std::chrono::nanoseconds applyTime{0};
    // The ruleset generation the commit produced (nft::Backend::lastGeneration()), if known.
    std::optional<uint32_t> generation;
  };

  // Programs what changed in `snapshot` since the last sync (consumes its dirty set).
  // Never throws; a failed sync is retried in full by the next call.
  SyncResult sync(Snapshot& snapshot);
  // Writes the count windows of up to `maxChains` DNAT chains that a full sync left narrow
  // (Planner::planWiden): idle work, so that later endpoint count changes are element-only.
  // Nothing to do (operations == 0) when none is narrow or a full sync is pending.
  SyncResult widen(size_t maxChains);
  // DNAT chains still narrow (0 when count gates are off).
  size_t narrowChains() const { return fullSyncPending() ? 0 : planner_.narrowChains(); }
  // Makes the next sync replace the whole table (periodic verification, drift).
  void requestFullSync() { needFull_ = true; }
  // Whether the next sync() replaces the whole table.
  bool fullSyncPending() const { return needFull_ || !planner_.hasCommitted(); }
  // Whether the kernel provably holds what the last commit left: the ruleset generation has not
  // moved since (no commit by anyone in the namespace). False when the backend cannot tell.
  bool unchangedSinceCommit();

  const Planner& planner() const { return planner_; }
  std::map<ObjectName, std::vector<Problem>> problems() const { return planner_.problems(); }

 private:
  // Applies `plan` (planning began at t0) and adopts it if the backend took it.
  SyncResult apply(Planner::Plan&& plan, std::chrono::steady_clock::time_point t0);

  Planner planner_;
  nft::Backend& backend_;
  std::optional<uint32_t> lastGeneration_;  // of the last commit that changed something
  bool needFull_ = true;
};

}  // namespace sluice
