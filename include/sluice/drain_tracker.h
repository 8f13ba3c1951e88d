// sluice/drain_tracker.h — connection-aware draining and UDP conntrack cleanup (spec §5).
//
// DrainTracker listens to the sync runner's commits and compares, per Service port, the
// endpoints the kernel now sends new connections to with those it sent them to before:
//  - A TCP/SCTP endpoint that left that set (terminating, not serving, removed) enters
//    *draining*: the planner already stopped new connections to it; its conntrack entries —
//    which carry the DNAT of existing flows — are kept and counted. When no live flow is left
//    the drain ends; when its deadline passes and the endpoint no longer serves, its leftover
//    entries are deleted. An endpoint that comes back while draining simply leaves the drain
//    list: nothing was deleted, so its flows never noticed.
//  - UDP has no end of flow: for a changed UDP Service port, entries whose original destination
//    is one of its frontends (ClusterIP/external/LB IP:port, NodePort) and whose reply source is
//    not a serving endpoint (including entries that were never DNATed, e.g. answered by the
//    no-endpoint reject) are deleted right after the commit. After a full sync (start-up,
//    repair) every UDP Service port is checked.
//  - With draining disabled, leaving endpoints lose their conntrack entries at once: what a
//    naive proxy does, and what breaks established connections during rolling updates.
// Conntrack I/O happens on the tracker's own thread (start()) or in poll(), never under the
// store's lock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sluice/conntrack.h"
#include "sluice/sync_runner.h"

namespace sluice {

struct DrainOptions {
  std::string netns;  // where the conntrack table lives ("" = the caller's namespace)
  bool enabled = true;  // false: delete a leaving endpoint's conntrack entries at once
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  // Per-endpoint deadline override, e.g. the Pod's termination grace period when it is known.
  std::function<std::optional<std::chrono::milliseconds>(const ObjectName& service,
                                                         const IPAddress& endpoint)>
      gracePeriod;
  std::chrono::milliseconds pollInterval{std::chrono::seconds(1)};  // flow counting cadence
  bool udpCleanup = true;
};

// A Service port an endpoint belongs to.
struct ServicePortRef {
  ObjectName service;
  std::string portName;
  Protocol protocol = Protocol::kTCP;
  auto operator<=>(const ServicePortRef&) const = default;
};

// Where clients reach a Service port: address:port, or any local address at `port` (NodePort).
struct Frontend {
  std::optional<IPAddress> ip;  // nullopt = NodePort (matched on DNATed flows only)
  uint16_t port = 0;
  auto operator<=>(const Frontend&) const = default;
};

struct DrainingEndpoint {
  ServicePortRef servicePort;
  IPAddress ip;
  uint16_t port = 0;
  std::chrono::system_clock::time_point since;
  std::chrono::system_clock::time_point deadline;
  size_t liveFlows = 0;  // at the last count
  bool serving = false;  // still listed as serving: its flows are never cut
};

struct DrainStats {
  uint64_t started = 0;      // endpoints that entered draining
  uint64_t returned = 0;     // came back while draining
  uint64_t drained = 0;      // finished with no live flow left
  uint64_t expired = 0;      // deadline passed; leftover entries deleted
  uint64_t flowsDeleted = 0;     // TCP/SCTP entries deleted (expiry, or draining disabled)
  uint64_t udpEntriesDeleted = 0;
  uint64_t conntrackErrors = 0;
};

class DrainTracker : public CommitListener {
 public:
  // Opens a conntrack client in options.netns (errors as conntrack::Client::open).
  static Result<std::unique_ptr<DrainTracker>> create(DrainOptions options);
  ~DrainTracker() override;  // stop()

  void afterCommit(const CommitInfo& info) override;

  // Runs pending cleanups and flow counts on a thread of its own. Idempotent.
  void start();
  void stop();
  // One round now on the caller's thread (tests; not while started): pending deletions, then a
  // count of every draining endpoint and the resulting removals. The first error is returned;
  // the round still does what it can.
  Status poll();

  std::vector<DrainingEndpoint> draining() const;
  DrainStats stats() const;

 private:
  struct EndpointKey {
    ServicePortRef servicePort;
    IPAddress ip;
    uint16_t port = 0;
    auto operator<=>(const EndpointKey&) const = default;
  };
  struct Record {
    std::set<Frontend> frontends;
    std::chrono::steady_clock::time_point since;
    std::chrono::steady_clock::time_point deadline;
    std::chrono::system_clock::time_point sinceWall;
    size_t liveFlows = 0;
    bool serving = false;
  };
  // A Service port at the last commit. Sorted vectors rather than sets: one is kept for every
  // Service port, and at 10 000 Services a set node per endpoint cost about 10 MB more.
  struct PortView {
    std::vector<std::pair<IPAddress, uint16_t>> programmed;  // where new connections go
    // Listed as serving in the slices. Kept between commits for UDP ports only (their cleanup
    // runs when it changes); for TCP/SCTP only the new commit's list is used.
    std::vector<std::pair<IPAddress, uint16_t>> serving;
    std::vector<Frontend> frontends;
  };
  // Entries to delete: flows of `protocol` to one of `frontends` whose reply source is not in
  // `keep` (UDP stale cleanup), or is exactly `only` (one endpoint's flows).
  struct Cleanup {
    Protocol protocol = Protocol::kUDP;
    std::set<Frontend> frontends;
    std::set<std::pair<IPAddress, uint16_t>> keep;
    std::optional<std::pair<IPAddress, uint16_t>> only;
  };

  explicit DrainTracker(DrainOptions options, std::unique_ptr<conntrack::Client> ct);
  void loop();
  Status runCleanups(std::vector<Cleanup> work, uint64_t DrainStats::*counter);
  Status countAndFinish();

  DrainOptions options_;
  std::unique_ptr<conntrack::Client> ct_;  // used by one thread at a time (ioMu_)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<ServicePortRef, PortView> views_;
  std::map<EndpointKey, Record> records_;
  std::vector<Cleanup> pendingUdp_;
  std::vector<Cleanup> pendingFlows_;  // draining disabled: a leaving endpoint's flows
  DrainStats stats_;
  bool stopping_ = false;
  bool kick_ = false;
  std::mutex ioMu_;
  std::thread thread_;
};

// The frontends of one Service port (ClusterIPs, external IPs, load-balancer IPs that are not
// in Proxy mode, and the NodePort), restricted to `family`.
std::set<Frontend> serviceFrontends(const Service& svc, const ServicePort& port, IPFamily family);

}  // namespace sluice
