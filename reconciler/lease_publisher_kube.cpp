// KubeEndpointsPublisher: the reconciler's endpoint set written to the API server as
// EndpointSlice(s) and legacy Endpoints, as kube-apiserver's lease reconciler writes
// default/kubernetes (spec kubernetes-api §3.3 step 5).
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "../lib/kube_reflector.h"
#include "../lib/kube_rest.h"
#include "sluice/lease_kube.h"

namespace sluice {
namespace {

using json = nlohmann::json;

constexpr const char* kServiceNameLabel = "kubernetes.io/service-name";
constexpr const char* kManagedByLabel = "endpointslice.kubernetes.io/managed-by";
constexpr const char* kSkipMirrorLabel = "endpointslice.kubernetes.io/skip-mirror";

json portsJson(const std::vector<EndpointPort>& ports) {
  json out = json::array();
  for (const EndpointPort& p : ports)
    out.push_back({{"name", p.name}, {"port", p.port}, {"protocol", protocolName(p.protocol)}});
  return out;
}

// The parts of an EndpointSlice we own: what is compared to decide whether to write.
json sliceBody(const EndpointSlice& s) {
  json endpoints = json::array();
  for (const Endpoint& e : s.endpoints) {
    json ep = {{"addresses", {e.addresses.front().toString()}},
               {"conditions", {{"ready", e.ready}, {"serving", e.serving}, {"terminating", e.terminating}}}};
    if (!e.nodeName.empty()) ep["nodeName"] = e.nodeName;
    if (!e.zone.empty()) ep["zone"] = e.zone;
    endpoints.push_back(std::move(ep));
  }
  return {{"addressType", s.addressType == IPFamily::kV4 ? "IPv4" : "IPv6"},
          {"endpoints", endpoints},
          {"ports", portsJson(s.ports)}};
}

// core/v1 Endpoints: one subset per slice (a subset has one port list, like a slice).
json endpointsBody(const std::vector<EndpointSlice>& slices) {
  json subsets = json::array();
  for (const EndpointSlice& s : slices) {
    json addresses = json::array(), notReady = json::array();
    for (const Endpoint& e : s.endpoints) {
      json a = {{"ip", e.addresses.front().toString()}};
      if (!e.nodeName.empty()) a["nodeName"] = e.nodeName;
      (e.ready ? addresses : notReady).push_back(std::move(a));
    }
    if (addresses.empty() && notReady.empty()) continue;
    json subset = {{"addresses", addresses}, {"ports", portsJson(s.ports)}};
    if (!notReady.empty()) subset["notReadyAddresses"] = notReady;
    subsets.push_back(std::move(subset));
  }
  return {{"subsets", subsets}};
}

}  // namespace

struct KubeEndpointsPublisher::Impl {
  KubeEndpointsPublisherConfig cfg;
  std::unique_ptr<kube::RestClient> client;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::optional<std::vector<EndpointSlice>> desired;  // nullopt until the first replaceSlices
  uint64_t desiredVersion = 0;  // bumped by every replaceSlices
  uint64_t writtenVersion = 0;
  bool stopping = false;
  Stats stats;
  std::thread writer;
  std::mutex publishMu;  // one publish at a time (writer thread vs publishNow)

  const std::string& ns() const { return cfg.service.ns; }
  std::string slicesPath() const { return "/apis/discovery.k8s.io/v1/namespaces/" + ns() + "/endpointslices"; }
  std::string endpointsPath() const { return "/api/v1/namespaces/" + ns() + "/endpoints"; }

  void count(uint64_t Stats::*field) {
    std::lock_guard lock(mu);
    ++(stats.*field);
  }

  // Makes the object at `collection/name` carry `owned` (merged over what is there, so fields
  // others set — annotations, ownerReferences — survive): create when absent, update with the
  // resourceVersion just read, and start over after a 409 (three rounds).
  Status ensure(const std::string& collection, const std::string& name, const json& labels, const json& owned,
                const std::string& what) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto got = client->call("GET", collection + "/" + name);
      if (!got) return got.status();
      if (got->status == 404) {
        json obj = owned;
        obj["metadata"] = {{"name", name}, {"namespace", ns()}, {"labels", labels}};
        auto created = client->call("POST", collection, obj);
        if (!created) return created.status();
        if (created->ok()) {
          count(&Stats::writes);
          return Status::ok();
        }
        if (created->status != 409) return created->toStatus("creating " + what);
        count(&Stats::conflicts);
        continue;
      }
      if (!got->ok()) return got->toStatus("reading " + what);
      json obj = got->body;
      json before = obj;
      for (auto& [k, v] : owned.items()) obj[k] = v;
      for (auto& [k, v] : labels.items()) obj["metadata"]["labels"][k] = v;
      if (obj == before) return Status::ok();  // already as wanted: no write, no new RV
      auto updated = client->call("PUT", collection + "/" + name, obj);
      if (!updated) return updated.status();
      if (updated->ok()) {
        count(&Stats::writes);
        return Status::ok();
      }
      if (updated->status != 409 && updated->status != 404) return updated->toStatus("updating " + what);
      count(&Stats::conflicts);
    }
    return {Code::kAborted, what + ": conflicted three times in a row"};
  }

  Status write(const std::vector<EndpointSlice>& slices) {
    const std::string svc = cfg.service.name;
    json labels = {{kServiceNameLabel, svc}, {kManagedByLabel, cfg.managedBy}};
    std::set<std::string> wanted;
    for (const EndpointSlice& s : slices) {
      const std::string name = slices.size() == 1 ? svc : s.id.name;
      wanted.insert(name);
      if (Status st = ensure(slicesPath(), name, labels, sliceBody(s), "EndpointSlice " + ns() + "/" + name); !st)
        return st;
    }
    // Slices we wrote earlier under other names (the set had another shape then).
    const std::string selector = std::string(kServiceNameLabel) + "=" + svc + "," + kManagedByLabel + "=" + cfg.managedBy;
    auto listed = client->call("GET", slicesPath() + "?labelSelector=" + kube::queryEscape(selector));
    if (!listed) return listed.status();
    if (!listed->ok()) return listed->toStatus("listing EndpointSlices of " + cfg.service.toString());
    for (const json& item : listed->body.value("items", json::array())) {
      const std::string name = item.value("/metadata/name"_json_pointer, std::string());
      if (wanted.count(name)) continue;
      auto del = client->call("DELETE", slicesPath() + "/" + name);
      if (!del) return del.status();
      if (!del->ok() && del->status != 404) return del->toStatus("deleting EndpointSlice " + ns() + "/" + name);
      count(&Stats::writes);
    }
    if (cfg.legacyEndpoints) {
      json epLabels = {{kSkipMirrorLabel, "true"}};
      if (Status st = ensure(endpointsPath(), svc, epLabels, endpointsBody(slices), "Endpoints " + cfg.service.toString());
          !st)
        return st;
    }
    return Status::ok();
  }

  Status publish() {
    std::lock_guard publishLock(publishMu);
    std::vector<EndpointSlice> slices;
    uint64_t version;
    {
      std::lock_guard lock(mu);
      if (!desired || writtenVersion == desiredVersion) return Status::ok();
      slices = *desired;
      version = desiredVersion;
    }
    Status st = write(slices);
    std::lock_guard lock(mu);
    if (!st) {
      stats.failures++;
      return st;
    }
    writtenVersion = std::max(writtenVersion, version);
    stats.published++;
    return st;
  }

  void run() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return stopping || (desired && writtenVersion != desiredVersion); });
      if (stopping) return;
      lock.unlock();
      Status st = publish();
      if (!st) spdlog::warn("publishing endpoints of {}: {}", cfg.service.toString(), st.toString());
      lock.lock();
      if (!st) cv.wait_for(lock, cfg.retryInterval, [&] { return stopping; });
    }
  }
};

Result<std::unique_ptr<KubeEndpointsPublisher>> KubeEndpointsPublisher::create(KubeEndpointsPublisherConfig config) {
  if (config.service.name.empty() || config.service.ns.empty())
    return Status(Code::kInvalidArgument, "endpoints publisher: no Service namespace/name");
  kube::RestOptions ro{config.requestTimeout, config.connectTimeout};
  auto client = kube::RestClient::create(config.client, ro);
  if (!client) return client.status();
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(config);
  impl->client = std::move(*client);
  Impl* raw = impl.get();
  impl->writer = std::thread([raw] { raw->run(); });
  return std::unique_ptr<KubeEndpointsPublisher>(new KubeEndpointsPublisher(std::move(impl)));
}

KubeEndpointsPublisher::KubeEndpointsPublisher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

KubeEndpointsPublisher::~KubeEndpointsPublisher() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->writer.joinable()) impl_->writer.join();
}

void KubeEndpointsPublisher::replaceSlices(std::vector<EndpointSlice> all) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->desired = all;
    impl_->desiredVersion++;
  }
  impl_->cv.notify_all();
  if (impl_->cfg.next) impl_->cfg.next->replaceSlices(std::move(all));
}

// The rest only passes through: the publisher writes endpoints, not Services.
void KubeEndpointsPublisher::upsertService(Service svc) {
  if (impl_->cfg.next) impl_->cfg.next->upsertService(std::move(svc));
}
void KubeEndpointsPublisher::removeService(const ObjectName& id) {
  if (impl_->cfg.next) impl_->cfg.next->removeService(id);
}
void KubeEndpointsPublisher::upsertSlice(EndpointSlice slice) {
  if (impl_->cfg.next) impl_->cfg.next->upsertSlice(std::move(slice));
}
void KubeEndpointsPublisher::removeSlice(const ObjectName& sliceId) {
  if (impl_->cfg.next) impl_->cfg.next->removeSlice(sliceId);
}
void KubeEndpointsPublisher::replaceServices(std::vector<Service> all) {
  if (impl_->cfg.next) impl_->cfg.next->replaceServices(std::move(all));
}
void KubeEndpointsPublisher::synced(ResourceKind kind) {
  if (impl_->cfg.next) impl_->cfg.next->synced(kind);
}
void KubeEndpointsPublisher::problem(Problem problem) {
  if (impl_->cfg.next) impl_->cfg.next->problem(std::move(problem));
}
void KubeEndpointsPublisher::problemCleared(const std::string& object) {
  if (impl_->cfg.next) impl_->cfg.next->problemCleared(object);
}

Status KubeEndpointsPublisher::publishNow() { return impl_->publish(); }

KubeEndpointsPublisher::Stats KubeEndpointsPublisher::stats() const {
  std::lock_guard lock(impl_->mu);
  Stats s = impl_->stats;
  s.pending = impl_->desired && impl_->writtenVersion != impl_->desiredVersion;
  return s;
}

}  // namespace sluice
