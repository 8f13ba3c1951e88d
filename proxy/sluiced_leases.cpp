// --lease-backend: the store, the embedded store's HTTP API and the LeaseSource (library
// pieces; this file only chooses and configures them).
#include <cerrno>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "sluice/http_server.h"
#include "sluice/lease.h"
#include "sluice/lease_etcd.h"
#include "sluice/lease_http.h"
#include "sluice/lease_kube.h"
#include "sluiced.h"

namespace sluiced {

using namespace sluice;

Result<std::string> readToken(const std::string& path, const std::string& flag) {
  std::ifstream in(path);
  if (!in) return Status::fromErrno(errno ? errno : ENOENT, fmt::format("{}: cannot read {}", flag, path));
  std::ostringstream text;
  text << in.rdbuf();
  std::string token = text.str();
  token.erase(token.find_last_not_of(" \t\r\n") + 1);
  token.erase(0, token.find_first_not_of(" \t\r\n"));
  if (token.empty()) return Status(Code::kInvalidArgument, fmt::format("{}: {} is empty", flag, path));
  return token;
}

Leases::Leases() = default;

Leases::~Leases() {
  // The source first: its shutdown pass still lists the store the API serves.
  if (source) source->stop();
  if (api) api->stop();
}

Result<std::unique_ptr<Leases>> makeLeases(const ProxyOptions& options) {
  const std::string backend = resolveLeaseBackend(options);
  if (backend.empty()) return std::unique_ptr<Leases>();
  auto leases = std::make_unique<Leases>();
  const ObjectName& svc = options.leaseService;
  if (backend == "embedded") {
    auto token = readToken(options.leaseTokenFile, "--lease-token-file");
    if (!token) return token.status();
    leases->store = std::make_unique<EmbeddedLeaseStore>();
    HttpServerOptions so;
    if (Status st = parseHostPort(options.leaseBindAddress, &so.address, &so.port); !st)
      return st.withContext("--lease-bind-address");
    so.netns = options.netns;
    leases->api = std::make_unique<HttpServer>(so);
    if (Status st = serveLeaseApi(*leases->api, *leases->store, *token); !st) return st;
  } else if (backend == "etcd") {
    EtcdLeaseStoreConfig ec;
    ec.endpoint = options.leaseEtcdEndpoints.front();
    ec.tls.caFile = options.leaseEtcdCAFile;
    ec.tls.certFile = options.leaseEtcdCertFile;
    ec.tls.keyFile = options.leaseEtcdKeyFile;
    // One group per Service: PREFIX + NAMESPACE/NAME/ + identity.
    ec.prefix = options.leasePrefix + svc.ns + "/" + svc.name + "/";
    auto store = EtcdLeaseStore::create(ec);
    if (!store) return store.status().withContext("--lease-etcd-endpoints");
    leases->store = std::move(store).value();
  } else {
    auto client = kubeClientConfig(options);
    if (!client) return client.status();
    KubeLeaseStoreConfig kc;
    kc.client = std::move(client).value();
    kc.ns = svc.ns;  // Lease objects "<service>-<identity>" next to the Service
    kc.group = svc.name;
    auto store = KubeLeaseStore::create(kc);
    if (!store) return store.status().withContext("--lease-backend kubernetes");
    leases->store = std::move(store).value();
  }
  LeaseReconcilerConfig rc;
  rc.service = svc;
  rc.interval = std::chrono::duration_cast<std::chrono::milliseconds>(options.leaseInterval);
  leases->source = std::make_unique<LeaseSource>(*leases->store, rc);
  return leases;
}

}  // namespace sluiced
