// sluice/explain.h — "what happens to this packet?" answered from a desired state.
//
// explain() plans a Snapshot with a ProxyConfig into a FakeBackend (the very rules DataPlane
// would commit for that state), follows one new connection through them with nft::trace, and
// names what the rules do not say by themselves: the Service and port the destination belongs
// to, the endpoint behind each DNAT target, and why a packet is rejected or dropped.
// `sluiced explain` and the daemon's /explain endpoint print it; node agents can do the same.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/nft/tracer.h"
#include "sluice/planner.h"
#include "sluice/status.h"

namespace sluice {

struct ExplainRequest {
  IPAddress src;
  IPAddress dst;
  uint16_t port = 0;
  Protocol protocol = Protocol::kTCP;
  // Sent by a process on the node (output hook) instead of arriving on an interface.
  bool fromNode = false;
  // Addresses of the node (NodePorts answer on them; a DNAT to one of them is local delivery).
  std::vector<IPAddress> nodeAddresses;
};

// Parses "SRC", "DST:PORT/PROTO" ("198.18.0.5", "198.19.0.10:80/tcp", "[fd00::a]:53/udp").
Result<ExplainRequest> parseExplainRequest(const std::string& src, const std::string& dstPortProto);

struct ExplainCandidate {
  nft::NatTarget target;
  double probability = 0;
  std::optional<Endpoint> endpoint;  // the slice entry behind the target, when one matches
};

struct Explanation {
  ExplainRequest request;
  std::optional<ObjectName> service;  // the Service the destination belongs to
  std::optional<ServicePort> servicePort;
  std::string frontend;               // "ClusterIP", "NodePort", "external IP", "load-balancer IP"
  std::vector<ExplainCandidate> candidates;  // by target, probabilities summed
  bool masqueraded = false;           // in some outcome
  bool fullyRandom = false;
  std::optional<nft::Disposition> disposition;  // shared by all outcomes; none when they differ
  std::string reason;                 // why rejected / dropped / not a Service
  nft::Trace trace;

  std::string toString() const;  // for operators: a summary, then the trace
  std::string toJson() const;
};

// Errors: InvalidArgument (families of src/dst differ, or differ from cfg.family), the
// planner's error when the state cannot be planned, the tracer's errors.
Result<Explanation> explain(const Snapshot& snapshot, const ProxyConfig& cfg, const ExplainRequest& request);

}  // namespace sluice
