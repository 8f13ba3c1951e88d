#include "sluice/drain_tracker.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include <fmt/format.h>

namespace sluice {

namespace {

using EndpointAddr = std::pair<IPAddress, uint16_t>;

template <class T>
void sortUnique(std::vector<T>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  v.shrink_to_fit();
}

template <class T>
bool contains(const std::vector<T>& sorted, const T& x) {
  return std::binary_search(sorted.begin(), sorted.end(), x);
}

bool frontendMatches(const std::set<Frontend>& frontends, const conntrack::Flow& f) {
  for (const auto& fe : frontends) {
    if (fe.port != f.original.dstPort) continue;
    if (fe.ip ? *fe.ip == f.original.dst : f.dstNat()) return true;
  }
  return false;
}

std::string endpointName(const ServicePortRef& sp, const EndpointAddr& ep) {
  return fmt::format("{}:{} ({}) endpoint {}:{}", sp.service.toString(), sp.portName,
                     protocolName(sp.protocol), ep.first.toString(), ep.second);
}

// A flow that carries no more data: TIME_WAIT/CLOSE (Flow::tcpClosed) or LAST_ACK, where both
// sides have sent their FIN and only the last ACK is missing (conntrack keeps such an entry
// for 30 s when that ACK is lost, e.g. because the endpoint's process exited meanwhile).
bool flowOver(const conntrack::Flow& f) { return f.tcpClosed() || f.tcpState == "LAST_ACK"; }

}  // namespace

std::set<Frontend> serviceFrontends(const Service& svc, const ServicePort& port, IPFamily family) {
  std::set<Frontend> out;
  auto add = [&](const IPAddress& ip) {
    if (ip.family() == family) out.insert({ip, port.port});
  };
  for (const auto& ip : svc.clusterIPs) add(ip);
  for (const auto& ip : svc.externalIPs) add(ip);
  for (const auto& lb : svc.loadBalancerIngress)
    if (!lb.proxyMode) add(lb.ip);
  if (port.nodePort != 0) out.insert({std::nullopt, port.nodePort});
  return out;
}

Result<std::unique_ptr<DrainTracker>> DrainTracker::create(DrainOptions options) {
  auto ct = conntrack::Client::open(options.netns);
  if (!ct) return ct.status().withContext("drain tracker");
  return std::unique_ptr<DrainTracker>(new DrainTracker(std::move(options), std::move(ct).value()));
}

DrainTracker::DrainTracker(DrainOptions options, std::unique_ptr<conntrack::Client> ct)
    : options_(std::move(options)), ct_(std::move(ct)) {}

DrainTracker::~DrainTracker() { stop(); }

void DrainTracker::afterCommit(const CommitInfo& info) {
  const IPFamily family = info.planner.config().family;
  const auto now = std::chrono::steady_clock::now();
  const auto nowWall = std::chrono::system_clock::now();
  // Services to look at: the re-planned ones, plus (after a full sync) any we still hold a
  // view of although the Service is gone.
  std::set<ObjectName> services = info.changed;
  std::lock_guard lock(mu_);
  if (info.full)
    for (const auto& [ref, _] : views_) services.insert(ref.service);

  for (const auto& id : services) {
    std::map<ServicePortRef, PortView> next;
    const Service* svc = info.snapshot.service(id);
    if (svc) {
      const auto& frags = info.planner.fragments();
      auto frag = frags.find(id);
      const auto& slices = info.snapshot.slicesFor(id);
      for (size_t i = 0; i < svc->ports.size(); ++i) {
        const ServicePort& sp = svc->ports[i];
        PortView v;
        auto frontends = serviceFrontends(*svc, sp, family);
        v.frontends.assign(frontends.begin(), frontends.end());
        if (frag != frags.end())
          for (const auto& ch : frag->second.chains)
            if (ch.port == int(i)) v.programmed.insert(v.programmed.end(), ch.slots.begin(), ch.slots.end());
        sortUnique(v.programmed);
        for (const auto& e : resolveEndpoints(*svc, sp, slices, info.planner.config(), nullptr))
          if (e.serving) v.serving.push_back({e.ip, e.port});
        sortUnique(v.serving);
        next[{id, sp.name, sp.protocol}] = std::move(v);
      }
    }
    // Compare with what we saw before, port by port (a port that vanished has nothing now).
    auto lo = views_.lower_bound({id, "", Protocol::kTCP});
    std::vector<ServicePortRef> refs;
    for (auto it = lo; it != views_.end() && it->first.service == id; ++it) refs.push_back(it->first);
    for (const auto& [ref, _] : next) refs.push_back(ref);
    for (const auto& ref : refs) {
      static const PortView kEmpty;
      auto oldIt = views_.find(ref);
      auto newIt = next.find(ref);
      const PortView& before = oldIt == views_.end() ? kEmpty : oldIt->second;
      const PortView& after = newIt == next.end() ? kEmpty : newIt->second;
      std::set<Frontend> frontends(before.frontends.begin(), before.frontends.end());
      frontends.insert(after.frontends.begin(), after.frontends.end());

      if (ref.protocol == Protocol::kUDP) {
        bool changed = info.full || oldIt == views_.end() || newIt == next.end() ||
                       before.programmed != after.programmed || before.serving != after.serving;
        if (options_.udpCleanup && changed && !frontends.empty())
          pendingUdp_.push_back({Protocol::kUDP, frontends, {after.serving.begin(), after.serving.end()}, std::nullopt});
        continue;
      }
      // Endpoints that stopped receiving new connections.
      for (const auto& ep : before.programmed) {
        if (contains(after.programmed, ep)) continue;
        EndpointKey key{ref, ep.first, ep.second};
        if (!options_.enabled) {
          pendingFlows_.push_back({ref.protocol, frontends, {}, ep});
          continue;
        }
        auto grace = options_.gracePeriod ? options_.gracePeriod(id, ep.first) : std::nullopt;
        auto timeout = grace.value_or(options_.timeout);
        auto [rec, fresh] = records_.try_emplace(key);
        if (fresh) {
          rec->second.since = now;
          rec->second.sinceWall = nowWall;
          rec->second.deadline = now + timeout;
          rec->second.liveFlows = 0;
          ++stats_.started;
          spdlog::info("draining {} (deadline in {} ms)", endpointName(ref, ep), timeout.count());
        }
        rec->second.frontends.insert(frontends.begin(), frontends.end());
      }
      // Draining endpoints of this port: back in service, or their serving state changed.
      for (auto it = records_.begin(); it != records_.end();) {
        if (!(it->first.servicePort == ref)) {
          ++it;
          continue;
        }
        EndpointAddr ep{it->first.ip, it->first.port};
        if (contains(after.programmed, ep)) {
          spdlog::info("{} is back in service; drain cancelled", endpointName(ref, ep));
          ++stats_.returned;
          it = records_.erase(it);
          continue;
        }
        it->second.serving = contains(after.serving, ep);
        ++it;
      }
    }
    for (const auto& ref : refs) views_.erase(ref);
    for (auto& [ref, v] : next) {
      // `= {}` would pick operator=(initializer_list) and keep the capacity (2 MB at 10 000
      // Services); a fresh vector releases it.
      if (ref.protocol != Protocol::kUDP) v.serving = std::vector<EndpointAddr>();  // see PortView
      views_[ref] = std::move(v);
    }
  }
  kick_ = true;
  cv_.notify_all();
}

void DrainTracker::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void DrainTracker::stop() {
  {
    std::lock_guard lock(mu_);
    if (!thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void DrainTracker::loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    if (!kick_) {
      if (records_.empty()) {
        cv_.wait(lock, [&] { return stopping_ || kick_; });
      } else {
        cv_.wait_for(lock, options_.pollInterval, [&] { return stopping_ || kick_; });
      }
      if (stopping_) break;
    }
    kick_ = false;
    lock.unlock();
    Status st = poll();
    if (!st) spdlog::warn("drain tracker: {}", st.toString());
    lock.lock();
  }
}

Status DrainTracker::poll() {
  std::lock_guard io(ioMu_);
  std::vector<Cleanup> udp, flows;
  {
    std::lock_guard lock(mu_);
    udp.swap(pendingUdp_);
    flows.swap(pendingFlows_);
  }
  Status first = runCleanups(std::move(udp), &DrainStats::udpEntriesDeleted);
  Status st = runCleanups(std::move(flows), &DrainStats::flowsDeleted);
  if (first) first = st;
  st = countAndFinish();
  if (first) first = st;
  return first;
}

// One streaming pass per family over the conntrack table for all cleanups together, so a
// large table is read once per round, not once per Service port.
Status DrainTracker::runCleanups(std::vector<Cleanup> work, uint64_t DrainStats::*counter) {
  if (work.empty()) return Status::ok();
  auto matches = [&](const conntrack::Flow& f) {
    for (const auto& c : work) {
      if (f.proto() != c.protocol || !frontendMatches(c.frontends, f)) continue;
      EndpointAddr src{f.reply.src, f.reply.srcPort};
      if (c.only ? src == *c.only : !c.keep.count(src)) return true;
    }
    return false;
  };
  auto removed = ct_->removeIf(std::nullopt, matches);
  std::lock_guard lock(mu_);
  if (!removed) {
    ++stats_.conntrackErrors;
    return removed.status().withContext("deleting conntrack entries");
  }
  stats_.*counter += *removed;
  if (*removed) spdlog::info("deleted {} conntrack entries of endpoints that left", *removed);
  return Status::ok();
}

Status DrainTracker::countAndFinish() {
  struct Target {
    EndpointKey key;
    std::set<Frontend> frontends;
  };
  std::vector<Target> targets;
  {
    std::lock_guard lock(mu_);
    if (records_.empty()) return Status::ok();
    for (const auto& [k, r] : records_) targets.push_back({k, r.frontends});
  }
  conntrack::Filter filter;
  filter.statusSet = conntrack::kStatusDstNat;
  auto flows = ct_->dump(filter);
  if (!flows) {
    std::lock_guard lock(mu_);
    ++stats_.conntrackErrors;
    return flows.status().withContext("counting flows of draining endpoints");
  }
  // Index the draining endpoints by reply source so counting is O(entries).
  std::map<std::tuple<IPAddress, uint16_t, Protocol>, std::vector<size_t>> byReplySrc;
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& k = targets[i].key;
    byReplySrc[{k.ip, k.port, k.servicePort.protocol}].push_back(i);
  }
  std::vector<size_t> live(targets.size(), 0);
  for (const auto& f : *flows) {
    auto it = byReplySrc.find({f.reply.src, f.reply.srcPort, f.proto()});
    if (it == byReplySrc.end() || flowOver(f)) continue;
    for (size_t i : it->second)
      if (frontendMatches(targets[i].frontends, f)) ++live[i];
  }

  std::vector<Cleanup> finish;  // leftover (closed or expired) entries of finished drains
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < targets.size(); ++i) {
      auto it = records_.find(targets[i].key);
      if (it == records_.end()) continue;  // came back meanwhile
      Record& r = it->second;
      r.liveFlows = live[i];
      const auto& k = it->first;
      EndpointAddr ep{k.ip, k.port};
      bool done = r.liveFlows == 0;
      // Established flows are never cut while the endpoint still serves (spec §5).
      bool expired = !done && now >= r.deadline && !r.serving;
      if (!done && !expired) continue;
      if (done) {
        ++stats_.drained;
        spdlog::info("{} drained", endpointName(k.servicePort, ep));
      } else {
        ++stats_.expired;
        spdlog::info("{} drain deadline passed with {} live flows; deleting them",
                     endpointName(k.servicePort, ep), r.liveFlows);
      }
      finish.push_back({k.servicePort.protocol, r.frontends, {}, ep});
      records_.erase(it);
    }
  }
  return runCleanups(std::move(finish), &DrainStats::flowsDeleted);
}

std::vector<DrainingEndpoint> DrainTracker::draining() const {
  std::lock_guard lock(mu_);
  std::vector<DrainingEndpoint> out;
  const auto now = std::chrono::steady_clock::now();
  const auto nowWall = std::chrono::system_clock::now();
  for (const auto& [k, r] : records_) {
    DrainingEndpoint d;
    d.servicePort = k.servicePort;
    d.ip = k.ip;
    d.port = k.port;
    d.since = r.sinceWall;
    d.deadline = nowWall + std::chrono::duration_cast<std::chrono::system_clock::duration>(r.deadline - now);
    d.liveFlows = r.liveFlows;
    d.serving = r.serving;
    out.push_back(std::move(d));
  }
  return out;
}

DrainStats DrainTracker::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace sluice
