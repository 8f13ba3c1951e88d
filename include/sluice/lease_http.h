// sluice/lease_http.h — a LeaseStore served over HTTP, and the client that uses it.
//
// This is how the embedded store reaches registrants outside the process: sluiced (or any node
// agent embedding HttpServer) serves its EmbeddedLeaseStore, and a process on the node runs a
// LeaseRegistrant over an HttpLeaseStore. The four LeaseStore calls, one route each:
//   PUT    /v1/leases/<identity>            body: record (address, ports, ttlMs, renewTimeMs…)
//                                           → 200 {"identity","leaseId","generation","ttlMs"}
//   POST   /v1/leases/<identity>/renew      body: {"leaseId","renewTimeMs"} → 200 {"generation"} | 404
//   DELETE /v1/leases/<identity>?lease=<leaseId>                            → 200 (also if gone)
//   GET    /v1/leases                                                       → {"revision","leases":[…]}
// Records are the JSON of the etcd store's values (docs/design.md §10). Errors answer
// {"error": "..."} with 400 (bad spec or body), 401 (token), 404 (lease gone), 503 (store).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sluice/http_server.h"
#include "sluice/lease.h"

namespace sluice {

// Registers the routes on `server` (before it starts). Every route requires
// "Authorization: Bearer <bearerToken>" (compared in constant time); an empty token is refused
// with kInvalidArgument — the API lets anyone who reaches it publish endpoints, so it is never
// open. `store` must outlive the server's serving.
Status serveLeaseApi(HttpServer& server, LeaseStore& store, const std::string& bearerToken);

struct HttpLeaseStoreConfig {
  std::string url;    // "http://127.0.0.1:10259" (the server's base URL)
  std::string token;  // the bearer token
  std::chrono::milliseconds requestTimeout{2000};
};

// A LeaseStore whose calls go to a serveLeaseApi server. No change notifications (list() is
// one GET); transport failures are kUnavailable, 401 kPermissionDenied.
class HttpLeaseStore final : public LeaseStore {
 public:
  static Result<std::unique_ptr<HttpLeaseStore>> create(HttpLeaseStoreConfig config);
  ~HttpLeaseStore() override;

  std::string name() const override;  // "http:<url>"
  Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime renewTime) override;
  Status renew(LeaseHandle& handle, Clock::WallTime renewTime) override;
  Status release(const LeaseHandle& handle) override;
  Result<LeaseListing> list() override;
  void setOnChange(std::function<void()> onChange) override { (void)onChange; }

 private:
  struct Impl;
  explicit HttpLeaseStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
