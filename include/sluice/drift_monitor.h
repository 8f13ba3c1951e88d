// sluice/drift_monitor.h — notices when someone else changes sluice's tables.
//
// DriftMonitor listens to the kernel's nftables ruleset notifications (netlink multicast group
// NFNLGRP_NFTABLES) in one network namespace. Every notification names the table it concerns
// and carries the netlink port id of the socket whose batch caused it; one that concerns a
// watched table and comes from any other socket (`nft flush ruleset`, `nft delete rule …`,
// another agent) is drift, and the callback (normally SyncRunner::requestFullSync) is called,
// at most once per transaction. Lost notifications (ENOBUFS) count as drift as well: the
// receive buffer is enlarged and the tables repaired, since what was missed is unknown.
//
// Listening is not free: while anyone listens, the kernel builds a notification for every
// object and element of every batch, sluice's own whole-table replacements included (~40 % of
// a 100 000-element commit). So the monitor can pause around sluice's own full syncs
// (syncHooks()): it leaves the group, and on resume compares the ruleset generation with the
// one it read before leaving; a commit in between that is not one of sluice's own is treated
// as drift of every watched table (docs/design.md §9).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sluice/nft/objects.h"
#include "sluice/status.h"
#include "sluice/sync_runner.h"

namespace sluice {

struct DriftOptions {
  std::string netns;  // "" = the caller's namespace
  // The tables to watch (ProxyConfig::table() of each IP family). Use one monitor per
  // namespace for all of them: a pause only saves the kernel's work if nobody else listens.
  std::vector<nft::TableRef> tables;
  // Port ids of sluice's own batch sockets (NetlinkBackend::portId()); notifications caused
  // by them are ignored. Called on the monitor's thread; must be thread-safe.
  std::function<bool(uint32_t portId)> isOwnPort;
};

struct DriftEvent {
  // The table someone else changed; unset when that is not known (notifications were lost,
  // or something committed while the monitor was paused): every watched table may have been.
  std::optional<nft::TableRef> table;
  std::string reason;
};

class DriftMonitor {
 public:
  // Subscribes in options.netns. `onDrift` runs on the monitor's thread.
  // Errors: PermissionDenied/NotFound as for any netlink socket in a namespace.
  static Result<std::unique_ptr<DriftMonitor>> open(DriftOptions options,
                                                    std::function<void(const DriftEvent&)> onDrift);
  ~DriftMonitor();  // stop()
  DriftMonitor(const DriftMonitor&) = delete;
  DriftMonitor& operator=(const DriftMonitor&) = delete;

  void start();  // idempotent
  void stop();   // idempotent; returns when the thread has ended

  // Leaves the notification group until the matching resume(); pauses nest (two families'
  // full syncs may overlap). Before leaving, reads the ruleset generation. Thread-safe.
  // Returns false if the monitor keeps listening instead: the generation could not be read,
  // or the previous pause saw foreign commits — the full sync that repairs those is heard,
  // not paused, so a neighbour that commits all the time cannot cause endless full syncs.
  bool pause();
  // Ends a pause(). The last one rejoins the group and reads the generation again; every
  // commit in between must have been noted with noteOwnCommit(), else onDrift (table unset)
  // follows on the monitor's thread. Thread-safe; a resume() without pause() does nothing.
  void resume();
  // Records a generation sluice itself committed (SyncReport::generation of every family's
  // syncs, partial ones too). Thread-safe; only kept while paused.
  void noteOwnCommit(uint32_t generation);
  // pause() before every full sync, noteOwnCommit() after every commit, resume() after
  // every full sync. The monitor must outlive the runner.
  SyncHooks syncHooks();

  uint64_t driftsDetected() const { return drifts_.load(); }

 private:
  struct Impl;
  DriftMonitor(DriftOptions options, std::function<void(const DriftEvent&)> onDrift,
               std::unique_ptr<Impl> impl);
  void loop();
  void report(const DriftEvent& event);

  DriftOptions options_;
  std::function<void(const DriftEvent&)> onDrift_;
  std::unique_ptr<Impl> impl_;
  std::atomic<uint64_t> drifts_{0};
  std::thread thread_;
};

}  // namespace sluice
