// sluice/netns.h — running code inside another network namespace.
//
// Sockets keep the namespace they were created in, so a netlink or conntrack socket opened
// through runInNetns() talks to that namespace for its whole life, from any thread.
#pragma once

#include <functional>
#include <string>

#include "sluice/status.h"

namespace sluice {

// Resolves "NAME" (under /run/netns), "/path/to/ns" or a PID ("1234" → /proc/1234/ns/net).
std::string netnsPath(const std::string& spec);

// Runs `fn` on a short-lived thread that has joined the namespace `spec` ("" = current one),
// and waits for it. The caller's thread never changes namespace.
Status runInNetns(const std::string& spec, const std::function<void()>& fn);

// Reads a whole file as seen from inside namespace `spec`: /proc/sys/net/... resolves against
// the reading thread's network namespace, and /proc/net/... is read through
// /proc/thread-self/net (/proc/net itself follows the process, not the thread). NotFound if the
// file does not exist.
Result<std::string> readFileInNetns(const std::string& spec, const std::string& path);

}  // namespace sluice
