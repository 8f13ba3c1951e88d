#include "sluice/state_store.h"

#include <set>

namespace sluice {

// The sink one source writes to: every call is the store's, tagged with the source's name.
class StateStore::SourceSink : public StateSink {
 public:
  SourceSink(StateStore& store, std::string name) : store_(store), name_(std::move(name)) {}

  void upsertService(Service svc) override {
    run([&] { return store_.upsertService(name_, std::move(svc)); });
  }
  void removeService(const ObjectName& id) override {
    run([&] { return store_.removeService(name_, id); });
  }
  void upsertSlice(EndpointSlice slice) override {
    run([&] { return store_.upsertSlice(name_, std::move(slice)); });
  }
  void removeSlice(const ObjectName& sliceId) override {
    run([&] { return store_.removeSlice(name_, sliceId); });
  }
  void replaceServices(std::vector<Service> all) override {
    run([&] { return store_.replaceServices(name_, std::move(all)); });
  }
  void replaceSlices(std::vector<EndpointSlice> all) override {
    run([&] { return store_.replaceSlices(name_, std::move(all)); });
  }
  void synced(ResourceKind kind) override {
    run([&] {
      auto& st = store_.sources_[name_];
      bool& flag = kind == ResourceKind::kService ? st.servicesSynced : st.slicesSynced;
      bool was = flag;
      flag = true;
      return !was;  // becoming ready is a change: the runner may now program
    });
  }
  void problem(Problem p) override {
    std::lock_guard lock(store_.mu_);
    auto& list = store_.problems_[p.object];
    for (const auto& q : list)
      if (q == p) return;
    list.push_back(std::move(p));
  }
  void problemCleared(const std::string& object) override {
    std::lock_guard lock(store_.mu_);
    store_.problems_.erase(object);
  }
  const std::string& name() const { return name_; }

 private:
  template <class Fn>
  void run(Fn&& fn) {
    bool did;
    {
      std::lock_guard lock(store_.mu_);
      did = fn();
      store_.changed(did);
    }
    if (did) store_.notify();
  }

  StateStore& store_;
  const std::string name_;  // its address is the owner of what this source delivers
};

StateStore::StateStore() = default;
StateStore::~StateStore() = default;

StateSink& StateStore::sink(const std::string& sourceName) {
  std::lock_guard lock(mu_);
  auto& slot = sinks_[sourceName];
  if (!slot) {
    slot = std::make_unique<SourceSink>(*this, sourceName);
    sources_.emplace(sourceName, SourceState{});
    if (!defaultOwner_) defaultOwner_ = &slot->name();
  }
  return *slot;
}

void StateStore::setOnChange(std::function<void()> onChange) {
  std::lock_guard lock(callbackMu_);
  onChange_ = std::move(onChange);
}

bool StateStore::ready() const {
  std::lock_guard lock(mu_);
  if (sources_.empty()) return false;
  for (const auto& [_, st] : sources_)
    if (!st.servicesSynced || !st.slicesSynced) return false;
  return true;
}

std::optional<StateStore::Clock::time_point> StateStore::takeOldestChangeLocked() {
  return std::exchange(oldestChange_, std::nullopt);
}

void StateStore::restoreOldestChangeLocked(Clock::time_point t) {
  if (!oldestChange_ || t < *oldestChange_) oldestChange_ = t;
}

std::map<std::string, std::vector<Problem>> StateStore::problems() const {
  std::lock_guard lock(mu_);
  return problems_;
}

const std::string* StateStore::ownerOf(const OwnerMap& owners, const ObjectName& id, bool present) const {
  auto it = owners.find(id);
  if (it != owners.end()) return it->second;
  return present ? defaultOwner_ : nullptr;  // everything in the Snapshot came from a sink
}

void StateStore::setOwner(OwnerMap& owners, const ObjectName& id, const std::string& src) {
  if (&src == defaultOwner_)
    owners.erase(id);
  else
    owners[id] = &src;
}

std::string StateStore::serviceOwner(const ObjectName& id) const {
  std::lock_guard lock(mu_);
  const std::string* owner = ownerOf(serviceOwner_, id, snapshot_.service(id) != nullptr);
  return owner ? *owner : "";
}

std::string StateStore::sliceOwner(const ObjectName& id) const {
  std::lock_guard lock(mu_);
  const std::string* owner = ownerOf(sliceOwner_, id, snapshot_.sliceService(id) != nullptr);
  return owner ? *owner : "";
}

// An identical re-delivery (every relist re-sends everything) is not a change: it would only
// make the planner re-plan Services that did not change.
bool StateStore::upsertService(const std::string& src, Service svc) {
  setOwner(serviceOwner_, svc.id, src);
  const Service* old = snapshot_.service(svc.id);
  if (old && *old == svc) return false;
  snapshot_.upsertService(std::move(svc));
  return true;
}

// A source removes only what it delivered: another source's object of the same name stays.
bool StateStore::removeService(const std::string& src, const ObjectName& id) {
  const std::string* owner = ownerOf(serviceOwner_, id, snapshot_.service(id) != nullptr);
  if (!owner || *owner != src) return false;
  serviceOwner_.erase(id);
  snapshot_.removeService(id);
  return true;
}

bool StateStore::upsertSlice(const std::string& src, EndpointSlice slice) {
  setOwner(sliceOwner_, slice.id, src);
  ObjectName svc{slice.id.ns, slice.serviceName};
  const ObjectName* filed = snapshot_.sliceService(slice.id);
  if (filed && *filed == svc) {
    const auto& current = snapshot_.slicesFor(svc);
    auto it = current.find(slice.id);
    if (it != current.end() && it->second == slice) return false;
  }
  snapshot_.upsertSlice(std::move(slice));
  return true;
}

bool StateStore::removeSlice(const std::string& src, const ObjectName& id) {
  const std::string* owner = ownerOf(sliceOwner_, id, snapshot_.sliceService(id) != nullptr);
  if (!owner || *owner != src) return false;
  sliceOwner_.erase(id);
  snapshot_.removeSlice(id);
  return true;
}

namespace {

// replace*() of one source: remove what it owns and no longer lists (`owned` calls its argument
// with every object it owns), then upsert the rest.
template <class T, class Owned, class Remove, class Upsert>
bool replaceOwned(std::vector<T> all, Owned&& owned, Remove&& remove, Upsert&& upsert) {
  std::set<ObjectName> keep;
  for (const auto& x : all) keep.insert(x.id);
  std::vector<ObjectName> gone;
  owned([&](const ObjectName& id) {
    if (!keep.count(id)) gone.push_back(id);
  });
  bool did = false;
  for (const auto& id : gone) did |= remove(id);
  for (auto& x : all) did |= upsert(std::move(x));
  return did;
}

}  // namespace

bool StateStore::replaceServices(const std::string& src, std::vector<Service> all) {
  auto owned = [&](auto&& fn) {
    for (const auto& [id, _] : snapshot_.services())
      if (*ownerOf(serviceOwner_, id, true) == src) fn(id);
  };
  return replaceOwned(
      std::move(all), owned, [&](const ObjectName& id) { return removeService(src, id); },
      [&](Service x) { return upsertService(src, std::move(x)); });
}

bool StateStore::replaceSlices(const std::string& src, std::vector<EndpointSlice> all) {
  auto owned = [&](auto&& fn) {
    for (const auto& [service, slices] : snapshot_.slices())
      for (const auto& [id, _] : slices)
        if (*ownerOf(sliceOwner_, id, true) == src) fn(id);
  };
  return replaceOwned(
      std::move(all), owned, [&](const ObjectName& id) { return removeSlice(src, id); },
      [&](EndpointSlice x) { return upsertSlice(src, std::move(x)); });
}

void StateStore::changed(bool didChange) {
  if (didChange && !oldestChange_) oldestChange_ = Clock::now();
}

// The callback runs under callbackMu_, so once setOnChange(nullptr) returns no call of the old
// callback is still running (the runner may then be destroyed).
void StateStore::notify() {
  std::lock_guard lock(callbackMu_);
  if (onChange_) onChange_();
}

}  // namespace sluice
