// EmbeddedLeaseStore: leases in process memory, expiring on the store's monotonic clock.
#include <utility>

#include "sluice/lease.h"

namespace sluice {

Result<LeaseHandle> EmbeddedLeaseStore::acquire(const LeaseSpec& spec, Clock::WallTime renewTime) {
  if (Status s = validateLeaseSpec(spec); !s) return s;
  LeaseHandle handle;
  {
    std::lock_guard lock(mu_);
    const Clock::MonoTime now = clock_.monotonicNow();
    expireLocked(now);
    Entry& e = entries_[spec.identity];
    // A new lease id even for a known identity: the previous holder's handle must stop working.
    e.record = LeaseRecord{spec, nextLeaseId_++, 1, renewTime};
    e.expires = now + spec.ttl;
    ++revision_;
    handle = {spec.identity, e.record.leaseId, 1, spec.ttl};
  }
  notify();
  return handle;
}

Status EmbeddedLeaseStore::renew(LeaseHandle& handle, Clock::WallTime renewTime) {
  {
    std::lock_guard lock(mu_);
    const Clock::MonoTime now = clock_.monotonicNow();
    expireLocked(now);
    auto it = entries_.find(handle.identity);
    if (it == entries_.end() || it->second.record.leaseId != handle.leaseId)
      return {Code::kNotFound, "lease " + handle.identity + " is gone"};
    Entry& e = it->second;
    e.expires = now + e.record.spec.ttl;
    e.record.generation++;
    e.record.renewTime = renewTime;
    ++revision_;
    handle.generation = e.record.generation;
  }
  notify();
  return Status::ok();
}

Status EmbeddedLeaseStore::release(const LeaseHandle& handle) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(handle.identity);
    if (it != entries_.end() && it->second.record.leaseId == handle.leaseId) {
      entries_.erase(it);
      ++revision_;
      changed = true;
    }
  }
  if (changed) notify();
  return Status::ok();
}

Result<LeaseListing> EmbeddedLeaseStore::list() {
  std::lock_guard lock(mu_);
  expireLocked(clock_.monotonicNow());
  LeaseListing out;
  out.revision = revision_;
  out.leases.reserve(entries_.size());
  for (const auto& [id, e] : entries_) out.leases.push_back(e.record);  // map order = by identity
  return out;
}

void EmbeddedLeaseStore::setOnChange(std::function<void()> onChange) {
  std::lock_guard lock(notifyMu_);
  onChange_ = std::move(onChange);
}

bool EmbeddedLeaseStore::expireLocked(Clock::MonoTime now) {
  bool any = false;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.expires <= now) {
      it = entries_.erase(it);
      any = true;
    } else {
      ++it;
    }
  }
  if (any) ++revision_;
  return any;
}

void EmbeddedLeaseStore::notify() {
  std::lock_guard lock(notifyMu_);
  if (onChange_) onChange_();
}

}  // namespace sluice
