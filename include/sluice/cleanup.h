// sluice/cleanup.h — removing what a sluice proxy programmed (kube-proxy --cleanup).
#pragma once

#include "sluice/nft/backend.h"
#include "sluice/planner.h"

namespace sluice {

// Removes `cfg`'s table (e.g. `ip sluice`) in one atomic batch; every chain, set and rule in it
// goes with it. Succeeds when the table did not exist. Touches no other table.
Status removeProxyTable(const ProxyConfig& cfg, nft::Backend& backend);

}  // namespace sluice
