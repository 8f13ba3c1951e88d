// sluice/drift_monitor.h — notices when someone else changes sluice's table.
//
// DriftMonitor listens to the kernel's nftables ruleset notifications (netlink multicast group
// NFNLGRP_NFTABLES) in one network namespace. Every notification names the table it concerns
// and carries the netlink port id of the socket whose batch caused it; one that concerns
// sluice's table and comes from any other socket (`nft flush ruleset`, `nft delete rule …`,
// another agent) is drift, and the callback (normally SyncRunner::requestFullSync) is called,
// at most once per transaction. Lost notifications (ENOBUFS) count as drift as well: the
// receive buffer is enlarged and the table repaired, since what was missed is unknown.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "sluice/nft/objects.h"
#include "sluice/status.h"

namespace sluice {

struct DriftOptions {
  std::string netns;     // "" = the caller's namespace
  nft::TableRef table;   // the table to watch (ProxyConfig::table())
  // Port ids of sluice's own batch sockets (NetlinkBackend::portId()); notifications caused
  // by them are ignored. Called on the monitor's thread; must be thread-safe.
  std::function<bool(uint32_t portId)> isOwnPort;
};

class DriftMonitor {
 public:
  // Subscribes in options.netns. `onDrift(reason)` runs on the monitor's thread.
  // Errors: PermissionDenied/NotFound as for any netlink socket in a namespace.
  static Result<std::unique_ptr<DriftMonitor>> open(DriftOptions options,
                                                    std::function<void(const std::string&)> onDrift);
  ~DriftMonitor();  // stop()
  DriftMonitor(const DriftMonitor&) = delete;
  DriftMonitor& operator=(const DriftMonitor&) = delete;

  void start();  // idempotent
  void stop();   // idempotent; returns when the thread has ended

  uint64_t driftsDetected() const { return drifts_.load(); }

 private:
  struct Impl;
  DriftMonitor(DriftOptions options, std::function<void(const std::string&)> onDrift,
               std::unique_ptr<Impl> impl);
  void loop();

  DriftOptions options_;
  std::function<void(const std::string&)> onDrift_;
  std::unique_ptr<Impl> impl_;
  std::atomic<uint64_t> drifts_{0};
  std::thread thread_;
};

}  // namespace sluice
