// sluice/node_status.h — what a node proxy reports about itself, as JSON and as a small HTML
// page (the /status endpoints of sluiced; node agents can serve the same).
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sluice/drain_tracker.h"
#include "sluice/healthcheck.h"
#include "sluice/ip.h"
#include "sluice/model.h"

namespace sluice {

struct FamilySyncStatus {
  IPFamily family = IPFamily::kV4;
  uint64_t syncs = 0;
  uint64_t failures = 0;
  bool lastOk = false;
  bool lastFull = false;
  std::string lastError;
  std::chrono::system_clock::time_point lastAttempt;
  std::chrono::system_clock::time_point lastSuccess;
  double lastDurationSeconds = 0;
  size_t lastOperations = 0;
  size_t services = 0;
  size_t endpoints = 0;        // endpoint entries in the desired state of this family
  uint64_t driftRepairs = 0;   // foreign edits of the table noticed (each forces a full sync)
};

struct NodeStatus {
  std::string nodeName;
  std::string version;
  std::string source;
  std::string netns;
  std::chrono::system_clock::time_point started;
  std::chrono::system_clock::time_point now;
  bool healthy = true;
  bool nodeEligible = true;
  std::vector<FamilySyncStatus> families;
  std::vector<Problem> problems;
  std::map<ObjectName, ServiceHealth> healthCheckNodePorts;
  // Where desired state comes from, and whether each source has delivered everything once.
  struct SourceStatus {
    std::string name;
    bool synced = false;
    std::string detail;  // e.g. the Kubernetes source's counters
  };
  std::vector<SourceStatus> sources;
  // This node's Node object, when the source watches it (the Kubernetes source).
  struct NodeWatch {
    bool present = false;  // seen, and not deleted since
    bool deletionPending = false;
    bool toBeDeleted = false;  // the cluster autoscaler's taint
    std::string zone;          // what topology hints use
  };
  std::optional<NodeWatch> nodeWatch;
  // Endpoints that stopped receiving new connections and whose flows are still counted.
  std::vector<DrainingEndpoint> draining;
};

std::string statusJson(const NodeStatus& status);
// A self-contained page (no scripts, no external resources); every value is HTML-escaped.
std::string statusHtml(const NodeStatus& status);
std::string htmlEscape(const std::string& text);

}  // namespace sluice
