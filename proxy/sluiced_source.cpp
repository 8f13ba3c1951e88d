// The source --source names, and `sluiced explain`: both read desired state the same way.
#include <chrono>
#include <iostream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sluice/explain.h"
#include "sluice/file_source.h"
#include "sluice/kube_source.h"
#include "sluice/state_store.h"
#include "sluiced.h"

namespace sluiced {

using namespace sluice;

Result<kube::ClientConfig> kubeClientConfig(const ProxyOptions& options) {
  // A kubeconfig when given, else the in-cluster config; --master overrides the server (alone,
  // it is a plain insecure-by-URL client as kube-proxy's --master).
  kube::ClientConfig client;
  if (!options.kubeconfig.empty()) {
    auto loaded = kube::loadKubeconfig(options.kubeconfig);
    if (!loaded) return loaded.status().withContext("--kubeconfig");
    client = std::move(loaded).value();
  } else if (options.master.empty()) {
    auto loaded = kube::inClusterConfig();
    if (!loaded) return loaded.status().withContext("in-cluster configuration");
    client = std::move(loaded).value();
  }
  if (!options.master.empty()) client.servers = {options.master};
  return client;
}

Result<std::unique_ptr<Source>> makeSource(const ProxyOptions& options, sluice::KubernetesSource** kube,
                                           std::function<void(const NodeInfo&)> onNode) {
  const std::string source = resolveSource(options);
  if (source.rfind("file:", 0) == 0) {
    FileSourceOptions fo;
    fo.path = source.substr(5);
    return std::unique_ptr<Source>(std::make_unique<FileSource>(fo));
  }
  auto client = kubeClientConfig(options);
  if (!client) return client.status();
  KubernetesSourceOptions ko;
  ko.client = std::move(client).value();
  if (onNode) {
    ko.watchNode = nodeName(options);
    ko.onNode = std::move(onNode);
  }
  auto k = std::make_unique<KubernetesSource>(std::move(ko));
  if (kube) *kube = k.get();
  return std::unique_ptr<Source>(std::move(k));
}

int runExplain(const ProxyOptions& options, const std::string& src, const std::string& dst, bool fromNode,
               bool json) {
  auto request = parseExplainRequest(src, dst);
  if (!request) {
    std::cerr << "sluiced explain: " << request.status().message() << "\n";
    return kExitUsage;
  }
  request->fromNode = fromNode;
  auto source = makeSource(options, nullptr);
  if (!source) {
    std::cerr << "sluiced explain: " << source.status().toString() << "\n";
    return kExitUsage;
  }
  // The daemon's path: the source delivers into a StateStore; explain once it is complete.
  StateStore store;
  if (Status st = (*source)->start(store.sink((*source)->name())); !st) {
    std::cerr << "sluiced explain: " << st.toString() << "\n";
    return kExitFailure;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!store.ready() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const bool ready = store.ready();
  Snapshot snapshot = store.withSnapshot([](Snapshot& s) { return s; });
  (*source)->stop();
  if (!ready) {
    std::cerr << "sluiced explain: " << (*source)->name() << " did not deliver its state within 30 s\n";
    return kExitFailure;
  }
  auto ex = explain(snapshot, toProxyConfig(options, request->dst.family()), *request);
  if (!ex) {
    std::cerr << "sluiced explain: " << ex.status().toString() << "\n";
    return kExitFailure;
  }
  std::cout << (json ? ex->toJson() + "\n" : ex->toString());
  return kExitOk;
}

}  // namespace sluiced
