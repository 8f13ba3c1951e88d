// sluiced.h — the node proxy daemon's wiring (private to the program; everything reusable
// lives in the library).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <memory>

#include "sluice/kube_config.h"
#include "sluice/proxy_options.h"
#include "sluice/source.h"

namespace sluice {
class KubernetesSource;
struct NodeInfo;
class LeaseStore;
class LeaseSource;
class HttpServer;
}

namespace sluiced {

// Exit codes: 0 clean stop, 1 runtime failure (cannot open netlink, cannot bind), 2 bad usage
// or configuration.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Runs the daemon until SIGTERM/SIGINT; SIGHUP re-resolves `given` (the command-line flags,
// so the config file is read again) and applies what can change live.
int runDaemon(sluice::ProxyOptions options, std::vector<std::pair<std::string, std::string>> given);

// --cleanup: removes sluice's tables for every family and returns the exit code.
int runCleanup(const sluice::ProxyOptions& options);

// The Source --source names: FileSource for "file:PATH", KubernetesSource for "kubernetes"
// (--kubeconfig, else the in-cluster config; --master overrides the server). `kube`, when
// given, receives the Kubernetes source (for its counters) or stays untouched. `onNode`, when
// given, makes the Kubernetes source watch this node's Node object (nodeName(options)).
sluice::Result<std::unique_ptr<sluice::Source>> makeSource(
    const sluice::ProxyOptions& options, sluice::KubernetesSource** kube,
    std::function<void(const sluice::NodeInfo&)> onNode = {});

// A bearer token from a file (surrounding whitespace trimmed); errors name `flag`.
sluice::Result<std::string> readToken(const std::string& path, const std::string& flag);

// How sluiced reaches the API server: --kubeconfig, else the in-cluster config; --master
// overrides the server.
sluice::Result<sluice::kube::ClientConfig> kubeClientConfig(const sluice::ProxyOptions& options);

// The lease reconciler --lease-backend asks for: the store, the embedded store's HTTP API (not
// started yet), and the LeaseSource publishing the live leases as --lease-service's endpoints.
struct Leases {
  std::unique_ptr<sluice::LeaseStore> store;
  std::unique_ptr<sluice::HttpServer> api;  // embedded only
  std::unique_ptr<sluice::LeaseSource> source;
  Leases();
  ~Leases();  // stops the source, then the API
};
// nullptr when leases are off. Errors: unreadable token file, bad etcd URL, kube config.
sluice::Result<std::unique_ptr<Leases>> makeLeases(const sluice::ProxyOptions& options);

// `sluiced explain SRC DST:PORT/PROTO`: loads the desired state from the configured source,
// plans it with the daemon's ProxyConfig and prints what the rules do with that packet.
int runExplain(const sluice::ProxyOptions& options, const std::string& src, const std::string& dst, bool fromNode,
               bool json);

}  // namespace sluiced
