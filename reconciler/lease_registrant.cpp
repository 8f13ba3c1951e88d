// LeaseRegistrant: acquire once, renew every interval, re-acquire when the lease is gone.
#include <set>

#include <spdlog/spdlog.h>

#include "sluice/lease.h"

namespace sluice {

Status validateLeaseSpec(const LeaseSpec& spec) {
  auto bad = [&](const char* field, const std::string& reason) {
    return Status(Code::kInvalidArgument, "lease " + spec.identity + ": " + field + ": " + reason);
  };
  if (spec.identity.empty() || spec.identity.size() > 253) return bad("identity", "must be 1..253 characters");
  for (char c : spec.identity) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    // The identity becomes a store key and a URL path segment; '/' would nest keys.
    if (!ok) return bad("identity", "only [A-Za-z0-9._-] allowed");
  }
  if (spec.ttl < std::chrono::milliseconds(1)) return bad("ttl", "must be at least 1 ms");
  if (spec.address.isUnspecified()) return bad("address", "must be a specified address");
  std::set<std::string> names;
  for (const EndpointPort& p : spec.ports) {
    if (p.port == 0) return bad("ports", "port 0 of \"" + p.name + "\"");
    if (!names.insert(p.name).second) return bad("ports", "duplicate port name \"" + p.name + "\"");
  }
  return Status::ok();
}

LeaseRegistrant::LeaseRegistrant(LeaseStore& store, LeaseSpec spec, LeaseRegistrantOptions options)
    : store_(store),
      spec_(std::move(spec)),
      interval_(options.renewInterval.count() > 0 ? options.renewInterval
                                                  : std::max(spec_.ttl / 3, std::chrono::milliseconds(1))),
      clock_(options.clock ? *options.clock : Clock::system()) {}

LeaseRegistrant::~LeaseRegistrant() { stop(); }

Status LeaseRegistrant::start() {
  if (Status s = validateLeaseSpec(spec_); !s) return s;
  {
    std::lock_guard lock(mu_);
    if (started_) return {Code::kFailedPrecondition, "registrant " + spec_.identity + " already started"};
    started_ = true;
  }
  step();
  Status first;
  {
    std::lock_guard lock(mu_);
    if (!holding_) first = Status(Code::kUnavailable, "lease " + spec_.identity + " not acquired yet; retrying");
  }
  thread_ = std::thread([this] { run(); });
  return first;
}

void LeaseRegistrant::stop(bool release) {
  std::optional<LeaseHandle> handle;
  {
    std::lock_guard lock(mu_);
    if (!started_ || stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mu_);
    handle = handle_;
    holding_ = false;
  }
  if (release && handle) {
    if (Status s = store_.release(*handle); !s)
      spdlog::warn("lease {}: release failed, it will expire after its TTL: {}", spec_.identity, s.toString());
  }
}

bool LeaseRegistrant::holding() const {
  std::lock_guard lock(mu_);
  return holding_;
}

uint64_t LeaseRegistrant::renewals() const {
  std::lock_guard lock(mu_);
  return renewals_;
}

void LeaseRegistrant::run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    // A relative wait on the steady clock: a stepped wall clock cannot stall renewals.
    if (cv_.wait_for(lock, interval_, [this] { return stopping_; })) break;
    lock.unlock();
    step();
    lock.lock();
  }
}

void LeaseRegistrant::step() {
  std::optional<LeaseHandle> handle;
  {
    std::lock_guard lock(mu_);
    handle = handle_;
  }
  const Clock::WallTime now = clock_.wallNow();
  Status status;
  if (handle) {
    status = store_.renew(*handle, now);
    if (status.code() == Code::kNotFound) {
      spdlog::info("lease {} was lost ({}); acquiring it again", spec_.identity, status.message());
      handle.reset();
    }
  }
  if (!handle) {
    auto acquired = store_.acquire(spec_, now);
    status = acquired.status();
    if (acquired) handle = std::move(acquired).value();
  }
  if (!status) spdlog::warn("lease {}: {}", spec_.identity, status.toString());
  std::lock_guard lock(mu_);
  handle_ = handle;
  holding_ = status.isOk();
  if (status) ++renewals_;
}

}  // namespace sluice
