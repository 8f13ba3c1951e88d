// LeaseEndpointReconciler and LeaseSource: live leases → EndpointSlices, judged on the
// observer's monotonic clock. docs/design.md §10 describes the algorithm.
#include <algorithm>
#include <cstdio>

#include <spdlog/spdlog.h>

#include "sluice/lease.h"

namespace sluice {
namespace {

// "http/TCP/8080;metrics/TCP/9090" — the identity of a port set, sorted by name.
std::string portsKey(std::vector<EndpointPort>& ports) {
  std::sort(ports.begin(), ports.end(), [](const EndpointPort& a, const EndpointPort& b) {
    return std::tie(a.name, a.protocol, a.port) < std::tie(b.name, b.protocol, b.port);
  });
  std::string key;
  for (const EndpointPort& p : ports)
    key += p.name + "/" + protocolName(p.protocol) + "/" + std::to_string(p.port) + ";";
  return key;
}

// FNV-1a: a short stable suffix, so a port set keeps its slice name across restarts.
std::string shortHash(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", h);
  return buf;
}

}  // namespace

LeaseEndpointReconciler::LeaseEndpointReconciler(LeaseStore& store, LeaseReconcilerConfig config)
    : store_(store), config_(std::move(config)), clock_(config_.clock ? *config_.clock : Clock::system()) {}

void LeaseEndpointReconciler::renewSelf() {
  if (!config_.self || shuttingDown_) return;
  const Clock::WallTime wall = clock_.wallNow();
  if (selfHandle_) {
    Status s = store_.renew(*selfHandle_, wall);
    if (s) return;
    if (s.code() != Code::kNotFound) {
      spdlog::warn("lease reconciler {}: renewing own lease: {}", config_.service.toString(), s.toString());
      return;
    }
    selfHandle_.reset();
  }
  auto acquired = store_.acquire(*config_.self, wall);
  if (acquired) {
    selfHandle_ = std::move(acquired).value();
  } else {
    spdlog::warn("lease reconciler {}: acquiring own lease: {}", config_.service.toString(),
                 acquired.status().toString());
  }
}

LeaseEndpointReconciler::Outcome LeaseEndpointReconciler::reconcileOnce(StateSink& sink) {
  // kube-apiserver refreshes its own lease before it lists, whatever happens next.
  renewSelf();
  auto listing = store_.list();
  const Clock::MonoTime now = clock_.monotonicNow();
  if (!listing) {
    // Nothing is published: the last set stands until the store can be read again.
    return {listing.status().withContext("listing leases of " + config_.service.toString()), false, 0};
  }

  // Time the observer could not observe does not count against the leases (see lease.h).
  if (lastObservation_) {
    const auto gap = now - *lastObservation_;
    const auto allowed = 2 * config_.interval;
    if (gap > allowed) {
      const auto credit = gap - allowed;
      for (auto& [id, o] : observed_) o.deadline += credit;
      spdlog::info("lease reconciler {}: no observation for {} ms; lease deadlines extended by that",
                   config_.service.toString(), std::chrono::duration_cast<std::chrono::milliseconds>(gap).count());
    }
  }
  lastObservation_ = now;

  std::map<std::string, Observed> next;
  for (LeaseRecord& rec : listing->leases) {
    auto it = observed_.find(rec.spec.identity);
    const bool renewed = it == observed_.end() || it->second.record.generation != rec.generation ||
                         it->second.record.leaseId != rec.leaseId;
    const Clock::MonoTime deadline = renewed ? now + rec.spec.ttl : it->second.deadline;
    std::string identity = rec.spec.identity;
    next.emplace(std::move(identity), Observed{std::move(rec), deadline});
  }
  observed_ = std::move(next);  // what the store no longer lists is gone at once
  reportProblems(sink, listing->errors);

  // Dead for long enough: out of the store, or Lease objects of every registrant that ever
  // died would pile up (Kubernetes keeps them). A failure is retried at the next pass.
  if (config_.collectAfter > std::chrono::milliseconds::zero()) {
    for (const auto& [id, o] : observed_) {
      if (now < o.deadline + config_.collectAfter) continue;
      if (Status s = store_.collect(o.record); !s)
        spdlog::warn("lease reconciler {}: collecting dead lease {}: {}", config_.service.toString(), id, s.toString());
    }
  }

  const size_t live = std::count_if(observed_.begin(), observed_.end(),
                                    [&](const auto& kv) { return kv.second.deadline > now; });
  if (live == 0 && config_.self && !shuttingDown_) {
    // kube-apiserver's guard: our own lease should be there, so an empty listing is a store
    // problem, and erasing every endpoint would take the Service down with it.
    return {Status(Code::kFailedPrecondition, "no live lease listed for " + config_.service.toString() +
                                                  " although this process's own lease should exist; "
                                                  "refusing to erase all endpoints"),
            false, 0};
  }

  std::vector<EndpointSlice> slices = buildSlices();
  Outcome out{Status::ok(), false, live};
  if (!synced_ || slices != published_) {
    published_ = slices;
    sink.replaceSlices(std::move(slices));
    out.published = true;
  }
  if (!synced_) {
    sink.synced(ResourceKind::kEndpointSlice);
    synced_ = true;
  }
  return out;
}

LeaseEndpointReconciler::Outcome LeaseEndpointReconciler::shutdown(StateSink& sink) {
  if (!shuttingDown_) {
    shuttingDown_ = true;
    if (selfHandle_) {
      if (Status s = store_.release(*selfHandle_); !s)
        spdlog::warn("lease reconciler {}: releasing own lease: {}", config_.service.toString(), s.toString());
      selfHandle_.reset();
    }
  }
  return reconcileOnce(sink);
}

Clock::MonoTime LeaseEndpointReconciler::nextDeadline() const {
  const Clock::MonoTime now = clock_.monotonicNow();
  Clock::MonoTime next = now + config_.interval;
  for (const auto& [id, o] : observed_)
    if (o.deadline > now) next = std::min(next, o.deadline);
  return next;
}

std::vector<EndpointSlice> LeaseEndpointReconciler::buildSlices() const {
  const Clock::MonoTime now = clock_.monotonicNow();
  // One slice per (family, port set): a slice has one port list for all its endpoints.
  std::map<std::pair<IPFamily, std::string>, EndpointSlice> groups;
  for (const auto& [id, o] : observed_) {  // by identity: the first identity wins a shared IP
    if (o.deadline <= now) continue;
    const LeaseSpec& spec = o.record.spec;
    std::vector<EndpointPort> ports = spec.ports;
    const std::string key = portsKey(ports);
    EndpointSlice& slice = groups[{spec.address.family(), key}];
    if (slice.id.name.empty()) {
      slice.id = {config_.service.ns, config_.service.name + "-leases-" +
                                          (spec.address.isV4() ? "ipv4-" : "ipv6-") + shortHash(key)};
      slice.serviceName = config_.service.name;
      slice.addressType = spec.address.family();
      slice.ports = std::move(ports);
    }
    const bool known = std::any_of(slice.endpoints.begin(), slice.endpoints.end(),
                                   [&](const Endpoint& e) { return e.addresses.front() == spec.address; });
    if (known) continue;
    Endpoint ep;
    ep.addresses = {spec.address};
    ep.nodeName = spec.nodeName;
    ep.zone = spec.zone;
    slice.endpoints.push_back(std::move(ep));
  }
  std::vector<EndpointSlice> out;
  for (auto& [key, slice] : groups) {
    // Sorted by address, as kube-apiserver sorts its IPs: the set, not the order of renewals,
    // decides what is published.
    std::sort(slice.endpoints.begin(), slice.endpoints.end(),
              [](const Endpoint& a, const Endpoint& b) { return a.addresses.front() < b.addresses.front(); });
    out.push_back(std::move(slice));
  }
  std::sort(out.begin(), out.end(), [](const EndpointSlice& a, const EndpointSlice& b) { return a.id < b.id; });
  return out;
}

void LeaseEndpointReconciler::reportProblems(StateSink& sink, const std::vector<LeaseDecodeError>& errors) {
  std::set<std::string> now;
  for (const LeaseDecodeError& e : errors) {
    now.insert(e.problem.object);
    if (!problemObjects_.count(e.problem.object)) sink.problem(e.problem);
  }
  for (const std::string& gone : problemObjects_)
    if (!now.count(gone)) sink.problemCleared(gone);
  problemObjects_ = std::move(now);
}

// ---------------------------------------------------------------------------------------------

LeaseSource::LeaseSource(LeaseStore& store, LeaseReconcilerConfig config)
    : store_(store), reconciler_(store, std::move(config)) {}

LeaseSource::~LeaseSource() { stop(); }

std::string LeaseSource::name() const { return "leases:" + store_.name(); }

Status LeaseSource::start(StateSink& sink) {
  const LeaseReconcilerConfig& cfg = reconciler_.config();
  if (cfg.self) {
    if (Status s = validateLeaseSpec(*cfg.self); !s) return s;
  }
  {
    std::lock_guard lock(mu_);
    if (sink_) return {Code::kFailedPrecondition, name() + " already started"};
    sink_ = &sink;
  }
  std::vector<Service> services;
  if (cfg.serviceObject) services.push_back(*cfg.serviceObject);
  sink.replaceServices(std::move(services));
  sink.synced(ResourceKind::kService);
  store_.setOnChange([this] {
    {
      std::lock_guard lock(mu_);
      wake_ = true;
    }
    cv_.notify_all();
  });
  thread_ = std::thread([this] { run(); });
  return Status::ok();
}

void LeaseSource::stop() {
  {
    std::lock_guard lock(mu_);
    if (!sink_ || stopping_) return;
    stopping_ = true;
  }
  store_.setOnChange({});
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t LeaseSource::passes() const {
  std::lock_guard lock(mu_);
  return passes_;
}

void LeaseSource::run() {
  const Clock& clock = reconciler_.config().clock ? *reconciler_.config().clock : Clock::system();
  const auto interval = reconciler_.config().interval;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    wake_ = false;
    lock.unlock();
    LeaseEndpointReconciler::Outcome out = reconciler_.reconcileOnce(*sink_);
    if (!out.status) spdlog::warn("{}: {}", name(), out.status.toString());
    // Next pass at the earliest lease deadline (so an expired endpoint leaves promptly), at
    // most one interval away, and at least 1 ms away so a busy store cannot spin us.
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(reconciler_.nextDeadline() -
                                                                      clock.monotonicNow()) +
                std::chrono::milliseconds(1);
    wait = std::clamp(wait, std::chrono::milliseconds(1), interval);
    lock.lock();
    ++passes_;
    cv_.wait_for(lock, wait, [this] { return stopping_ || wake_; });
  }
  lock.unlock();
  LeaseEndpointReconciler::Outcome out = reconciler_.shutdown(*sink_);
  if (!out.status) spdlog::warn("{}: shutdown pass: {}", name(), out.status.toString());
}

}  // namespace sluice
