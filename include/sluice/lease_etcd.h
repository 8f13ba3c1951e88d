// sluice/lease_etcd.h — the lease store on etcd v3, through etcd's JSON gateway (/v3/...).
//
// Layout: one key per lease, `<prefix><identity>`, attached to an etcd lease of the same TTL
// (rounded up to whole seconds; etcd may raise it to its minimum), value a small JSON record
// (address, ports, generation, renewTime). acquire = grant + put; renew = keepalive + put with
// the generation bumped (so watchers see every renewal); release = revoke (etcd deletes the key).
// Observers read a cache kept by range + watch from the range's revision: a watch that breaks
// resumes from the last revision seen; one whose revision was compacted ranges again.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/http_client.h"
#include "sluice/lease.h"

namespace sluice {

struct EtcdLeaseStoreConfig {
  std::string endpoint;  // "https://10.0.0.1:2379", "http://127.0.0.1:2379"
  std::string prefix;    // "/sluice/leases/demo/api/": keys are prefix + identity
  std::chrono::milliseconds requestTimeout{2000};
  // Pause between attempts to re-establish the watch after it broke.
  std::chrono::milliseconds retryInterval{200};
  // For https: trust (the CA), and the client certificate etcd asks for with
  // --client-cert-auth (as kube-apiserver's --etcd-cafile/--etcd-certfile/--etcd-keyfile).
  http::TlsConfig tls;
};

class EtcdLeaseStore final : public LeaseStore {
 public:
  // Checks the config (kInvalidArgument); does not contact etcd yet. The watch starts with the
  // first list(), so a process that only registers never watches.
  static Result<std::unique_ptr<EtcdLeaseStore>> create(EtcdLeaseStoreConfig config);
  ~EtcdLeaseStore() override;  // stops the watch

  std::string name() const override;  // "etcd:127.0.0.1:2379/sluice/leases/demo/api/"
  Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime renewTime) override;
  Status renew(LeaseHandle& handle, Clock::WallTime renewTime) override;
  Status release(const LeaseHandle& handle) override;
  // From the watch cache. kUnavailable until the first range succeeded and while the watch is
  // broken (etcd unreachable, restarting): a listing that may miss changes is not offered.
  Result<LeaseListing> list() override;
  void setOnChange(std::function<void()> onChange) override;

  struct Stats {
    uint64_t ranges = 0;         // full reads of the prefix (first, after compaction, …)
    uint64_t watches = 0;        // watch streams created
    uint64_t compactions = 0;    // watches cancelled because their revision was compacted
    int64_t revision = 0;        // the cache's revision
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit EtcdLeaseStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
