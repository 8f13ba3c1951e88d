// EtcdLeaseStore: leases as etcd keys attached to etcd leases, observed through range + watch.
#include "sluice/lease_etcd.h"

#include <condition_variable>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "../lib/etcd_client.h"
#include "lease_json.h"

namespace sluice {
namespace {

using json = nlohmann::json;

std::string encodeRecord(const LeaseSpec& spec, uint64_t generation, Clock::WallTime renewTime) {
  return leasejson::encode(spec, generation, renewTime).dump();
}

// The record under `kv`, or a Problem naming the key and the field.
Result<LeaseRecord> decodeRecord(const std::string& prefix, const etcd::KeyValue& kv, Problem& problem) {
  problem = {"Lease " + kv.key, "", ""};
  json j = json::parse(kv.value, nullptr, false);
  if (j.is_discarded()) {
    problem.field = "value";
    problem.reason = "not JSON";
    return Status(Code::kInvalidArgument, problem.toString());
  }
  auto r = leasejson::decode(j, problem);
  if (!r) return r;
  if (kv.key != prefix + r->spec.identity) {
    problem.field = "identity";
    problem.reason = "does not match the key";
    return Status(Code::kInvalidArgument, problem.toString());
  }
  r->leaseId = kv.lease;
  return r;
}

int64_t ttlSeconds(std::chrono::milliseconds ttl) { return std::max<int64_t>(1, (ttl.count() + 999) / 1000); }

}  // namespace

struct EtcdLeaseStore::Impl {
  EtcdLeaseStoreConfig cfg;
  http::ConnectionOptions server;
  etcd::Client client;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, etcd::KeyValue> cache;  // by key
  std::map<std::string, LeaseSpec> held;        // specs this instance acquired, by identity
  bool started = false;  // the first range succeeded and the watcher runs
  bool live = false;     // the cache is current: ranged, and the watch is up (or starting)
  bool stopping = false;
  Stats stats;
  etcd::Watch* watch = nullptr;
  std::thread watcher;

  std::mutex notifyMu;
  std::function<void()> onChange;

  Impl(EtcdLeaseStoreConfig c, http::ConnectionOptions s)
      : cfg(std::move(c)), server(std::move(s)), client(server, cfg.requestTimeout) {}

  void notify() {
    std::lock_guard lock(notifyMu);
    if (onChange) onChange();
  }

  // Replaces the cache with a fresh range; the cache is current again at its revision.
  Status range() {
    auto r = client.rangePrefix(cfg.prefix);
    if (!r) return r.status();
    std::lock_guard lock(mu);
    cache.clear();
    for (etcd::KeyValue& kv : r->kvs) cache[kv.key] = std::move(kv);
    stats.revision = r->revision;
    stats.ranges++;
    live = true;
    return Status::ok();
  }

  bool onMessage(const etcd::WatchMessage& m, bool& needRange) {
    if (m.canceled) {
      // Our start revision was compacted away (or etcd cancelled for another reason): what
      // happened in between is unknown, so read everything again.
      std::lock_guard lock(mu);
      if (m.compactRevision > 0) stats.compactions++;
      live = false;
      needRange = true;
      spdlog::info("etcd lease store {}: watch cancelled (compact revision {}, {}); reading again", cfg.prefix,
                   m.compactRevision, m.cancelReason);
      return false;
    }
    {
      std::lock_guard lock(mu);
      if (m.created) {
        stats.watches++;
        live = true;
      }
      for (const etcd::WatchEvent& e : m.events) {
        if (e.isDelete)
          cache.erase(e.kv.key);
        else
          cache[e.kv.key] = e.kv;
        // Resume after the last event seen. (header.revision of a catching-up watch is the
        // store's current revision, beyond events still to come, so only a progress
        // notification — no events — vouches for it.)
        stats.revision = std::max(stats.revision, e.kv.modRevision);
      }
      if (!m.created && m.events.empty()) stats.revision = std::max(stats.revision, m.headerRevision);
    }
    notify();
    return true;
  }

  void watchLoop() {
    bool needRange = false;
    std::unique_lock lock(mu);
    while (!stopping) {
      lock.unlock();
      Status status;
      if (needRange) {
        status = range();
        if (status) {
          needRange = false;
          notify();
        }
      }
      if (status) {
        etcd::Watch w(server, cfg.requestTimeout);
        int64_t from;
        {
          std::lock_guard l(mu);
          if (stopping) break;
          watch = &w;
          from = stats.revision + 1;
        }
        status = w.run(cfg.prefix, from, [&](const etcd::WatchMessage& m) { return onMessage(m, needRange); });
        std::lock_guard l(mu);
        watch = nullptr;
        live = false;
      }
      notify();  // observers must see the store as unavailable now
      if (!status) spdlog::info("etcd lease store {}: {}; retrying", cfg.prefix, status.toString());
      lock.lock();
      if (!needRange || !status) cv.wait_for(lock, cfg.retryInterval, [&] { return stopping; });
    }
  }
};

Result<std::unique_ptr<EtcdLeaseStore>> EtcdLeaseStore::create(EtcdLeaseStoreConfig config) {
  auto url = etcd::parseEndpoint(config.endpoint);
  if (!url) return url.status();
  http::ConnectionOptions server;
  server.url = std::move(url).value();
  server.tls = config.tls;
  server.connectTimeout = config.requestTimeout;
  if (config.prefix.empty() || config.prefix.back() != '/')
    return Status(Code::kInvalidArgument, "etcd lease prefix \"" + config.prefix + "\" must end with '/'");
  return std::unique_ptr<EtcdLeaseStore>(new EtcdLeaseStore(std::make_unique<Impl>(std::move(config), std::move(server))));
}

EtcdLeaseStore::EtcdLeaseStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EtcdLeaseStore::~EtcdLeaseStore() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    if (impl_->watch) impl_->watch->cancel();
  }
  impl_->cv.notify_all();
  if (impl_->watcher.joinable()) impl_->watcher.join();
}

std::string EtcdLeaseStore::name() const { return "etcd:" + impl_->server.url.hostHeader() + impl_->cfg.prefix; }

Result<LeaseHandle> EtcdLeaseStore::acquire(const LeaseSpec& spec, Clock::WallTime renewTime) {
  if (Status s = validateLeaseSpec(spec); !s) return s;
  auto grant = impl_->client.grant(ttlSeconds(spec.ttl));
  if (!grant) return grant.status().withContext("lease " + spec.identity);
  Status put = impl_->client.put(impl_->cfg.prefix + spec.identity, encodeRecord(spec, 1, renewTime), grant->id);
  if (!put) {
    (void)impl_->client.revoke(grant->id);  // best effort; it expires anyway
    return put.withContext("lease " + spec.identity);
  }
  {
    std::lock_guard lock(impl_->mu);
    impl_->held[spec.identity] = spec;
  }
  return LeaseHandle{spec.identity, grant->id, 1, spec.ttl};
}

Status EtcdLeaseStore::renew(LeaseHandle& handle, Clock::WallTime renewTime) {
  auto ttl = impl_->client.keepAlive(handle.leaseId);
  if (!ttl) return ttl.status().withContext("lease " + handle.identity);
  // The record is rewritten with the next generation so that observers see the renewal (a
  // keepalive alone is invisible to a watch). The spec is the one this store acquired, or,
  // for a handle acquired elsewhere, the one stored under the key.
  std::optional<LeaseSpec> spec;
  {
    std::lock_guard lock(impl_->mu);
    if (auto it = impl_->held.find(handle.identity); it != impl_->held.end()) spec = it->second;
  }
  const std::string key = impl_->cfg.prefix + handle.identity;
  if (!spec) {
    auto current = impl_->client.rangePrefix(key);
    if (!current) return current.status().withContext("lease " + handle.identity);
    for (const etcd::KeyValue& kv : current->kvs) {
      Problem problem;
      if (kv.key != key) continue;
      auto record = decodeRecord(impl_->cfg.prefix, kv, problem);
      if (!record) return record.status();
      spec = record->spec;
    }
    if (!spec) return {Code::kNotFound, "lease " + handle.identity + ": key is gone"};
  }
  // Only while the key is still attached to this lease: a newer acquire of the same identity
  // must not be overwritten by the previous holder.
  const std::string lease = std::to_string(handle.leaseId);
  json put = {{"key", etcd::base64Encode(key)},
              {"value", etcd::base64Encode(encodeRecord(*spec, handle.generation + 1, renewTime))},
              {"lease", lease}};
  json txn = {{"compare", {{{"target", "LEASE"}, {"key", etcd::base64Encode(key)}, {"result", "EQUAL"}, {"lease", lease}}}},
              {"success", {{{"request_put", put}}}}};
  auto r = impl_->client.call("/v3/kv/txn", txn);
  if (!r) return r.status().withContext("lease " + handle.identity);
  if (!r->value("succeeded", false)) return {Code::kNotFound, "lease " + handle.identity + " was superseded or is gone"};
  handle.generation++;
  return Status::ok();
}

Status EtcdLeaseStore::release(const LeaseHandle& handle) {
  Status s = impl_->client.revoke(handle.leaseId);
  if (s.code() == Code::kNotFound) return Status::ok();  // gone already
  return s.withContext("lease " + handle.identity);
}

Result<LeaseListing> EtcdLeaseStore::list() {
  bool start = false;
  {
    std::lock_guard lock(impl_->mu);
    start = !impl_->started;
  }
  if (start) {
    if (Status s = impl_->range(); !s) return s.withContext("etcd lease store " + impl_->cfg.prefix);
    std::lock_guard lock(impl_->mu);
    if (!impl_->started && !impl_->stopping) {
      impl_->started = true;
      impl_->watcher = std::thread([this] { impl_->watchLoop(); });
    }
  }
  std::lock_guard lock(impl_->mu);
  if (!impl_->live) return Status(Code::kUnavailable, "etcd lease store " + impl_->cfg.prefix + ": watch is reconnecting");
  LeaseListing out;
  out.revision = impl_->stats.revision;
  for (const auto& [key, kv] : impl_->cache) {
    Problem problem;
    auto record = decodeRecord(impl_->cfg.prefix, kv, problem);
    if (record)
      out.leases.push_back(std::move(record).value());
    else
      out.errors.push_back({key, problem});
  }
  return out;
}

void EtcdLeaseStore::setOnChange(std::function<void()> onChange) {
  std::lock_guard lock(impl_->notifyMu);
  impl_->onChange = std::move(onChange);
}

EtcdLeaseStore::Stats EtcdLeaseStore::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace sluice
