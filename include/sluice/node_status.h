// sluice/node_status.h — what a node proxy reports about itself, as JSON and as a small HTML
// page (the /status endpoints of sluiced; node agents can serve the same).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

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
};

std::string statusJson(const NodeStatus& status);
// A self-contained page (no scripts, no external resources); every value is HTML-escaped.
std::string statusHtml(const NodeStatus& status);
std::string htmlEscape(const std::string& text);

}  // namespace sluice
