// sluice/kube_config.h — how to reach and authenticate to kube-apiserver.
//
// Three ways in, as client-go has them: a kubeconfig file (current or named context), the
// in-cluster service account, or an explicit server URL. Several server URLs may be given; the
// Kubernetes source fails over between them in order. Credentials: a static bearer token, a
// token file re-read when it may have rotated (projected service-account tokens), a client
// certificate, or an exec credential plugin (client.authentication.k8s.io ExecCredential) whose
// output is cached until its expirationTimestamp or until the server answers 401.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sluice/http_client.h"
#include "sluice/status.h"

namespace sluice::kube {

struct ExecConfig {
  std::string apiVersion = "client.authentication.k8s.io/v1";
  std::string command;
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  bool provideClusterInfo = false;
};

struct ClientConfig {
  std::vector<std::string> servers;  // "https://10.0.0.1:6443"; tried in order
  http::TlsConfig tls;
  std::string token;
  std::string tokenFile;
  std::chrono::milliseconds tokenFileReload{60000};  // client-go re-reads every minute
  std::optional<ExecConfig> exec;
};

// Reads a kubeconfig (YAML or JSON). `context` "" = current-context. Relative file paths are
// resolved against the kubeconfig's directory. Errors: NotFound (file), InvalidArgument (syntax,
// missing context/cluster/user, unsupported auth such as auth-provider).
Result<ClientConfig> loadKubeconfig(const std::string& path, const std::string& context = "");

// rest.InClusterConfig: KUBERNETES_SERVICE_HOST/PORT, token and CA from `serviceAccountDir`.
// FailedPrecondition when not running in a cluster.
Result<ClientConfig> inClusterConfig(
    const std::string& serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount");

// Produces request credentials from a ClientConfig. Thread-safe.
class Credentials {
 public:
  explicit Credentials(ClientConfig config);
  const ClientConfig& config() const { return config_; }
  // The Authorization header value ("" = none). Runs the exec plugin or re-reads the token file
  // when due. Errors: Unavailable (plugin failed or printed garbage, token file unreadable).
  Result<std::string> authorization();
  // TLS settings for a connection: the config's, plus a client certificate from the exec
  // plugin when it returned one.
  http::TlsConfig tls();
  // The server rejected the credentials (401): drop cached ones so the next call refreshes.
  void invalidate();
  uint64_t execRuns() const;

 private:
  Status refreshLocked();

  ClientConfig config_;
  mutable std::mutex mu_;
  std::string token_;
  std::string execCert_;
  std::string execKey_;
  std::chrono::system_clock::time_point expiry_{};
  std::chrono::steady_clock::time_point tokenReadAt_{};
  bool valid_ = false;
  uint64_t execRuns_ = 0;
};

// Runs an exec credential plugin once. Exposed for tests and for programs that want to check
// a kubeconfig at start-up.
struct ExecCredential {
  std::string token;
  std::string clientCertificateData;  // PEM
  std::string clientKeyData;          // PEM
  std::optional<std::chrono::system_clock::time_point> expiration;
};
Result<ExecCredential> runExecPlugin(const ExecConfig& exec, const std::string& server);

}  // namespace sluice::kube
