// kube_decode.h (private) — Kubernetes API objects (parsed JSON) → sluice model values.
//
// One decoder serves every source: the watch stream, the manifest file source (YAML is
// converted to JSON first), the legacy Endpoints option and the lease reconciler's publisher.
// Decoding follows the API's defaulting (conditions nil ⇒ ready/serving true, terminating
// false; protocol nil ⇒ TCP...) and ignores unknown fields. A value that cannot be used makes
// the whole object fail with a Problem naming the object ("Service default/web") and the field
// path ("spec.ports[1].port"), so one broken object never takes others down with it.
#pragma once

#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/kube_source.h"
#include "sluice/model.h"

namespace sluice::kube {

template <typename T>
struct Decoded {
  std::optional<T> value;        // set on success
  std::optional<Problem> error;  // set on failure
  explicit operator bool() const { return value.has_value(); }
};

// metadata.namespace ("default" when absent) / metadata.name.
ObjectName objectName(const nlohmann::json& obj);

Decoded<Service> decodeService(const nlohmann::json& obj);
// An FQDN slice fails with field "addressType", reason "FQDN slices are not proxied".
Decoded<EndpointSlice> decodeEndpointSlice(const nlohmann::json& obj);
// Legacy core/v1 Endpoints: one EndpointSlice per (subset, address family), named
// "<name>-endpoints-<n>", serviceName = the Endpoints' name (they share it).
Decoded<std::vector<EndpointSlice>> decodeEndpoints(const nlohmann::json& obj);
// A core/v1 Node (cluster-scoped: problems name "Node <name>"); present is true on success.
Decoded<NodeInfo> decodeNode(const nlohmann::json& obj);

}  // namespace sluice::kube
