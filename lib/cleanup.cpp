#include "sluice/cleanup.h"

#include <fmt/format.h>

namespace sluice {

Status removeProxyTable(const ProxyConfig& cfg, nft::Backend& backend) {
  // add + delete rather than destroy: NFT_MSG_DESTROYTABLE needs kernel 6.3, while adding an
  // existing table is a no-op everywhere, so the pair removes the table or does nothing.
  nft::Transaction tx;
  tx.add(nft::Table{cfg.table(), ""});
  tx.del(nft::Table{cfg.table(), ""});
  Status st = backend.apply(tx);
  if (!st) return st.withContext(fmt::format("removing table {} {}", cfg.family == IPFamily::kV4 ? "ip" : "ip6", cfg.tableName));
  return st;
}

}  // namespace sluice
