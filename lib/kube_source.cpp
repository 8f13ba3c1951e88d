#include "sluice/kube_source.h"

#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kube_decode.h"
#include "kube_reflector.h"

namespace sluice {

using nlohmann::json;

namespace {

// Remembers which objects are currently reported as problems, so the sink hears when one is
// good again (or gone).
class ProblemBook {
 public:
  explicit ProblemBook(StateSink& sink) : sink_(sink) {}
  void bad(Problem p) {
    active_.insert(p.object);
    sink_.problem(std::move(p));
  }
  void good(const std::string& object) {
    if (active_.erase(object)) sink_.problemCleared(object);
  }
  // After a relist: clear everything not reported bad in this round.
  void keepOnly(const std::set<std::string>& stillBad) {
    for (auto it = active_.begin(); it != active_.end();) {
      if (stillBad.count(*it)) {
        ++it;
      } else {
        sink_.problemCleared(*it);
        it = active_.erase(it);
      }
    }
  }

 private:
  StateSink& sink_;
  std::set<std::string> active_;
};

class ServiceHandler : public kube::ReflectorHandler {
 public:
  ServiceHandler(StateSink& sink, std::atomic<uint64_t>& invalid)
      : sink_(sink), problems_(sink), invalid_(invalid) {}

  void replace(std::vector<json> items) override {
    std::vector<Service> all;
    std::set<std::string> bad;
    for (const auto& item : items) {
      auto d = kube::decodeService(item);
      if (d) {
        all.push_back(std::move(*d.value));
      } else {
        ++invalid_;
        bad.insert(d.error->object);
        problems_.bad(*d.error);
      }
    }
    problems_.keepOnly(bad);
    sink_.replaceServices(std::move(all));
    if (!synced_) sink_.synced(ResourceKind::kService);
    synced_ = true;
  }

  void apply(const std::string& type, const json& obj) override {
    ObjectName id = kube::objectName(obj);
    std::string label = "Service " + id.toString();
    if (type == "DELETED") {
      problems_.good(label);
      sink_.removeService(id);
      return;
    }
    auto d = kube::decodeService(obj);
    if (d) {
      problems_.good(label);
      sink_.upsertService(std::move(*d.value));
    } else {
      // The last good version is stale now: dropping it is safer than proxying to it.
      ++invalid_;
      problems_.bad(*d.error);
      sink_.removeService(id);
    }
  }

 private:
  StateSink& sink_;
  ProblemBook problems_;
  std::atomic<uint64_t>& invalid_;
  bool synced_ = false;
};

// EndpointSlices, or legacy Endpoints converted to slices (several slices per Endpoints).
class SliceHandler : public kube::ReflectorHandler {
 public:
  SliceHandler(StateSink& sink, std::atomic<uint64_t>& invalid, bool legacy)
      : sink_(sink), problems_(sink), invalid_(invalid), legacy_(legacy) {}

  void replace(std::vector<json> items) override {
    std::vector<EndpointSlice> all;
    std::set<std::string> bad;
    owned_.clear();
    for (const auto& item : items) {
      auto slices = decode(item);
      if (!slices) {
        ++invalid_;
        bad.insert(slices.status().message());
        continue;
      }
      for (auto& s : *slices) all.push_back(std::move(s));
    }
    problems_.keepOnly(bad);
    sink_.replaceSlices(std::move(all));
    if (!synced_) sink_.synced(ResourceKind::kEndpointSlice);
    synced_ = true;
  }

  void apply(const std::string& type, const json& obj) override {
    ObjectName id = kube::objectName(obj);
    if (type == "DELETED") return settle(id, {}, true);
    auto slices = decode(obj);
    if (!slices) {
      ++invalid_;
      return settle(id, {}, false);
    }
    settle(id, std::move(*slices), true);
  }

  // Watch events of valid slices arrive decoded by the stream decoder's fast path.
  bool wantsSlices() const override { return !legacy_; }
  void applySlice(const std::string& type, EndpointSlice slice) override {
    ObjectName id = slice.id;
    std::vector<EndpointSlice> now;
    if (type != "DELETED") now.push_back(std::move(slice));
    settle(id, std::move(now), true);
  }

 private:
  // Delivers the slices object `id` contributes now (none when deleted or invalid) and removes
  // what it contributed before and no longer does. `good`: its problem, if any, is over.
  void settle(const ObjectName& id, std::vector<EndpointSlice> now, bool good) {
    if (good) problems_.good(std::string(legacy_ ? "Endpoints " : "EndpointSlice ") + id.toString());
    std::set<ObjectName> keep;
    for (const auto& s : now) keep.insert(s.id);
    for (const auto& old : owned_[id])
      if (!keep.count(old)) sink_.removeSlice(old);
    owned_[id] = keep;
    if (owned_[id].empty()) owned_.erase(id);
    for (auto& s : now) sink_.upsertSlice(std::move(s));
  }

  // Decodes one object; on failure reports the problem and returns its object label as error.
  Result<std::vector<EndpointSlice>> decode(const json& obj) {
    ObjectName id = kube::objectName(obj);
    std::vector<EndpointSlice> out;
    std::optional<Problem> error;
    if (legacy_) {
      auto d = kube::decodeEndpoints(obj);
      if (d) out = std::move(*d.value); else error = d.error;
    } else {
      auto d = kube::decodeEndpointSlice(obj);
      if (d) out.push_back(std::move(*d.value)); else error = d.error;
    }
    if (error) {
      std::string label = error->object;
      problems_.bad(*error);
      return Status(Code::kInvalidArgument, label);
    }
    std::set<ObjectName>& mine = owned_[id];
    for (const auto& s : out) mine.insert(s.id);
    return out;
  }

  StateSink& sink_;
  ProblemBook problems_;
  std::atomic<uint64_t>& invalid_;
  bool legacy_;
  bool synced_ = false;
  std::map<ObjectName, std::set<ObjectName>> owned_;  // Endpoints/slice → slices delivered
};

// This node's Node object (fieldSelector metadata.name): NodeInfo to the user's callback,
// decode failures to the sink as problems. Never calls synced(): the Services and slices must
// not wait for a Node that may not exist or may be forbidden to read.
class NodeHandler : public kube::ReflectorHandler {
 public:
  NodeHandler(StateSink& sink, std::atomic<uint64_t>& invalid, std::string name,
              std::function<void(const NodeInfo&)> onNode)
      : problems_(sink), invalid_(invalid), name_(std::move(name)), onNode_(std::move(onNode)) {}

  void replace(std::vector<json> items) override {
    // The selector leaves at most one item; anything else is not this node.
    std::set<std::string> bad;
    const json* mine = nullptr;
    for (const auto& item : items)
      if (kube::objectName(item).name == name_) mine = &item;
    if (!mine) {
      problems_.keepOnly(bad);
      if (!reportedAbsent_)
        spdlog::warn("kubernetes: Node {} not found; it counts as eligible (/healthz) and the watch "
                     "goes on until it appears", name_);
      reportedAbsent_ = true;
      return deliver(absent());
    }
    if (!decode(*mine)) bad.insert(label());
    problems_.keepOnly(bad);
  }

  void apply(const std::string& type, const json& obj) override {
    if (kube::objectName(obj).name != name_) return;
    if (type == "DELETED") {
      problems_.good(label());
      spdlog::warn("kubernetes: Node {} was deleted", name_);
      return deliver(absent());
    }
    decode(obj);
  }

 private:
  std::string label() const { return "Node " + name_; }
  NodeInfo absent() const {
    NodeInfo n;
    n.name = name_;
    return n;
  }
  // A rejected Node keeps the last good one in force: eligibility and zone stay as they were.
  bool decode(const json& obj) {
    auto d = kube::decodeNode(obj);
    if (!d) {
      ++invalid_;
      problems_.bad(*d.error);
      return false;
    }
    problems_.good(label());
    reportedAbsent_ = false;
    deliver(*d.value);
    return true;
  }
  void deliver(const NodeInfo& node) {
    if (onNode_) onNode_(node);
  }

  ProblemBook problems_;
  std::atomic<uint64_t>& invalid_;
  std::string name_;
  std::function<void(const NodeInfo&)> onNode_;
  bool reportedAbsent_ = false;
};

}  // namespace

struct KubernetesSource::Impl {
  KubernetesSourceOptions options;
  std::atomic<uint64_t> invalid{0};
  std::unique_ptr<ServiceHandler> services;
  std::unique_ptr<SliceHandler> slices;
  std::unique_ptr<kube::Reflector> serviceReflector;
  std::unique_ptr<kube::Reflector> sliceReflector;
  std::unique_ptr<NodeHandler> node;
  std::unique_ptr<kube::Reflector> nodeReflector;  // with options.watchNode only
};

KubernetesSource::KubernetesSource(KubernetesSourceOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}

KubernetesSource::~KubernetesSource() { stop(); }

std::string KubernetesSource::name() const {
  const auto& servers = impl_->options.client.servers;
  return "kubernetes:" + (servers.empty() ? std::string() : servers.front());
}

Status KubernetesSource::start(StateSink& sink) {
  if (impl_->serviceReflector) return Status(Code::kFailedPrecondition, "already started");
  const auto& o = impl_->options;
  if (o.client.servers.empty()) return Status(Code::kInvalidArgument, "kubernetes: no server URL");
  std::vector<http::Url> urls;
  for (const auto& s : o.client.servers) {
    auto url = http::parseUrl(s);
    if (!url) return url.status().withContext("kubernetes");
    urls.push_back(*url);
  }
  auto servers = std::make_shared<kube::ServerSet>(std::move(urls));
  auto credentials = std::make_shared<kube::Credentials>(o.client);
  if (auto auth = credentials->authorization(); !auth) return auth.status().withContext("kubernetes");

  kube::ReflectorOptions base;
  base.labelSelector = o.labelSelector;
  base.pageSize = o.pageSize;
  base.lease = o.watchLease;
  base.minWatchTimeout = o.minWatchTimeout;
  base.requestTimeout = o.requestTimeout;
  base.connectTimeout = o.connectTimeout;
  base.backoffInitial = o.backoffInitial;
  base.backoffMax = o.backoffMax;
  kube::ReflectorOptions svc = base, eps = base;
  svc.collectionPath = "/api/v1/services";
  eps.collectionPath = o.legacyEndpoints ? "/api/v1/endpoints" : "/apis/discovery.k8s.io/v1/endpointslices";

  impl_->services = std::make_unique<ServiceHandler>(sink, impl_->invalid);
  impl_->slices = std::make_unique<SliceHandler>(sink, impl_->invalid, o.legacyEndpoints);
  impl_->serviceReflector = std::make_unique<kube::Reflector>(servers, credentials, svc, *impl_->services);
  impl_->sliceReflector = std::make_unique<kube::Reflector>(servers, credentials, eps, *impl_->slices);
  impl_->serviceReflector->start();
  impl_->sliceReflector->start();
  if (!o.watchNode.empty()) {
    kube::ReflectorOptions node = base;
    node.collectionPath = "/api/v1/nodes";
    node.labelSelector.clear();
    node.fieldSelector = "metadata.name=" + o.watchNode;
    node.quietNote = fmt::format(
        "(Node {} unreadable: /healthz keeps the node eligible and the zone stays as it was; retrying "
        "with backoff, further failures are logged at debug level)",
        o.watchNode);
    impl_->node = std::make_unique<NodeHandler>(sink, impl_->invalid, o.watchNode, o.onNode);
    impl_->nodeReflector = std::make_unique<kube::Reflector>(servers, credentials, node, *impl_->node);
    impl_->nodeReflector->start();
  }
  return {};
}

void KubernetesSource::stop() {
  for (auto& r : {impl_->serviceReflector.get(), impl_->sliceReflector.get(), impl_->nodeReflector.get()})
    if (r) r->stop();
}

KubernetesSourceStats KubernetesSource::stats() const {
  KubernetesSourceStats out;
  out.invalidObjects = impl_->invalid;
  for (const auto* r : {impl_->serviceReflector.get(), impl_->sliceReflector.get(), impl_->nodeReflector.get()}) {
    if (!r) continue;
    kube::ReflectorStats s = r->stats();
    out.lists += s.lists;
    out.relists += s.relists;
    out.watches += s.watches;
    out.events += s.events;
    out.bookmarks += s.bookmarks;
    out.expired += s.expired;
    out.leaseExpiries += s.leaseExpiries;
    out.failovers += s.failovers;
    out.errors += s.errors;
  }
  return out;
}

}  // namespace sluice
