// kube_rest.h (private) — single requests to kube-apiserver: create, get, update, delete, list.
//
// The Kubernetes source only reads (kube_reflector.h); the lease store and the endpoint
// publisher also write. Both go through the same pieces: the servers of kube_config's
// ClientConfig in failover order (ServerSet), its Credentials (bearer token, token file, client
// certificate, exec plugin; 401 drops cached credentials) and http::Connection over TLS.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "kube_reflector.h"
#include "sluice/http_client.h"
#include "sluice/kube_config.h"
#include "sluice/status.h"

namespace sluice::kube {

struct RestOptions {
  std::chrono::milliseconds requestTimeout{10000};
  std::chrono::milliseconds connectTimeout{5000};
};

// What a write or read answered: the HTTP status and the decoded body (null when not JSON).
struct RestReply {
  int status = 0;
  nlohmann::json body;
  bool ok() const { return status >= 200 && status < 300; }
  // The Status object's reason ("AlreadyExists", "Conflict", "NotFound"), "" when none.
  std::string reason() const;
  // A sluice Status for a non-2xx reply: 404 → kNotFound, 409 → kAborted, 401/403 →
  // kPermissionDenied, 400/422 → kInvalidArgument, else kUnavailable. `what` names the call.
  Status toStatus(const std::string& what) const;
};

class RestClient {
 public:
  // kInvalidArgument when the config has no server or an unparsable one.
  static Result<std::unique_ptr<RestClient>> create(ClientConfig config, RestOptions options = {});

  // One request to the current server, JSON body (may be null = no body). Transport failures
  // (connect, TLS, timeout) are kUnavailable and move on to the next server; HTTP errors come
  // back as a RestReply. Thread-safe: every call has a connection of its own.
  Result<RestReply> call(const std::string& method, const std::string& target,
                         const nlohmann::json& body = nullptr);
  std::string server() const;  // the URL in use

 private:
  RestClient(std::shared_ptr<ServerSet> servers, std::shared_ptr<Credentials> credentials,
             RestOptions options);
  std::shared_ptr<ServerSet> servers_;
  std::shared_ptr<Credentials> credentials_;
  RestOptions options_;
};

}  // namespace sluice::kube
