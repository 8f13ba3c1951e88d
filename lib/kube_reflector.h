// kube_reflector.h (private) — LIST + WATCH of one resource type, kept alive for ever.
//
// The loop is client-go's Reflector (docs/spec kubernetes-api.md §1.6), on HTTP/1.1:
//  1. LIST with limit/continue (consistent read first), hand the complete set to the handler;
//  2. WATCH from the list's RV with allowWatchBookmarks and a random timeoutSeconds in
//     [minWatchTimeout, 2×minWatchTimeout); a normal end re-watches from the last RV;
//  3. 410 (ERROR event or HTTP status) → relist from the last RV; if that LIST answers 410 or
//     504 ResourceVersionTooLarge → relist with RV "" (consistent read);
//  4. the watch liveness lease: no byte (event or bookmark) within `lease` → the stream is
//     presumed dead (half-open TCP, stuck server), dropped, and the next server is tried;
//  5. an unreachable server → next server URL, exponential backoff with full jitter.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/http_client.h"
#include "sluice/kube_config.h"
#include "sluice/model.h"

namespace sluice::kube {

// The servers of one cluster and which one is in use, shared by the reflectors of a source so
// that a failover found by one is followed by the other.
class ServerSet {
 public:
  explicit ServerSet(std::vector<http::Url> servers) : servers_(std::move(servers)) {}
  // The server to use and its index.
  std::pair<http::Url, size_t> current() const;
  // Moves on from `index` (no-op when another reflector already did). True when it moved.
  bool failover(size_t index);
  size_t size() const { return servers_.size(); }

 private:
  std::vector<http::Url> servers_;
  mutable std::mutex mu_;
  size_t current_ = 0;
};

struct ReflectorOptions {
  std::string collectionPath;  // "/api/v1/services"
  std::string labelSelector;   // unencoded
  std::string fieldSelector;   // unencoded, e.g. "metadata.name=node-1"
  size_t pageSize = 500;
  std::chrono::milliseconds lease{75000};  // > the apiserver's 1 min bookmark period
  std::chrono::milliseconds minWatchTimeout{300000};
  std::chrono::milliseconds requestTimeout{30000};
  std::chrono::milliseconds connectTimeout{10000};
  std::chrono::milliseconds backoffInitial{800};
  std::chrono::milliseconds backoffMax{30000};
  // For a watch that is optional to its user (the Node): the first failure of a run is logged
  // as a warning followed by `quietNote`, the retries that follow only at debug level, until a
  // LIST or a watch succeeds again. Empty: every failure is a warning.
  std::string quietNote;
};

struct ReflectorStats {
  uint64_t lists = 0;          // complete LISTs delivered
  uint64_t relists = 0;        // LISTs after the first
  uint64_t watches = 0;        // WATCH requests started
  uint64_t events = 0;         // ADDED/MODIFIED/DELETED delivered
  uint64_t bookmarks = 0;
  uint64_t expired = 0;        // 410s seen (watch ERROR event or LIST status)
  uint64_t leaseExpiries = 0;  // watches dropped for silence
  uint64_t failovers = 0;      // moves to the next server URL
  uint64_t errors = 0;         // failed requests of any kind
};

class ReflectorHandler {
 public:
  virtual ~ReflectorHandler() = default;
  // The complete set after a (re)list.
  virtual void replace(std::vector<nlohmann::json> items) = 0;
  // "ADDED" / "MODIFIED" / "DELETED" with the object.
  virtual void apply(const std::string& type, const nlohmann::json& object) = 0;

  // A handler of EndpointSlices that answers true gets the watch events the stream decoder
  // could decode on its fast path (WatchObjects::kEndpointSlices) as model values through
  // applySlice; every other event still comes through apply().
  virtual bool wantsSlices() const { return false; }
  virtual void applySlice(const std::string& type, EndpointSlice slice);
};

class Reflector {
 public:
  Reflector(std::shared_ptr<ServerSet> servers, std::shared_ptr<Credentials> credentials,
            ReflectorOptions options, ReflectorHandler& handler);
  ~Reflector();
  void start();
  void stop();  // idempotent; returns when no handler call is running or will run
  ReflectorStats stats() const;
  // The query string of a LIST or WATCH (exposed for tests).
  std::string query(bool watch, const std::string& rv, const std::string& cont,
                    long timeoutSeconds) const;

 private:
  enum class Outcome { kEnded, kExpired, kLeaseExpired, kFailed };
  void run();
  // LIST, all pages. Returns the list RV, or an error whose code says what happened.
  Result<std::string> list(const std::string& rv, Outcome& outcome);
  Outcome watch(std::string& rv);
  Result<http::Response> roundTrip(const std::string& target, Outcome& outcome);
  http::Connection& newConnection(const http::Url& url);
  void dropConnection();
  bool sleepBackoff();
  void noteFailure(const Status& status, size_t serverIndex, bool unreachable);
  void noteSuccess();

  std::shared_ptr<ServerSet> servers_;
  std::shared_ptr<Credentials> credentials_;
  ReflectorOptions options_;
  ReflectorHandler& handler_;

  std::thread thread_;
  mutable std::mutex mu_;  // guards stopping_, conn_, stats_
  std::condition_variable wake_;
  bool stopping_ = false;
  std::unique_ptr<http::Connection> conn_;
  ReflectorStats stats_;
  std::chrono::milliseconds backoff_{0};
  bool failing_ = false;  // a failure was logged and nothing succeeded since (guarded by mu_)
};

// Percent-encodes a query value (RFC 3986 unreserved characters stay).
std::string queryEscape(std::string_view value);

}  // namespace sluice::kube
