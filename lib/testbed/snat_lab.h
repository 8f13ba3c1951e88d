// snat_lab.h — a reproducible SNAT port-collision experiment (what `sluice-ct lab` runs).
//
//   client, pod1..podN (198.18.1.0/24) ─► node: masquerade [flags] ─► ext server 203.0.113.2
//
// Several client namespaces open connections to one server at the same moment, all from the
// same few source ports; the node source-NATs them to its one external address. Without
// fully-random port selection the node tries to keep each client's port, and when two clients
// with the same port race through it, one entry fails to insert and its packet is dropped.
// The lab reports the node's conntrack counter deltas next to what the clients saw.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include "sluice/conntrack_stats.h"
#include "sluice/model.h"
#include "sluice/status.h"

namespace sluice::testbed {

struct SnatLabOptions {
  uint32_t natFlags = 0;  // NF_NAT_RANGE_* flags of the node's masquerade statement
  int clients = 4;        // client namespaces, 1..20
  int rounds = 20;        // bursts; every client opens `burst` connections per round at once
  int burst = 4;          // parallel connections per client and round (≤ its port range)
  // ip_local_port_range of the clients ("first last"); unset = the kernel's default.
  std::optional<std::pair<uint16_t, uint16_t>> clientPorts = std::pair<uint16_t, uint16_t>{40000, 40003};
  Protocol proto = Protocol::kTCP;  // TCP or UDP
  // How long a client waits for its answer. Below TCP's 1 s initial SYN retransmission, so a
  // SYN the node dropped is a visible failure instead of a 1 s delay.
  std::chrono::milliseconds timeout{400};
  // Rules in a postrouting chain between source NAT (priority 100) and conntrack confirmation
  // (the last postrouting hook). See snat_lab.cpp: they widen the race window so that a
  // 2-CPU test machine shows within seconds what a busy node shows over hours. 0 = none.
  int slowPathRules = 1000;
};

struct SnatLabResult {
  conntrack::Stats before;  // node counters before the first burst
  conntrack::Stats after;   // and after the last
  conntrack::CpuCounters delta;  // after − before, summed over CPUs
  int attempts = 0;
  int answered = 0;
  std::map<std::string, int> failures;  // "timeout", "refused", "client-ports", "error"
  std::string topology;  // what was built, for the report
  std::string ruleText;  // the masquerade rule as nft prints it

  int failed() const { return attempts - answered; }
};

// Builds the topology (removed again before returning), programs the node's masquerade over
// netlink, runs the bursts and returns the counters. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
Result<SnatLabResult> runSnatLab(const SnatLabOptions& options);

}  // namespace sluice::testbed
