// Helpers shared by the lease tests (unit and kernel): a sink that records what a source
// delivers, a store wrapper that can be taken down, and lease specs.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "sluice/lease.h"

// Sets of addresses print as "{a, b}" in failed assertions.
template <>
struct doctest::StringMaker<std::set<std::string>> {
  static doctest::String convert(const std::set<std::string>& s) {
    std::string out = "{";
    for (const auto& x : s) out += (out.size() > 1 ? ", " : "") + x;
    return (out + "}").c_str();
  }
};

namespace sluice::testing {

// Records what a Source delivered; thread-safe; waitFor() polls a predicate over its state.
class RecordingSink final : public StateSink {
 public:
  struct State {
    std::vector<Service> services;
    std::vector<EndpointSlice> slices;
    std::vector<std::vector<EndpointSlice>> history;  // every replaceSlices() call
    std::set<ResourceKind> synced;
    std::vector<Problem> problems;
    std::vector<std::string> cleared;
  };

  void upsertService(Service) override { unexpected(); }
  void removeService(const ObjectName&) override { unexpected(); }
  void upsertSlice(EndpointSlice) override { unexpected(); }
  void removeSlice(const ObjectName&) override { unexpected(); }
  void replaceServices(std::vector<Service> all) override {
    std::lock_guard lock(mu_);
    state_.services = std::move(all);
  }
  void replaceSlices(std::vector<EndpointSlice> all) override {
    std::lock_guard lock(mu_);
    state_.history.push_back(all);
    state_.slices = std::move(all);
  }
  void synced(ResourceKind kind) override {
    std::lock_guard lock(mu_);
    state_.synced.insert(kind);
  }
  void problem(Problem p) override {
    std::lock_guard lock(mu_);
    state_.problems.push_back(std::move(p));
  }
  void problemCleared(const std::string& object) override {
    std::lock_guard lock(mu_);
    state_.cleared.push_back(object);
  }

  State state() const {
    std::lock_guard lock(mu_);
    return state_;
  }
  // Addresses currently published, over all slices, sorted.
  std::set<std::string> addresses() const {
    std::lock_guard lock(mu_);
    return addressesOf(state_.slices);
  }
  static std::set<std::string> addressesOf(const std::vector<EndpointSlice>& slices) {
    std::set<std::string> out;
    for (const auto& s : slices)
      for (const auto& e : s.endpoints) out.insert(e.addresses.front().toString());
    return out;
  }
  // Whether any replaceSlices() call delivered no endpoint at all.
  bool everPublishedEmpty() const {
    std::lock_guard lock(mu_);
    for (const auto& h : state_.history)
      if (addressesOf(h).empty()) return true;
    return false;
  }
  // Polls until `pred(addresses())` holds or `timeout` passes; returns whether it held.
  bool waitForAddresses(const std::function<bool(const std::set<std::string>&)>& pred,
                        std::chrono::milliseconds timeout) const {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (pred(addresses())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred(addresses());
  }
  bool waitForAddresses(const std::set<std::string>& want, std::chrono::milliseconds timeout) const {
    return waitForAddresses([&](const std::set<std::string>& a) { return a == want; }, timeout);
  }

 private:
  void unexpected() {
    std::lock_guard lock(mu_);
    state_.problems.push_back({"sink", "", "lease source used an incremental call"});
  }
  mutable std::mutex mu_;
  State state_;
};

// Forwards to another store until taken down; then every call fails with kUnavailable, as a
// store behind a broken network would.
class SwitchableStore final : public LeaseStore {
 public:
  explicit SwitchableStore(LeaseStore& inner) : inner_(inner) {}
  void setDown(bool down) { down_ = down; }

  std::string name() const override { return "switchable:" + inner_.name(); }
  Result<LeaseHandle> acquire(const LeaseSpec& spec, Clock::WallTime t) override {
    if (down_) return unavailable();
    return inner_.acquire(spec, t);
  }
  Status renew(LeaseHandle& h, Clock::WallTime t) override { return down_ ? unavailable() : inner_.renew(h, t); }
  Status release(const LeaseHandle& h) override { return down_ ? unavailable() : inner_.release(h); }
  Result<LeaseListing> list() override {
    if (down_) return unavailable();
    return inner_.list();
  }
  void setOnChange(std::function<void()> cb) override { inner_.setOnChange(std::move(cb)); }

 private:
  static Status unavailable() { return {Code::kUnavailable, "store is down (test)"}; }
  LeaseStore& inner_;
  std::atomic<bool> down_{false};
};

inline LeaseSpec leaseSpec(const std::string& identity, const char* address, uint16_t port,
                           std::chrono::milliseconds ttl) {
  LeaseSpec s;
  s.identity = identity;
  s.address = IPAddress::parse(address).value();
  s.ports = {{"http", Protocol::kTCP, port}};
  s.ttl = ttl;
  return s;
}

}  // namespace sluice::testing
