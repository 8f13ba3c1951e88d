// lease_json.h (private) — a lease record as JSON, shared by the etcd store (its key values)
// and the embedded store's HTTP API (request and response bodies):
//   {"identity","address","ports":[{"name","protocol","port"}],"nodeName","zone","ttlMs",
//    "generation","renewTimeMs"}
#pragma once

#include <nlohmann/json.hpp>

#include "sluice/lease.h"

namespace sluice::leasejson {

nlohmann::json encode(const LeaseSpec& spec, uint64_t generation, Clock::WallTime renewTime);

// The record in `j` (leaseId is left 0: the caller knows where it comes from). On failure
// `problem.field`/`reason` say what is wrong; `problem.object` is left to the caller.
Result<LeaseRecord> decode(const nlohmann::json& j, Problem& problem);

int64_t wallMillis(Clock::WallTime t);
Clock::WallTime fromWallMillis(int64_t ms);

}  // namespace sluice::leasejson
