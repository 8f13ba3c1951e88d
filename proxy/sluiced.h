// sluiced.h — the node proxy daemon's wiring (private to the program; everything reusable
// lives in the library).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "sluice/proxy_options.h"

namespace sluiced {

// Exit codes: 0 clean stop, 1 runtime failure (cannot open netlink, cannot bind), 2 bad usage
// or configuration.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Runs the daemon until SIGTERM/SIGINT; SIGHUP re-resolves `given` (the command-line flags,
// so the config file is read again) and applies what can change live.
int runDaemon(sluice::ProxyOptions options, std::vector<std::pair<std::string, std::string>> given);

// --cleanup: removes sluice's tables for every family and returns the exit code.
int runCleanup(const sluice::ProxyOptions& options);

}  // namespace sluiced
