// apiserver.h — a test double of kube-apiserver over real sockets (HTTP/1.1, optional TLS).
//
// Objects are stored generically by resource (group/version/resource), so any JSON kind can be
// served: Services, EndpointSlices, Endpoints and coordination.k8s.io Leases are registered by
// default. Behaviour follows docs/spec (kubernetes-api.md §1, §5): one integer resourceVersion
// counter, LIST with limit/continue (tokens expire → 410), WATCH with synthetic ADDEDs for an
// RV-less watch, exact replay from an RV, BOOKMARKs carrying the typed empty object,
// timeoutSeconds, the 410 ERROR event once history is compacted, 504 for a future RV, the
// label-selector syntax kube-proxy uses, the generic field selectors (metadata.name,
// metadata.namespace), cluster-scoped Nodes, bearer-token auth (401/403 Status bodies), and
// create/update (resourceVersion precondition → 409)/delete.
//
// Fault knobs: cut every watch in the middle of an event, split events across chunks, stall
// watches without closing, stop listening (connections refused) and listen again.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice::testing {

// Polls `pred` every 5 ms until it holds or `limit` passed; returns its last value.
bool eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds limit = std::chrono::milliseconds(5000));

struct ApiResource {
  std::string prefix;    // "/api/v1", "/apis/discovery.k8s.io/v1"
  std::string plural;    // "services"
  std::string kind;      // "Service"
  nlohmann::json empty;  // the zero-valued typed object a BOOKMARK carries (without metadata)
  bool clusterScoped = false;  // Nodes: no namespace in paths, keys or objects
};

struct ApiServerOptions {
  bool tls = false;
  std::string certPem;  // server certificate chain and key, when tls
  std::string keyPem;
  // Accepted bearer tokens; empty = no authentication. `forbiddenTokens` authenticate but are
  // refused with 403.
  std::set<std::string> tokens;
  std::set<std::string> forbiddenTokens;
  // Resources (plurals) every caller is refused with 403, as RBAC without a rule for them.
  std::set<std::string> forbiddenResources;
  std::chrono::milliseconds bookmarkInterval{60000};
  std::chrono::milliseconds continueTtl{300000};
  // Which wording the 410 ERROR event uses: the watch cache's or etcd's.
  bool etcdExpiredWording = false;
  // A LIST with an explicit RV older than the compacted revision gets a real HTTP 410 (what an
  // apiserver without watch cache answers).
  bool listOldRvIs410 = false;
};

struct RecordedRequest {
  std::string method;
  std::string target;
  std::string authorization;
  std::map<std::string, std::string> query;  // decoded
};

class ApiServer {
 public:
  explicit ApiServer(ApiServerOptions options = {});
  ~ApiServer();

  // Listens on 127.0.0.1 (port 0 = any) and serves until stop().
  void start(uint16_t port = 0);
  void stop();
  uint16_t port() const { return port_; }
  std::string url() const;  // "http(s)://127.0.0.1:PORT"

  void addResource(ApiResource resource);

  // Store operations (also reachable over HTTP). `resource` is the plural ("services").
  // Return the stored object (with metadata.resourceVersion set).
  nlohmann::json create(const std::string& resource, nlohmann::json object);
  nlohmann::json update(const std::string& resource, nlohmann::json object);  // upsert
  void remove(const std::string& resource, const std::string& ns, const std::string& name);
  // The stored object, or nullopt; every stored object of `resource`. `ns` is "" for a
  // cluster-scoped resource.
  std::optional<nlohmann::json> get(const std::string& resource, const std::string& ns,
                                    const std::string& name) const;
  std::vector<nlohmann::json> list(const std::string& resource) const;
  uint64_t resourceVersion() const;
  // Forgets history up to now: watches and continue tokens from older RVs get 410.
  void compact();
  // Replaces the accepted bearer tokens (token rotation).
  void setTokens(std::set<std::string> tokens);

  // Faults.
  void cutWatches();               // every open watch ends mid-event (half a line, then RST)
  void setSplitEvents(bool on);    // each event is written as several chunks, split mid-JSON
  void setStall(bool on);          // open watches send nothing at all (no events, no bookmarks)
  void refuseConnections();        // closes the listening socket; connects are refused
  void acceptConnections();        // listens again on the same port
  // The next `count` PUTs of `resource` answer 409 Conflict whatever their resourceVersion
  // (another writer keeps winning the race).
  void injectConflicts(const std::string& resource, int count);
  // The next `count` WATCH requests of `resource` are answered with HTTP `code` and a Status
  // body with a Content-Length, before any event (what a real API server does when it refuses
  // a watch: 403, 429, or 410 for a resourceVersion it no longer has).
  void rejectWatches(const std::string& resource, int code, int count);

  std::vector<RecordedRequest> requests() const;
  size_t watchCount() const;  // watches currently open

 private:
  struct Event {
    uint64_t rv;
    std::string resource;
    std::string type;
    nlohmann::json object;
    nlohmann::json previous;  // null for ADDED
  };
  struct Conn;

  void acceptLoop();
  void serve(std::shared_ptr<Conn> conn);
  template <class Stream>
  void serveStream(Stream& stream, const std::shared_ptr<Conn>& conn);
  void listen();
  nlohmann::json createLocked(const std::string& resource, nlohmann::json object);
  nlohmann::json updateLocked(const std::string& resource, nlohmann::json object);
  bool clusterScoped(const std::string& resource) const;
  nlohmann::json stripped(const std::string& resource, nlohmann::json object) const;

  ApiServerOptions options_;
  std::vector<ApiResource> resources_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  uint64_t rv_ = 1;
  uint64_t compactedRv_ = 1;  // history covers RVs > compactedRv_
  std::map<std::string, std::map<std::string, nlohmann::json>> store_;  // resource → "ns/name"
  std::deque<Event> history_;
  std::vector<RecordedRequest> requests_;
  bool split_ = false;
  bool stall_ = false;
  uint64_t cutGeneration_ = 0;
  size_t openWatches_ = 0;
  bool stopping_ = false;
  std::map<std::string, int> injectedConflicts_;  // resource → PUTs still to refuse
  std::map<std::string, std::pair<int, int>> rejectedWatches_;  // resource → (code, count left)

  uint16_t port_ = 0;
  std::atomic<int> listenFd_{-1};
  std::thread acceptor_;
  std::map<uint64_t, std::shared_ptr<Conn>> conns_;
  uint64_t nextConn_ = 0;
  std::shared_ptr<void> tlsContext_;

};

}  // namespace sluice::testing
